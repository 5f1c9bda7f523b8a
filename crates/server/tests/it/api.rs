//! The HTTP contract of `/api-keys`, end to end through the real app, on SQLite and on
//! PostgreSQL.

use crate::support;

use actix_web::http::Method;
use actix_web::test::TestRequest;
use chrono::{DateTime, Duration, Utc};
use keygate_core::{ApiKey, KeySpec, PlainKey};
use keygate_storage::test_support::TestDatabase;
use serde_json::{Value, json};
use support::{MASTER, key_request, next_year, start, start_with, text};

on_both_backends!(
    health_and_root_need_no_key,
    creating_returns_the_key_object_once,
    a_created_key_authenticates_through_either_header,
    a_missing_key_is_refused,
    an_unknown_key_is_refused,
    the_master_key_must_name_an_owner,
    listing_is_newest_first_and_shows_no_secret,
    an_owner_without_keys_lists_an_empty_array,
    a_scoped_key_lists_only_its_own_owner,
    scopes_are_checked_against_the_request,
    an_unknown_resource_is_refused_to_api_keys,
    methods_without_an_action_are_refused_to_api_keys,
    a_scoped_key_creates_keys_only_for_its_owner_within_its_scopes,
    escalation_is_refused_including_wildcards,
    invalid_fields_are_validation_errors,
    bodies_that_are_not_the_expected_json_are_malformed,
    bodies_over_a_mebibyte_are_refused,
    duplicate_scopes_are_removed_in_order,
    fields_the_server_owns_cannot_be_set,
    revoking_takes_effect_on_the_very_next_request,
    revoking_follows_the_owner_rules,
    an_expired_key_is_refused,
    last_used_at_leaves_the_zero_time_after_use,
    secure_mode_off_lets_every_request_act_as_master,
    unknown_routes_are_json_404s,
    the_database_holds_no_plaintext_key,
    the_query_owner_is_validated,
);

async fn the_query_owner_is_validated(db: TestDatabase) {
    let app = start(db).await;
    let long = "o".repeat(256);
    for path in [
        "/api-keys?owner=%01".to_owned(),
        format!("/api-keys?owner={long}"),
        "/api-keys/api_key_x?owner=a%0Ab".to_owned(),
    ] {
        let method = if path.starts_with("/api-keys/") {
            Method::DELETE
        } else {
            Method::GET
        };
        let reply = app.call(method, &path, Some(MASTER), None).await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(
            reply.json["error_detail"]["details"]["field"], "owner",
            "{path}"
        );
    }
}

async fn health_and_root_need_no_key(db: TestDatabase) {
    let app = start(db).await;
    let health = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json["status"], "UP");
    let root = app.call(Method::GET, "/", None, None).await;
    assert_eq!(root.status, 200);
    assert_eq!(root.json["name"], "keygate");
}

async fn creating_returns_the_key_object_once(db: TestDatabase) {
    let app = start(db).await;
    let request = json!({
        "name": "Service Account",
        "owner": "owner_id",
        "scopes": ["ledgers:read", "balances:write"],
        "expires_at": next_year(),
    });
    let reply = app
        .call(Method::POST, "/api-keys", Some(MASTER), Some(request))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.json);
    assert_eq!(
        reply.headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    assert_eq!(
        reply
            .headers
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
    let key = &reply.json;
    let fields: Vec<&str> = key
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "api_key_id",
            "created_at",
            "expires_at",
            "is_revoked",
            "key",
            "last_used_at",
            "name",
            "owner_id",
            "scopes"
        ]
    );
    let id = text(&key["api_key_id"]);
    let uuid = id.strip_prefix("api_key_").expect("api_key_ prefix");
    assert_eq!(
        uuid::Uuid::parse_str(uuid)
            .expect("a UUID")
            .get_version_num(),
        4
    );
    let plain = text(&key["key"]);
    assert_eq!(plain.len(), 44);
    assert!(plain.ends_with('='));
    assert!(
        plain
            .trim_end_matches('=')
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    assert_eq!(key["name"], "Service Account");
    assert_eq!(key["owner_id"], "owner_id");
    assert_eq!(key["scopes"], json!(["ledgers:read", "balances:write"]));
    assert_eq!(key["expires_at"], next_year().as_str());
    assert_eq!(key["last_used_at"], "0001-01-01T00:00:00Z");
    assert_eq!(key["is_revoked"], false);
    let created_at = text(&key["created_at"]);
    assert!(created_at.ends_with('Z'), "{created_at}");
    let created: DateTime<Utc> = created_at.parse().expect("RFC 3339");
    assert!((Utc::now() - created).num_seconds().abs() < 60);

    let listed = app
        .call(Method::GET, "/api-keys?owner=owner_id", Some(MASTER), None)
        .await;
    assert_eq!(listed.json[0]["api_key_id"], id.as_str());
    assert_ne!(
        listed.json[0]["key"],
        plain.as_str(),
        "the plaintext is shown only once"
    );
    assert_eq!(
        listed.json[0]["created_at"],
        created_at.as_str(),
        "the stored time is the one returned"
    );
}

async fn a_created_key_authenticates_through_either_header(db: TestDatabase) {
    let app = start(db).await;
    let (key, _) = app.new_key("alice", &["api-keys:read"]).await;
    let headers = [
        ("X-Blnk-Key", key.clone()),
        ("x-blnk-key", key.clone()),
        ("Authorization", format!("Bearer {key}")),
        ("authorization", format!("bearer {key}")),
    ];
    for (name, value) in headers {
        let reply = app
            .send(
                TestRequest::get()
                    .uri("/api-keys")
                    .insert_header((name, value)),
            )
            .await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.json);
    }
    let reply = app
        .send(
            TestRequest::get()
                .uri("/api-keys?owner=alice")
                .insert_header(("Authorization", format!("Bearer {MASTER}"))),
        )
        .await;
    assert_eq!(reply.status, 200, "the master key as a bearer token");
}

async fn a_missing_key_is_refused(db: TestDatabase) {
    let app = start(db).await;
    for path in ["/api-keys", "/api-keys/api_key_x", "/ledgers", "/nowhere"] {
        let reply = app.call(Method::GET, path, None, None).await;
        reply.assert_error(401, "AUTH_MISSING_API_KEY");
        assert_eq!(
            reply.json["error"],
            "Authentication required. Use X-Blnk-Key header"
        );
    }
    let empty = app
        .send(
            TestRequest::get()
                .uri("/api-keys")
                .insert_header(("X-Blnk-Key", "")),
        )
        .await;
    empty.assert_error(401, "AUTH_MISSING_API_KEY");
    let basic = app
        .send(
            TestRequest::get()
                .uri("/api-keys")
                .insert_header(("Authorization", "Basic dXNlcjpwYXNz")),
        )
        .await;
    basic.assert_error(401, "AUTH_MISSING_API_KEY");
}

async fn an_unknown_key_is_refused(db: TestDatabase) {
    let app = start(db).await;
    let almost_master = format!("{}X", &MASTER[..MASTER.len() - 1]);
    let unknown = PlainKey::generate().expect("randomness");
    for key in [almost_master.as_str(), unknown.expose(), "x", "' OR 1=1 --"] {
        let reply = app
            .call(Method::GET, "/api-keys?owner=a", Some(key), None)
            .await;
        reply.assert_error(401, "AUTH_INVALID_API_KEY");
        assert_eq!(reply.json["error"], "Invalid API key");
    }
    let binary = app
        .send(TestRequest::get().uri("/api-keys").insert_header((
            "X-Blnk-Key",
            actix_web::http::header::HeaderValue::from_bytes(b"\xff\xfe").expect("opaque bytes"),
        )))
        .await;
    binary.assert_error(401, "AUTH_INVALID_API_KEY");
}

async fn the_master_key_must_name_an_owner(db: TestDatabase) {
    let app = start(db).await;
    for path in ["/api-keys", "/api-keys?owner="] {
        app.call(Method::GET, path, Some(MASTER), None)
            .await
            .assert_error(400, "APIKEY_OWNER_REQUIRED");
    }
    let (_, id) = app.new_key("alice", &["ledgers:read"]).await;
    app.call(
        Method::DELETE,
        &format!("/api-keys/{id}"),
        Some(MASTER),
        None,
    )
    .await
    .assert_error(400, "APIKEY_OWNER_REQUIRED");
}

async fn listing_is_newest_first_and_shows_no_secret(db: TestDatabase) {
    let app = start(db).await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(app.new_key("alice", &["ledgers:read"]).await);
    }
    app.new_key("bob", &["ledgers:read"]).await;
    let reply = app
        .call(Method::GET, "/api-keys?owner=alice", Some(MASTER), None)
        .await;
    assert_eq!(reply.status, 200);
    let listed = reply.json.as_array().expect("an array");
    let ids: Vec<String> = listed.iter().map(|k| text(&k["api_key_id"])).collect();
    let expected: Vec<String> = created.iter().rev().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, expected);
    for (entry, (plain, _)) in listed.iter().zip(created.iter().rev()) {
        let shown = text(&entry["key"]);
        let hash = PlainKey::from_presented(plain).hash();
        let hash_hex: String = hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(&shown, plain);
        assert!(shown.len() < 12, "a short hint, not a secret: {shown}");
        assert!(
            !reply_contains(&reply.json, plain),
            "the plaintext is never listed"
        );
        assert!(
            !reply_contains(&reply.json, &hash_hex),
            "the hash is never listed"
        );
    }
}

fn reply_contains(json: &Value, needle: &str) -> bool {
    json.to_string().contains(needle)
}

async fn an_owner_without_keys_lists_an_empty_array(db: TestDatabase) {
    let app = start(db).await;
    let reply = app
        .call(Method::GET, "/api-keys?owner=nobody", Some(MASTER), None)
        .await;
    assert_eq!((reply.status, reply.json.clone()), (200, json!([])));
}

async fn a_scoped_key_lists_only_its_own_owner(db: TestDatabase) {
    let app = start(db).await;
    let (key, id) = app.new_key("alice", &["api-keys:read"]).await;
    app.new_key("bob", &["ledgers:read"]).await;
    for path in ["/api-keys", "/api-keys?owner=alice"] {
        let reply = app.call(Method::GET, path, Some(&key), None).await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        let ids: Vec<String> = reply
            .json
            .as_array()
            .expect("array")
            .iter()
            .map(|k| text(&k["api_key_id"]))
            .collect();
        assert_eq!(ids, vec![id.clone()]);
    }
    app.call(Method::GET, "/api-keys?owner=bob", Some(&key), None)
        .await
        .assert_error(403, "AUTH_CROSS_OWNER_ACCESS");
}

async fn scopes_are_checked_against_the_request(db: TestDatabase) {
    let app = start(db).await;
    let (reader, _) = app.new_key("alice", &["ledgers:read"]).await;
    let reply = app
        .call(Method::GET, "/api-keys", Some(&reader), None)
        .await;
    reply.assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
    assert_eq!(
        reply.json["error"],
        "Insufficient permissions for api-keys:read"
    );
    let reply = app
        .call(
            Method::POST,
            "/api-keys",
            Some(&reader),
            Some(key_request("alice", &["ledgers:read"])),
        )
        .await;
    reply.assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
    assert_eq!(
        reply.json["error"],
        "Insufficient permissions for api-keys:write"
    );
    let (all, _) = app.new_key("alice", &["*:*"]).await;
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(&all), None)
            .await
            .status,
        200
    );
    let (any_read, _) = app.new_key("alice", &["*:read"]).await;
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(&any_read), None)
            .await
            .status,
        200
    );
    // A permitted request to a resource keygate does not serve passes the guard, then 404s.
    app.call(Method::GET, "/ledgers/ldg_1", Some(&reader), None)
        .await
        .assert_error(404, "GEN_NOT_FOUND");
    app.call(Method::POST, "/ledgers", Some(&reader), Some(json!({})))
        .await
        .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
}

async fn an_unknown_resource_is_refused_to_api_keys(db: TestDatabase) {
    let app = start(db).await;
    let (key, _) = app.new_key("alice", &["*:*"]).await;
    for path in ["/nowhere", "/ledger", "/*", "/api-key"] {
        app.call(Method::GET, path, Some(&key), None)
            .await
            .assert_error(403, "AUTH_UNKNOWN_RESOURCE");
    }
    for path in ["/mocked-account", "/multi-search", "/refund-transaction/t"] {
        let reply = app.call(Method::GET, path, Some(&key), None).await;
        reply.assert_error(404, "GEN_NOT_FOUND");
    }
    app.call(Method::GET, "/nowhere", Some(MASTER), None)
        .await
        .assert_error(404, "GEN_NOT_FOUND");
}

async fn methods_without_an_action_are_refused_to_api_keys(db: TestDatabase) {
    let app = start(db).await;
    let (key, _) = app.new_key("alice", &["*:*"]).await;
    for method in [Method::OPTIONS, Method::TRACE] {
        app.call(method, "/api-keys", Some(&key), None)
            .await
            .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
    }
    app.call(Method::OPTIONS, "/api-keys", Some(MASTER), None)
        .await
        .assert_error(405, "GEN_METHOD_NOT_ALLOWED");
    app.call(Method::PUT, "/api-keys", Some(&key), Some(json!({})))
        .await
        .assert_error(405, "GEN_METHOD_NOT_ALLOWED");
}

async fn a_scoped_key_creates_keys_only_for_its_owner_within_its_scopes(db: TestDatabase) {
    let app = start(db).await;
    let (manager, _) = app.new_key("alice", &["api-keys:write", "ledgers:*"]).await;
    let created = app
        .create_key(&manager, "alice", &["ledgers:read", "ledgers:write"])
        .await;
    assert_eq!(created["owner_id"], "alice");
    let child = text(&created["key"]);
    app.call(Method::GET, "/ledgers/l1", Some(&child), None)
        .await
        .assert_error(404, "GEN_NOT_FOUND");
    let reply = app
        .call(
            Method::POST,
            "/api-keys",
            Some(&manager),
            Some(key_request("bob", &["ledgers:read"])),
        )
        .await;
    reply.assert_error(403, "AUTH_CROSS_OWNER_ACCESS");
    let bobs = app
        .call(Method::GET, "/api-keys?owner=bob", Some(MASTER), None)
        .await;
    assert_eq!(bobs.json, json!([]), "nothing was created for bob");
}

async fn escalation_is_refused_including_wildcards(db: TestDatabase) {
    let app = start(db).await;
    let cases: &[(&[&str], &[&str], &str)] = &[
        (&["api-keys:write"], &["*:*"], "*:*"),
        (
            &["api-keys:write", "ledgers:read"],
            &["ledgers:write"],
            "ledgers:write",
        ),
        (
            &["api-keys:write", "ledgers:read"],
            &["ledgers:*"],
            "ledgers:*",
        ),
        (
            &["api-keys:write", "ledgers:*"],
            &["ledgers:read", "*:read"],
            "*:read",
        ),
        (&["api-keys:write", "*:read"], &["*:write"], "*:write"),
        (
            &["api-keys:write", "*:read"],
            &["balances:read", "balances:delete"],
            "balances:delete",
        ),
        (&["api-keys:*"], &["api-keys:*", "*:*"], "*:*"),
        (&["*:write"], &["*:*"], "*:*"),
    ];
    for (own, requested, refused) in cases {
        let (caller, _) = app.new_key("alice", own).await;
        let reply = app
            .call(
                Method::POST,
                "/api-keys",
                Some(&caller),
                Some(key_request("alice", requested)),
            )
            .await;
        reply.assert_error(403, "AUTH_SCOPE_ESCALATION");
        assert_eq!(
            reply.json["error_detail"]["details"]["scope"], *refused,
            "{own:?} granting {requested:?}"
        );
    }
    let (caller, _) = app.new_key("alice", &["*:*"]).await;
    app.create_key(&caller, "alice", &["*:*"]).await;
    let (caller, _) = app.new_key("alice", &["api-keys:write", "*:read"]).await;
    app.create_key(&caller, "alice", &["ledgers:read", "*:read"])
        .await;
}

async fn invalid_fields_are_validation_errors(db: TestDatabase) {
    let app = start(db).await;
    let future = next_year();
    let future = future.as_str();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"name": "n", "owner": "o", "scopes": ["ledgers:update"], "expires_at": future}),
            "scopes",
            "update",
        ),
        (
            json!({"name": "n", "owner": "o", "scopes": ["ledger:read"], "expires_at": future}),
            "scopes",
            "ledger",
        ),
        (
            json!({"name": "n", "owner": "o", "scopes": [""], "expires_at": future}),
            "scopes",
            "\"\"",
        ),
        (
            json!({"name": "n", "owner": "o", "scopes": ["ledgers:read:x"], "expires_at": future}),
            "scopes",
            "ledgers:read:x",
        ),
        (
            json!({"name": "n", "owner": "o", "scopes": [" ledgers:read"], "expires_at": future}),
            "scopes",
            " ledgers",
        ),
        (
            json!({"name": "n", "owner": "o", "scopes": ["ledgers: read"], "expires_at": future}),
            "scopes",
            " read",
        ),
        (
            json!({"name": "n", "owner": "o", "scopes": [], "expires_at": future}),
            "scopes",
            "at least one",
        ),
        (
            json!({"name": "n", "owner": "o", "scopes": ["ledgers:read"], "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
            "future",
        ),
        (
            json!({"name": "n", "owner": "o", "scopes": ["ledgers:read"], "expires_at": "tomorrow"}),
            "expires_at",
            "RFC 3339",
        ),
        (
            json!({"name": "  ", "owner": "o", "scopes": ["ledgers:read"], "expires_at": future}),
            "name",
            "empty",
        ),
        (
            json!({"name": "n", "owner": "", "scopes": ["ledgers:read"], "expires_at": future}),
            "owner",
            "empty",
        ),
    ];
    for (body, field, mentions) in cases {
        let reply = app
            .call(Method::POST, "/api-keys", Some(MASTER), Some(body.clone()))
            .await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(
            reply.json["error_detail"]["details"]["field"], field,
            "{body}"
        );
        assert!(
            text(&reply.json["error"]).contains(mentions),
            "{body} -> {}",
            reply.json
        );
    }
    let listed = app
        .call(Method::GET, "/api-keys?owner=o", Some(MASTER), None)
        .await;
    assert_eq!(listed.json, json!([]), "nothing invalid was stored");
}

async fn bodies_that_are_not_the_expected_json_are_malformed(db: TestDatabase) {
    let app = start(db).await;
    let cases: Vec<(&str, &str)> = vec![
        ("not json", "Invalid JSON"),
        ("", "empty"),
        ("[]", "Invalid JSON"),
        (
            "{\"owner\": \"o\", \"scopes\": [\"ledgers:read\"], \"expires_at\": \"{EXPIRY}\"}",
            "name",
        ),
        (
            "{\"name\": \"n\", \"scopes\": [\"ledgers:read\"], \"expires_at\": \"{EXPIRY}\"}",
            "owner",
        ),
        (
            "{\"name\": \"n\", \"owner\": \"o\", \"expires_at\": \"{EXPIRY}\"}",
            "scopes",
        ),
        (
            "{\"name\": \"n\", \"owner\": \"o\", \"scopes\": [\"ledgers:read\"]}",
            "expires_at",
        ),
        (
            "{\"name\": \"n\", \"owner\": \"o\", \"scopes\": \"ledgers:read\", \"expires_at\": \"{EXPIRY}\"}",
            "sequence",
        ),
        (
            "{\"name\": null, \"owner\": \"o\", \"scopes\": [\"ledgers:read\"], \"expires_at\": \"{EXPIRY}\"}",
            "null",
        ),
        (
            "{\"name\": 7, \"owner\": \"o\", \"scopes\": [\"ledgers:read\"], \"expires_at\": \"{EXPIRY}\"}",
            "integer",
        ),
    ];
    for (body, mentions) in cases {
        let request = TestRequest::post()
            .uri("/api-keys")
            .insert_header(("X-Blnk-Key", MASTER))
            .insert_header(("Content-Type", "application/json"))
            .set_payload(body.replace("{EXPIRY}", &next_year()));
        let reply = app.send(request).await;
        reply.assert_error(400, "GEN_MALFORMED_REQUEST");
        assert!(
            text(&reply.json["error"]).contains(mentions),
            "{body} -> {}",
            reply.json
        );
    }
    // As in Blnk, the body is read as JSON whatever Content-Type it declares (curl -d
    // sends a form type unless told otherwise).
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = TestRequest::post()
            .uri("/api-keys")
            .insert_header(("X-Blnk-Key", MASTER))
            .set_payload(key_request("o", &["ledgers:read"]).to_string());
        if let Some(content_type) = content_type {
            request = request.insert_header(("Content-Type", content_type));
        }
        assert_eq!(app.send(request).await.status, 201, "{content_type:?}");
    }
}

async fn bodies_over_a_mebibyte_are_refused(db: TestDatabase) {
    let app = start(db).await;
    let huge = json!({"name": "x".repeat(1024 * 1024), "owner": "o", "scopes": ["ledgers:read"], "expires_at": next_year()});
    let reply = app
        .call(Method::POST, "/api-keys", Some(MASTER), Some(huge))
        .await;
    reply.assert_error(413, "GEN_PAYLOAD_TOO_LARGE");
}

async fn duplicate_scopes_are_removed_in_order(db: TestDatabase) {
    let app = start(db).await;
    let created = app
        .create_key(
            MASTER,
            "alice",
            &[
                "balances:write",
                "ledgers:read",
                "balances:write",
                "ledgers:read",
            ],
        )
        .await;
    assert_eq!(created["scopes"], json!(["balances:write", "ledgers:read"]));
}

async fn fields_the_server_owns_cannot_be_set(db: TestDatabase) {
    let app = start(db).await;
    let mut body = key_request("alice", &["ledgers:read"]);
    let forged = json!({
        "api_key_id": "api_key_chosen",
        "key": "chosen-secret-chosen-secret-chosen-secret-00=",
        "is_revoked": true,
        "created_at": "2000-01-01T00:00:00Z",
        "last_used_at": "2000-01-01T00:00:00Z",
        "revoked_at": "2000-01-01T00:00:00Z",
        "owner_id": "mallory",
        "unknown": {"nested": [1, 2, 3]},
    });
    for (field, value) in forged.as_object().expect("object") {
        body[field] = value.clone();
    }
    let reply = app
        .call(Method::POST, "/api-keys", Some(MASTER), Some(body))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.json);
    let created = reply.json;
    assert_ne!(created["api_key_id"], "api_key_chosen");
    assert_ne!(
        created["key"],
        "chosen-secret-chosen-secret-chosen-secret-00="
    );
    assert_eq!(created["is_revoked"], false);
    assert!(created.get("revoked_at").is_none());
    assert_ne!(created["created_at"], "2000-01-01T00:00:00Z");
    assert_eq!(created["last_used_at"], "0001-01-01T00:00:00Z");
    assert_eq!(created["owner_id"], "alice");
    let works = app
        .call(Method::GET, "/ledgers", Some(&text(&created["key"])), None)
        .await;
    assert_eq!(
        works.code(),
        "GEN_NOT_FOUND",
        "the key is active: {}",
        works.json
    );
}

async fn revoking_takes_effect_on_the_very_next_request(db: TestDatabase) {
    let app = start(db).await;
    let (key, id) = app.new_key("alice", &["api-keys:read"]).await;
    // Use it first, so that it is cached.
    for _ in 0..3 {
        assert_eq!(
            app.call(Method::GET, "/api-keys", Some(&key), None)
                .await
                .status,
            200
        );
    }
    let reply = app.revoke(&id, "alice").await;
    assert_eq!((reply.status, reply.json.clone()), (204, Value::Null));
    let refused = app.call(Method::GET, "/api-keys", Some(&key), None).await;
    refused.assert_error(401, "AUTH_EXPIRED_API_KEY");
    assert_eq!(refused.json["error"], "API key is expired or revoked");
    let listed = app
        .call(Method::GET, "/api-keys?owner=alice", Some(MASTER), None)
        .await;
    assert_eq!(listed.json[0]["is_revoked"], true);
    let revoked_at: DateTime<Utc> = text(&listed.json[0]["revoked_at"])
        .parse()
        .expect("RFC 3339");
    assert!((Utc::now() - revoked_at).num_seconds().abs() < 60);
    let again = app.revoke(&id, "alice").await;
    assert_eq!(again.status, 204, "revoking twice is harmless");
}

async fn revoking_follows_the_owner_rules(db: TestDatabase) {
    let app = start(db).await;
    let (victim, victim_id) = app.new_key("bob", &["ledgers:read"]).await;
    let (revoker, _) = app.new_key("alice", &["api-keys:delete"]).await;
    let (reader, _) = app.new_key("alice", &["api-keys:read"]).await;
    let (own, own_id) = app.new_key("alice", &["ledgers:read"]).await;

    app.call(
        Method::DELETE,
        &format!("/api-keys/{victim_id}?owner=bob"),
        Some(&revoker),
        None,
    )
    .await
    .assert_error(403, "AUTH_CROSS_OWNER_ACCESS");
    app.call(
        Method::DELETE,
        &format!("/api-keys/{victim_id}"),
        Some(&revoker),
        None,
    )
    .await
    .assert_error(404, "APIKEY_NOT_FOUND");
    app.revoke(&victim_id, "alice")
        .await
        .assert_error(404, "APIKEY_NOT_FOUND");
    app.call(
        Method::DELETE,
        "/api-keys/api_key_nonexistent?owner=bob",
        Some(MASTER),
        None,
    )
    .await
    .assert_error(404, "APIKEY_NOT_FOUND");
    app.call(
        Method::DELETE,
        &format!("/api-keys/{own_id}"),
        Some(&reader),
        None,
    )
    .await
    .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
    let bob = app.call(Method::GET, "/ledgers", Some(&victim), None).await;
    assert_eq!(
        bob.code(),
        "GEN_NOT_FOUND",
        "bob's key still works: {}",
        bob.json
    );

    let reply = app
        .call(
            Method::DELETE,
            &format!("/api-keys/{own_id}"),
            Some(&revoker),
            None,
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.json);
    app.call(Method::GET, "/ledgers", Some(&own), None)
        .await
        .assert_error(401, "AUTH_EXPIRED_API_KEY");
}

async fn an_expired_key_is_refused(db: TestDatabase) {
    let app = start(db).await;
    let created = Utc::now() - Duration::days(2);
    let spec = KeySpec::new(
        "old",
        "alice",
        &["*:*"],
        created + Duration::days(1),
        created,
    )
    .expect("valid");
    let plain = PlainKey::generate().expect("randomness");
    let key = ApiKey::issue(spec, &plain, created);
    app.state
        .guard()
        .store()
        .insert(&key, &keygate_core::Actor::Cli)
        .expect("stored directly, past the API's validation");
    app.call(Method::GET, "/api-keys", Some(plain.expose()), None)
        .await
        .assert_error(401, "AUTH_EXPIRED_API_KEY");
}

async fn last_used_at_leaves_the_zero_time_after_use(db: TestDatabase) {
    let app = start(db).await;
    let (key, _) = app.new_key("alice", &["api-keys:read"]).await;
    let before = app
        .call(Method::GET, "/api-keys?owner=alice", Some(MASTER), None)
        .await;
    assert_eq!(before.json[0]["last_used_at"], "0001-01-01T00:00:00Z");
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(&key), None)
            .await
            .status,
        200
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let listed = app
            .call(Method::GET, "/api-keys?owner=alice", Some(MASTER), None)
            .await;
        let last_used = text(&listed.json[0]["last_used_at"]);
        if last_used != "0001-01-01T00:00:00Z" {
            let at: DateTime<Utc> = last_used.parse().expect("RFC 3339");
            assert!((Utc::now() - at).num_seconds().abs() < 60, "{last_used}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last_used_at was never written"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn secure_mode_off_lets_every_request_act_as_master(db: TestDatabase) {
    let app = start_with(db, |settings| settings.server.secure = false).await;
    let created = app
        .call(
            Method::POST,
            "/api-keys",
            None,
            Some(key_request("alice", &["*:*"])),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.json);
    let listed = app
        .call(Method::GET, "/api-keys?owner=alice", None, None)
        .await;
    assert_eq!(listed.json.as_array().map(Vec::len), Some(1));
    app.call(Method::GET, "/api-keys", None, None)
        .await
        .assert_error(400, "APIKEY_OWNER_REQUIRED");
    let garbage = app
        .call(Method::GET, "/api-keys?owner=alice", Some("garbage"), None)
        .await;
    assert_eq!(garbage.status, 200, "keys are not checked at all");
}

async fn unknown_routes_are_json_404s(db: TestDatabase) {
    let app = start(db).await;
    for path in ["/api-keys/", "/api-keys/a/b", "/ledgers"] {
        app.call(Method::GET, path, Some(MASTER), None)
            .await
            .assert_error(404, "GEN_NOT_FOUND");
    }
}

async fn the_database_holds_no_plaintext_key(db: TestDatabase) {
    let app = start(db).await;
    let mut plaintexts = Vec::new();
    for owner in ["alice", "bob"] {
        let (key, id) = app.new_key(owner, &["api-keys:*"]).await;
        assert_eq!(
            app.call(Method::GET, "/api-keys", Some(&key), None)
                .await
                .status,
            200
        );
        app.call(Method::DELETE, &format!("/api-keys/{id}"), Some(&key), None)
            .await;
        plaintexts.push(key);
    }
    let dump = dump(app.db());
    assert!(dump.len() > 1000, "the dump has the table in it");
    assert!(
        dump.windows(8).any(|w| w == b"api_key_"),
        "the dump holds the keys' rows"
    );
    for plain in &plaintexts {
        let raw = base64_decode(plain);
        assert!(
            !contains(&dump, plain.as_bytes()),
            "plaintext found in the dump"
        );
        assert!(
            !contains(&dump, &plain.as_bytes()[..20]),
            "part of a plaintext found in the dump"
        );
        assert!(
            !contains(&dump, &raw),
            "the key's raw bytes found in the dump"
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn base64_decode(text: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().take_while(|c| *c != b'=') {
        let value = alphabet
            .iter()
            .position(|a| *a == c)
            .expect("URL-safe base64") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// Everything the database holds: the SQLite file and its WAL as raw bytes, or
/// `pg_dump` of the test's schema.
fn dump(db: &TestDatabase) -> Vec<u8> {
    if let Some(path) = db.sqlite_path() {
        let mut bytes = std::fs::read(path).expect("the database file");
        if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
            bytes.extend(wal);
        }
        return bytes;
    }
    let (server, schema) = db.postgres_schema().expect("one backend or the other");
    let output = std::process::Command::new("pg_dump")
        .args([
            "--dbname",
            server,
            "--schema",
            schema,
            "--data-only",
            "--inserts",
        ])
        .output()
        .expect("pg_dump runs (PostgreSQL's client tools are installed)");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
