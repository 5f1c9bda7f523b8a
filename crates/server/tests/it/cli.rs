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
        // The server hears of the change through the feed and meters by the new rules:
        // the old ones refuse every request (no credits left), the new ones admit one
        // and refuse the next. (Asking in pairs could straddle the change and spend the
        // new window's one request unseen.)
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = ask();
            if status == 200 {
                break;
            }
            assert_eq!(status, 429, "the old rules refuse");
            assert!(Instant::now() < deadline, "still refused by the old rules");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(ask(), 429, "one request an hour");

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

/// A 10,000-line import file: keys of keygate's shape and of others', good lines,
/// duplicates (of a line above, and of a key already stored) and bad lines, whose
/// numbers are returned with a word of what each is refused for.
fn import_file(
    dir: &Path,
    stored_secret: &str,
) -> (std::path::PathBuf, Vec<(usize, &'static str)>, Vec<String>) {
    use std::fmt::Write as _;
    let mut text = String::new();
    let mut bad = Vec::new();
    let mut good = Vec::new();
    let expires = support::next_year();
    for number in 1..=10_000usize {
        let line = match number % 500 {
            // Bad lines, each a different fault.
            7 => {
                bad.push((number, "scopes"));
                format!(
                    r#"{{"key":"bad-scope-key-{number:08}","name":"x","owner":"acme","scopes":["nope:read"],"expires_at":"{expires}"}}"#
                )
            }
            13 => {
                bad.push((number, "key"));
                format!(
                    r#"{{"key":"short","name":"x","owner":"acme","scopes":["ledgers:read"],"expires_at":"{expires}"}}"#
                )
            }
            17 => {
                bad.push((number, "expires_at"));
                format!(
                    r#"{{"key":"past-key-{number:012}","name":"x","owner":"acme","scopes":["ledgers:read"],"expires_at":"2020-01-01T00:00:00Z"}}"#
                )
            }
            19 => {
                bad.push((number, "JSON"));
                "{this is not json".to_owned()
            }
            23 => {
                bad.push((number, "name"));
                format!(
                    r#"{{"key":"no-name-key-{number:010}","owner":"acme","scopes":["ledgers:read"],"expires_at":"{expires}"}}"#
                )
            }
            37 => {
                bad.push((number, "JSON object"));
                format!(r#""bare-string-secret-{number:08}""#)
            }
            41 => {
                bad.push((number, "key: wrong type"));
                format!(
                    r#"{{"key":12345678901234567,"name":"x","owner":"acme","scopes":["ledgers:read"],"expires_at":"{expires}"}}"#
                )
            }
            43 => {
                bad.push((number, "is_revoked"));
                format!(
                    r#"{{"key":"revoked-key-{number:010}","is_revoked":true,"name":"x","owner":"acme","scopes":["ledgers:read"],"expires_at":"{expires}"}}"#
                )
            }
            47 => {
                bad.push((number, "master key"));
                format!(
                    r#"{{"key":"{MASTER}","name":"x","owner":"acme","scopes":["ledgers:read"],"expires_at":"{expires}"}}"#
                )
            }
            // A duplicate of the line before, and of a key already stored.
            29 => format!(
                r#"{{"key":"foreign-{:024}","name":"again","owner":"acme","scopes":["ledgers:read"],"expires_at":"{expires}"}}"#,
                number - 2
            ),
            31 => format!(
                r#"{{"key":"{stored_secret}","name":"stored","owner":"acme","scopes":["ledgers:read"],"expires_at":"{expires}"}}"#
            ),
            _ => {
                // Half of keygate's own shape, half another system's, with an id kept.
                let secret = if number % 2 == 0 {
                    format!("{:043}=", number).replace('0', "A")
                } else {
                    format!("foreign-{number:024}")
                };
                good.push(secret.clone());
                format!(
                    r#"{{"key":"{secret}","api_key_id":"api_key_imported-{number}","name":"imported {number}","owner":"acme","scopes":["ledgers:read"],"expires_at":"{expires}","created_at":"2025-06-01T12:00:00Z"}}"#
                )
            }
        };
        let _ = writeln!(text, "{line}");
    }
    let path = dir.join("keys.jsonl");
    std::fs::write(&path, text).expect("the import file is written");
    (path, bad, good)
}

#[test]
fn keys_are_imported_in_bulk_and_a_running_server_finds_them() {
    for db in TestDatabase::all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = serve(dir.path(), &db.url_string);
        let (stored, _) = {
            let body = format!(
                r#"{{"name":"made","owner":"acme","scopes":["ledgers:read"],"expires_at":"{}"}}"#,
                support::next_year()
            );
            let (status, body) = server.post("/api-keys", MASTER, &body);
            assert_eq!(status, 201, "{body}");
            (support::process::field(&body, "key"), ())
        };
        let (file, bad, good) = import_file(dir.path(), &stored);
        let file = file.to_string_lossy().into_owned();
        let listed = |server: &Running| -> usize {
            let (status, body) = server.get("/api-keys?owner=acme", Some(MASTER));
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<Vec<serde_json::Value>>(&body)
                .expect("a list")
                .len()
        };

        // Dry: every bad line named, the counts right, nothing stored.
        let dry = keygate(
            dir.path(),
            &db.url_string,
            &["keys", "import", &file, "--dry-run"],
        );
        assert!(!dry.status.success(), "refused lines fail the command");
        let summary: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("a summary");
        let duplicates = 10_000 / 500 * 2;
        assert_eq!(summary["refused"], bad.len(), "{summary}");
        assert_eq!(summary["duplicates"], duplicates, "{summary}");
        assert_eq!(summary["imported"], good.len(), "{summary}");
        assert_eq!(summary["dry_run"], true);
        let stderr = String::from_utf8_lossy(&dry.stderr);
        for (number, word) in &bad {
            let line = stderr
                .lines()
                .find(|line| line.starts_with(&format!("line {number}: ")))
                .unwrap_or_else(|| panic!("line {number} is named: {stderr}"));
            assert!(line.contains(word), "line {number} says {word}: {line}");
        }
        assert_eq!(stderr.matches("line ").count(), bad.len(), "{stderr}");
        for secret in [
            "bad-scope-key-",
            "past-key-",
            "no-name-key-",
            "bare-string-secret-",
            "12345678901234567",
            "revoked-key-",
        ] {
            assert!(!stderr.contains(secret), "no secret in a report: {secret}");
        }
        assert_eq!(listed(&server), 1, "a dry run stores nothing");

        // For real: the same counts, and then every key is there.
        let real = keygate(dir.path(), &db.url_string, &["keys", "import", &file]);
        let summary: serde_json::Value = serde_json::from_slice(&real.stdout).expect("a summary");
        assert_eq!(summary["imported"], good.len(), "{summary}");
        assert_eq!(summary["duplicates"], duplicates, "{summary}");
        assert_eq!(listed(&server), good.len() + 1);

        // The running server finds them, of either shape, within its poll period; their
        // scopes hold; an unknown key of a foreign length is still refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        for secret in [&good[0], &good[1], &good[good.len() - 1]] {
            while gateway(&server, secret, "GET") != 200 {
                assert!(Instant::now() < deadline, "an imported key is found");
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(
                gateway(&server, secret, "POST"),
                403,
                "imported scopes hold"
            );
        }
        let unknown = format!("foreign-{:024}", 999_999);
        assert_eq!(gateway(&server, &unknown, "GET"), 401);

        // Kept as they were: the id and the creation time, audited as imported.
        let (status, body) = server.get("/api-keys/api_key_imported-3?owner=acme", Some(MASTER));
        assert_eq!(status, 200, "{body}");
        let key: serde_json::Value = serde_json::from_str(&body).expect("a key");
        assert_eq!(key["created_at"], "2025-06-01T12:00:00Z");
        assert_eq!(key["name"], "imported 3");
        let (_, events) = server.get(
            "/api-keys/api_key_imported-3/events?owner=acme",
            Some(MASTER),
        );
        assert!(events.contains(r#""actor":"import""#), "{events}");

        // Again: nothing new.
        let again = keygate(dir.path(), &db.url_string, &["keys", "import", &file]);
        let summary: serde_json::Value = serde_json::from_slice(&again.stdout).expect("a summary");
        assert_eq!(summary["imported"], 0, "{summary}");
        assert_eq!(summary["duplicates"], good.len() + duplicates, "{summary}");
        assert_eq!(listed(&server), good.len() + 1);
        drop(server);
        // A new server, started afterwards, learns the lengths at start.
        let server = serve(dir.path(), &db.url_string);
        assert_eq!(gateway(&server, &good[0], "GET"), 200);
    }
}

/// What `/forward-auth` answers for `key` asking `method /ledgers`.
fn gateway(server: &Running, key: &str, method: &str) -> u16 {
    support::process::exchange(
        None,
        server.port,
        "GET",
        "/forward-auth",
        &[
            ("X-Original-Method", method),
            ("X-Original-URI", "/ledgers"),
            ("X-Blnk-Key", key),
        ],
        None,
    )
    .expect("keygate answers")
    .status
}

/// One key of a Blnk deployment, as Blnk kept it: a bcrypt hash (cost 10, Blnk's) and
/// the first 16 characters.
struct BlnkRow {
    id: String,
    secret: String,
    prefix: Option<String>,
    scopes: &'static str,
    expires_at: &'static str,
    revoked: bool,
}

impl BlnkRow {
    fn new(id: &str, scopes: &'static str) -> Self {
        let secret = keygate_core::PlainKey::generate()
            .expect("a key")
            .expose()
            .to_owned();
        BlnkRow {
            id: format!("api_key_{id}"),
            prefix: Some(secret[..16].to_owned()),
            secret,
            scopes,
            expires_at: "2099-01-01T00:00:00Z",
            revoked: false,
        }
    }

    fn insert(&self, schema: &str) -> String {
        let hash = bcrypt::hash(&self.secret, 10).expect("a bcrypt hash");
        let prefix = self
            .prefix
            .as_ref()
            .map_or("NULL".to_owned(), |prefix| format!("'{prefix}'"));
        let revoked_at = if self.revoked { "now()" } else { "NULL" };
        format!(
            "INSERT INTO {schema}.api_keys (api_key_id, key, key_prefix, name, owner_id, scopes, \
             expires_at, created_at, last_used_at, is_revoked, revoked_at) VALUES ('{}', '{hash}', \
             {prefix}, 'blnk {}', 'acme', '{}', '{}', '2025-03-01T10:00:00Z', \
             '2025-03-01T10:00:00Z', {}, {revoked_at});\n",
            self.id, self.id, self.scopes, self.expires_at, self.revoked
        )
    }
}

/// `keygate_legacy_checks_total` with `outcome`, read from `/metrics`.
fn legacy_checks(server: &Running, outcome: &str) -> u64 {
    let (status, body) = server.get("/metrics", Some(MASTER));
    assert_eq!(status, 200, "{body}");
    let series = format!("keygate_legacy_checks_total{{outcome=\"{outcome}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("{series} in {body}"))
        .parse()
        .expect("a count")
}

#[test]
fn a_blnk_deployments_keys_move_as_they_are_and_cost_bcrypt_once() {
    let Some(blnk) = TestDatabase::postgres() else {
        return;
    };
    let (server_url, schema) = blnk.postgres_schema().expect("a PostgreSQL schema");
    // Blnk's DDL, with its later key_prefix column.
    let mut sql = format!(
        "CREATE TABLE {schema}.api_keys (
            id SERIAL PRIMARY KEY,
            api_key_id TEXT NOT NULL UNIQUE,
            key TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            owner_id TEXT NOT NULL,
            scopes TEXT[] NOT NULL DEFAULT '{{}}',
            expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
            last_used_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
            is_revoked BOOLEAN NOT NULL DEFAULT FALSE,
            revoked_at TIMESTAMP WITH TIME ZONE
        );
        ALTER TABLE {schema}.api_keys ADD COLUMN IF NOT EXISTS key_prefix VARCHAR(16);\n"
    );
    let reader = BlnkRow::new("reader", "{ledgers:read}");
    let writer = BlnkRow::new("writer", "{ledgers:read,ledgers:write}");
    let revoked = BlnkRow {
        revoked: true,
        ..BlnkRow::new("revoked", "{ledgers:read}")
    };
    let expired = BlnkRow {
        expires_at: "2025-06-01T00:00:00Z",
        ..BlnkRow::new("expired", "{ledgers:read}")
    };
    let unused = BlnkRow::new("unused", "{ledgers:read}");
    // Refused: a scope keygate does not know; no prefix (findable only by a bcrypt check
    // against every key).
    let bad_scope = BlnkRow::new("bad-scope", "{ledgers:fly}");
    let no_prefix = BlnkRow {
        prefix: None,
        ..BlnkRow::new("no-prefix", "{ledgers:read}")
    };
    let good = [&reader, &writer, &revoked, &expired, &unused];
    for row in good.iter().copied().chain([&bad_scope, &no_prefix]) {
        sql.push_str(&row.insert(schema));
    }
    let created = Command::new("psql")
        .args([server_url, "-v", "ON_ERROR_STOP=1", "-qc", &sql])
        .output()
        .expect("psql runs");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    for db in TestDatabase::all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let import = |dry: bool| {
            let mut args = vec!["import", "blnk", "--schema", schema];
            if dry {
                args.push("--dry-run");
            }
            let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
                .current_dir(dir.path())
                .env_clear()
                .env("KEYGATE_DATABASE__URL", &db.url_string)
                .env("KEYGATE_SERVER__SECRET_KEY", MASTER)
                .env("KEYGATE_IMPORT_FROM", &blnk.url_string)
                .args(&args)
                .output()
                .expect("the binary runs");
            let summary: serde_json::Value =
                serde_json::from_slice(&output.stdout).expect("a summary");
            (output, summary)
        };

        // Dry: the refusals named by id and field, nothing stored.
        let (dry, summary) = import(true);
        assert!(!dry.status.success(), "refused rows fail the command");
        assert_eq!(summary["imported"], 5, "{summary}");
        assert_eq!(summary["refused"], 2, "{summary}");
        let stderr = String::from_utf8_lossy(&dry.stderr);
        assert!(stderr.contains("api_key_bad-scope: scopes"), "{stderr}");
        assert!(stderr.contains("api_key_no-prefix: key_prefix"), "{stderr}");
        assert!(!stderr.contains("$2"), "no hash in a report: {stderr}");
        let server = serve(dir.path(), &db.url_string);
        let (_, listed) = server.get("/api-keys?owner=acme", Some(MASTER));
        assert_eq!(listed, "[]", "a dry run stores nothing");

        // For real; the running server finds them within its poll period.
        let (_, summary) = import(false);
        assert_eq!(summary["imported"], 5, "{summary}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while gateway(&server, &reader.secret, "GET") != 200 {
            assert!(Instant::now() < deadline, "an imported Blnk key works");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Their scopes hold; revoked and expired keys do not authenticate; a key with a
        // known prefix and another ending does not either.
        assert_eq!(gateway(&server, &reader.secret, "POST"), 403);
        assert_eq!(gateway(&server, &writer.secret, "POST"), 200);
        assert_eq!(gateway(&server, &revoked.secret, "GET"), 401);
        assert_eq!(gateway(&server, &expired.secret, "GET"), 401);
        let forged = format!("{}{}", &unused.secret[..16], &reader.secret[16..]);
        assert_eq!(gateway(&server, &forged, "GET"), 401);
        // One bcrypt check for each key presented (reader, writer, revoked, expired),
        // whatever the number of uses; the forgery's check failed.
        assert_eq!(legacy_checks(&server, "matched"), 4);
        assert_eq!(legacy_checks(&server, "mismatched"), 1);
        for _ in 0..3 {
            assert_eq!(gateway(&server, &reader.secret, "GET"), 200);
            assert_eq!(gateway(&server, &expired.secret, "GET"), 401);
        }
        assert_eq!(
            legacy_checks(&server, "matched"),
            4,
            "no second bcrypt check"
        );

        // Kept as they were: id, owner, name, scopes, times, revocation; a hint of four
        // characters, never a hash.
        let (status, body) = server.get("/api-keys/api_key_revoked?owner=acme", Some(MASTER));
        assert_eq!(status, 200, "{body}");
        let key: serde_json::Value = serde_json::from_str(&body).expect("a key");
        assert_eq!(key["created_at"], "2025-03-01T10:00:00Z");
        assert_eq!(key["name"], "blnk api_key_revoked");
        assert_eq!(key["is_revoked"], true);
        assert_eq!(key["key"], format!("{}...", &revoked.secret[..4]));
        let (_, listed) = server.get("/api-keys?owner=acme", Some(MASTER));
        assert!(!listed.contains("$2"), "{listed}");
        let (_, events) = server.get("/api-keys/api_key_unused/events?owner=acme", Some(MASTER));
        assert!(events.contains(r#""actor":"import""#), "{events}");

        // After a restart, the first use costs no bcrypt: the digest is stored. The key
        // never presented still takes its one check.
        drop(server);
        let server = serve(dir.path(), &db.url_string);
        assert_eq!(gateway(&server, &reader.secret, "GET"), 200);
        assert_eq!(gateway(&server, &writer.secret, "POST"), 200);
        assert_eq!(gateway(&server, &revoked.secret, "GET"), 401);
        assert_eq!(legacy_checks(&server, "matched"), 0);
        assert_eq!(gateway(&server, &unused.secret, "GET"), 200);
        assert_eq!(legacy_checks(&server, "matched"), 1);

        // Again: nothing changes.
        let (_, summary) = import(false);
        assert_eq!(summary["imported"], 0, "{summary}");
        assert_eq!(summary["duplicates"], 5, "{summary}");
        assert_eq!(gateway(&server, &reader.secret, "GET"), 200);
        assert_eq!(legacy_checks(&server, "matched"), 1);
    }
}
