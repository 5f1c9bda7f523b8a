//! Scope parsing: any text either fails or parses to a scope that prints back as that
//! text; a parsed set never holds a duplicate.
#![no_main]

use keygate_core::{Scope, ScopeSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scope) = Scope::try_from(text) {
        assert_eq!(scope.to_string(), text);
    }
    let parts: Vec<&str> = text.split(',').collect();
    if let Ok(set) = ScopeSet::parse(&parts) {
        let scopes: Vec<Scope> = set.iter().collect();
        for (i, scope) in scopes.iter().enumerate() {
            assert!(!scopes[i + 1..].contains(scope), "a duplicate survived");
            assert!(set.covers(*scope));
        }
    }
});
