//! keygate guarding an API it does not serve: a real nginx in front of a small upstream,
//! asking `/forward-auth` through `auth_request`, with a resource added in configuration.

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::process::{Running, field, free_port, http, http_from};

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
    assert!(
        std::env::var_os("CI").is_none(),
        "{NGINX} is missing: CI installs nginx-light for the gateway test"
    );
    eprintln!("skipped: gateway test ({NGINX} is not installed; apt-get install nginx-light)");
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
