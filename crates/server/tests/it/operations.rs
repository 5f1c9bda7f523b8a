//! What an operator relies on: metrics, request logs, and a graceful stop.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use actix_web::http::Method;
use actix_web::test::TestRequest;
use keygate_storage::test_support::TestDatabase;
use support::process::{Running, field, free_port, log};
use support::{MASTER, start_with};

/// The value of the sample `name{labels}` in a Prometheus text page, 0 when absent.
fn sample(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            line.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn metrics_need_the_master_key_or_the_metrics_token() {
    let app = start_with(TestDatabase::sqlite(), |settings| {
        settings.server.metrics_token = Some("scrape-me-0123456789".into());
    })
    .await;
    let (all_powerful, _) = app.new_key("alice", &["*:*"]).await;
    app.call(Method::GET, "/metrics", None, None)
        .await
        .assert_error(401, "AUTH_MISSING_API_KEY");
    // A valid API key and a made-up one are refused alike: /metrics tells neither apart.
    let wrong = keygate_core::PlainKey::generate().expect("randomness");
    for key in [all_powerful.as_str(), wrong.expose(), "wrong-token"] {
        app.call(Method::GET, "/metrics", Some(key), None)
            .await
            .assert_error(401, "AUTH_METRICS_TOKEN_REQUIRED");
    }
    for request in [
        TestRequest::get()
            .uri("/metrics")
            .insert_header(("X-Blnk-Key", MASTER)),
        TestRequest::get()
            .uri("/metrics")
            .insert_header(("Authorization", "Bearer scrape-me-0123456789")),
    ] {
        let response = actix_web::test::call_service(&app.service, request.to_request()).await;
        assert_eq!(response.status(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let page =
            String::from_utf8(actix_web::test::read_body(response).await.to_vec()).expect("text");
        assert!(
            page.contains("# TYPE keygate_http_requests_total counter"),
            "{page}"
        );
        let names: Vec<&str> = page
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        assert!(!names.is_empty());
        assert!(
            names.iter().all(|name| name.starts_with("keygate_")),
            "{names:?}"
        );
    }
}

#[actix_web::test]
async fn metrics_are_no_key_oracle_and_share_the_brute_force_budget() {
    let (observe, slot) = support::CountingStore::observer();
    let app = support::start_observed(TestDatabase::sqlite(), |_| {}, observe).await;
    let counting = slot.get().expect("wrapped").clone();
    let (valid, _) = app.new_key("alice", &["*:*"]).await;
    let lookups = support::CountingStore::count(&counting.lookups);
    let guesser = "192.0.2.80:40000".parse().expect("an address");
    let mut statuses = Vec::new();
    for attempt in 0..30 {
        let guess = if attempt == 5 {
            valid.clone()
        } else {
            keygate_core::PlainKey::generate()
                .expect("randomness")
                .expose()
                .to_owned()
        };
        let request = TestRequest::get()
            .uri("/metrics")
            .peer_addr(guesser)
            .insert_header(("X-Blnk-Key", guess));
        statuses.push(app.send(request).await.code().to_owned());
    }
    assert_eq!(
        support::CountingStore::count(&counting.lookups),
        lookups,
        "/metrics looks no key up"
    );
    assert!(
        statuses[..20]
            .iter()
            .all(|code| code == "AUTH_METRICS_TOKEN_REQUIRED"),
        "{statuses:?}"
    );
    assert!(
        statuses[20..].iter().all(|code| code == "GEN_RATE_LIMITED"),
        "the same budget as every other key check: {statuses:?}"
    );
    let api = TestRequest::get()
        .uri("/api-keys")
        .peer_addr(guesser)
        .insert_header(("X-Blnk-Key", "another-guess"));
    app.send(api).await.assert_error(429, "GEN_RATE_LIMITED");
    let master = TestRequest::get()
        .uri("/metrics")
        .peer_addr(guesser)
        .insert_header(("X-Blnk-Key", MASTER));
    app.send(master).await.assert_error(429, "GEN_RATE_LIMITED");
    let elsewhere = TestRequest::get()
        .uri("/metrics")
        .peer_addr("192.0.2.81:40000".parse().expect("an address"))
        .insert_header(("X-Blnk-Key", MASTER));
    let response = actix_web::test::call_service(&app.service, elsewhere.to_request()).await;
    assert_eq!(
        response.status(),
        200,
        "the master key reads them from elsewhere"
    );
}

#[actix_web::test]
async fn odd_methods_and_paths_do_not_grow_the_metrics() {
    let app = start_with(TestDatabase::sqlite(), |_| {}).await;
    let page = || async { app.scrape().await.len() };
    for warm in ["/health", "/nowhere", "/api-keys/x/y/z", "/api-keys"] {
        for method in [
            Method::GET,
            Method::POST,
            Method::from_bytes(b"BREW").expect("a method"),
        ] {
            app.send(TestRequest::default().method(method).uri(warm))
                .await;
        }
    }
    let before = page().await;
    for i in 0..1000 {
        let method = Method::from_bytes(format!("M{i}{}", "X".repeat(i % 64)).as_bytes())
            .expect("a method token");
        let path = match i % 4 {
            0 => format!("/health/{i}"),
            1 => format!("/nowhere-{i}"),
            2 => format!("/api-keys/{i}/x/{i}"),
            _ => "/health".to_owned(),
        };
        app.send(TestRequest::default().method(method).uri(&path))
            .await;
        app.send(TestRequest::get().uri(&path)).await;
    }
    let after = page().await;
    assert!(
        after < before + 20_000,
        "/metrics grew from {before} to {after} bytes"
    );
}

#[actix_web::test]
async fn the_counters_move_with_the_requests() {
    let app = start_with(TestDatabase::sqlite(), |_| {}).await;
    let scrape = || app.scrape();
    let before = scrape().await;
    let (key, _) = app.new_key("alice", &["api-keys:read"]).await;
    for _ in 0..3 {
        assert_eq!(
            app.call(Method::GET, "/api-keys", Some(&key), None)
                .await
                .status,
            200
        );
    }
    let unknown = keygate_core::PlainKey::generate().expect("randomness");
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(unknown.expose()), None)
            .await
            .status,
        401
    );
    let after = scrape().await;

    let moved = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(
        moved(r#"keygate_http_requests_total{method="GET",route="/api-keys",status="200"}"#),
        3.0
    );
    assert_eq!(
        moved(r#"keygate_http_requests_total{method="POST",route="/api-keys",status="201"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"keygate_http_requests_total{method="GET",route="/api-keys",status="401"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"keygate_auth_decisions_total{outcome="AUTH_INVALID_API_KEY"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"keygate_auth_decisions_total{outcome="ok"}"#),
        4.0,
        "three uses and the create"
    );
    assert_eq!(
        moved("keygate_key_cache_misses_total"),
        2.0,
        "the first use and the unknown key"
    );
    assert_eq!(moved("keygate_key_cache_hits_total"), 2.0);
    assert!(
        moved(r#"keygate_http_request_duration_seconds_count{method="GET",route="/api-keys"}"#)
            >= 4.0
    );
    assert!(
        sample(&after, "keygate_db_pool_connections") >= 1.0,
        "{after}"
    );
}

#[test]
fn sigterm_finishes_the_request_in_flight_records_usage_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let port_text = port.to_string();
    let env = [
        ("KEYGATE_SERVER__PORT", port_text.as_str()),
        ("KEYGATE_SERVER__SECRET_KEY", "term-master-key-0123"),
        ("KEYGATE_AUTH__LAST_USED_FLUSH_MS", "3600000"),
        ("KEYGATE_LOG__FORMAT", "json"),
    ];
    let server = Running::start(dir.path(), port, &env);
    let body = format!(
        r#"{{"name":"n","owner":"alice","scopes":["api-keys:read"],"expires_at":"{}"}}"#,
        support::next_year()
    );
    let (status, created) = server.request(
        "POST",
        "/api-keys",
        Some("term-master-key-0123"),
        Some(&body),
    );
    assert_eq!(status, 201, "{created}");
    let key = field(&created, "key");
    assert_eq!(
        server.get("/api-keys", Some(&key)).0,
        200,
        "a use that only the shutdown will write"
    );

    // A request whose body is still arriving when SIGTERM comes.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let (first, rest) = body.split_at(body.len() / 2);
    write!(
        slow,
        "POST /api-keys HTTP/1.1\r\nHost: x\r\nX-Blnk-Key: term-master-key-0123\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
        body.len()
    )
    .expect("the first half");
    std::thread::sleep(Duration::from_millis(200));
    let stopping = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &server.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    );
    std::thread::sleep(Duration::from_millis(300));
    slow.write_all(rest.as_bytes()).expect("the second half");
    let mut response = String::new();
    slow.read_to_string(&mut response).expect("an answer");
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "the request in flight completes: {response}"
    );
    let status = server.wait();
    assert!(status.success(), "exit code {status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        stopping.elapsed()
    );

    let logs = log(dir.path());
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(lines.len() >= 3, "JSON log lines: {logs}");
    assert!(
        lines
            .iter()
            .any(|line| line["span"]["route"] == "/api-keys" && line["span"]["status"] == 201),
        "a request span with route and status: {logs}"
    );
    assert!(!logs.contains(&key), "never the key");

    let port = free_port();
    let port_text = port.to_string();
    let server = Running::start(
        dir.path(),
        port,
        &[
            ("KEYGATE_SERVER__PORT", port_text.as_str()),
            ("KEYGATE_SERVER__SECRET_KEY", "term-master-key-0123"),
        ],
    );
    let (_, listed) = server.get("/api-keys?owner=alice", Some("term-master-key-0123"));
    assert!(
        listed.contains("\"last_used_at\":\"20"),
        "the use before SIGTERM was written: {listed}"
    );
}
