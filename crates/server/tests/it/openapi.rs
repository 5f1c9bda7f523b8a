//! The OpenAPI description: valid OpenAPI 3, served as committed, and complete.

use crate::support;

use actix_web::http::Method;
use keygate_storage::test_support::TestDatabase;
use support::start;

fn committed() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
    std::fs::read_to_string(&path).expect("openapi.json is committed at the repository root")
}

#[actix_web::test]
async fn the_served_description_is_the_committed_one_and_needs_no_key() {
    let app = start(TestDatabase::sqlite()).await;
    let reply = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(reply.status, 200);
    let expected: serde_json::Value = serde_json::from_str(&committed()).expect("JSON");
    assert_eq!(
        reply.json, expected,
        "openapi.json is stale: run cargo xtask openapi"
    );
    assert_eq!(
        keygate_server::openapi::document(),
        committed(),
        "byte for byte: run cargo xtask openapi"
    );
}

#[test]
fn the_description_is_valid_openapi_3_and_covers_every_endpoint() {
    let spec = oas3::from_json(committed()).expect("a valid OpenAPI 3.1 document");
    assert!(spec.openapi.starts_with("3."), "{}", spec.openapi);
    let paths = spec.paths.as_ref().expect("paths");
    let operations = [
        ("/api-keys", "post"),
        ("/api-keys", "get"),
        ("/api-keys/{id}", "get"),
        ("/api-keys/{id}", "patch"),
        ("/api-keys/{id}", "delete"),
        ("/api-keys/{id}/rotate", "post"),
        ("/api-keys/{id}/events", "get"),
        ("/forward-auth", "get"),
        ("/health", "get"),
        ("/metrics", "get"),
    ];
    for (path, method) in operations {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is described"));
        let operation = match method {
            "get" => item.get.as_ref(),
            "post" => item.post.as_ref(),
            "patch" => item.patch.as_ref(),
            "delete" => item.delete.as_ref(),
            _ => None,
        };
        assert!(operation.is_some(), "{method} {path} is described");
    }
    let document: serde_json::Value = serde_json::from_str(&committed()).expect("JSON");
    let scheme = &document["components"]["securitySchemes"]["X-Blnk-Key"];
    assert_eq!(scheme["type"], "apiKey");
    assert_eq!(scheme["in"], "header");
    assert_eq!(scheme["name"], "X-Blnk-Key");
    let codes: Vec<&str> = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("the error codes")
        .iter()
        .filter_map(|code| code.as_str())
        .collect();
    for code in [
        "AUTH_MISSING_API_KEY",
        "AUTH_INVALID_API_KEY",
        "AUTH_EXPIRED_API_KEY",
        "AUTH_INSUFFICIENT_PERMISSIONS",
        "AUTH_UNKNOWN_RESOURCE",
        "AUTH_CROSS_OWNER_ACCESS",
        "AUTH_SCOPE_ESCALATION",
        "APIKEY_OWNER_REQUIRED",
        "APIKEY_NOT_FOUND",
        "GEN_MALFORMED_REQUEST",
        "GEN_VALIDATION_ERROR",
        "GEN_PAYLOAD_TOO_LARGE",
        "GEN_RATE_LIMITED",
        "GEN_INTERNAL",
    ] {
        assert!(codes.contains(&code), "{code} is described");
    }
}
