//! The binary under faults: a crash right after a 201, a database that goes away and
//! comes back, oversized requests, and what reaches its logs.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keygate_storage::test_support::TestDatabase;
use support::process::{Running, field, free_port, log};

const MASTER: &str = "resilience-master-key";

fn create_body(owner: &str, scopes: &str) -> String {
    format!(
        r#"{{"name":"n","owner":"{owner}","scopes":[{scopes}],"expires_at":"{}"}}"#,
        support::next_year()
    )
}

fn start(dir: &Path, url: &str, extra: &[(&str, &str)]) -> Running {
    let port = free_port();
    let port_text = port.to_string();
    let mut env = vec![
        ("KEYGATE_SERVER__PORT", port_text.as_str()),
        ("KEYGATE_SERVER__SECRET_KEY", MASTER),
        ("KEYGATE_DATABASE__URL", url),
    ];
    env.extend_from_slice(extra);
    Running::start(dir, port, &env)
}

#[test]
fn a_key_acknowledged_with_201_survives_a_crash() {
    for db in TestDatabase::all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = start(dir.path(), &db.url_string, &[]);
        let (status, created) = server.request(
            "POST",
            "/api-keys",
            Some(MASTER),
            Some(&create_body("alice", "\"api-keys:read\"")),
        );
        assert_eq!(status, 201, "{created}");
        server.crash();

        let server = start(dir.path(), &db.url_string, &[]);
        let key = field(&created, "key");
        assert_eq!(
            server.request("GET", "/api-keys", Some(&key), None).0,
            200,
            "{}",
            db.url_string
        );
    }
}

#[test]
fn oversized_requests_are_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::sqlite();
    let server = start(dir.path(), &db.url_string, &[]);
    let raw = |request: Vec<u8>| -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = stream.write_all(&request);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let huge_header = format!(
        "GET /api-keys HTTP/1.1\r\nHost: x\r\nX-Blnk-Key: {}\r\nConnection: close\r\n\r\n",
        "k".repeat(256 * 1024)
    );
    let status = raw(huge_header.into_bytes());
    assert!((400..500).contains(&status), "a 256 KiB header: {status}");
    let huge_url = format!(
        "GET /api-keys?owner={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "o".repeat(256 * 1024)
    );
    let status = raw(huge_url.into_bytes());
    assert!((400..500).contains(&status), "a 256 KiB URL: {status}");
    let binary_key = [
        b"GET /api-keys HTTP/1.1\r\nHost: x\r\nX-Blnk-Key: ".as_slice(),
        &[0xff, 0xfe, 0x80],
        b"\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    assert_eq!(raw(binary_key), 401, "a key that is not text is a 401");
    let big_body = format!(
        "POST /api-keys HTTP/1.1\r\nHost: x\r\nX-Blnk-Key: {MASTER}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        8 * 1024 * 1024
    );
    assert_eq!(
        raw(big_body.into_bytes()),
        413,
        "a declared 8 MiB body is refused before it is read"
    );
    assert_eq!(server.request("GET", "/health", None, None).0, 200);
}

#[test]
fn no_key_and_no_master_key_ever_reach_the_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::postgres().unwrap_or_else(TestDatabase::sqlite);
    let server = start(dir.path(), &db.url_string, &[("RUST_LOG", "debug")]);
    let mut secrets = vec![MASTER.to_owned()];
    let (status, manager) = server.request(
        "POST",
        "/api-keys",
        Some(MASTER),
        Some(&create_body("alice", "\"api-keys:*\", \"ledgers:*\"")),
    );
    assert_eq!(status, 201, "{manager}");
    let manager_key = field(&manager, "key");
    secrets.push(manager_key.clone());
    let (_, child) = server.request(
        "POST",
        "/api-keys",
        Some(&manager_key),
        Some(&create_body("alice", "\"ledgers:read\"")),
    );
    let (child_key, child_id) = (field(&child, "key"), field(&child, "api_key_id"));
    secrets.push(child_key.clone());
    for (method, path, key, body) in [
        (
            "GET",
            "/api-keys".to_owned(),
            Some(child_key.as_str()),
            None,
        ),
        (
            "GET",
            "/api-keys".to_owned(),
            Some(manager_key.as_str()),
            None,
        ),
        ("GET", "/ledgers".to_owned(), Some(child_key.as_str()), None),
        (
            "PATCH",
            format!("/api-keys/{child_id}"),
            Some(manager_key.as_str()),
            Some(r#"{"name":"renamed"}"#),
        ),
        (
            "GET",
            format!("/api-keys/{child_id}/events"),
            Some(manager_key.as_str()),
            None,
        ),
        (
            "POST",
            "/api-keys".to_owned(),
            Some(manager_key.as_str()),
            Some(r#"{"name":"n","owner":"bob","scopes":["*:*"],"expires_at":"x"}"#),
        ),
        (
            "GET",
            "/api-keys?owner=alice".to_owned(),
            Some("YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll2Q="),
            None,
        ),
        (
            "GET",
            "/api-keys?owner=alice".to_owned(),
            Some("resilience-master-kez"),
            None,
        ),
    ] {
        let _ = server.request(method, &path, key, body);
    }
    let (status, rotated) = server.request(
        "POST",
        &format!("/api-keys/{child_id}/rotate"),
        Some(&manager_key),
        None,
    );
    assert_eq!(status, 201, "{rotated}");
    secrets.push(field(&rotated, "key"));
    let _ = server.request(
        "DELETE",
        &format!("/api-keys/{child_id}"),
        Some(&manager_key),
        None,
    );
    assert!(server.stop().success());

    let logs = log(dir.path());
    assert!(
        logs.contains("API key created"),
        "the run was logged: {logs}"
    );
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
        assert!(
            !logs.contains(&secret[..secret.len().min(20)]),
            "part of a secret reached the logs"
        );
    }
    assert!(
        !logs.contains("YVLIhuIplUzLRCcT9r7DQ"),
        "a presented unknown key reached the logs"
    );
}

/// A PostgreSQL server of the test's own, which the test may stop and start.
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// `None` (having said so) where PostgreSQL's server programs are not installed.
    fn create() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|v| v.path().join("bin"))
                    .find(|bin| bin.join("initdb").exists())
            });
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL's server programs are required in CI"
            );
            eprintln!("skipped: outage test (no /usr/lib/postgresql/*/bin/initdb)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("a data folder");
        let server = PrivatePostgres {
            bin,
            data,
            port: free_port(),
            _dir: dir,
        };
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(server._dir.path())
            .status()
            .ok();
        assert!(
            server.run(
                "initdb",
                &[
                    "-D",
                    &server.data.to_string_lossy(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres"
                ]
            ),
            "initdb"
        );
        server.start();
        Some(server)
    }

    /// Runs one of PostgreSQL's programs, as the postgres user when we are root.
    fn run(&self, program: &str, args: &[&str]) -> bool {
        let program = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.display()
        );
        assert!(
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    &self.data.to_string_lossy(),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "30",
                    "start"
                ]
            ),
            "the private PostgreSQL starts"
        );
    }

    fn stop(&self) {
        assert!(self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop"
            ]
        ));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0"))
}

#[test]
fn a_database_outage_gives_503_and_the_same_process_recovers() {
    let Some(postgres) = PrivatePostgres::create() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(
        dir.path(),
        &postgres.url(),
        &[("KEYGATE_DATABASE__POOL_TIMEOUT_MS", "2000")],
    );
    let (status, created) = server.request(
        "POST",
        "/api-keys",
        Some(MASTER),
        Some(&create_body("alice", "\"ledgers:read\"")),
    );
    assert_eq!(status, 201, "{created}");
    let key = field(&created, "key");
    let forward = |key: &str| {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connects");
        let _ = write!(
            stream,
            "GET /forward-auth HTTP/1.1\r\nHost: x\r\nX-Blnk-Key: {key}\r\nX-Original-Method: GET\r\nX-Original-URI: /ledgers\r\nConnection: close\r\n\r\n"
        );
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        forward(&key),
        204,
        "the key is verified, and now held in memory"
    );

    postgres.stop();
    let asked = Instant::now();
    let (status, body) = server.request("GET", "/api-keys?owner=alice", Some(MASTER), None);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        asked.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("GEN_SERVICE_UNAVAILABLE"), "{body}");
    let (status, body) = server.request(
        "POST",
        "/api-keys",
        Some(MASTER),
        Some(&create_body("alice", "\"ledgers:read\"")),
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        server.request("GET", "/health", None, None).0,
        200,
        "the server stays up"
    );
    assert_eq!(
        forward(&key),
        204,
        "a key held in memory keeps working through a short outage"
    );

    postgres.start();
    let restarted = Instant::now();
    loop {
        let (status, body) = server.request("GET", "/api-keys?owner=alice", Some(MASTER), None);
        if status == 200 {
            assert!(body.contains(&field(&created, "api_key_id")), "{body}");
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "still {status} after PostgreSQL came back: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "served again {:?} after PostgreSQL restarted",
        restarted.elapsed()
    );
    let (status, created) = server.request(
        "POST",
        "/api-keys",
        Some(MASTER),
        Some(&create_body("alice", "\"ledgers:read\"")),
    );
    assert_eq!(status, 201, "{created}");
}
