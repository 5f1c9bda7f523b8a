//! The `POST /api-keys` body decoder: JSON into the request, then validation. It may
//! refuse anything, but never panic, and what it accepts is a valid key description.
#![no_main]

use chrono::Utc;
use keygate_server::api_keys::CreateKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<CreateKey>(data) else {
        return;
    };
    let now = Utc::now();
    if let Ok(spec) = request.validate(now, 3650) {
        assert!(!spec.name.trim().is_empty() && spec.name.chars().count() <= 255);
        assert!(!spec.scopes.is_empty() && spec.scopes.len() <= 64);
        assert!(spec.expires_at > now);
    }
});
