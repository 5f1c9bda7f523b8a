//! Beyond Blnk: one key's read, update, rotation and audit trail, and the forward-auth
//! decision for gateways; on SQLite and on PostgreSQL.

use crate::support;

use actix_web::http::Method;
use actix_web::test::TestRequest;
use keygate_storage::test_support::TestDatabase;
use serde_json::{Value, json};
use support::{MASTER, forward, start, text};

on_both_backends!(
    a_key_is_read_by_its_owner_only,
    an_update_changes_name_scopes_and_expiry,
    an_update_governs_the_very_next_request,
    an_update_is_validated_and_refuses_escalation,
    a_revoked_key_cannot_be_updated_or_rotated,
    a_rotation_makes_a_like_key_and_ends_the_old_one,
    the_old_key_works_through_the_grace_period_only,
    a_rotation_is_validated_and_confined_to_the_caller,
    the_audit_trail_records_every_change_in_order,
    forward_auth_decides_like_the_guard,
    forward_auth_needs_the_original_request,
    a_key_changes_only_keys_its_scopes_cover,
    a_rotated_out_key_keeps_the_end_of_its_grace_period,
    forward_auth_judges_the_path_the_upstream_will_see,
    forward_auth_refuses_two_names_for_the_original_request,
    a_rotated_out_key_cannot_be_rotated_again,
    an_update_is_validated_before_the_owner_rules,
);

async fn a_key_is_read_by_its_owner_only(db: TestDatabase) {
    let app = start(db).await;
    let (plain, id) = app.new_key("alice", &["ledgers:read"]).await;
    let (reader, _) = app.new_key("alice", &["api-keys:read"]).await;
    let (bobs, _) = app.new_key("bob", &["api-keys:read"]).await;

    let reply = app
        .call(
            Method::GET,
            &format!("/api-keys/{id}?owner=alice"),
            Some(MASTER),
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["api_key_id"], id.as_str());
    assert_eq!(reply.json["scopes"], json!(["ledgers:read"]));
    assert_ne!(reply.json["key"], plain.as_str(), "never the plaintext");
    assert!(text(&reply.json["key"]).len() < 12, "a hint only");

    let own = app
        .call(Method::GET, &format!("/api-keys/{id}"), Some(&reader), None)
        .await;
    assert_eq!(own.status, 200, "{}", own.json);
    app.call(Method::GET, &format!("/api-keys/{id}"), Some(&bobs), None)
        .await
        .assert_error(404, "APIKEY_NOT_FOUND");
    app.call(
        Method::GET,
        &format!("/api-keys/{id}?owner=alice"),
        Some(&bobs),
        None,
    )
    .await
    .assert_error(403, "AUTH_CROSS_OWNER_ACCESS");
    app.call(
        Method::GET,
        &format!("/api-keys/{id}?owner=bob"),
        Some(MASTER),
        None,
    )
    .await
    .assert_error(404, "APIKEY_NOT_FOUND");
    app.call(Method::GET, &format!("/api-keys/{id}"), Some(MASTER), None)
        .await
        .assert_error(400, "APIKEY_OWNER_REQUIRED");
    app.call(Method::GET, &format!("/api-keys/{id}"), Some(&plain), None)
        .await
        .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
}

async fn an_update_changes_name_scopes_and_expiry(db: TestDatabase) {
    let app = start(db).await;
    let (_, id) = app.new_key("alice", &["ledgers:read"]).await;
    let body = json!({
        "name": "  Renamed  ",
        "scopes": ["ledgers:read", "balances:read", "ledgers:read"],
        "expires_at": support::next_year(),
        "owner": "mallory",
        "is_revoked": true,
    });
    let reply = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{id}?owner=alice"),
            Some(MASTER),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["name"], "Renamed");
    assert_eq!(
        reply.json["scopes"],
        json!(["ledgers:read", "balances:read"])
    );
    assert_eq!(reply.json["expires_at"], support::next_year().as_str());
    assert_eq!(
        reply.json["owner_id"], "alice",
        "the owner cannot be changed"
    );
    assert_eq!(reply.json["is_revoked"], false);
    let read = app
        .call(
            Method::GET,
            &format!("/api-keys/{id}?owner=alice"),
            Some(MASTER),
            None,
        )
        .await;
    assert_eq!(read.json["name"], "Renamed", "the change is stored");

    let only_name = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{id}?owner=alice"),
            Some(MASTER),
            Some(json!({"name": "Third"})),
        )
        .await;
    assert_eq!(
        only_name.json["scopes"],
        json!(["ledgers:read", "balances:read"]),
        "absent fields stay"
    );
}

async fn an_update_governs_the_very_next_request(db: TestDatabase) {
    let app = start(db).await;
    let (key, id) = app.new_key("alice", &["api-keys:read"]).await;
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(&key), None)
            .await
            .status,
        200
    );
    let narrowed = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{id}?owner=alice"),
            Some(MASTER),
            Some(json!({"scopes": ["ledgers:read"]})),
        )
        .await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.json);
    app.call(Method::GET, "/api-keys", Some(&key), None)
        .await
        .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
    let expired_soon = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{id}?owner=alice"),
            Some(MASTER),
            Some(json!({"expires_at": (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339()})),
        )
        .await;
    assert_eq!(expired_soon.status, 200, "{}", expired_soon.json);
    app.clock.advance(chrono::Duration::seconds(1));
    app.call(Method::GET, "/ledgers", Some(&key), None)
        .await
        .assert_error(401, "AUTH_EXPIRED_API_KEY");
}

async fn an_update_is_validated_and_refuses_escalation(db: TestDatabase) {
    let app = start(db).await;
    let (_, id) = app.new_key("alice", &["ledgers:read"]).await;
    let path = format!("/api-keys/{id}?owner=alice");
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "body"),
        (json!({"scopes": ["ledgers:update"]}), "scopes"),
        (json!({"scopes": []}), "scopes"),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
        (json!({"expires_at": "soon"}), "expires_at"),
        (json!({"name": " "}), "name"),
    ];
    for (body, field) in cases {
        let reply = app
            .call(Method::PATCH, &path, Some(MASTER), Some(body.clone()))
            .await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(
            reply.json["error_detail"]["details"]["field"], field,
            "{body}"
        );
    }
    app.call(
        Method::PATCH,
        &path,
        Some(MASTER),
        Some(json!({"scopes": "ledgers:read"})),
    )
    .await
    .assert_error(400, "GEN_MALFORMED_REQUEST");

    let (manager, _) = app.new_key("alice", &["api-keys:write", "ledgers:*"]).await;
    let reply = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{id}"),
            Some(&manager),
            Some(json!({"scopes": ["*:read"]})),
        )
        .await;
    reply.assert_error(403, "AUTH_SCOPE_ESCALATION");
    let allowed = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{id}"),
            Some(&manager),
            Some(json!({"scopes": ["ledgers:*"]})),
        )
        .await;
    assert_eq!(allowed.status, 200, "{}", allowed.json);
    let (bobs_manager, _) = app.new_key("bob", &["api-keys:*", "*:*"]).await;
    app.call(
        Method::PATCH,
        &format!("/api-keys/{id}"),
        Some(&bobs_manager),
        Some(json!({"name": "x"})),
    )
    .await
    .assert_error(404, "APIKEY_NOT_FOUND");
}

async fn a_revoked_key_cannot_be_updated_or_rotated(db: TestDatabase) {
    let app = start(db).await;
    let (_, id) = app.new_key("alice", &["ledgers:read"]).await;
    let path = format!("/api-keys/{id}?owner=alice");
    assert_eq!(
        app.call(Method::DELETE, &path, Some(MASTER), None)
            .await
            .status,
        204
    );
    app.call(
        Method::PATCH,
        &path,
        Some(MASTER),
        Some(json!({"name": "x"})),
    )
    .await
    .assert_error(409, "APIKEY_REVOKED");
    app.call(
        Method::POST,
        &format!("/api-keys/{id}/rotate?owner=alice"),
        Some(MASTER),
        None,
    )
    .await
    .assert_error(409, "APIKEY_REVOKED");
}

async fn a_rotation_makes_a_like_key_and_ends_the_old_one(db: TestDatabase) {
    let app = start(db).await;
    let created = app
        .create_key(MASTER, "alice", &["api-keys:read", "ledgers:read"])
        .await;
    let (old_key, old_id) = (text(&created["key"]), text(&created["api_key_id"]));
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(&old_key), None)
            .await
            .status,
        200
    );

    let reply = app
        .call(
            Method::POST,
            &format!("/api-keys/{old_id}/rotate?owner=alice"),
            Some(MASTER),
            None,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.json);
    let rotated = reply.json;
    assert_eq!(rotated["rotated_from"], old_id.as_str());
    assert_ne!(rotated["api_key_id"], old_id.as_str());
    assert_ne!(rotated["key"], old_key.as_str());
    assert_eq!(text(&rotated["key"]).len(), 44);
    for field in ["name", "owner_id", "scopes", "expires_at"] {
        assert_eq!(rotated[field], created[field], "{field} carries over");
    }
    assert_eq!(rotated["last_used_at"], "0001-01-01T00:00:00Z");
    let new_key = text(&rotated["key"]);
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(&new_key), None)
            .await
            .status,
        200
    );
    app.call(Method::GET, "/api-keys", Some(&old_key), None)
        .await
        .assert_error(401, "AUTH_EXPIRED_API_KEY");
    let read = app
        .call(
            Method::GET,
            &format!("/api-keys/{}?owner=alice", text(&rotated["api_key_id"])),
            Some(MASTER),
            None,
        )
        .await;
    assert_eq!(
        read.json["rotated_from"],
        old_id.as_str(),
        "the link is stored"
    );
}

async fn the_old_key_works_through_the_grace_period_only(db: TestDatabase) {
    let app = start(db).await;
    let (old_key, old_id) = app.new_key("alice", &["api-keys:read"]).await;
    let reply = app
        .call(
            Method::POST,
            &format!("/api-keys/{old_id}/rotate?owner=alice"),
            Some(MASTER),
            Some(json!({"grace_period_seconds": 2})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.json);
    let new_key = text(&reply.json["key"]);
    for key in [&old_key, &new_key] {
        assert_eq!(
            app.call(Method::GET, "/api-keys", Some(key), None)
                .await
                .status,
            200,
            "inside the grace period"
        );
    }
    app.clock.advance(chrono::Duration::seconds(3));
    app.call(Method::GET, "/api-keys", Some(&old_key), None)
        .await
        .assert_error(401, "AUTH_EXPIRED_API_KEY");
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(&new_key), None)
            .await
            .status,
        200
    );
}

async fn a_rotation_is_validated_and_confined_to_the_caller(db: TestDatabase) {
    let app = start(db).await;
    let (_, id) = app.new_key("alice", &["ledgers:*"]).await;
    let path = format!("/api-keys/{id}/rotate?owner=alice");
    for grace in [json!(-1), json!(86_401), json!("60")] {
        let reply = app
            .call(
                Method::POST,
                &path,
                Some(MASTER),
                Some(json!({"grace_period_seconds": grace})),
            )
            .await;
        assert_eq!(reply.status, 400, "{grace}: {}", reply.json);
    }
    let bad_json = TestRequest::post()
        .uri(&path)
        .insert_header(("X-Blnk-Key", MASTER))
        .set_payload("{not json");
    app.send(bad_json)
        .await
        .assert_error(400, "GEN_MALFORMED_REQUEST");

    let (narrow, _) = app
        .new_key("alice", &["api-keys:write", "ledgers:read"])
        .await;
    app.call(
        Method::POST,
        &format!("/api-keys/{id}/rotate"),
        Some(&narrow),
        None,
    )
    .await
    .assert_error(403, "AUTH_SCOPE_ESCALATION");
    let (broad, _) = app.new_key("alice", &["api-keys:write", "ledgers:*"]).await;
    let reply = app
        .call(
            Method::POST,
            &format!("/api-keys/{id}/rotate"),
            Some(&broad),
            None,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.json);
    let (bobs, _) = app.new_key("bob", &["*:*"]).await;
    app.call(
        Method::POST,
        &format!("/api-keys/{id}/rotate"),
        Some(&bobs),
        None,
    )
    .await
    .assert_error(404, "APIKEY_NOT_FOUND");
}

async fn the_audit_trail_records_every_change_in_order(db: TestDatabase) {
    let app = start(db).await;
    let (manager, manager_id) = app.new_key("alice", &["api-keys:*", "ledgers:*"]).await;
    let created = app.create_key(&manager, "alice", &["ledgers:read"]).await;
    let (plain, id) = (text(&created["key"]), text(&created["api_key_id"]));
    let patch = json!({"name": "Renamed", "scopes": ["ledgers:*"]});
    assert_eq!(
        app.call(
            Method::PATCH,
            &format!("/api-keys/{id}"),
            Some(&manager),
            Some(patch)
        )
        .await
        .status,
        200
    );
    let rotated = app
        .call(
            Method::POST,
            &format!("/api-keys/{id}/rotate?owner=alice"),
            Some(MASTER),
            Some(json!({"grace_period_seconds": 60})),
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.json);
    let new_id = text(&rotated.json["api_key_id"]);
    assert_eq!(app.revoke(&id, "alice").await.status, 204);

    let reply = app
        .call(
            Method::GET,
            &format!("/api-keys/{id}/events"),
            Some(&manager),
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let events = reply.json.as_array().expect("an array").clone();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["created", "updated", "rotated", "revoked"]);
    let actors: Vec<&str> = events
        .iter()
        .map(|e| e["actor"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        actors,
        [manager_id.as_str(), manager_id.as_str(), "master", "master"]
    );
    assert_eq!(
        events[1]["details"]["name"],
        json!({"from": "Service Account", "to": "Renamed"})
    );
    assert_eq!(
        events[1]["details"]["scopes"],
        json!({"from": ["ledgers:read"], "to": ["ledgers:*"]})
    );
    assert_eq!(
        events[2]["details"],
        json!({"rotated_to": new_id, "grace_period_seconds": 60})
    );
    let times: Vec<String> = events.iter().map(|e| text(&e["at"])).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");
    assert!(
        !reply.json.to_string().contains(&plain),
        "no secret in the trail"
    );

    let successor = app
        .call(
            Method::GET,
            &format!("/api-keys/{new_id}/events?owner=alice"),
            Some(MASTER),
            None,
        )
        .await;
    assert_eq!(successor.json[0]["kind"], "created");
    assert_eq!(successor.json[0]["details"], json!({"rotated_from": id}));
    let (bobs, _) = app.new_key("bob", &["api-keys:read"]).await;
    app.call(
        Method::GET,
        &format!("/api-keys/{id}/events"),
        Some(&bobs),
        None,
    )
    .await
    .assert_error(404, "APIKEY_NOT_FOUND");
}

async fn forward_auth_decides_like_the_guard(db: TestDatabase) {
    let app = start(db).await;
    let (reader, reader_id) = app.new_key("alice", &["ledgers:read", "balances:*"]).await;
    for traefik in [false, true] {
        let allowed = app
            .send(forward(
                "GET",
                "/ledgers/ldg_1?page=2",
                Some(&reader),
                traefik,
            ))
            .await;
        assert_eq!(allowed.status, 200, "{}", allowed.json);
        let header = |name: &str| {
            allowed
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(header("x-keygate-key-id"), Some(reader_id.clone()));
        assert_eq!(header("x-keygate-owner-id"), Some("alice".to_owned()));
        assert_eq!(
            header("x-keygate-scopes"),
            Some("ledgers:read balances:*".to_owned())
        );

        app.send(forward("POST", "/ledgers", Some(&reader), traefik))
            .await
            .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
        app.send(forward("GET", "/transactions/t1", Some(&reader), traefik))
            .await
            .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
        app.send(forward("GET", "/elsewhere", Some(&reader), traefik))
            .await
            .assert_error(403, "AUTH_UNKNOWN_RESOURCE");
        app.send(forward("GET", "/ledgers", None, traefik))
            .await
            .assert_error(401, "AUTH_MISSING_API_KEY");
        let master = app
            .send(forward("DELETE", "/anything/at/all", Some(MASTER), traefik))
            .await;
        assert_eq!(master.status, 200);
    }
    let bearer = app
        .send(
            TestRequest::post()
                .uri("/forward-auth")
                .insert_header(("X-Original-Method", "DELETE"))
                .insert_header(("X-Original-URI", "/balances/b1"))
                .insert_header(("Authorization", format!("Bearer {reader}"))),
        )
        .await;
    assert_eq!(
        bearer.status, 200,
        "any method reaches forward-auth; a bearer key works"
    );

    // The identity headers follow a change of the key's scopes at once.
    let narrowed = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{reader_id}?owner=alice"),
            Some(MASTER),
            Some(json!({"scopes": ["ledgers:read"]})),
        )
        .await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.json);
    let allowed = app
        .send(forward("GET", "/ledgers/ldg_1", Some(&reader), false))
        .await;
    assert_eq!(allowed.status, 200, "{}", allowed.json);
    assert_eq!(
        allowed
            .headers
            .get("x-keygate-scopes")
            .and_then(|v| v.to_str().ok()),
        Some("ledgers:read")
    );

    let id = reader_id;
    assert_eq!(app.revoke(&id, "alice").await.status, 204);
    app.send(forward("GET", "/ledgers", Some(&reader), false))
        .await
        .assert_error(401, "AUTH_EXPIRED_API_KEY");
}

async fn forward_auth_needs_the_original_request(db: TestDatabase) {
    let app = start(db).await;
    let only_method = TestRequest::get()
        .uri("/forward-auth")
        .insert_header(("X-Original-Method", "GET"))
        .insert_header(("X-Blnk-Key", MASTER));
    app.send(only_method)
        .await
        .assert_error(400, "GEN_MALFORMED_REQUEST");
    let only_uri = TestRequest::get()
        .uri("/forward-auth")
        .insert_header(("X-Original-URI", "/ledgers"))
        .insert_header(("X-Blnk-Key", MASTER));
    app.send(only_uri)
        .await
        .assert_error(400, "GEN_MALFORMED_REQUEST");
}

async fn a_key_changes_only_keys_its_scopes_cover(db: TestDatabase) {
    let app = start(db).await;
    let (writer, _) = app.new_key("alice", &["api-keys:write"]).await;
    let (_, wide_id) = app.new_key("alice", &["*:*"]).await;
    let mut soon = support::key_request("alice", &["*:*"]);
    soon["expires_at"] =
        json!((chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339());
    let expired = app
        .call(Method::POST, "/api-keys", Some(MASTER), Some(soon))
        .await;
    assert_eq!(expired.status, 201, "{}", expired.json);
    let (expired_key, expired_id) = (
        text(&expired.json["key"]),
        text(&expired.json["api_key_id"]),
    );
    app.clock.advance(chrono::Duration::seconds(2));
    app.send(forward("GET", "/ledgers", Some(&expired_key), false))
        .await
        .assert_error(401, "AUTH_EXPIRED_API_KEY");

    let far = support::next_year();
    for (id, body) in [
        (&wide_id, json!({"expires_at": far})),
        (&wide_id, json!({"name": "renamed"})),
        (&expired_id, json!({"expires_at": far})),
    ] {
        let reply = app
            .call(
                Method::PATCH,
                &format!("/api-keys/{id}"),
                Some(&writer),
                Some(body.clone()),
            )
            .await;
        reply.assert_error(403, "AUTH_SCOPE_ESCALATION");
        assert_eq!(
            reply.json["error_detail"]["details"]["scope"], "*:*",
            "{body}"
        );
    }
    app.send(forward("GET", "/ledgers", Some(&expired_key), false))
        .await
        .assert_error(401, "AUTH_EXPIRED_API_KEY");
    let events = app
        .call(
            Method::GET,
            &format!("/api-keys/{wide_id}/events?owner=alice"),
            Some(MASTER),
            None,
        )
        .await;
    assert_eq!(
        events.json.as_array().map(Vec::len),
        Some(1),
        "only created: {}",
        events.json
    );

    let (_, narrow_id) = app.new_key("alice", &["api-keys:write"]).await;
    let allowed = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{narrow_id}"),
            Some(&writer),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(allowed.status, 200, "a key it covers: {}", allowed.json);
    let revived = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{expired_id}?owner=alice"),
            Some(MASTER),
            Some(json!({"expires_at": far})),
        )
        .await;
    assert_eq!(revived.status, 200, "the master key may: {}", revived.json);
}

async fn a_rotated_out_key_keeps_the_end_of_its_grace_period(db: TestDatabase) {
    let app = start(db).await;
    let (manager, _) = app.new_key("alice", &["*:*"]).await;
    let (old_key, old_id) = app.new_key("alice", &["ledgers:read"]).await;
    let rotated = app
        .call(
            Method::POST,
            &format!("/api-keys/{old_id}/rotate?owner=alice"),
            Some(MASTER),
            Some(json!({"grace_period_seconds": 60})),
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.json);
    let far = support::next_year();
    for by in [MASTER, manager.as_str()] {
        app.call(
            Method::PATCH,
            &format!("/api-keys/{old_id}?owner=alice"),
            Some(by),
            Some(json!({"expires_at": far})),
        )
        .await
        .assert_error(409, "APIKEY_ROTATED");
    }
    let renamed = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{old_id}?owner=alice"),
            Some(MASTER),
            Some(json!({"name": "old one"})),
        )
        .await;
    assert_eq!(
        renamed.status, 200,
        "other fields may change: {}",
        renamed.json
    );
    let expires_at = chrono::DateTime::parse_from_rfc3339(&text(&renamed.json["expires_at"]))
        .expect("a timestamp");
    assert!(expires_at < chrono::Utc::now() + chrono::Duration::seconds(61));
    assert_eq!(
        app.send(forward("GET", "/ledgers", Some(&old_key), false))
            .await
            .status,
        200,
        "still inside its grace period"
    );
}

/// Every spelling reported to reach another resource through a gateway that passes the
/// path on and an upstream that normalises it.
const DOT_SEGMENT_BYPASSES: [&str; 15] = [
    "/ledgers/../balances/b1",
    "/ledgers/%2e%2e/balances/b1",
    "/ledgers/%2E%2E/balances/b1",
    "/ledgers/.%2e/balances/b1",
    "/ledgers/..;/balances/b1",
    "/ledgers/..%2fbalances/b1",
    "/ledgers/..%2Fbalances/b1",
    "/ledgers/..\\balances/b1",
    "/ledgers/x/../../balances/b1",
    "/ledgers//../balances/b1",
    "/ledgers/%252e%252e/balances/b1",
    "/ledgers#/../balances/b1",
    "/ledgers/..%20/balances/b1",
    "/ledgers/%EF%BC%8E%EF%BC%8E/balances/b1",
    "/ledgers?_method=DELETE",
];

async fn forward_auth_judges_the_path_the_upstream_will_see(db: TestDatabase) {
    let app = start(db).await;
    let (reader, _) = app.new_key("alice", &["ledgers:read"]).await;
    for traefik in [false, true] {
        let header = if traefik {
            "X-Forwarded-Uri"
        } else {
            "X-Original-URI"
        };
        for uri in DOT_SEGMENT_BYPASSES {
            let reply = app.send(forward("GET", uri, Some(&reader), traefik)).await;
            reply.assert_error(400, "GEN_VALIDATION_ERROR");
            assert_eq!(
                reply.json["error_detail"]["details"]["field"], header,
                "{uri}"
            );
        }
        for (uri, status) in [
            ("/ledgers/x/../ldg_1", 200),
            ("/%6Cedgers/ldg_1", 200),
            ("/ledgers/./ldg_1?next=/../balances", 200),
            ("/%62alances/b1", 403),
            ("/ledgers/a%00b", 400),
            ("ledgers", 400),
        ] {
            let reply = app.send(forward("GET", uri, Some(&reader), traefik)).await;
            assert_eq!(reply.status, status, "{uri}: {}", reply.json);
        }
    }
    let reply = app
        .call(Method::GET, "/api-keys/../ledgers", Some(&reader), None)
        .await;
    assert_ne!(reply.status, 200, "{}", reply.json);
}

async fn forward_auth_refuses_two_names_for_the_original_request(db: TestDatabase) {
    let app = start(db).await;
    let (reader, _) = app.new_key("alice", &["ledgers:read"]).await;
    let forged = TestRequest::get()
        .uri("/forward-auth")
        .insert_header(("X-Original-Method", "GET"))
        .insert_header(("X-Original-URI", "/ledgers"))
        .insert_header(("X-Forwarded-Method", "DELETE"))
        .insert_header(("X-Forwarded-Uri", "/balances/b1"))
        .insert_header(("X-Blnk-Key", reader.as_str()));
    let reply = app.send(forged).await;
    reply.assert_error(400, "GEN_VALIDATION_ERROR");
    let twice = TestRequest::get()
        .uri("/forward-auth")
        .insert_header(("X-Forwarded-Method", "GET"))
        .append_header(("X-Forwarded-Uri", "/ledgers"))
        .append_header(("X-Forwarded-Uri", "/balances/b1"))
        .insert_header(("X-Blnk-Key", reader.as_str()));
    let reply = app.send(twice).await;
    reply.assert_error(400, "GEN_VALIDATION_ERROR");
    assert_eq!(
        reply.json["error_detail"]["details"]["field"],
        "X-Forwarded-Uri"
    );
}

async fn a_rotated_out_key_cannot_be_rotated_again(db: TestDatabase) {
    let app = start(db).await;
    let (_, old_id) = app.new_key("alice", &["ledgers:read"]).await;
    let path = format!("/api-keys/{old_id}/rotate?owner=alice");
    let body = json!({"grace_period_seconds": 60});
    let first = app
        .call(Method::POST, &path, Some(MASTER), Some(body.clone()))
        .await;
    assert_eq!(first.status, 201, "{}", first.json);
    app.call(Method::POST, &path, Some(MASTER), Some(body))
        .await
        .assert_error(409, "APIKEY_ROTATED");
    let listed = app
        .call(Method::GET, "/api-keys?owner=alice", Some(MASTER), None)
        .await;
    assert_eq!(
        listed.json.as_array().map(Vec::len),
        Some(2),
        "one successor only: {}",
        listed.json
    );
}

async fn an_update_is_validated_before_the_owner_rules(db: TestDatabase) {
    let app = start(db).await;
    let (_, id) = app.new_key("alice", &["ledgers:read"]).await;
    let reply = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{id}"),
            Some(MASTER),
            Some(json!({"scopes": ["ledgers:update"]})),
        )
        .await;
    reply.assert_error(400, "GEN_VALIDATION_ERROR");
    let reply = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{id}"),
            Some(MASTER),
            Some(json!({"name": "fine"})),
        )
        .await;
    reply.assert_error(400, "APIKEY_OWNER_REQUIRED");
}
