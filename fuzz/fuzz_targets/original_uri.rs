//! A gateway's original URI to the resource it is judged by: any text either is refused
//! or is canonical, and then every common upstream reading of it addresses the resource
//! keygate allowed.
#![no_main]

#[path = "../../crates/core/tests/upstreams/mod.rs"]
mod upstreams;

use keygate_core::CanonicalPath;
use keygate_core::route::{resource_for, resource_for_segment};
use libfuzzer_sys::fuzz_target;
use upstreams::{UPSTREAMS, first_segment};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = CanonicalPath::parse(target) else {
        return;
    };
    assert_eq!(
        CanonicalPath::parse(path.as_str()).as_ref(),
        Ok(&path),
        "a canonical path is its own canonical form"
    );
    let Some(resource) = resource_for(&path) else {
        return;
    };
    for upstream in UPSTREAMS {
        if let Some(read) = (upstream.read)(target) {
            assert_eq!(
                resource_for_segment(first_segment(&read)),
                Some(resource),
                "{target:?} is {} to keygate but {read:?} to an upstream {}",
                resource.as_str(),
                upstream.name
            );
        }
    }
});
