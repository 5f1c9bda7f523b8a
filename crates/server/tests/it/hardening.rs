//! The front door under hostile input, guessing and concurrency: no server error, no
//! panic, nothing lost, no one let in who does not belong.

use crate::support;

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Instant;

use actix_web::http::Method;
use actix_web::test::TestRequest;
use futures_util::future::join_all;
use keygate_storage::test_support::Lock;
use keygate_storage::test_support::TestDatabase;
use serde_json::json;
use support::{CountingStore, MASTER, key_request, start, start_observed, text};

on_both_backends!(
    hostile_requests_get_no_server_error,
    two_hundred_concurrent_creates_make_two_hundred_keys,
    a_revoke_among_concurrent_users_stops_every_later_request,
    repeated_bad_keys_are_throttled_per_address,
    the_throttle_follows_the_original_client_through_a_trusted_gateway,
    lifetimes_are_bounded_by_configuration,
    a_locked_database_answers_503_within_the_pool_timeout,
    a_revoke_that_commits_late_is_seen_by_every_instance,
);

/// A small deterministic generator, so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const ODD_TEXT: [&str; 10] = [
    "\u{202e}gnp.exe",
    "\u{200b}\u{200b}",
    "🔑🔑🔑",
    "a\u{0}b",
    "\u{feff}owner",
    "ｌｅｄｇｅｒｓ:read",
    "ledgers:read\n",
    "%00%ff",
    "../../etc/passwd",
    "' OR 1=1 --",
];

fn hostile_body(noise: &mut Noise) -> Vec<u8> {
    let future = support::next_year();
    let future = future.as_str();
    match noise.below(12) {
        0 => noise.bytes(1 + noise.0 as usize % 4096),
        1 => json!({"name": 7, "owner": [], "scopes": {"a": 1}, "expires_at": false}).to_string().into_bytes(),
        2 => json!({"name": "x".repeat(100_000), "owner": "o", "scopes": ["ledgers:read"], "expires_at": future})
            .to_string()
            .into_bytes(),
        3 => {
            let text = ODD_TEXT[noise.below(ODD_TEXT.len())];
            json!({"name": text, "owner": text, "scopes": [text], "expires_at": future}).to_string().into_bytes()
        }
        4 => {
            let scopes: Vec<&str> = (0..5000).map(|_| "ledgers:read").collect();
            json!({"name": "n", "owner": "o", "scopes": scopes, "expires_at": future}).to_string().into_bytes()
        }
        5 => format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)).into_bytes(),
        6 => format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000)).into_bytes(),
        7 => json!({"name": "n", "owner": "o", "scopes": ["ledgers:read"], "expires_at": "+275760-09-13T00:00:00Z"})
            .to_string()
            .into_bytes(),
        8 => json!({"name": "n", "owner": "o", "scopes": ["ledgers:read"], "expires_at": 1e308}).to_string().into_bytes(),
        9 => json!({"grace_period_seconds": 9_223_372_036_854_775_807u64}).to_string().into_bytes(),
        10 => b"{\"name\": \"\\ud800\", \"owner\": \"o\"}".to_vec(),
        _ => Vec::new(),
    }
}

async fn hostile_requests_get_no_server_error(db: TestDatabase) {
    let app = start(db).await;
    let (victim, victim_id) = app.new_key("alice", &["*:*"]).await;
    let mut noise = Noise(0x6b65_7967_6174_6521);
    let methods = [
        Method::GET,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
        Method::PUT,
        Method::OPTIONS,
    ];
    let paths = [
        "/api-keys".to_owned(),
        "/api-keys?owner=alice".to_owned(),
        format!("/api-keys/{victim_id}"),
        format!("/api-keys/{victim_id}/rotate?owner=alice"),
        format!("/api-keys/{victim_id}/events?owner=alice"),
        "/api-keys/%00%ff?owner=%ff%fe".to_owned(),
        format!("/api-keys/{}", "a".repeat(10_000)),
        "/forward-auth".to_owned(),
        "/ledgers/../api-keys".to_owned(),
        "/api-keys?owner=a&owner=b".to_owned(),
    ];
    for round in 0..1000 {
        let method = methods[noise.below(methods.len())].clone();
        let path = &paths[noise.below(paths.len())];
        let mut request = TestRequest::default().method(method.clone()).uri(path);
        request = match noise.below(5) {
            0 => request.insert_header(("X-Blnk-Key", MASTER)),
            1 => request.insert_header(("X-Blnk-Key", victim.as_str())),
            2 => request.insert_header((
                "X-Blnk-Key",
                actix_web::http::header::HeaderValue::from_bytes(
                    &noise
                        .bytes(44)
                        .iter()
                        .map(|b| b.max(&32))
                        .copied()
                        .collect::<Vec<_>>(),
                )
                .unwrap_or(actix_web::http::header::HeaderValue::from_static("x")),
            )),
            3 => request.insert_header(("Authorization", "Bearer ".repeat(50))),
            _ => request,
        };
        if noise.below(3) == 0 {
            request = request
                .insert_header((
                    "X-Original-Method",
                    ODD_TEXT[noise.below(ODD_TEXT.len())].replace(['\n', '\0'], ""),
                ))
                .insert_header((
                    "X-Original-URI",
                    "/ledgers/\u{202e}".replace('\u{202e}', "%E2%80%AE"),
                ));
        }
        let body = hostile_body(&mut noise);
        let reply = app
            .send(
                request
                    .insert_header(("Content-Type", "application/json"))
                    .set_payload(body),
            )
            .await;
        assert!(
            reply.status < 500,
            "round {round}: {method} {path} -> {} {}",
            reply.status,
            reply.json
        );
        if reply.status >= 400 {
            assert!(
                reply.json["error_detail"]["code"].is_string(),
                "round {round}: every error is JSON: {}",
                reply.json
            );
        }
    }
    assert_eq!(
        app.call(Method::GET, "/health", None, None).await.status,
        200
    );
}

async fn two_hundred_concurrent_creates_make_two_hundred_keys(db: TestDatabase) {
    let app = start(db).await;
    let creates = (0..200).map(|i| {
        let app = &app;
        async move {
            let reply = app
                .call(
                    Method::POST,
                    "/api-keys",
                    Some(MASTER),
                    Some(key_request(&format!("owner_{}", i % 7), &["ledgers:read"])),
                )
                .await;
            assert_eq!(reply.status, 201, "{}", reply.json);
            (text(&reply.json["api_key_id"]), text(&reply.json["key"]))
        }
    });
    let created = join_all(creates).await;
    let ids: HashSet<&String> = created.iter().map(|(id, _)| id).collect();
    let keys: HashSet<&String> = created.iter().map(|(_, key)| key).collect();
    assert_eq!((ids.len(), keys.len()), (200, 200));
    let mut stored = 0;
    for owner in 0..7 {
        let listed = app
            .call(
                Method::GET,
                &format!("/api-keys?owner=owner_{owner}"),
                Some(MASTER),
                None,
            )
            .await;
        stored += listed.json.as_array().map_or(0, Vec::len);
    }
    assert_eq!(stored, 200, "every acknowledged key is stored");
}

async fn a_revoke_among_concurrent_users_stops_every_later_request(db: TestDatabase) {
    let app = start(db).await;
    let (key, id) = app.new_key("alice", &["api-keys:read"]).await;
    let revoked_at: OnceLock<Instant> = OnceLock::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let client = |_: usize| {
        let (app, key, revoked_at, stop) = (&app, &key, &revoked_at, &stop);
        async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = Instant::now();
                let status = app
                    .call(Method::GET, "/api-keys", Some(key), None)
                    .await
                    .status;
                seen.push((sent, status));
                // A cached key is answered without awaiting anything: let the others run.
                tokio::task::yield_now().await;
            }
            let _ = revoked_at;
            seen
        }
    };
    let revoker = async {
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
        let reply = app.revoke(&id, "alice").await;
        assert_eq!(reply.status, 204);
        let _ = revoked_at.set(Instant::now());
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Vec::new()
    };
    let mut runs: Vec<_> = (0..8)
        .map(|i| {
            Box::pin(client(i))
                as std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(Instant, u16)>>>>
        })
        .collect();
    runs.push(Box::pin(revoker));
    let seen: Vec<(Instant, u16)> = join_all(runs).await.into_iter().flatten().collect();
    let revoked_at = *revoked_at.get().expect("the revoke ran");
    let (before, after): (Vec<_>, Vec<_>) = seen.iter().partition(|(sent, _)| *sent < revoked_at);
    assert!(
        before.iter().any(|(_, status)| *status == 200),
        "the clients were using the key"
    );
    assert!(!after.is_empty(), "requests were sent after the revoke");
    assert!(
        after.iter().all(|(_, status)| *status == 401),
        "a request sent after the 204 succeeded"
    );
}

fn from(address: &str, request: TestRequest) -> TestRequest {
    request.peer_addr(
        format!("{address}:40000")
            .parse()
            .expect("a socket address"),
    )
}

async fn repeated_bad_keys_are_throttled_per_address(db: TestDatabase) {
    let (observe, slot) = CountingStore::observer();
    let app = start_observed(db, |_| {}, observe).await;
    let counting = slot.get().expect("wrapped").clone();
    let (good, _) = app.new_key("alice", &["api-keys:read"]).await;
    let guesser = "192.0.2.66";
    let mut throttled_at = None;
    for attempt in 1..=30 {
        let guess = keygate_core::PlainKey::generate().expect("randomness");
        let request = TestRequest::get()
            .uri("/api-keys")
            .insert_header(("X-Blnk-Key", guess.expose()));
        let reply = app.send(from(guesser, request)).await;
        if reply.status == 429 {
            reply.assert_error(429, "GEN_RATE_LIMITED");
            let retry: u64 = reply
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After");
            assert!((1..=60).contains(&retry), "{retry}");
            throttled_at.get_or_insert(attempt);
        } else {
            assert!(
                throttled_at.is_none(),
                "once throttled, the address stays throttled"
            );
            reply.assert_error(401, "AUTH_INVALID_API_KEY");
        }
        // At the same moment, a valid key from elsewhere works.
        let other = app
            .send(from(
                "192.0.2.77",
                TestRequest::get()
                    .uri("/api-keys")
                    .insert_header(("X-Blnk-Key", good.as_str())),
            ))
            .await;
        assert_eq!(other.status, 200, "attempt {attempt}");
    }
    assert_eq!(
        throttled_at,
        Some(21),
        "20 failures a minute, in a burst of 20"
    );
    let lookups = CountingStore::count(&counting.lookups);
    for _ in 0..50 {
        let guess = keygate_core::PlainKey::generate().expect("randomness");
        let reply = app
            .send(from(
                guesser,
                TestRequest::get()
                    .uri("/api-keys")
                    .insert_header(("X-Blnk-Key", guess.expose())),
            ))
            .await;
        assert_eq!(reply.status, 429);
    }
    assert_eq!(
        CountingStore::count(&counting.lookups),
        lookups,
        "a throttled address costs no lookup"
    );
}

async fn the_throttle_follows_the_original_client_through_a_trusted_gateway(db: TestDatabase) {
    let app = support::start_with(db, |settings| {
        settings.throttle.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a network")]
    })
    .await;
    let (good, _) = app.new_key("alice", &["ledgers:read"]).await;
    let ask = |client: &str, key: &str| {
        from("127.0.0.1", TestRequest::get().uri("/forward-auth"))
            .insert_header(("X-Original-Method", "GET"))
            .insert_header(("X-Original-URI", "/ledgers"))
            .insert_header(("X-Forwarded-For", client.to_owned()))
            .insert_header(("X-Blnk-Key", key.to_owned()))
    };
    let mut statuses = Vec::new();
    for _ in 0..22 {
        statuses.push(app.send(ask("203.0.113.5", "guess")).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20);
    assert_eq!(*statuses.last().expect("some"), 429);
    let other = app.send(ask("203.0.113.6", &good)).await;
    assert_eq!(
        other.status, 200,
        "another client behind the same gateway is unaffected"
    );
}

async fn lifetimes_are_bounded_by_configuration(db: TestDatabase) {
    let app = support::start_with(db, |settings| settings.auth.max_key_lifetime_days = 30).await;
    let mut body = key_request("alice", &["ledgers:read"]);
    body["expires_at"] = json!((chrono::Utc::now() + chrono::Duration::days(31)).to_rfc3339());
    let reply = app
        .call(Method::POST, "/api-keys", Some(MASTER), Some(body.clone()))
        .await;
    reply.assert_error(400, "GEN_VALIDATION_ERROR");
    assert_eq!(reply.json["error_detail"]["details"]["field"], "expires_at");
    let (_, id) = app.new_key("alice", &["ledgers:read"]).await;
    app.call(
        Method::PATCH,
        &format!("/api-keys/{id}?owner=alice"),
        Some(MASTER),
        Some(json!({"expires_at": body["expires_at"]})),
    )
    .await
    .assert_error(400, "GEN_VALIDATION_ERROR");
    let default = start(TestDatabase::sqlite()).await;
    let mut far = key_request("alice", &["ledgers:read"]);
    far["expires_at"] = json!((chrono::Utc::now() + chrono::Duration::days(3651)).to_rfc3339());
    let reply = default
        .call(Method::POST, "/api-keys", Some(MASTER), Some(far))
        .await;
    reply.assert_error(400, "GEN_VALIDATION_ERROR");
    assert!(
        text(&reply.json["error"]).contains("3650 days"),
        "{}",
        reply.json
    );
}

#[actix_web::test]
async fn names_and_owners_that_would_mislead_a_reader_are_refused() {
    let app = start(TestDatabase::sqlite()).await;
    let cases = [
        ("\u{202e}gnp.exe", "alice", "name"),
        ("invoice\u{2066}", "alice", "name"),
        ("\u{200b}", "alice", "name"),
        ("\u{200b}\u{feff}\u{2060}", "alice", "name"),
        ("deploy", "\u{200b}", "owner"),
        ("deploy", "al\u{202e}ice", "owner"),
    ];
    for (name, owner, field) in cases {
        let mut body = key_request(owner, &["ledgers:read"]);
        body["name"] = json!(name);
        let reply = app
            .call(Method::POST, "/api-keys", Some(MASTER), Some(body))
            .await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(
            reply.json["error_detail"]["details"]["field"], field,
            "{name:?} {owner:?}"
        );
    }
    let mut body = key_request("ålice", &["ledgers:read"]);
    body["name"] = json!("🔑 déploiement 部署");
    let reply = app
        .call(Method::POST, "/api-keys", Some(MASTER), Some(body))
        .await;
    assert_eq!(
        reply.status, 201,
        "visible text of any script is welcome: {}",
        reply.json
    );
}

#[actix_web::test]
async fn query_values_that_are_not_utf8_are_refused_not_replaced() {
    let app = start(TestDatabase::sqlite()).await;
    let (_, id) = app.new_key("caf\u{e9}", &["ledgers:read"]).await;
    for path in [
        "/api-keys?owner=%FF".to_owned(),
        "/api-keys?owner=%FE".to_owned(),
        "/api-keys?owner=caf%E9".to_owned(),
        format!("/api-keys/{id}?owner=%C3"),
    ] {
        let reply = app.call(Method::GET, &path, Some(MASTER), None).await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(
            reply.json["error_detail"]["details"]["field"], "owner",
            "{path}"
        );
    }
    let reply = app
        .call(Method::GET, "/api-keys?owner=caf%C3%A9", Some(MASTER), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json.as_array().map(Vec::len), Some(1));
}

#[actix_web::test]
async fn leap_seconds_are_refused_rather_than_stored_two_ways() {
    let app = start(TestDatabase::sqlite()).await;
    let year = chrono::Datelike::year(&chrono::Utc::now()) + 1;
    let leap = format!("{year}-06-30T23:59:60.5Z");
    let mut body = key_request("alice", &["ledgers:read"]);
    body["expires_at"] = json!(leap);
    let reply = app
        .call(Method::POST, "/api-keys", Some(MASTER), Some(body))
        .await;
    reply.assert_error(400, "GEN_VALIDATION_ERROR");
    assert_eq!(reply.json["error_detail"]["details"]["field"], "expires_at");
    let (_, id) = app.new_key("alice", &["ledgers:read"]).await;
    app.call(
        Method::PATCH,
        &format!("/api-keys/{id}?owner=alice"),
        Some(MASTER),
        Some(json!({ "expires_at": leap })),
    )
    .await
    .assert_error(400, "GEN_VALIDATION_ERROR");
}

#[actix_web::test]
async fn every_oversized_body_gets_the_json_413() {
    let app = start(TestDatabase::sqlite()).await;
    let (_, id) = app.new_key("alice", &["ledgers:read"]).await;
    let big = format!(
        "{{\"grace_period_seconds\": 1, \"pad\": \"{}\"}}",
        "x".repeat(1_100_000)
    );
    for path in [
        format!("/api-keys/{id}/rotate?owner=alice"),
        "/api-keys".to_owned(),
    ] {
        let reply = app
            .send(
                TestRequest::post()
                    .uri(&path)
                    .insert_header(("X-Blnk-Key", MASTER))
                    .insert_header(("Content-Type", "application/json"))
                    .set_payload(big.clone()),
            )
            .await;
        reply.assert_error(413, "GEN_PAYLOAD_TOO_LARGE");
    }
}

#[actix_web::test]
async fn head_is_a_read_wherever_get_is() {
    let app = start(TestDatabase::sqlite()).await;
    let (reader, id) = app.new_key("alice", &["api-keys:read"]).await;
    let (writer_only, _) = app.new_key("alice", &["api-keys:write"]).await;
    for (path, key) in [
        ("/api-keys?owner=alice".to_owned(), MASTER),
        ("/api-keys".to_owned(), reader.as_str()),
        (format!("/api-keys/{id}"), reader.as_str()),
        (format!("/api-keys/{id}/events"), reader.as_str()),
        ("/health".to_owned(), ""),
        ("/".to_owned(), ""),
        ("/openapi.json".to_owned(), ""),
    ] {
        let mut request = TestRequest::default().method(Method::HEAD).uri(&path);
        if !key.is_empty() {
            request = request.insert_header(("X-Blnk-Key", key));
        }
        let response = actix_web::test::call_service(&app.service, request.to_request()).await;
        assert_eq!(response.status(), 200, "HEAD {path}");
    }
    app.send(
        TestRequest::default()
            .method(Method::HEAD)
            .uri("/api-keys")
            .insert_header(("X-Blnk-Key", writer_only.as_str())),
    )
    .await
    .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
    app.call(Method::POST, "/health", None, None)
        .await
        .assert_error(405, "GEN_METHOD_NOT_ALLOWED");
}

#[actix_web::test]
async fn the_openapi_description_is_built_once_and_revalidated_by_its_tag() {
    let app = start(TestDatabase::sqlite()).await;
    let first = actix_web::test::call_service(
        &app.service,
        TestRequest::get().uri("/openapi.json").to_request(),
    )
    .await;
    assert_eq!(first.status(), 200);
    let tag = first
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("an ETag")
        .to_owned();
    let body = actix_web::test::read_body(first).await;
    assert_eq!(body, keygate_server::openapi::document().as_bytes());
    let again = actix_web::test::call_service(
        &app.service,
        TestRequest::get()
            .uri("/openapi.json")
            .insert_header(("If-None-Match", tag.as_str()))
            .to_request(),
    )
    .await;
    assert_eq!(again.status(), 304);
    assert!(actix_web::test::read_body(again).await.is_empty());
}

#[actix_web::test]
async fn an_ipv4_gateway_seen_through_an_ipv6_socket_is_still_trusted() {
    let app = support::start_with(TestDatabase::sqlite(), |settings| {
        settings.throttle.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a network")]
    })
    .await;
    let (good, _) = app.new_key("alice", &["ledgers:read"]).await;
    let ask = |client: &str, key: &str| {
        TestRequest::get()
            .uri("/forward-auth")
            .peer_addr("[::ffff:127.0.0.1]:40000".parse().expect("an address"))
            .insert_header(("X-Original-Method", "GET"))
            .insert_header(("X-Original-URI", "/ledgers"))
            .insert_header(("X-Forwarded-For", client.to_owned()))
            .insert_header(("X-Blnk-Key", key.to_owned()))
    };
    for _ in 0..25 {
        app.send(ask("203.0.113.5", "guess")).await;
    }
    app.send(ask("203.0.113.5", "guess"))
        .await
        .assert_error(429, "GEN_RATE_LIMITED");
    let other = app.send(ask("::ffff:203.0.113.6", &good)).await;
    assert_eq!(
        other.status, 200,
        "another client behind the same gateway keeps its own budget: {}",
        other.json
    );
}

#[actix_web::test]
async fn a_key_header_sent_twice_is_refused() {
    let app = start(TestDatabase::sqlite()).await;
    let (reader, _) = app.new_key("alice", &["ledgers:read"]).await;
    let (writer, _) = app.new_key("alice", &["ledgers:write"]).await;
    for (name, first, second) in [
        ("X-Blnk-Key", reader.clone(), writer.clone()),
        (
            "Authorization",
            format!("Bearer {reader}"),
            format!("Bearer {writer}"),
        ),
    ] {
        let request = TestRequest::post()
            .uri("/forward-auth")
            .insert_header(("X-Original-Method", "POST"))
            .insert_header(("X-Original-URI", "/ledgers"))
            .append_header((name, first))
            .append_header((name, second));
        let reply = app.send(request).await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(reply.json["error_detail"]["details"]["field"], name);
    }
}

async fn a_locked_database_answers_503_within_the_pool_timeout(db: TestDatabase) {
    let app = support::start_with(db, |settings| settings.database.pool_timeout_ms = 500).await;
    let (cached, _) = app.new_key("alice", &["ledgers:read"]).await;
    let ask = || support::forward("GET", "/ledgers", Some(&cached), false);
    assert_eq!(app.send(ask()).await.status, 200, "now held in memory");
    let lock = app.db().hold_lock(Lock::Table);
    let started = Instant::now();
    let reply = app
        .call(
            Method::POST,
            "/api-keys",
            Some(MASTER),
            Some(key_request("alice", &["ledgers:read"])),
        )
        .await;
    let waited = started.elapsed();
    reply.assert_error(503, "GEN_SERVICE_UNAVAILABLE");
    assert!(reply.headers.contains_key("retry-after"));
    assert!(
        waited < std::time::Duration::from_millis(1500),
        "answered after {waited:?}, beyond the pool timeout and a second"
    );
    let started = Instant::now();
    assert_eq!(
        app.call(Method::GET, "/health", None, None).await.status,
        200
    );
    assert_eq!(
        app.send(ask()).await.status,
        200,
        "a cached key needs no database"
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
    drop(lock);
    let reply = app
        .call(
            Method::POST,
            "/api-keys",
            Some(MASTER),
            Some(key_request("alice", &["ledgers:read"])),
        )
        .await;
    assert_eq!(
        reply.status, 201,
        "serves again once the lock is gone: {}",
        reply.json
    );
}

async fn a_revoke_that_commits_late_is_seen_by_every_instance(db: TestDatabase) {
    // Longer than the old feed's 5 s look-back, shorter than the pool timeout.
    let held = std::time::Duration::from_secs(6);
    let app = support::start_with(db, |settings| settings.database.pool_timeout_ms = 10_000).await;
    let peer = support::start_peer(app.db()).await;
    let (key, id) = app.new_key("alice", &["ledgers:read"]).await;
    assert_eq!(
        peer.call(Method::GET, "/api-keys", Some(&key), None)
            .await
            .status,
        403,
        "the peer holds the key (it may not list keys)"
    );
    let lock = app.db().hold_lock(Lock::Row(&id));
    let revoke = async {
        let reply = app.revoke(&id, "alice").await;
        assert_eq!(reply.status, 204, "{}", reply.json);
        Instant::now()
    };
    let release = async {
        actix_web::rt::time::sleep(held).await;
        drop(lock);
    };
    let (revoked_at, ()) = futures_util::future::join(revoke, release).await;
    loop {
        let status = peer
            .call(Method::GET, "/api-keys", Some(&key), None)
            .await
            .status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 403);
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_secs(1),
            "the peer still accepts the key a second after the 204"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn cached_keys_are_read_again_once_the_change_feed_is_stale() {
    // On PostgreSQL a table lock stops the feed (on SQLite readers never wait).
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let app = support::start_with(db, |settings| {
        settings.database.pool_timeout_ms = 300;
        settings.auth.max_staleness_ms = 600;
    })
    .await;
    let (cached, _) = app.new_key("alice", &["ledgers:read"]).await;
    let ask = || support::forward("GET", "/ledgers", Some(&cached), false);
    assert_eq!(app.send(ask()).await.status, 200, "now held in memory");
    let lock = app.db().hold_lock(Lock::Table);
    assert_eq!(
        app.send(ask()).await.status,
        200,
        "within auth.max_staleness_ms the cached key is trusted"
    );
    actix_web::rt::time::sleep(std::time::Duration::from_millis(1200)).await;
    app.send(ask())
        .await
        .assert_error(503, "GEN_SERVICE_UNAVAILABLE");
    drop(lock);
    let recovered = Instant::now();
    while app.send(ask()).await.status != 200 {
        assert!(
            recovered.elapsed() < std::time::Duration::from_secs(5),
            "recovers"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn method_overrides_are_refused_not_judged_as_the_outer_method() {
    let app = start(TestDatabase::sqlite()).await;
    let (writer, _) = app.new_key("alice", &["ledgers:write", "api-keys:*"]).await;
    for header in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ] {
        let reply = app
            .send(
                support::forward("POST", "/ledgers/l1", Some(&writer), false)
                    .insert_header((header, "DELETE")),
            )
            .await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(reply.json["error_detail"]["details"]["field"], header);
        let own = app
            .send(
                TestRequest::post()
                    .uri("/api-keys")
                    .insert_header(("X-Blnk-Key", writer.as_str()))
                    .insert_header((header, "DELETE"))
                    .set_json(key_request("alice", &["ledgers:write"])),
            )
            .await;
        own.assert_error(400, "GEN_VALIDATION_ERROR");
    }
    let reply = app
        .send(support::forward(
            "POST",
            "/ledgers/l1?_method=DELETE",
            Some(&writer),
            false,
        ))
        .await;
    reply.assert_error(400, "GEN_VALIDATION_ERROR");
    let own = app
        .call(Method::GET, "/api-keys?_method=DELETE", Some(&writer), None)
        .await;
    own.assert_error(400, "GEN_VALIDATION_ERROR");
}

#[actix_web::test]
async fn a_refused_address_cannot_keep_guessing_the_master_key() {
    let app = start(TestDatabase::sqlite()).await;
    let (cached, _) = app.new_key("alice", &["api-keys:read"]).await;
    let guesser = "192.0.2.90";
    let ask = |key: &str| {
        from(guesser, TestRequest::get().uri("/api-keys?owner=alice"))
            .insert_header(("X-Blnk-Key", key.to_owned()))
    };
    assert_eq!(
        app.send(ask(&cached)).await.status,
        200,
        "now held in memory"
    );
    for _ in 0..21 {
        app.send(ask("guess")).await;
    }
    app.send(ask(MASTER))
        .await
        .assert_error(429, "GEN_RATE_LIMITED");
    assert_eq!(
        app.send(ask(&cached)).await.status,
        200,
        "a key this instance holds still works"
    );
    let elsewhere = from(
        "192.0.2.91",
        TestRequest::get().uri("/api-keys?owner=alice"),
    )
    .insert_header(("X-Blnk-Key", MASTER));
    assert_eq!(app.send(elsewhere).await.status, 200);
}
