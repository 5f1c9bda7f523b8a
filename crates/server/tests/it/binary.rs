//! The `keygate` binary as an operator runs it: no configuration at all, keygate's own
//! environment names, and Blnk's.

use crate::support;

use std::process::Command;

use keygate_storage::test_support::TestDatabase;
use support::process::{Running, field, free_port, log};

#[test]
fn with_no_configuration_it_serves_on_5001_with_a_generated_master_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Running::start(dir.path(), 5001, &[]);
    let key_file = dir.path().join("keygate-master.key");
    let master = std::fs::read_to_string(&key_file).expect("the master key file exists");
    let master = master.trim().to_owned();
    assert_eq!(master.len(), 44);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "readable only by its owner");
    }
    assert!(
        dir.path().join("keygate.db").exists(),
        "SQLite is the default"
    );
    let first_log = log(dir.path());
    assert!(
        first_log.contains("keygate-master.key"),
        "the user is told where the key is: {first_log}"
    );
    assert!(
        !first_log.contains(&master),
        "the key itself is never printed"
    );
    assert_eq!(server.get("/api-keys?owner=me", Some(&master)).0, 200);
    assert_eq!(
        server.get("/api-keys?owner=me", None).0,
        401,
        "secure by default"
    );
    assert!(server.stop().success(), "a SIGTERM stop exits 0");

    let server = Running::start(dir.path(), 5001, &[]);
    assert_eq!(
        server.get("/api-keys?owner=me", Some(&master)).0,
        200,
        "the same key on the next start"
    );
    assert!(
        !log(dir.path()).contains("generated"),
        "the creation notice is printed once only"
    );
}

#[test]
fn keygate_environment_names_configure_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!(
        "sqlite://{}",
        dir.path().join("data").join("keys.db").display()
    );
    let server = Running::start(
        dir.path(),
        port,
        &[
            ("KEYGATE_SERVER__PORT", &port.to_string()),
            ("KEYGATE_SERVER__SECRET_KEY", "keygate-env-master"),
            ("KEYGATE_DATABASE__URL", &url),
        ],
    );
    assert_eq!(
        server
            .get("/api-keys?owner=me", Some("keygate-env-master"))
            .0,
        200
    );
    assert!(dir.path().join("data").join("keys.db").exists());
    assert!(
        !dir.path().join("keygate-master.key").exists(),
        "no key is generated when one is configured"
    );
}

#[test]
fn blnk_environment_names_configure_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let db = TestDatabase::postgres().unwrap_or_else(TestDatabase::sqlite);
    let server = Running::start(
        dir.path(),
        port,
        &[
            ("BLNK_SERVER_PORT", &port.to_string()),
            ("BLNK_SERVER_SECRET_KEY", "blnk-env-master-key"),
            ("BLNK_DATA_SOURCE_DNS", &db.url_string),
            ("BLNK_SERVER_SECURE", "true"),
        ],
    );
    assert_eq!(
        server
            .get("/api-keys?owner=me", Some("blnk-env-master-key"))
            .0,
        200
    );
    assert_eq!(server.get("/api-keys?owner=me", Some("wrong")).0, 401);
    drop(server);

    let port = free_port();
    let open = Running::start(
        dir.path(),
        port,
        &[
            ("BLNK_SERVER_PORT", &port.to_string()),
            ("BLNK_DATA_SOURCE_DNS", &db.url_string),
            ("BLNK_SERVER_SECURE", "false"),
        ],
    );
    assert_eq!(
        open.get("/api-keys?owner=me", None).0,
        200,
        "BLNK_SERVER_SECURE=false turns checks off"
    );
    assert!(
        log(dir.path()).contains("SECURE MODE IS OFF"),
        "and says so loudly"
    );
}

#[test]
fn a_bad_configuration_stops_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .current_dir(dir.path())
        .env_clear()
        .env("KEYGATE_DATABASE__URL", "mysql://root@localhost/keys")
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unsupported database URL"), "{stderr}");
}

#[test]
fn pending_key_usage_is_written_on_a_graceful_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let env = [
        ("KEYGATE_SERVER__PORT", port.to_string()),
        (
            "KEYGATE_SERVER__SECRET_KEY",
            "shutdown-master-key".to_owned(),
        ),
        ("KEYGATE_AUTH__LAST_USED_FLUSH_MS", "3600000".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Running::start(dir.path(), port, &env);
    let body = format!(
        r#"{{"name":"n","owner":"alice","scopes":["api-keys:read"],"expires_at":"{}"}}"#,
        support::next_year()
    );
    let (status, created) = server.post("/api-keys", "shutdown-master-key", &body);
    assert_eq!(status, 201, "{created}");
    let key = field(&created, "key");
    assert_eq!(server.get("/api-keys", Some(&key)).0, 200);
    assert!(server.stop().success(), "SIGTERM exits 0");

    let _ = std::fs::remove_file(dir.path().join("stderr.log"));
    let port = free_port();
    let env = [
        ("KEYGATE_SERVER__PORT", port.to_string()),
        (
            "KEYGATE_SERVER__SECRET_KEY",
            "shutdown-master-key".to_owned(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Running::start(dir.path(), port, &env);
    let (status, listed) = server.get("/api-keys?owner=alice", Some("shutdown-master-key"));
    assert_eq!(status, 200);
    assert!(
        listed.contains("\"last_used_at\":\"20"),
        "the use before the stop was recorded: {listed}"
    );
}

/// Runs the binary with only `env`, expecting it to refuse to start; its stderr.
fn refused_start(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    command.current_dir(dir.path()).env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{env:?} must not start: {stderr}");
    stderr
}

#[test]
fn settings_outside_their_range_stop_the_start_with_one_line_naming_them() {
    let cases = [
        (("BLNK_SERVER_SECRET_KEY", "1"), "server.secret_key"),
        (
            ("KEYGATE_SERVER__SECRET_KEY", "a-long-enough-master-key\n"),
            "server.secret_key",
        ),
        (
            ("KEYGATE_AUTH__MAX_KEY_LIFETIME_DAYS", "4294967295"),
            "auth.max_key_lifetime_days",
        ),
        (("KEYGATE_DATABASE__POOL_SIZE", "0"), "database.pool_size"),
    ];
    for ((variable, value), setting) in cases {
        let stderr = refused_start(&[(variable, value), ("KEYGATE_SERVER__PORT", "0")]);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains(setting), "{variable}: {stderr}");
        assert!(
            !variable.contains("SECRET")
                || value.trim().len() < 8
                || !stderr.contains(value.trim()),
            "the secret is not shown: {stderr}"
        );
    }
}

#[test]
fn with_secure_mode_off_the_warning_reaches_stderr_whatever_the_log_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("a log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .current_dir(dir.path())
        .env_clear()
        .env("RUST_LOG", "error")
        .env("BLNK_SERVER_SECURE", "false")
        .env("KEYGATE_SERVER__PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("the binary starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while support::process::http(port, "GET", "/health", None, None).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "keygate did not answer"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log(dir.path());
    assert!(log.contains("SECURE MODE IS OFF"), "{log:?}");
}

#[test]
fn three_simultaneous_first_starts_all_serve_with_one_master_key() {
    for round in 0..10 {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut children: Vec<std::process::Child> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let stderr = std::fs::File::create(dir.path().join(format!("stderr-{i}.log")))
                    .expect("a log file");
                Command::new(env!("CARGO_BIN_EXE_keygate"))
                    .current_dir(dir.path())
                    .env_clear()
                    .env("KEYGATE_SERVER__PORT", port.to_string())
                    .stdout(std::process::Stdio::null())
                    .stderr(stderr)
                    .spawn()
                    .expect("the binary starts")
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for (i, port) in ports.iter().enumerate() {
            while support::process::http(*port, "GET", "/health", None, None).is_none() {
                if let Ok(Some(status)) = children[i].try_wait() {
                    let log = std::fs::read_to_string(dir.path().join(format!("stderr-{i}.log")));
                    panic!("round {round}: start {i} exited with {status}: {log:?}");
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: start {i} hangs"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let master = std::fs::read_to_string(dir.path().join("keygate-master.key"))
            .expect("one master key file");
        for port in &ports {
            let (status, body) = support::process::http(
                *port,
                "GET",
                "/api-keys?owner=me",
                Some(master.trim()),
                None,
            )
            .expect("answers");
            assert_eq!(
                status, 200,
                "round {round}: every start uses the same key: {body}"
            );
        }
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".keygate-master"))
            .collect();
        assert!(leftovers.is_empty(), "drafts left: {leftovers:?}");
    }
}
