//! The property behind gateway decisions: whatever path keygate allows for a resource,
//! every common upstream reading of that path addresses the same resource.

mod upstreams;

use keygate_core::CanonicalPath;
use keygate_core::route::{resource_for, resource_for_path, resource_for_segment};
use proptest::prelude::*;
use upstreams::{UPSTREAMS, first_segment};

/// Pieces an attacker joins into paths: resource names and every spelling of a
/// separator, a dot segment or a parameter that some upstream treats specially.
const PIECES: [&str; 44] = [
    "ledgers",
    "balances",
    "api-keys",
    "x",
    "",
    ".",
    "..",
    "...",
    "%2e",
    "%2E%2e",
    ".%2e",
    "%2e.",
    "..;",
    "..;x",
    "..%2f",
    "..%2F",
    "..\\",
    "%2f",
    "%5c",
    "%5C",
    "a;b",
    "%3b",
    "%00",
    "%25",
    "%252e%252e",
    "%zz",
    "%6Cedgers",
    "%62alances",
    "ledgers%2f..",
    "~",
    "%7E",
    "%c0%ae",
    "..%00",
    "%2e%2e%2f",
    "%25%32%65",
    "%25%3532",
    "..%20",
    ".. ",
    "%EF%BC%8E%EF%BC%8E",
    "%E2%80%A5",
    "%EF%BC%8F",
    "%C2%A5",
    "#",
    "x#",
];

fn target() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(PIECES.to_vec()), 1..7),
        prop::option::of(prop::sample::select(vec![
            "?q=/../balances",
            "#/../balances",
            "?",
        ])),
    )
        .prop_map(|(segments, suffix)| {
            format!("/{}{}", segments.join("/"), suffix.unwrap_or_default())
        })
}

fn agrees_with_every_upstream(target: &str) -> Result<(), TestCaseError> {
    let Ok(path) = CanonicalPath::parse(target) else {
        return Ok(());
    };
    let Some(resource) = resource_for(&path) else {
        return Ok(());
    };
    for upstream in UPSTREAMS {
        if let Some(read) = (upstream.read)(target) {
            prop_assert_eq!(
                resource_for_segment(first_segment(&read)),
                Some(resource),
                "{:?} is {} to keygate ({}) but {:?} to an upstream {}",
                target,
                resource.as_str(),
                path,
                read,
                upstream.name
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn an_allowed_resource_is_the_resource_every_upstream_sees(target in target()) {
        agrees_with_every_upstream(&target)?;
    }

    #[test]
    fn canonical_paths_are_fixed_points(target in target()) {
        if let Ok(path) = CanonicalPath::parse(&target) {
            prop_assert_eq!(CanonicalPath::parse(path.as_str()), Ok(path.clone()));
            prop_assert_eq!(resource_for(&path), resource_for_path(path.as_str()));
        }
    }
}

#[test]
fn the_reported_bypasses_are_each_checked_by_the_property() {
    for target in [
        "/ledgers/../balances/b1",
        "/ledgers/%2e%2e/balances/b1",
        "/ledgers/%2E%2E/balances/b1",
        "/ledgers/.%2e/balances/b1",
        "/ledgers/..;/balances/b1",
        "/ledgers/..%2fbalances/b1",
        "/ledgers/..%2Fbalances/b1",
        "/ledgers/..\\balances/b1",
        "/ledgers/x/../../balances/b1",
        "/ledgers#/../balances/b1",
        "/ledgers/..%20/balances/b1",
        "/ledgers/%EF%BC%8E%EF%BC%8E/balances/b1",
    ] {
        assert!(
            CanonicalPath::parse(target).is_err(),
            "{target:?} is refused as ambiguous"
        );
        agrees_with_every_upstream(target).expect("agrees");
    }
}
