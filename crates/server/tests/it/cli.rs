//! The `keygate` command line against the real database, beside the real server.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keygate_storage::test_support::TestDatabase;
use support::process::{Running, free_port};

const MASTER: &str = "cli-master-key-0123456";

fn keygate(dir: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
        .current_dir(dir)
        .env_clear()
        .env("KEYGATE_DATABASE__URL", url)
        .env("KEYGATE_SERVER__SECRET_KEY", MASTER)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

fn serve(dir: &Path, url: &str) -> Running {
    let port = free_port();
    let port_text = port.to_string();
    Running::start(
        dir,
        port,
        &[
            ("KEYGATE_SERVER__PORT", &port_text),
            ("KEYGATE_SERVER__SECRET_KEY", MASTER),
            ("KEYGATE_DATABASE__URL", url),
        ],
    )
}

#[test]
fn a_key_created_by_the_cli_works_on_a_server_started_afterwards() {
    for db in TestDatabase::all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let migrated = keygate(dir.path(), &db.url_string, &["migrate"]);
        assert!(
            migrated.status.success(),
            "{}",
            String::from_utf8_lossy(&migrated.stderr)
        );
        let created = json(&keygate(
            dir.path(),
            &db.url_string,
            &[
                "keys",
                "create",
                "--owner",
                "alice",
                "--name",
                "ops",
                "--scope",
                "api-keys:read",
                "--scope",
                "ledgers:*",
                "--expires-in",
                "30d",
            ],
        ));
        assert_eq!(created["owner_id"], "alice");
        assert_eq!(
            created["scopes"],
            serde_json::json!(["api-keys:read", "ledgers:*"])
        );
        let key = created["key"]
            .as_str()
            .expect("the plaintext, once")
            .to_owned();
        assert_eq!(key.len(), 44);
        let server = serve(dir.path(), &db.url_string);
        assert_eq!(
            server.get("/api-keys", Some(&key)).0,
            200,
            "{}",
            db.url_string
        );

        let id = created["api_key_id"].as_str().expect("an id");
        let (_, events) = server.get(&format!("/api-keys/{id}/events?owner=alice"), Some(MASTER));
        assert!(events.contains("\"actor\":\"cli\""), "{events}");
    }
}

#[test]
fn the_cli_lists_an_owners_keys_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::sqlite();
    let at = support::next_year();
    let created = json(&keygate(
        dir.path(),
        &db.url_string,
        &[
            "keys",
            "create",
            "--owner",
            "bob",
            "--name",
            "n",
            "--scope",
            "balances:read",
            "--expires-at",
            &at,
        ],
    ));
    let listed = json(&keygate(
        dir.path(),
        &db.url_string,
        &["keys", "list", "--owner", "bob"],
    ));
    let listed = listed.as_array().expect("a JSON array");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["api_key_id"], created["api_key_id"]);
    assert_eq!(listed[0]["expires_at"], at.as_str());
    assert_ne!(listed[0]["key"], created["key"], "never the secret again");
    let nobody = json(&keygate(
        dir.path(),
        &db.url_string,
        &["keys", "list", "--owner", "nobody"],
    ));
    assert_eq!(nobody, serde_json::json!([]));
}

#[test]
fn a_key_revoked_by_the_cli_fails_on_a_running_server() {
    for db in TestDatabase::all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = serve(dir.path(), &db.url_string);
        let created = json(&keygate(
            dir.path(),
            &db.url_string,
            &[
                "keys",
                "create",
                "--owner",
                "alice",
                "--name",
                "n",
                "--scope",
                "api-keys:read",
                "--expires-in",
                "1h",
            ],
        ));
        let (key, id) = (
            created["key"].as_str().expect("key"),
            created["api_key_id"].as_str().expect("id"),
        );
        assert_eq!(
            server.get("/api-keys", Some(key)).0,
            200,
            "cached by the server"
        );
        let revoked = json(&keygate(
            dir.path(),
            &db.url_string,
            &["keys", "revoke", id, "--owner", "alice"],
        ));
        assert_eq!(revoked["is_revoked"], true);
        let since = Instant::now();
        while server.get("/api-keys", Some(key)).0 != 401 {
            assert!(
                since.elapsed() < Duration::from_secs(1),
                "still accepted 1 s after the CLI revoked it"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let missing = keygate(
            dir.path(),
            &db.url_string,
            &["keys", "revoke", id, "--owner", "mallory"],
        );
        assert!(!missing.status.success());
        assert!(String::from_utf8_lossy(&missing.stderr).contains("has no key"));
    }
}

#[test]
fn the_cli_explains_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::sqlite();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "keys",
                "create",
                "--owner",
                "o",
                "--name",
                "n",
                "--scope",
                "ledgers:update",
                "--expires-in",
                "1d",
            ],
            "update",
        ),
        (
            &[
                "keys",
                "create",
                "--owner",
                "o",
                "--name",
                "n",
                "--scope",
                "ledger:read",
                "--expires-in",
                "1d",
            ],
            "ledger",
        ),
        (
            &[
                "keys",
                "create",
                "--owner",
                "o",
                "--name",
                "n",
                "--scope",
                "ledgers:read",
                "--expires-in",
                "soon",
            ],
            "--expires-in",
        ),
        (
            &[
                "keys",
                "create",
                "--owner",
                "o",
                "--name",
                "n",
                "--scope",
                "ledgers:read",
                "--expires-in",
                "3日",
            ],
            "--expires-in",
        ),
        (
            &[
                "keys",
                "create",
                "--owner",
                "o",
                "--name",
                "n",
                "--scope",
                "ledgers:read",
            ],
            "--expires",
        ),
        (
            &[
                "keys",
                "create",
                "--owner",
                "o",
                "--name",
                "n",
                "--scope",
                "ledgers:read",
                "--expires-in",
                "40000d",
            ],
            "3650 days",
        ),
        (&["keys", "list"], "--owner"),
    ];
    for (args, mentions) in cases {
        let output = keygate(dir.path(), &db.url_string, args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}

#[test]
fn the_cli_sets_and_changes_metering_and_a_running_server_follows() {
    for db in TestDatabase::all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cli = |args: &[&str]| keygate(dir.path(), &db.url_string, args);
        let created = json(&cli(&[
            "keys",
            "create",
            "--owner",
            "alice",
            "--name",
            "metered",
            "--scope",
            "ledgers:read",
            "--expires-in",
            "30d",
            "--rate-limit",
            "100/1m",
            "--credits",
            "2",
            "--refill",
            "500/monthly",
        ]));
        assert_eq!(
            created["ratelimit"],
            serde_json::json!({"limit": 100, "window_ms": 60000})
        );
        assert_eq!(
            created["credits"],
            serde_json::json!({"remaining": 2, "refill": {"amount": 500, "interval": "monthly"}})
        );
        let key = created["key"].as_str().expect("a key").to_owned();
        let id = created["api_key_id"].as_str().expect("an id").to_owned();

        let server = serve(dir.path(), &db.url_string);
        let ask = || {
            let headers = [
                ("X-Blnk-Key", key.as_str()),
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/ledgers"),
            ];
            support::process::http_from(None, server.port, "GET", "/forward-auth", &headers, None)
                .expect("keygate answers")
                .0
        };
        assert_eq!((ask(), ask(), ask()), (200, 200, 429), "two credits");

        let updated = json(&cli(&[
            "keys",
            "update",
            &id,
            "--owner",
            "alice",
            "--credits",
            "none",
            "--rate-limit",
            "1/1h",
        ]));
        assert!(updated.get("credits").is_none(), "{updated}");
        assert_eq!(
            updated["ratelimit"],
            serde_json::json!({"limit": 1, "window_ms": 3600000})
        );
        // The server hears of the change through the feed and meters by the new rules.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let statuses = (ask(), ask());
            if statuses == (200, 429) {
                break;
            }
            assert!(Instant::now() < deadline, "still {statuses:?}");
            std::thread::sleep(Duration::from_millis(100));
        }

        for (args, says) in [
            (
                &["keys", "update", &id, "--owner", "alice"][..],
                "give at least one",
            ),
            (
                &[
                    "keys",
                    "update",
                    &id,
                    "--owner",
                    "alice",
                    "--rate-limit",
                    "100/1y",
                ][..],
                "--rate-limit",
            ),
            (
                &["keys", "update", &id, "--owner", "alice", "--credits=-5"][..],
                "--credits",
            ),
            (
                &[
                    "keys",
                    "update",
                    &id,
                    "--owner",
                    "alice",
                    "--credits",
                    "5",
                    "--refill",
                    "5/weekly",
                ][..],
                "--credits-refill",
            ),
            (
                &[
                    "keys",
                    "update",
                    "api_key_nope",
                    "--owner",
                    "alice",
                    "--name",
                    "x",
                ][..],
                "has no key",
            ),
        ] {
            let output = cli(args);
            assert!(!output.status.success(), "{args:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains(says), "{args:?}: {stderr}");
        }
    }
}
