//! Metering across instances: `keygate` processes sharing one database (and one Redis)
//! hammered together from many threads, and Redis stopped under load.

use crate::support;
use keygate_storage::test_support::skip_unless_ci;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keygate_storage::test_support::TestDatabase;
use support::process::{Running, field, free_port, http_from, log};

const MASTER: &str = "fleet-master-key-0123456789abcdef";
const REDIS_SERVER: &str = "redis-server";

fn start(dir: &Path, url: &str, extra: &[(&str, &str)]) -> Running {
    let port = free_port();
    let port_text = port.to_string();
    let mut env = vec![
        ("KEYGATE_SERVER__PORT", port_text.as_str()),
        ("KEYGATE_SERVER__SECRET_KEY", MASTER),
        ("KEYGATE_DATABASE__URL", url),
        ("KEYGATE_METERING__LEASE_IDLE_MS", "300"),
        // The hammering threads are one client: they must not throttle each other.
        ("KEYGATE_THROTTLE__FAILURES_PER_MINUTE", "0"),
    ];
    env.extend_from_slice(extra);
    Running::start(dir, port, &env)
}

/// Creates a key for alice that may read ledgers, with `metering` (JSON fields).
fn create(server: &Running, metering: &str) -> (String, String) {
    let body = format!(
        r#"{{"name":"n","owner":"alice","scopes":["ledgers:read"],"expires_at":"{}",{metering}}}"#,
        support::next_year()
    );
    let (status, created) = server.request("POST", "/api-keys", Some(MASTER), Some(&body));
    assert_eq!(status, 201, "{created}");
    (field(&created, "key"), field(&created, "api_key_id"))
}

/// What `port` answers a gateway asking whether `key` may `GET /ledgers`.
fn ask(port: u16, key: &str) -> Option<u16> {
    let headers = [
        ("X-Blnk-Key", key),
        ("X-Original-Method", "GET"),
        ("X-Original-URI", "/ledgers"),
    ];
    http_from(None, port, "GET", "/forward-auth", &headers, None).map(|(status, _)| status)
}

/// Sends `per_thread` questions from each of 16 threads, alternating between `ports`;
/// returns how many were allowed, and every other status seen.
fn hammer(ports: &[u16], key: &str, per_thread: usize) -> (usize, Vec<u16>) {
    let allowed = AtomicUsize::new(0);
    let others = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|threads| {
        for thread in 0..16 {
            let (allowed, others) = (&allowed, &others);
            threads.spawn(move || {
                for round in 0..per_thread {
                    let port = ports[(thread + round) % ports.len()];
                    match ask(port, key) {
                        Some(200) => {
                            allowed.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(status) => others.lock().expect("lock").push(status),
                        None => others.lock().expect("lock").push(0),
                    }
                }
            });
        }
    });
    let others = others.into_inner().expect("lock");
    (allowed.into_inner(), others)
}

fn credits_left(server: &Running, id: &str) -> i64 {
    let (status, body) = server.get(&format!("/api-keys/{id}?owner=alice"), Some(MASTER));
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    json["credits"]["remaining"].as_i64().expect("credits")
}

#[test]
fn two_instances_on_one_postgres_never_overspend_credits() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = start(dir_a.path(), &db.url_string, &[]);
    let b = start(dir_b.path(), &db.url_string, &[]);
    let (key, id) = create(&a, r#""credits":{"remaining":300}"#);

    let (allowed, others) = hammer(&[a.port, b.port], &key, 40);
    eprintln!("two instances admitted {allowed} of 640 against 300 credits");
    assert!(
        others.iter().all(|status| *status == 429),
        "only 200 and 429: {others:?}"
    );
    assert!((270..=300).contains(&allowed), "{allowed} admitted");

    // Once the leases go idle, what they held is back in the pool: nothing is lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    while credits_left(&a, &id) != 300 - i64::try_from(allowed).expect("small") {
        assert!(
            Instant::now() < deadline,
            "{} left after {allowed} admitted",
            credits_left(&a, &id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `redis-server` of the test's own, on `port`, stopped when dropped.
struct Redis {
    child: Child,
}

impl Redis {
    fn start(port: u16) -> Option<Self> {
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                skip_unless_ci(
                    &format!("Redis test: {REDIS_SERVER} cannot run ({error})"),
                    "apt-get install redis-server",
                );
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis { child })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_instances_with_redis_share_one_window() {
    let redis_port = free_port();
    let Some(_redis) = Redis::start(redis_port) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{redis_port}");
    let redis = [
        ("KEYGATE_METERING__BACKEND", "redis"),
        ("KEYGATE_METERING__REDIS_URL", url.as_str()),
    ];
    let db = TestDatabase::sqlite();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = start(dir_a.path(), &db.url_string, &redis);
    let b = start(dir_b.path(), &db.url_string, &redis);
    let (key, _) = create(&a, r#""ratelimit":{"limit":50,"window_ms":20000}"#);

    let (allowed, others) = hammer(&[a.port, b.port], &key, 10);
    eprintln!("two instances sharing Redis admitted {allowed} of 160 against 50 per 20 s");
    assert!(others.iter().all(|status| *status == 429), "{others:?}");
    assert!((45..=55).contains(&allowed), "{allowed} admitted together");

    // Each on its own (local windows), they would have admitted 50 each.
    // Its folder lives as long as it does (a temporary one would be gone at once).
    let dir_local = tempfile::tempdir().expect("dir");
    let local_a = start(dir_local.path(), &db.url_string, &[]);
    let (solo, _) = create(&local_a, r#""ratelimit":{"limit":50,"window_ms":20000}"#);
    let (alone, _) = hammer(&[local_a.port], &solo, 5);
    assert_eq!(alone, 50, "a local window admits exactly its limit");
}

#[test]
fn redis_stopped_under_load_falls_back_and_recovers() {
    let redis_port = free_port();
    let Some(redis) = Redis::start(redis_port) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{redis_port}");
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().expect("dir");
    let server = start(
        dir.path(),
        &db.url_string,
        &[
            ("KEYGATE_METERING__BACKEND", "redis"),
            ("KEYGATE_METERING__REDIS_URL", url.as_str()),
        ],
    );
    let (key, _) = create(&server, r#""ratelimit":{"limit":100000,"window_ms":60000}"#);
    let gauge = |server: &Running| {
        let (status, metrics) = server.get("/metrics", Some(MASTER));
        assert_eq!(status, 200);
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("keygate_metering_redis_fallback "))
            .map(str::to_owned)
    };
    let (allowed, others) = hammer(&[server.port], &key, 5);
    assert_eq!((allowed, others.len()), (80, 0));
    assert_eq!(gauge(&server).as_deref(), Some("0"));

    drop(redis);
    let stopped = Instant::now();
    let (allowed, others) = hammer(&[server.port], &key, 10);
    eprintln!(
        "with Redis stopped: {allowed} of 160 admitted in {:?}",
        stopped.elapsed()
    );
    assert_eq!((allowed, others.len()), (160, 0), "{others:?}");
    assert_eq!(gauge(&server).as_deref(), Some("1"));
    let warnings = log(dir.path())
        .matches("counting them in this process")
        .count();
    assert_eq!(warnings, 1, "said once: {}", log(dir.path()));

    let _redis = Redis::start(redis_port).expect("redis-server restarts");
    let deadline = Instant::now() + Duration::from_secs(15);
    while gauge(&server).as_deref() != Some("0") {
        assert!(
            Instant::now() < deadline,
            "no recovery: {}",
            log(dir.path())
        );
        assert_eq!(ask(server.port, &key), Some(200));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (allowed, others) = hammer(&[server.port], &key, 2);
    assert_eq!((allowed, others.len()), (32, 0));
    assert!(
        !log(dir.path()).contains(&url),
        "the Redis URL is not logged"
    );
}
