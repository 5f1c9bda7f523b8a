//! Metering on one instance: rate limits and credits exact, refusals by scope free,
//! refills without requests, top-ups and removal, metering confined to what the caller
//! has, the master key unmetered, `/verify`, and usage that survives a restart; on
//! SQLite and on PostgreSQL.

use crate::support;

use std::time::Duration;

use actix_web::http::Method;
use keygate_storage::test_support::TestDatabase;
use serde_json::{Value, json};
use support::{MASTER, forward, key_request, start, start_with, text};

on_both_backends!(
    a_rate_limit_admits_exactly_its_limit_and_says_so,
    credits_are_spent_exactly_and_refusals_by_scope_are_free,
    a_refill_arrives_without_any_request,
    an_update_tops_up_changes_and_removes_metering,
    metering_is_validated_field_by_field,
    a_metered_key_cannot_loosen_metering,
    the_master_key_is_never_metered,
    verify_answers_as_the_guard_would,
    usage_is_counted_by_outcome_and_survives_a_restart,
    a_rotation_shares_credits_and_keeps_the_rate_limit,
    keys_a_metered_key_mints_share_its_window,
    a_key_out_of_credits_costs_no_write_per_request,
);

/// A creation body for `owner` with `scopes` and the metering fields of `extra`.
fn metered(owner: &str, scopes: &[&str], extra: Value) -> Value {
    let mut body = key_request(owner, scopes);
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

fn header(reply: &support::Reply, name: &str) -> Option<String> {
    reply
        .headers
        .get(name)
        .map(|value| value.to_str().expect("text").to_owned())
}

macro_rules! create {
    ($app:expr, $by:expr, $body:expr) => {{
        let reply = $app
            .call(Method::POST, "/api-keys", Some($by), Some($body))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.json);
        (
            text(&reply.json["key"]),
            text(&reply.json["api_key_id"]),
            reply.json,
        )
    }};
}

macro_rules! ask {
    ($app:expr, $method:expr, $path:expr, $key:expr) => {
        $app.send(forward($method, $path, Some($key), false)).await
    };
}

macro_rules! read_key {
    ($app:expr, $id:expr) => {{
        let reply = $app
            .call(
                Method::GET,
                &format!("/api-keys/{}?owner=alice", $id),
                Some(MASTER),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        reply.json
    }};
}

async fn a_rate_limit_admits_exactly_its_limit_and_says_so(db: TestDatabase) {
    let app = start(db).await;
    let (key, _, created) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["ledgers:read"],
            json!({"ratelimit": {"limit": 5, "window_ms": 60000}, "credits": {"remaining": 100}})
        )
    );
    assert_eq!(
        created["ratelimit"],
        json!({"limit": 5, "window_ms": 60000})
    );
    for remaining in (0..5).rev() {
        let reply = ask!(app, "GET", "/ledgers", &key);
        assert_eq!(reply.status, 200, "{}", reply.json);
        assert_eq!(header(&reply, "ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(
            header(&reply, "ratelimit-remaining"),
            Some(remaining.to_string())
        );
        let reset: u64 = header(&reply, "ratelimit-reset")
            .and_then(|s| s.parse().ok())
            .expect("a reset");
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let refused = ask!(app, "GET", "/ledgers", &key);
    refused.assert_error(429, "AUTH_RATE_LIMITED");
    let retry: u64 = header(&refused, "retry-after")
        .and_then(|s| s.parse().ok())
        .expect("Retry-After");
    assert!((1..=12).contains(&retry), "one more every 12 s: {retry}");
    assert_eq!(
        header(&refused, "ratelimit-remaining").as_deref(),
        Some("0")
    );

    // A refusal by the rate limit costs no credit.
    let id = text(&created["api_key_id"]);
    assert_eq!(read_key!(app, id)["credits"]["remaining"], 95);

    // The in-process guard meters the service's own API alike.
    let (reader, _, _) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["api-keys:read"],
            json!({"ratelimit": {"limit": 2, "window_ms": 60000}})
        )
    );
    for remaining in ["1", "0"] {
        let reply = app
            .call(Method::GET, "/api-keys", Some(&reader), None)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        assert_eq!(
            header(&reply, "ratelimit-remaining").as_deref(),
            Some(remaining)
        );
    }
    app.call(Method::GET, "/api-keys", Some(&reader), None)
        .await
        .assert_error(429, "AUTH_RATE_LIMITED");
}

async fn credits_are_spent_exactly_and_refusals_by_scope_are_free(db: TestDatabase) {
    let app = start(db).await;
    let (key, id, created) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["ledgers:read"],
            json!({"credits": {"remaining": 3}})
        )
    );
    assert_eq!(created["credits"], json!({"remaining": 3}));
    assert!(
        created.get("ratelimit").is_none(),
        "only what is set is shown"
    );
    for _ in 0..2 {
        ask!(app, "POST", "/ledgers", &key).assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
    }
    for left in [2, 1, 0] {
        let reply = ask!(app, "GET", "/ledgers/l1", &key);
        assert_eq!(reply.status, 200, "{}", reply.json);
        assert!(header(&reply, "ratelimit-limit").is_none(), "no rate limit");
        assert_eq!(read_key!(app, id)["credits"]["remaining"], left, "exact");
    }
    let refused = ask!(app, "GET", "/ledgers", &key);
    refused.assert_error(429, "AUTH_USAGE_EXCEEDED");
    assert!(
        header(&refused, "retry-after").is_none(),
        "no refill is due"
    );

    // A key without metering keeps Blnk's shape exactly.
    let (_, _, plain) = create!(app, MASTER, key_request("alice", &["ledgers:read"]));
    assert!(plain.get("credits").is_none() && plain.get("ratelimit").is_none());
}

async fn a_refill_arrives_without_any_request(db: TestDatabase) {
    let app = start_with(db, |settings| settings.metering.refill_poll_ms = 100).await;
    let (key, id, _) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["ledgers:read"],
            json!({"credits": {"remaining": 1, "refill": {"amount": 5, "interval": "daily"}}})
        )
    );
    assert_eq!(ask!(app, "GET", "/ledgers", &key).status, 200);
    let refused = ask!(app, "GET", "/ledgers", &key);
    refused.assert_error(429, "AUTH_USAGE_EXCEEDED");
    let now = app.state.clock().now();
    let midnight = keygate_core::RefillInterval::Daily.next_after(now);
    let retry: i64 = header(&refused, "retry-after")
        .and_then(|s| s.parse().ok())
        .expect("Retry-After until the refill");
    assert!(
        (retry - (midnight - now).num_seconds()).abs() <= 2,
        "{retry} s to midnight"
    );

    // Past midnight, the pool is refilled in the database with no request at all.
    app.clock
        .advance(midnight - now + chrono::Duration::seconds(1));
    let store = app.state.guard().store();
    let key_id = keygate_core::ApiKeyId::new(id.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = store
            .get(&key_id, "alice")
            .expect("read")
            .and_then(|key| key.credits);
        if stored.as_ref().map(|a| a.credits.remaining) == Some(5) {
            assert_eq!(
                stored.and_then(|a| a.refill_at),
                Some(midnight + chrono::Duration::days(1))
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refill: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read_key!(app, id)["credits"]["remaining"], 5);
    assert_eq!(ask!(app, "GET", "/ledgers", &key).status, 200);
    assert_eq!(read_key!(app, id)["credits"]["remaining"], 4);
}

async fn an_update_tops_up_changes_and_removes_metering(db: TestDatabase) {
    let app = start(db).await;
    let (key, id, _) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["ledgers:read"],
            json!({"credits": {"remaining": 1}})
        )
    );
    let path = format!("/api-keys/{id}?owner=alice");
    macro_rules! patch {
        ($body:expr) => {
            app.call(Method::PATCH, &path, Some(MASTER), Some($body))
                .await
        };
    }
    assert_eq!(ask!(app, "GET", "/ledgers", &key).status, 200);
    ask!(app, "GET", "/ledgers", &key).assert_error(429, "AUTH_USAGE_EXCEEDED");

    let topped = patch!(json!({"credits": {"remaining": 2}}));
    assert_eq!(topped.status, 200, "{}", topped.json);
    assert_eq!(topped.json["credits"], json!({"remaining": 2}));
    for _ in 0..2 {
        assert_eq!(ask!(app, "GET", "/ledgers", &key).status, 200);
    }
    ask!(app, "GET", "/ledgers", &key).assert_error(429, "AUTH_USAGE_EXCEEDED");

    let limited = patch!(json!({"credits": null, "ratelimit": {"limit": 1, "window_ms": 60000}}));
    assert_eq!(limited.status, 200, "{}", limited.json);
    assert!(limited.json.get("credits").is_none(), "{}", limited.json);
    assert_eq!(ask!(app, "GET", "/ledgers", &key).status, 200);
    ask!(app, "GET", "/ledgers", &key).assert_error(429, "AUTH_RATE_LIMITED");

    let unlimited = patch!(json!({"ratelimit": null}));
    assert_eq!(unlimited.status, 200, "{}", unlimited.json);
    assert!(
        unlimited.json.get("ratelimit").is_none(),
        "{}",
        unlimited.json
    );
    for _ in 0..5 {
        assert_eq!(ask!(app, "GET", "/ledgers", &key).status, 200);
    }
    // A name-only update leaves metering alone.
    let renamed = patch!(json!({"name": "renamed"}));
    assert_eq!(renamed.status, 200, "{}", renamed.json);

    let events = app
        .call(
            Method::GET,
            &format!("/api-keys/{id}/events?owner=alice"),
            Some(MASTER),
            None,
        )
        .await;
    let updates: Vec<&Value> = events
        .json
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["kind"] == "updated")
        .map(|event| &event["details"])
        .collect();
    assert_eq!(
        updates[..3],
        [
            &json!({"credits": {"from": {"remaining": 0}, "to": {"remaining": 2}}}),
            &json!({
                "credits": {"from": {"remaining": 0}, "to": null},
                "ratelimit": {"from": null, "to": {"limit": 1, "window_ms": 60000}}
            }),
            &json!({"ratelimit": {"from": {"limit": 1, "window_ms": 60000}, "to": null}}),
        ]
    );
}

async fn metering_is_validated_field_by_field(db: TestDatabase) {
    let app = start(db).await;
    let cases = [
        (
            json!({"ratelimit": {"limit": 0, "window_ms": 60000}}),
            "ratelimit.limit",
        ),
        (
            json!({"ratelimit": {"limit": 10, "window_ms": 10}}),
            "ratelimit.window_ms",
        ),
        (json!({"ratelimit": "10/m"}), "ratelimit"),
        (json!({"credits": {"remaining": -1}}), "credits.remaining"),
        (
            json!({"credits": {"remaining": 1, "refill": {"amount": 1, "interval": "hourly"}}}),
            "credits.refill.interval",
        ),
        (
            json!({"credits": {"remaining": 1, "refill": {"amount": 0, "interval": "daily"}}}),
            "credits.refill.amount",
        ),
    ];
    for (extra, field) in &cases {
        let reply = app
            .call(
                Method::POST,
                "/api-keys",
                Some(MASTER),
                Some(metered("alice", &["ledgers:read"], extra.clone())),
            )
            .await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(reply.json["error_detail"]["details"]["field"], *field);
    }
    let (_, id, _) = create!(app, MASTER, key_request("alice", &["ledgers:read"]));
    for (extra, field) in &cases {
        let reply = app
            .call(
                Method::PATCH,
                &format!("/api-keys/{id}?owner=alice"),
                Some(MASTER),
                Some(extra.clone()),
            )
            .await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(reply.json["error_detail"]["details"]["field"], *field);
    }
    assert!(
        read_key!(app, id).get("ratelimit").is_none(),
        "nothing of a refused update is kept"
    );
}

async fn a_metered_key_cannot_loosen_metering(db: TestDatabase) {
    let app = start(db).await;
    let (manager, manager_id, _) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["api-keys:*", "ledgers:read"],
            json!({"ratelimit": {"limit": 50, "window_ms": 60000}, "credits": {"remaining": 40}})
        )
    );
    let own = format!("/api-keys/{manager_id}");
    for (body, field) in [
        (json!({"ratelimit": null}), "ratelimit"),
        (
            json!({"ratelimit": {"limit": 51, "window_ms": 60000}}),
            "ratelimit",
        ),
        (
            json!({"ratelimit": {"limit": 50, "window_ms": 30000}}),
            "ratelimit",
        ),
        (json!({"credits": {"remaining": 1000000}}), "credits"),
        (json!({"credits": null}), "credits"),
    ] {
        let reply = app
            .call(Method::PATCH, &own, Some(&manager), Some(body.clone()))
            .await;
        reply.assert_error(403, "AUTH_SCOPE_ESCALATION");
        assert_eq!(
            reply.json["error_detail"]["details"]["field"], field,
            "{body}"
        );
    }
    let tighter = app
        .call(
            Method::PATCH,
            &own,
            Some(&manager),
            Some(json!({"ratelimit": {"limit": 20, "window_ms": 60000}})),
        )
        .await;
    assert_eq!(tighter.status, 200, "{}", tighter.json);

    // Keys it creates are limited like it, and spend its credits.
    app.call(
        Method::POST,
        "/api-keys",
        Some(&manager),
        Some(metered(
            "alice",
            &["ledgers:read"],
            json!({"credits": {"remaining": 5}}),
        )),
    )
    .await
    .assert_error(403, "AUTH_SCOPE_ESCALATION");
    let (child, child_id, created) =
        create!(app, &manager, key_request("alice", &["ledgers:read"]));
    assert_eq!(
        created["ratelimit"],
        json!({"limit": 20, "window_ms": 60000})
    );
    assert_eq!(ask!(app, "GET", "/ledgers", &child).status, 200);
    let parent_left = read_key!(app, manager_id)["credits"]["remaining"].clone();
    assert_eq!(
        read_key!(app, child_id)["credits"]["remaining"],
        parent_left
    );

    // A key whose scopes do not cover the target may not meter it at all.
    let (narrow, _, _) = create!(app, MASTER, key_request("alice", &["api-keys:write"]));
    app.call(
        Method::PATCH,
        &format!("/api-keys/{child_id}"),
        Some(&narrow),
        Some(json!({"ratelimit": null})),
    )
    .await
    .assert_error(403, "AUTH_SCOPE_ESCALATION");
}

async fn the_master_key_is_never_metered(db: TestDatabase) {
    let app = start(db).await;
    for _ in 0..30 {
        let reply = ask!(app, "DELETE", "/ledgers/x", MASTER);
        assert_eq!(reply.status, 200, "{}", reply.json);
        assert!(header(&reply, "ratelimit-limit").is_none());
    }
    let metrics = app.scrape().await;
    assert!(
        metrics.contains("keygate_metering_decisions_total{outcome=\"allowed\"} 0"),
        "{metrics}"
    );
}

async fn verify_answers_as_the_guard_would(db: TestDatabase) {
    let app = start_with(db, |settings| {
        settings.throttle.failures_per_minute = 3;
        settings.throttle.burst = 3;
    })
    .await;
    let (app_key, _, _) = create!(app, MASTER, key_request("alice", &["verify:write"]));
    let (key, id, _) = create!(
        app,
        MASTER,
        metered(
            "bob",
            &["ledgers:read"],
            json!({"ratelimit": {"limit": 3, "window_ms": 60000}, "credits": {"remaining": 10}})
        )
    );
    macro_rules! verify {
        ($body:expr) => {
            app.call(Method::POST, "/verify", Some(&app_key), Some($body))
                .await
        };
    }

    let valid = verify!(json!({"key": key, "resource": "ledgers", "action": "read", "cost": 4}));
    assert_eq!(valid.json["valid"], true, "{}", valid.json);
    assert_eq!(valid.json["valid"], true);
    assert_eq!(valid.json["code"], "VALID");
    assert_eq!(valid.json["api_key_id"], id.as_str());
    assert_eq!(valid.json["owner_id"], "bob");
    assert_eq!(valid.json["scopes"], json!(["ledgers:read"]));
    assert_eq!(valid.json["ratelimit"]["limit"], 3);
    assert_eq!(valid.json["ratelimit"]["remaining"], 2);
    assert_eq!(
        valid.json["credits"],
        json!({"remaining": 6}),
        "cost 4 spent 4"
    );

    let denied = verify!(json!({"key": key, "method": "POST", "path": "/ledgers/x"}));
    assert_eq!(
        (denied.status, &denied.json["valid"], &denied.json["code"]),
        (200, &json!(false), &json!("AUTH_INSUFFICIENT_PERMISSIONS")),
        "{}",
        denied.json
    );
    assert_eq!(denied.json["owner_id"], "bob");

    let by_path = verify!(json!({"key": key, "method": "GET", "path": "/ledgers/x?y=1"}));
    assert_eq!(by_path.json["valid"], true, "{}", by_path.json);
    let too_costly =
        verify!(json!({"key": key, "resource": "ledgers", "action": "read", "cost": 7}));
    assert_eq!(
        too_costly.json["code"], "AUTH_USAGE_EXCEEDED",
        "{}",
        too_costly.json
    );
    let limited = verify!(json!({"key": key, "resource": "ledgers", "action": "read"}));
    assert_eq!(
        limited.json["code"], "AUTH_RATE_LIMITED",
        "{}",
        limited.json
    );
    assert_eq!(limited.json["ratelimit"]["remaining"], 0);

    let unknown = verify!(
        json!({"key": "not-a-key-of-anyone-at-all-1234", "resource": "ledgers", "action": "read"})
    );
    assert_eq!(unknown.json["valid"], false);
    assert_eq!(unknown.json["code"], "AUTH_INVALID_API_KEY");
    assert!(unknown.json.get("owner_id").is_none() && unknown.json.get("scopes").is_none());

    for (body, field) in [
        (json!({"key": key}), "resource"),
        (
            json!({"key": key, "resource": "ledgers", "action": "read", "method": "GET", "path": "/"}),
            "resource",
        ),
        (
            json!({"key": key, "resource": "ledgers", "action": "*"}),
            "action",
        ),
        (
            json!({"key": key, "method": "GET", "path": "/a/%2e%2e/ledgers"}),
            "path",
        ),
        (
            json!({"key": key, "resource": "ledgers", "action": "read", "cost": 0}),
            "cost",
        ),
    ] {
        let reply = verify!(body);
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(reply.json["error_detail"]["details"]["field"], field);
    }
    verify!(json!({"resource": "ledgers"})).assert_error(400, "GEN_MALFORMED_REQUEST");

    // Only the master key and keys with verify:write may ask.
    app.call(
        Method::POST,
        "/verify",
        Some(&key),
        Some(json!({"key": key, "resource": "ledgers", "action": "read"})),
    )
    .await
    .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");

    // Guessing through /verify spends the calling address's brute-force budget.
    let mut codes = Vec::new();
    for guess in 0..5 {
        let request = actix_web::test::TestRequest::post()
            .uri("/verify")
            .peer_addr("192.0.2.7:4000".parse().expect("an address"))
            .insert_header(("X-Blnk-Key", app_key.as_str()))
            .set_json(json!({
                "key": format!("guess-{guess}-0123456789abcdef"),
                "resource": "ledgers",
                "action": "read",
            }));
        let reply = app.send(request).await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        codes.push(text(&reply.json["code"]));
    }
    assert!(codes.contains(&"GEN_RATE_LIMITED".to_owned()), "{codes:?}");
}

async fn usage_is_counted_by_outcome_and_survives_a_restart(db: TestDatabase) {
    let mut app = start(db).await;
    let (key, id, _) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["ledgers:read"],
            json!({"ratelimit": {"limit": 4, "window_ms": 60000}, "credits": {"remaining": 3}})
        )
    );
    ask!(app, "POST", "/ledgers", &key).assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
    for _ in 0..3 {
        assert_eq!(ask!(app, "GET", "/ledgers", &key).status, 200);
    }
    ask!(app, "GET", "/ledgers", &key).assert_error(429, "AUTH_USAGE_EXCEEDED");
    ask!(app, "GET", "/ledgers", &key).assert_error(429, "AUTH_RATE_LIMITED");
    let expected = json!({"allowed": 3, "denied": 1, "rate_limited": 1, "usage_exceeded": 1});
    let usage_path = format!("/api-keys/{id}/usage?owner=alice");
    let totals = |reply: &support::Reply| {
        let buckets = reply.json.as_array().expect("buckets");
        assert_eq!(buckets.len(), 1, "one hour: {}", reply.json);
        let bucket = &buckets[0];
        json!({
            "allowed": bucket["allowed"], "denied": bucket["denied"],
            "rate_limited": bucket["rate_limited"], "usage_exceeded": bucket["usage_exceeded"],
        })
    };
    let hourly = app.call(Method::GET, &usage_path, Some(MASTER), None).await;
    assert_eq!(hourly.status, 200, "{}", hourly.json);
    assert_eq!(totals(&hourly), expected, "counted at once");
    let at = text(&hourly.json[0]["at"]);
    assert!(at.ends_with(":00:00Z"), "{at}");
    let metrics = app.scrape().await;
    for line in [
        "keygate_metering_decisions_total{outcome=\"allowed\"} 3",
        "keygate_metering_decisions_total{outcome=\"rate_limited\"} 1",
        "keygate_metering_decisions_total{outcome=\"usage_exceeded\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    app.state.guard().final_flush().await;
    let db = app.db.take().expect("the app owns its database");
    drop(app);
    let app = start(db).await;
    let daily = app
        .call(
            Method::GET,
            &format!("{usage_path}&granularity=day"),
            Some(MASTER),
            None,
        )
        .await;
    assert_eq!(daily.status, 200, "{}", daily.json);
    assert_eq!(totals(&daily), expected, "kept across a restart");
    assert!(text(&daily.json[0]["at"]).ends_with("T00:00:00Z"));

    for (query, field) in [
        ("granularity=minute", "granularity"),
        ("from=yesterday", "from"),
        ("from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z", "from"),
        ("from=2020-01-01T00:00:00Z&to=2030-01-01T00:00:00Z", "from"),
    ] {
        let reply = app
            .call(
                Method::GET,
                &format!("{usage_path}&{query}"),
                Some(MASTER),
                None,
            )
            .await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(
            reply.json["error_detail"]["details"]["field"], field,
            "{query}"
        );
    }
    let (bobs, _, _) = create!(app, MASTER, key_request("bob", &["api-keys:read"]));
    app.call(
        Method::GET,
        &format!("/api-keys/{id}/usage"),
        Some(&bobs),
        None,
    )
    .await
    .assert_error(404, "APIKEY_NOT_FOUND");
}

async fn a_rotation_shares_credits_and_keeps_the_rate_limit(db: TestDatabase) {
    let app = start(db).await;
    let (old, id, _) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["ledgers:read"],
            json!({"ratelimit": {"limit": 100, "window_ms": 60000}, "credits": {"remaining": 6}})
        )
    );
    assert_eq!(ask!(app, "GET", "/ledgers", &old).status, 200);
    let rotated = app
        .call(
            Method::POST,
            &format!("/api-keys/{id}/rotate?owner=alice"),
            Some(MASTER),
            Some(json!({"grace_period_seconds": 600})),
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.json);
    assert_eq!(
        rotated.json["ratelimit"],
        json!({"limit": 100, "window_ms": 60000})
    );
    assert_eq!(rotated.json["credits"]["remaining"], 5);
    let new = text(&rotated.json["key"]);
    let mut admitted = 0;
    for round in 0..10 {
        let key = if round % 2 == 0 { &old } else { &new };
        if ask!(app, "GET", "/ledgers", key).status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 5,
        "old and new together spend what the old key had"
    );

    // The rotated-out key's metering is its successor's: it is not changed alone.
    app.call(
        Method::PATCH,
        &format!("/api-keys/{id}?owner=alice"),
        Some(MASTER),
        Some(json!({"credits": {"remaining": 1000}})),
    )
    .await
    .assert_error(409, "APIKEY_ROTATED");
}

async fn keys_a_metered_key_mints_share_its_window(db: TestDatabase) {
    let app = start(db).await;
    let (parent, _, _) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["api-keys:*", "ledgers:read"],
            json!({"ratelimit": {"limit": 4, "window_ms": 60000}})
        )
    );
    // Creating the child is one of the parent's four requests.
    let (child, child_id, _) = create!(app, &parent, key_request("alice", &["ledgers:read"]));
    let mut admitted = 0;
    for _ in 0..6 {
        if ask!(app, "GET", "/ledgers", &child).status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "the child counts in its creator's window");
    ask!(app, "GET", "/ledgers", &parent).assert_error(429, "AUTH_RATE_LIMITED");

    // Nor can a metered key hand out a key metered less than itself by rotating one.
    let (_, unmetered_id, _) = create!(app, MASTER, key_request("alice", &["ledgers:read"]));
    let (rotator, _, _) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["api-keys:*", "ledgers:read"],
            json!({"ratelimit": {"limit": 100, "window_ms": 60000}})
        )
    );
    let refused = app
        .call(
            Method::POST,
            &format!("/api-keys/{unmetered_id}/rotate"),
            Some(&rotator),
            None,
        )
        .await;
    refused.assert_error(403, "AUTH_SCOPE_ESCALATION");
    assert_eq!(
        refused.json["error_detail"]["details"]["field"],
        "ratelimit"
    );

    // The master key may free a minted key from its creator's window.
    let freed = app
        .call(
            Method::PATCH,
            &format!("/api-keys/{child_id}?owner=alice"),
            Some(MASTER),
            Some(json!({"ratelimit": null})),
        )
        .await;
    assert_eq!(freed.status, 200, "{}", freed.json);
    assert_eq!(ask!(app, "GET", "/ledgers", &child).status, 200);
}

async fn a_key_out_of_credits_costs_no_write_per_request(db: TestDatabase) {
    let (wrap, counted) = support::CountingStore::observer();
    let app = support::start_observed(db, |_| {}, wrap).await;
    let store = counted.get().expect("the store is wrapped").clone();
    let (key, _, _) = create!(
        app,
        MASTER,
        metered(
            "alice",
            &["ledgers:read"],
            json!({"credits": {"remaining": 2}})
        )
    );
    assert_eq!(ask!(app, "GET", "/ledgers", &key).status, 200);
    assert_eq!(ask!(app, "GET", "/ledgers", &key).status, 200);
    for _ in 0..50 {
        ask!(app, "GET", "/ledgers", &key).assert_error(429, "AUTH_USAGE_EXCEEDED");
    }
    let takes = support::CountingStore::count(&store.credit_takes);
    assert!(takes <= 3, "{takes} takes for 52 requests");
}
