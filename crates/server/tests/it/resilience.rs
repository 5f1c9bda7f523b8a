//! The binary under faults: a crash right after a 201, a database that goes away and
//! comes back, oversized requests, and what reaches its logs.

use crate::support;
use keygate_storage::test_support::skip_unless_ci;

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

/// Creates a key for alice with `scopes` (JSON strings) through `server`, with the master
/// key; the key object.
fn create(server: &Running, scopes: &str) -> String {
    let (status, created) = server.request(
        "POST",
        "/api-keys",
        Some(MASTER),
        Some(&create_body("alice", scopes)),
    );
    assert_eq!(status, 201, "{created}");
    created
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
        let created = create(&server, "\"api-keys:read\"");
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
pub(crate) struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// `None` (having said so) where PostgreSQL's server programs are not installed.
    pub(crate) fn create() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|v| v.path().join("bin"))
                    .find(|bin| bin.join("initdb").exists())
            });
        let Some(bin) = bin else {
            skip_unless_ci(
                "outage test: no /usr/lib/postgresql/*/bin/initdb",
                "apt-get install postgresql",
            );
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

    pub(crate) fn start(&self) {
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

    pub(crate) fn stop(&self) {
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

    pub(crate) fn url(&self) -> String {
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
    let created = create(&server, "\"ledgers:read\"");
    let key = field(&created, "key");
    let forward = |key: &str| forward_auth(server.port, key).0;
    assert_eq!(
        forward(&key),
        200,
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
        200,
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
    create(&server, "\"ledgers:read\"");
}

/// The private server's processes (the postmaster and its children), stopped with SIGSTOP
/// as a frozen machine would be, and resumed when dropped.
struct Frozen(Vec<String>);

impl Frozen {
    fn freeze(postgres: &PrivatePostgres) -> Self {
        let pid_file = std::fs::read_to_string(postgres.data.join("postmaster.pid"))
            .expect("the postmaster's pid file");
        let postmaster = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut pids = vec![postmaster.clone()];
        for entry in std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(Result::ok)
        {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if parent == Some(postmaster.as_str()) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        assert!(pids.len() > 1, "the postmaster has children to freeze");
        signal("-STOP", &pids);
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

/// Signals each of `pids`; the first (the postmaster) must receive it, a child may
/// have exited meanwhile.
fn signal(signal: &str, pids: &[String]) {
    for (index, pid) in pids.iter().enumerate() {
        let status = Command::new("kill").args([signal, pid]).status();
        assert!(
            index > 0 || status.is_ok_and(|s| s.success()),
            "kill {signal} {pid}"
        );
    }
}

/// Asserts that `request` answers 503 within `within`.
fn unavailable_within(within: Duration, request: impl FnOnce() -> (u16, String)) {
    let asked = Instant::now();
    let (status, body) = request();
    let waited = asked.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("GEN_SERVICE_UNAVAILABLE"), "{body}");
    assert!(waited < within, "answered after {waited:?}");
}

#[test]
fn a_locked_or_frozen_database_gives_503_in_time_and_a_stop_stays_bounded() {
    let Some(postgres) = PrivatePostgres::create() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // The bound under test: the pool timeout, and a second.
    let bound = Duration::from_millis(1000) + Duration::from_secs(1);
    let server = start(
        dir.path(),
        &postgres.url(),
        &[
            ("KEYGATE_DATABASE__POOL_TIMEOUT_MS", "1000"),
            ("KEYGATE_AUTH__LAST_USED_FLUSH_MS", "3600000"),
        ],
    );
    let created = create(&server, "\"api-keys:read\"");
    let key = field(&created, "key");
    assert_eq!(server.request("GET", "/api-keys", Some(&key), None).0, 200);

    let mut locker = Command::new("psql")
        .arg(postgres.url())
        .args([
            "-qc",
            "BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql runs");
    std::thread::sleep(Duration::from_millis(500));
    unavailable_within(bound, || {
        server.request("GET", "/api-keys?owner=alice", Some(MASTER), None)
    });
    unavailable_within(bound, || {
        server.request(
            "POST",
            "/api-keys",
            Some(MASTER),
            Some(&create_body("alice", "\"ledgers:read\"")),
        )
    });
    let _ = locker.wait();

    let frozen = Frozen::freeze(&postgres);
    for _ in 0..3 {
        unavailable_within(bound, || {
            server.request("GET", "/api-keys?owner=alice", Some(MASTER), None)
        });
    }
    let asked = Instant::now();
    assert_eq!(server.request("GET", "/health", None, None).0, 200);
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "health waited"
    );

    // Stopping with usage pending and the database frozen: bounded, and said.
    let stopping = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status();
    let status = server.wait();
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "stopped after {:?}",
        stopping.elapsed()
    );
    assert!(status.success(), "{status}");
    drop(frozen);
    assert!(
        log(dir.path()).contains("could not record the last key usage"),
        "the lost usage is said: {}",
        log(dir.path())
            .lines()
            .filter(|line| !line.contains("INFO request"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Builds a shared object that moves the wall clock (`CLOCK_REALTIME`) of a process it
/// is preloaded into by `KEYGATE_TEST_CLOCK_SKEW_S` seconds, as on a machine whose clock
/// is off. `None` (having said so) without a C compiler.
fn clock_shim(dir: &Path) -> Option<PathBuf> {
    let source = dir.join("skew.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    const char *skew = getenv("KEYGATE_TEST_CLOCK_SKEW_S");
    if (rc == 0 && skew && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += atol(skew);
    return rc;
}
"#,
    )
    .expect("write the shim");
    let shim = dir.join("skew.so");
    let built = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .status()
        .is_ok_and(|status| status.success());
    if !built {
        skip_unless_ci("skewed-clock test: gcc is missing", "apt-get install gcc");
        return None;
    }
    Some(shim)
}

/// Polls `/forward-auth` with `key` until it is refused; how long after `since` that was.
fn refused_after(server: &Running, key: &str, since: Instant) -> Duration {
    loop {
        let (status, body) = forward_auth(server.port, key);
        if status == 401 {
            return since.elapsed();
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still accepted after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn revocations_reach_every_instance_whatever_their_clocks_say() {
    let shim_dir = tempfile::tempdir().expect("tempdir");
    let Some(shim) = clock_shim(shim_dir.path()) else {
        return;
    };
    let shim = shim.to_string_lossy().into_owned();
    for db in TestDatabase::all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let on_time = start(dir.path(), &db.url_string, &[]);
        let ahead_dir = tempfile::tempdir().expect("tempdir");
        let ahead = start(
            ahead_dir.path(),
            &db.url_string,
            &[("LD_PRELOAD", &shim), ("KEYGATE_TEST_CLOCK_SKEW_S", "6")],
        );
        let probe = create(&ahead, "\"ledgers:read\"");
        let created_at = chrono::DateTime::parse_from_rfc3339(&field(&probe, "created_at"))
            .expect("a timestamp");
        assert!(
            created_at > chrono::Utc::now() + chrono::Duration::seconds(4),
            "the shim moves the clock: {created_at}"
        );

        let mut keys = Vec::new();
        for _ in 0..2 {
            let created = create(&on_time, "\"ledgers:read\"");
            let key = field(&created, "key");
            for server in [&on_time, &ahead] {
                assert_eq!(forward_auth(server.port, &key).0, 200, "held by both");
            }
            keys.push((key, field(&created, "api_key_id")));
        }

        // Revoked from the command line on a machine 6 s behind.
        let (key, id) = &keys[0];
        let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["keys", "revoke", id, "--owner", "alice"])
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KEYGATE_DATABASE__URL", &db.url_string)
            .env("KEYGATE_SERVER__SECRET_KEY", MASTER)
            .env("LD_PRELOAD", &shim)
            .env("KEYGATE_TEST_CLOCK_SKEW_S", "-6")
            .output()
            .expect("the CLI runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let revoked = Instant::now();
        for server in [&on_time, &ahead] {
            let after = refused_after(server, key, revoked);
            eprintln!("a CLI revoke from a clock 6 s behind: refused {after:?} after it returned");
            assert!(
                after < Duration::from_secs(1),
                "{}: refused after {after:?}",
                db.url_string
            );
        }

        // Revoked on the on-time instance; the instance 6 s ahead must follow.
        let (key, id) = &keys[1];
        let (status, body) = on_time.request(
            "DELETE",
            &format!("/api-keys/{id}?owner=alice"),
            Some(MASTER),
            None,
        );
        assert_eq!(status, 204, "{body}");
        let revoked = Instant::now();
        let after = refused_after(&ahead, key, revoked);
        eprintln!("an instance 6 s ahead refused a revoked key {after:?} after the 204");
        assert!(
            after < Duration::from_secs(1),
            "{}: refused after {after:?}",
            db.url_string
        );
    }
}

/// What keygate on `port` answers a gateway asking whether `key` may `GET /ledgers`.
fn forward_auth(port: u16, key: &str) -> (u16, String) {
    let headers = [
        ("X-Blnk-Key", key),
        ("X-Original-Method", "GET"),
        ("X-Original-URI", "/ledgers"),
    ];
    support::process::http_from(None, port, "GET", "/forward-auth", &headers, None)
        .expect("keygate answers")
}
