//! The storage suite: every test runs against a real SQLite file and, when
//! KEYGATE_TEST_POSTGRES_URL is set, a private schema on a real PostgreSQL server.

use std::collections::HashSet;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use keygate_core::{
    Actor, ApiKey, ApiKeyId, Change, ChangeCursor, EventDetails, EventKind, KeySpec, KeyStore,
    NewEvent, PlainKey, StoreError,
};
use keygate_storage::test_support::{Lock, TestDatabase};
use keygate_storage::{Database, PoolOptions};

fn open(test_db: &TestDatabase) -> Database {
    Database::connect(&test_db.url, &PoolOptions::default()).expect("the test database opens")
}

/// Runs `check` once per available backend, each on its own fresh database.
fn on_each_backend(check: impl Fn(&Database)) {
    for test_db in TestDatabase::all() {
        let db = open(&test_db);
        check(&db);
    }
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn new_key(owner: &str, scopes: &[&str], created_at: DateTime<Utc>) -> (PlainKey, ApiKey) {
    let spec = KeySpec::new(
        "service",
        owner,
        scopes,
        created_at + Duration::days(30),
        created_at,
    )
    .expect("a valid spec");
    let plain = PlainKey::generate().expect("randomness");
    let key = ApiKey::issue(spec, &plain, created_at);
    (plain, key)
}

#[test]
fn a_stored_key_is_found_by_its_hash_exactly_as_written() {
    on_each_backend(|db| {
        let (plain, key) = new_key("owner_1", &["ledgers:read", "balances:*", "*:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        let found = db.find_by_hash(&plain.hash()).expect("lookup");
        assert_eq!(found.as_ref(), Some(&key), "{}", db.backend());
    });
}

#[test]
fn keys_are_found_by_many_hashes_at_once() {
    on_each_backend(|db| {
        let keys: Vec<(PlainKey, ApiKey)> = (0..3)
            .map(|_| new_key("many", &["ledgers:read"], now()))
            .collect();
        for (_, key) in &keys {
            db.insert(key, &Actor::Master).expect("insert");
        }
        let unknown = PlainKey::generate().expect("a key").hash();
        let mut found = db
            .find_by_hashes(&[keys[2].0.hash(), unknown, keys[0].0.hash()])
            .expect("lookup");
        found.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        let mut expected = vec![keys[0].1.clone(), keys[2].1.clone()];
        expected.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        assert_eq!(found, expected, "{}", db.backend());
        assert!(db.find_by_hashes(&[]).expect("lookup").is_empty());
    });
}

#[test]
fn an_unknown_hash_finds_nothing() {
    on_each_backend(|db| {
        let (_, key) = new_key("owner_1", &["ledgers:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        let stranger = PlainKey::generate().expect("randomness");
        assert_eq!(db.find_by_hash(&stranger.hash()).expect("lookup"), None);
    });
}

#[test]
fn a_duplicate_id_or_hash_is_a_conflict() {
    on_each_backend(|db| {
        let (_, key) = new_key("owner_1", &["ledgers:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        let same_id = ApiKey {
            hash: PlainKey::generate().expect("randomness").hash(),
            ..key.clone()
        };
        assert!(
            matches!(
                db.insert(&same_id, &Actor::Master),
                Err(StoreError::Conflict(_))
            ),
            "{}",
            db.backend()
        );
        let same_hash = ApiKey {
            id: ApiKeyId::generate(),
            ..key.clone()
        };
        assert!(
            matches!(
                db.insert(&same_hash, &Actor::Master),
                Err(StoreError::Conflict(_))
            ),
            "{}",
            db.backend()
        );
    });
}

#[test]
fn listing_returns_the_owners_keys_newest_first() {
    on_each_backend(|db| {
        let start = now();
        let (_, oldest) = new_key("alice", &["ledgers:read"], start - Duration::seconds(20));
        let (_, newest) = new_key("alice", &["ledgers:read"], start);
        let (_, middle) = new_key(
            "alice",
            &["ledgers:read"],
            start - Duration::milliseconds(1500),
        );
        let (_, other) = new_key("bob", &["ledgers:read"], start);
        for key in [&oldest, &newest, &middle, &other] {
            db.insert(key, &Actor::Master).expect("insert");
        }
        let listed: Vec<ApiKeyId> = db
            .list_by_owner("alice")
            .expect("list")
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(
            listed,
            vec![newest.id, middle.id, oldest.id],
            "{}",
            db.backend()
        );
    });
}

#[test]
fn an_owner_without_keys_lists_nothing() {
    on_each_backend(|db| {
        assert_eq!(db.list_by_owner("nobody").expect("list"), Vec::new());
    });
}

#[test]
fn revoking_marks_the_key_and_keeps_the_first_revocation_time() {
    on_each_backend(|db| {
        let (plain, key) = new_key("alice", &["ledgers:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        let first = now();
        let revoked = db
            .revoke(&key.id, "alice", first, &Actor::Master)
            .expect("revoke")
            .expect("found");
        assert_eq!(revoked.revoked_at, Some(first));
        let again = db
            .revoke(
                &key.id,
                "alice",
                first + Duration::seconds(5),
                &Actor::Master,
            )
            .expect("revoke")
            .expect("found");
        assert_eq!(again.revoked_at, Some(first), "{}", db.backend());
        let stored = db
            .find_by_hash(&plain.hash())
            .expect("lookup")
            .expect("found");
        assert!(stored.is_revoked());
    });
}

#[test]
fn another_owners_key_is_never_revoked() {
    on_each_backend(|db| {
        let (plain, key) = new_key("alice", &["ledgers:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        assert_eq!(
            db.revoke(&key.id, "mallory", now(), &Actor::Master)
                .expect("revoke"),
            None
        );
        assert_eq!(
            db.revoke(
                &ApiKeyId::new("api_key_missing"),
                "alice",
                now(),
                &Actor::Master
            )
            .expect("revoke"),
            None
        );
        let stored = db
            .find_by_hash(&plain.hash())
            .expect("lookup")
            .expect("found");
        assert!(!stored.is_revoked(), "{}", db.backend());
    });
}

#[test]
fn last_used_is_written_in_one_batch_and_never_moves_back() {
    on_each_backend(|db| {
        let start = now();
        let keys: Vec<(PlainKey, ApiKey)> = (0..3)
            .map(|_| new_key("alice", &["ledgers:read"], start))
            .collect();
        for (_, key) in &keys {
            db.insert(key, &Actor::Master).expect("insert");
        }
        let later = start + Duration::seconds(10);
        let uses: Vec<(ApiKeyId, DateTime<Utc>)> =
            keys.iter().map(|(_, k)| (k.id.clone(), later)).collect();
        assert_eq!(
            db.record_last_used(&uses).expect("record"),
            3,
            "{}",
            db.backend()
        );

        let stale = vec![(keys[0].1.id.clone(), start + Duration::seconds(1))];
        assert_eq!(
            db.record_last_used(&stale).expect("record"),
            0,
            "{}",
            db.backend()
        );
        let found = db
            .find_by_hash(&keys[0].0.hash())
            .expect("lookup")
            .expect("found");
        assert_eq!(found.last_used_at, Some(later), "{}", db.backend());
    });
}

#[test]
fn last_used_batches_larger_than_one_statement_are_all_written() {
    on_each_backend(|db| {
        let start = now();
        let keys: Vec<ApiKey> = (0..1203)
            .map(|_| new_key("bulk", &["ledgers:read"], start).1)
            .collect();
        for key in &keys {
            db.insert(key, &Actor::Master).expect("insert");
        }
        let uses: Vec<(ApiKeyId, DateTime<Utc>)> =
            keys.iter().map(|k| (k.id.clone(), start)).collect();
        assert_eq!(
            db.record_last_used(&uses).expect("record"),
            keys.len(),
            "{}",
            db.backend()
        );
        assert!(
            db.list_by_owner("bulk")
                .expect("list")
                .iter()
                .all(|k| k.last_used_at == Some(start))
        );
    });
}

/// More uses than one statement of either backend takes (SQLite binds 500 rows a
/// statement, PostgreSQL sends 10,000 rows an array): the keys that exist, sorted after
/// 10,000 that do not, are written by the last statement.
#[test]
fn last_used_batches_larger_than_one_array_are_all_written() {
    on_each_backend(|db| {
        let start = now();
        let keys: Vec<(PlainKey, ApiKey)> = (0..3)
            .map(|_| new_key("arrays", &["ledgers:read"], start))
            .collect();
        for (_, key) in &keys {
            db.insert(key, &Actor::Master).expect("insert");
        }
        let later = start + Duration::seconds(30);
        let mut uses: Vec<(ApiKeyId, DateTime<Utc>)> = (0..10_000)
            .map(|i| (ApiKeyId::new(format!("api_key_0-absent-{i:05}")), later))
            .collect();
        uses.extend(keys.iter().map(|(_, k)| (k.id.clone(), later)));
        assert_eq!(
            db.record_last_used(&uses).expect("record"),
            3,
            "{}",
            db.backend()
        );
        for (plain, _) in &keys {
            let found = db
                .find_by_hash(&plain.hash())
                .expect("lookup")
                .expect("found");
            assert_eq!(found.last_used_at, Some(later), "{}", db.backend());
        }
    });
}

/// Counts of more keys than one statement of either backend takes are all added.
#[test]
fn usage_of_more_keys_than_one_array_is_all_added() {
    on_each_backend(|db| {
        let hour: DateTime<Utc> = "2026-11-27T10:00:00Z".parse().expect("a time");
        let counts: Vec<keygate_core::UsageCount> = (0..10_001)
            .map(|i| keygate_core::UsageCount {
                key: ApiKeyId::new(format!("api_key_usage-{i:05}")),
                at: hour,
                allowed: i,
                denied: 1,
                rate_limited: 0,
                usage_exceeded: 2,
            })
            .collect();
        db.add_usage(&counts).expect("add");
        db.add_usage(&counts[10_000..]).expect("add again");
        for (i, expected) in [(0, 0), (9_999, 9_999), (10_000, 20_000)] {
            let usage = db
                .usage(&counts[i].key, hour, hour + Duration::hours(1))
                .expect("read");
            assert_eq!(usage.len(), 1, "{} key {i}", db.backend());
            assert_eq!(usage[0].allowed, expected, "{} key {i}", db.backend());
            let times = if i == 10_000 { 2 } else { 1 };
            assert_eq!(usage[0].denied, times, "{} key {i}", db.backend());
            assert_eq!(
                usage[0].usage_exceeded,
                2 * times,
                "{} key {i}",
                db.backend()
            );
        }
    });
}

/// On PostgreSQL a `last_used_at` write keeps each key on its page (a heap-only
/// update, which writes none of the table's indexes): pages keep room for it. Full
/// pages moved a page's first written key to another page, with four index entries.
/// One flush writes two keys of every page, as a busy instance's flushes do: room that
/// must not depend on old versions being pruned first, which any session of the same
/// server holding a snapshot (another test's) puts off.
#[test]
fn postgres_last_used_writes_keep_keys_on_their_pages() {
    use diesel::prelude::*;
    let Some(test_db) = TestDatabase::postgres() else {
        return;
    };
    let db = open(&test_db);
    let start = now();
    let keys: Vec<ApiKey> = (0..80)
        .map(|_| new_key("pages", &["ledgers:read"], start).1)
        .collect();
    for key in &keys {
        db.insert(key, &Actor::Master).expect("insert");
    }
    #[derive(QueryableByName, PartialEq, Debug)]
    struct Place {
        #[diesel(sql_type = diesel::sql_types::Text)]
        api_key_id: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        page: String,
    }
    let mut conn = diesel::PgConnection::establish(&test_db.url_string).expect("a connection");
    let places = |conn: &mut diesel::PgConnection| -> Vec<Place> {
        diesel::sql_query(
            "SELECT api_key_id, split_part(ctid::text, ',', 1) AS page FROM api_keys \
             ORDER BY api_key_id",
        )
        .load(conn)
        .expect("read the rows' places")
    };
    let before = places(&mut conn);
    assert!(
        before.iter().map(|p| &p.page).collect::<HashSet<_>>().len() > 1,
        "the keys fill more than one page"
    );
    // Two keys of each page, well within the tenth of a page kept free.
    let mut by_page: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for place in &before {
        by_page
            .entry(&place.page)
            .or_default()
            .push(&place.api_key_id);
    }
    let uses: Vec<(ApiKeyId, DateTime<Utc>)> = by_page
        .values()
        .flat_map(|ids| ids.iter().take(2))
        .map(|id| (ApiKeyId::new(*id), start + Duration::seconds(1)))
        .collect();
    assert_eq!(db.record_last_used(&uses).expect("record"), uses.len());
    assert_eq!(
        places(&mut conn),
        before,
        "a written key moved to another page"
    );
}

#[test]
fn concurrent_writers_all_succeed() {
    on_each_backend(|db| {
        let written: Vec<ApiKey> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..25)
                            .map(|_| {
                                let (_, key) = new_key("busy", &["ledgers:read"], now());
                                db.insert(&key, &Actor::Master)
                                    .expect("a concurrent insert succeeds");
                                db.revoke(&key.id, "busy", now(), &Actor::Cli)
                                    .expect("a concurrent revoke succeeds");
                                key
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            writers
                .into_iter()
                .flat_map(|w| w.join().expect("writer thread"))
                .collect()
        });
        let listed = db.list_by_owner("busy").expect("list");
        assert_eq!(listed.len(), written.len(), "{}", db.backend());
        assert!(listed.iter().all(ApiKey::is_revoked));
    });
}

#[test]
fn reopening_a_migrated_database_keeps_its_keys() {
    for test_db in TestDatabase::all() {
        let (plain, key) = new_key("alice", &["ledgers:read"], now());
        open(&test_db).insert(&key, &Actor::Master).expect("insert");
        let reopened = open(&test_db);
        assert_eq!(
            reopened.find_by_hash(&plain.hash()).expect("lookup"),
            Some(key)
        );
    }
}

#[cfg(unix)]
#[test]
fn a_new_sqlite_file_and_its_journal_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let test_db = TestDatabase::sqlite();
    let path = test_db.sqlite_path().expect("a SQLite file").to_owned();
    let (_, key) = new_key("alice", &["ledgers:read"], now());
    let db = open(&test_db);
    db.insert(&key, &Actor::Master).expect("insert");
    let mut files = 0;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if let Ok(metadata) = std::fs::metadata(&file) {
            files += 1;
            let mode = metadata.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
        }
    }
    assert!(files >= 2, "the database and its write-ahead log exist");
}

#[test]
fn the_change_feed_returns_every_change_after_its_cursor() {
    on_each_backend(|db| {
        let start = db.changes_after(None).expect("feed");
        assert!(start.keys.is_empty(), "no cursor: the present, and no keys");
        let (revoked_plain, revoked) = new_key("alice", &["ledgers:read"], now());
        let (_, untouched) = new_key("alice", &["ledgers:read"], now());
        db.insert(&revoked, &Actor::Master).expect("insert");
        db.insert(&untouched, &Actor::Master).expect("insert");
        let created = db.changes_after(Some(start.next)).expect("feed");
        assert_eq!(created.keys, Vec::new(), "creation is not a change");
        db.revoke(
            &revoked.id,
            "alice",
            now(),
            &Actor::Key(untouched.id.clone()),
        )
        .expect("revoke");
        for cursor in [start.next, created.next] {
            let changes = db.changes_after(Some(cursor)).expect("feed");
            assert_eq!(changes.keys, vec![revoked_plain.hash()], "{}", db.backend());
            assert!(changes.next >= cursor, "cursors never go back");
        }
        let read = db.changes_after(Some(created.next)).expect("feed");
        db.revoke(&revoked.id, "alice", now(), &Actor::Master)
            .expect("revoke again");
        let again = db.changes_after(Some(read.next)).expect("feed");
        assert!(
            again.keys.iter().all(|hash| *hash == revoked_plain.hash()),
            "revoking a revoked key records nothing new"
        );
    });
}

#[test]
fn a_commit_delayed_behind_a_lock_is_read_after_the_cursor_taken_while_it_waited() {
    for test_db in TestDatabase::all() {
        let db = std::sync::Arc::new(open(&test_db));
        let (plain, key) = new_key("alice", &["ledgers:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        let before = db.changes_after(None).expect("feed").next;
        let release = test_db.hold_lock(Lock::Row(key.id.as_str()));
        let revoking = {
            let (db, id) = (db.clone(), key.id.clone());
            // Stamped now, committed well after: the stamp must not matter.
            let at = now() - Duration::minutes(10);
            std::thread::spawn(move || db.revoke(&id, "alice", at, &Actor::Master))
        };
        std::thread::sleep(std::time::Duration::from_millis(400));
        let during = db.changes_after(Some(before)).expect("feed");
        assert!(
            during.keys.is_empty(),
            "not committed yet ({})",
            db.backend()
        );
        std::thread::sleep(std::time::Duration::from_millis(600));
        drop(release);
        let revoked = revoking.join().expect("no panic").expect("revoked");
        assert!(revoked.is_some());
        let after = db.changes_after(Some(during.next)).expect("feed");
        assert_eq!(after.keys, vec![plain.hash()], "{}", db.backend());
    }
}

#[test]
fn get_finds_only_the_owners_key() {
    on_each_backend(|db| {
        let (_, key) = new_key("alice", &["ledgers:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        assert_eq!(db.get(&key.id, "alice").expect("get"), Some(key.clone()));
        assert_eq!(
            db.get(&key.id, "bob").expect("get"),
            None,
            "{}",
            db.backend()
        );
    });
}

#[test]
fn replace_is_conditional_on_the_key_as_read_and_records_the_update() {
    on_each_backend(|db| {
        let (_, key) = new_key("alice", &["ledgers:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        let renamed = ApiKey {
            name: "renamed".into(),
            ..key.clone()
        };
        let event = NewEvent {
            actor: Actor::Cli,
            at: now(),
            details: Some(EventDetails::Updated(vec![Change::Name {
                from: key.name.clone(),
                to: "renamed".into(),
            }])),
        };
        assert!(
            db.replace(&key, &renamed, &event).expect("replace"),
            "{}",
            db.backend()
        );
        assert!(
            !db.replace(&key, &renamed, &event).expect("replace"),
            "a stale read loses"
        );
        assert_eq!(
            db.get(&key.id, "alice").expect("get").map(|k| k.name),
            Some("renamed".to_owned())
        );
        db.revoke(&key.id, "alice", now(), &Actor::Master)
            .expect("revoke");
        let revoked = db.get(&key.id, "alice").expect("get").expect("found");
        let again = ApiKey {
            name: "again".into(),
            ..revoked.clone()
        };
        assert!(
            !db.replace(&revoked, &again, &event).expect("replace"),
            "a revoked key is never changed"
        );
        let events = db.events(&key.id).expect("events");
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::Created, EventKind::Updated, EventKind::Revoked],
            "{}",
            db.backend()
        );
        assert_eq!(events[1].actor, Actor::Cli);
        assert_eq!(
            events[1].details,
            Some(EventDetails::Updated(vec![Change::Name {
                from: key.name.clone(),
                to: "renamed".into(),
            }]))
        );
    });
}

#[test]
fn rotate_stores_the_successor_and_cuts_the_old_expiry() {
    on_each_backend(|db| {
        let start = now();
        let start_cursor = db.changes_after(None).expect("feed").next;
        let (_, old) = new_key("alice", &["ledgers:*"], start);
        db.insert(&old, &Actor::Master).expect("insert");
        let plain = PlainKey::generate().expect("randomness");
        let successor = old.successor(&plain, start);
        let cut = start + Duration::seconds(60);
        let event = NewEvent {
            actor: Actor::Master,
            at: start,
            details: None,
        };
        assert!(
            db.rotate(&old, cut, &successor, &event).expect("rotate"),
            "{}",
            db.backend()
        );
        let stored = db
            .find_by_hash(&plain.hash())
            .expect("lookup")
            .expect("the successor");
        assert_eq!(stored, successor);
        assert_eq!(stored.rotated_from, Some(old.id.clone()));
        assert_eq!(
            db.get(&old.id, "alice").expect("get").map(|k| k.expires_at),
            Some(cut)
        );
        assert!(
            !db.rotate(&old, cut, &old.successor(&plain, start), &event)
                .expect("rotate"),
            "a stale read loses"
        );
        let events = db.events(&successor.id).expect("events");
        assert_eq!(
            events[0].details,
            Some(EventDetails::CreatedByRotation {
                rotated_from: old.id.clone(),
            })
        );
        assert_eq!(
            db.changes_after(Some(start_cursor)).expect("feed").keys,
            vec![old.hash],
            "the rotated key is in the feed"
        );
    });
}

#[test]
fn instances_flushing_overlapping_usage_never_deadlock() {
    for test_db in TestDatabase::all() {
        let db = std::sync::Arc::new(open(&test_db));
        let start = now();
        let ids: Vec<ApiKeyId> = (0..300)
            .map(|i| {
                let (_, key) = new_key(&format!("owner_{}", i % 5), &["ledgers:read"], start);
                db.insert(&key, &Actor::Master).expect("insert");
                key.id
            })
            .collect();
        let flushers: Vec<_> = (0..3u64)
            .map(|instance| {
                let (db, mut ids) = (db.clone(), ids.clone());
                std::thread::spawn(move || {
                    let mut state = 0x9e37_79b9_7f4a_7c15 ^ (instance + 1);
                    for round in 0..15 {
                        // Each instance writes the same keys in its own order.
                        for i in (1..ids.len()).rev() {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            ids.swap(i, (state % (i as u64 + 1)) as usize);
                        }
                        let at = start + Duration::milliseconds(round * 10 + instance as i64);
                        let uses: Vec<(ApiKeyId, DateTime<Utc>)> =
                            ids.iter().map(|id| (id.clone(), at)).collect();
                        db.record_last_used(&uses)
                            .unwrap_or_else(|e| panic!("round {round} of {instance}: {e}"));
                    }
                })
            })
            .collect();
        for flusher in flushers {
            flusher.join().expect("no flush failed");
        }
    }
}

#[test]
fn a_locked_sqlite_file_is_unavailable_after_the_pool_timeout_not_an_error() {
    let test_db = TestDatabase::sqlite();
    let options = PoolOptions {
        connection_timeout: std::time::Duration::from_millis(300),
        ..PoolOptions::default()
    };
    let db = Database::connect(&test_db.url, &options).expect("opens");
    let (_, key) = new_key("alice", &["ledgers:read"], now());
    let release = test_db.hold_lock(Lock::Row(key.id.as_str()));
    let started = std::time::Instant::now();
    let outcome = db.insert(&key, &Actor::Master);
    let waited = started.elapsed();
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "{waited:?}"
    );
    drop(release);
    db.insert(&key, &Actor::Master)
        .expect("writes again once the lock is gone");
}

#[test]
fn a_cursor_ahead_of_the_database_resets_the_feed() {
    on_each_backend(|db| {
        let present = db.changes_after(None).expect("feed");
        assert!(!present.reset);
        let ahead = ChangeCursor(present.next.0 + 1_000_000);
        let changes = db.changes_after(Some(ahead)).expect("feed");
        assert!(
            changes.reset,
            "a restored or replaced database ({})",
            db.backend()
        );
        assert!(changes.next <= present.next.max(changes.next));
        let again = db.changes_after(Some(changes.next)).expect("feed");
        assert!(!again.reset, "and reads on from the present");
    });
}

#[test]
fn a_key_has_one_successor_however_its_rotations_race() {
    on_each_backend(|db| {
        let start = now();
        let (_, old) = new_key("alice", &["ledgers:read"], start);
        db.insert(&old, &Actor::Master).expect("insert");
        let event = NewEvent {
            actor: Actor::Master,
            at: start,
            details: None,
        };
        // A grace period past the key's expiry leaves the expiry as it was, so both
        // rotations pass the check on the key as read.
        let (first, second) = (
            old.successor(&PlainKey::generate().expect("randomness"), start),
            old.successor(&PlainKey::generate().expect("randomness"), start),
        );
        assert!(
            db.rotate(&old, old.expires_at, &first, &event)
                .expect("rotate")
        );
        assert!(
            !db.rotate(&old, old.expires_at, &second, &event)
                .expect("rotate"),
            "the second rotation loses ({})",
            db.backend()
        );
        assert_eq!(db.find_by_hash(&second.hash).expect("lookup"), None);
        let extended = ApiKey {
            expires_at: old.expires_at + Duration::days(30),
            ..old.clone()
        };
        assert!(
            !db.replace(&old, &extended, &event).expect("replace"),
            "a rotated key's expiry stays the end of its grace period ({})",
            db.backend()
        );
        let renamed = ApiKey {
            name: "still nameable".into(),
            ..old.clone()
        };
        assert!(db.replace(&old, &renamed, &event).expect("replace"));
    });
}

#[test]
fn an_audit_row_this_version_cannot_read_does_not_hide_the_rest() {
    for test_db in TestDatabase::all() {
        let db = open(&test_db);
        let (_, key) = new_key("alice", &["ledgers:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        let sql = format!(
            "INSERT INTO key_events (api_key_id, kind, actor, details, at) VALUES \
             ('{}', 'suspended', 'master', NULL, '{}'), ('{}', 'revoked', 'master', 'not json', '{}')",
            key.id,
            now().to_rfc3339(),
            key.id,
            now().to_rfc3339()
        );
        raw(&test_db, &sql);
        let events = db.events(&key.id).expect("the trail reads");
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::Created, EventKind::Revoked],
            "{}",
            db.backend()
        );
        assert_eq!(events[1].details, None);
    }
}

/// Runs `sql` on `test_db` through a connection of its own.
fn raw(test_db: &TestDatabase, sql: &str) {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    match test_db.sqlite_path() {
        Some(path) => diesel::SqliteConnection::establish(&path.to_string_lossy())
            .expect("connects")
            .batch_execute(sql),
        None => diesel::PgConnection::establish(&test_db.url_string)
            .expect("connects")
            .batch_execute(sql),
    }
    .expect("runs");
}

fn metered_key(credits: keygate_core::Credits, at: DateTime<Utc>) -> ApiKey {
    let (_, mut key) = new_key("owner_1", &["ledgers:read"], at);
    key.ratelimit = Some(keygate_core::RateLimit {
        limit: 10,
        window_ms: 60_000,
    });
    key.credits = Some(keygate_core::CreditAccount::open(
        key.id.clone(),
        credits,
        at,
    ));
    key
}

fn credits(
    remaining: i64,
    refill: Option<(i64, keygate_core::RefillInterval)>,
) -> keygate_core::Credits {
    keygate_core::Credits {
        remaining,
        refill: refill.map(|(amount, interval)| keygate_core::Refill { amount, interval }),
    }
}

#[test]
fn metering_is_stored_with_the_key_and_read_back_exactly() {
    on_each_backend(|db| {
        let key = metered_key(
            credits(500, Some((1_000, keygate_core::RefillInterval::Monthly))),
            now(),
        );
        db.insert(&key, &Actor::Master).expect("insert");
        let found = db.find_by_hash(&key.hash).expect("lookup");
        assert_eq!(found.as_ref(), Some(&key), "{}", db.backend());
        let listed = db.list_by_owner("owner_1").expect("list");
        assert_eq!(listed, vec![key.clone()]);
    });
}

#[test]
fn listing_reads_each_keys_own_pool_and_none_for_a_key_without() {
    on_each_backend(|db| {
        let at = now();
        let rich = metered_key(credits(500, None), at);
        let poor = metered_key(
            credits(3, Some((10, keygate_core::RefillInterval::Daily))),
            at - Duration::seconds(1),
        );
        let (_, plain) = new_key("owner_1", &["ledgers:read"], at - Duration::seconds(2));
        // Another owner's pool, not to be read with these.
        let elsewhere = {
            let (_, mut key) = new_key("owner_2", &["ledgers:read"], at);
            key.credits = Some(keygate_core::CreditAccount::open(
                key.id.clone(),
                credits(7, None),
                at,
            ));
            key
        };
        for key in [&rich, &poor, &plain, &elsewhere] {
            db.insert(key, &Actor::Master).expect("insert");
        }
        let listed = db.list_by_owner("owner_1").expect("list");
        assert_eq!(listed, vec![rich, poor, plain], "{}", db.backend());
    });
}

#[test]
fn concurrent_takers_never_overspend_a_pool() {
    on_each_backend(|db| {
        let key = metered_key(credits(300, None), now());
        db.insert(&key, &Actor::Master).expect("insert");
        let granted = std::sync::atomic::AtomicI64::new(0);
        std::thread::scope(|threads| {
            for _ in 0..8 {
                threads.spawn(|| {
                    loop {
                        let grant = db
                            .take_credits(&key.id, keygate_core::CreditRequest { need: 1 }, now())
                            .expect("take")
                            .expect("the pool exists");
                        if grant.granted == 0 {
                            break;
                        }
                        assert!(grant.remaining >= 0);
                        granted.fetch_add(grant.granted, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(
            granted.load(std::sync::atomic::Ordering::SeqCst),
            300,
            "{}",
            db.backend()
        );
        let left = db.find_by_hash(&key.hash).expect("lookup").expect("found");
        assert_eq!(left.credits.map(|a| a.credits.remaining), Some(0));
    });
}

#[test]
fn a_due_refill_is_applied_by_a_take_or_by_the_sweep_and_voids_old_leases() {
    on_each_backend(|db| {
        let created = now();
        let daily = Some((50, keygate_core::RefillInterval::Daily));
        let key = metered_key(credits(10, daily), created);
        let idle = metered_key(credits(0, daily), created);
        db.insert(&key, &Actor::Master).expect("insert");
        db.insert(&idle, &Actor::Master).expect("insert");
        let one = keygate_core::CreditRequest { need: 1 };
        let before = db
            .take_credits(&key.id, one, created)
            .expect("take")
            .expect("pool");
        assert_eq!((before.granted, before.remaining), (1, 9));

        let tomorrow = keygate_core::RefillInterval::Daily.next_after(created);
        let after = db
            .take_credits(&key.id, one, tomorrow)
            .expect("take")
            .expect("pool");
        assert_eq!(after.epoch, before.epoch + 1, "a refill opens an epoch");
        assert_eq!(after.granted + after.remaining, 50, "{}", db.backend());
        assert_eq!(after.refill_at, Some(tomorrow + Duration::days(1)));
        assert!(
            !db.return_credits(&key.id, before.granted, before.epoch)
                .expect("return"),
            "a lease of the old epoch is not given back into the new balance"
        );
        assert!(
            db.return_credits(&key.id, after.granted, after.epoch)
                .expect("return")
        );

        // The idle pool is refilled by the sweep, without any take.
        assert_eq!(db.refill_due(created).expect("sweep"), 0);
        assert_eq!(db.refill_due(tomorrow).expect("sweep"), 1);
        assert_eq!(db.refill_due(tomorrow).expect("sweep"), 0, "once");
        let refilled = db.find_by_hash(&idle.hash).expect("lookup").expect("found");
        let account = refilled.credits.expect("credits");
        assert_eq!(account.credits.remaining, 50);
        assert_eq!(account.refill_at, Some(tomorrow + Duration::days(1)));
    });
}

#[test]
fn usage_adds_up_by_hour_across_batches_and_is_pruned() {
    on_each_backend(|db| {
        let (_, key) = new_key("owner_1", &["ledgers:read"], now());
        db.insert(&key, &Actor::Master).expect("insert");
        let hour: DateTime<Utc> = "2026-11-27T10:00:00Z".parse().expect("a time");
        let count = |at, allowed, denied| keygate_core::UsageCount {
            key: key.id.clone(),
            at,
            allowed,
            denied,
            rate_limited: 1,
            usage_exceeded: 0,
        };
        db.add_usage(&[count(hour, 5, 1), count(hour + Duration::hours(1), 2, 0)])
            .expect("add");
        db.add_usage(&[count(hour, 3, 0)]).expect("add");
        let usage = db
            .usage(&key.id, hour, hour + Duration::days(1))
            .expect("read");
        assert_eq!(
            usage,
            vec![
                keygate_core::UsageCount {
                    rate_limited: 2,
                    ..count(hour, 8, 1)
                },
                count(hour + Duration::hours(1), 2, 0)
            ],
            "{}",
            db.backend()
        );
        assert_eq!(
            db.usage(&key.id, hour + Duration::hours(1), hour + Duration::days(1))
                .expect("read")
                .len(),
            1
        );
        assert_eq!(db.prune_usage(hour + Duration::hours(1)).expect("prune"), 1);
        assert_eq!(
            db.usage(&key.id, hour, hour + Duration::days(1))
                .expect("read")
                .len(),
            1
        );
    });
}

#[test]
fn counts_of_one_key_and_hour_given_twice_in_one_call_are_summed() {
    on_each_backend(|db| {
        let (_, key) = new_key("owner_1", &["ledgers:read"], now());
        let (_, other) = new_key("owner_1", &["ledgers:read"], now());
        for key in [&key, &other] {
            db.insert(key, &Actor::Master).expect("insert");
        }
        let hour: DateTime<Utc> = "2026-11-27T10:00:00Z".parse().expect("a time");
        let count = |id: &ApiKeyId, allowed, denied| keygate_core::UsageCount {
            key: id.clone(),
            at: hour,
            allowed,
            denied,
            rate_limited: 1,
            usage_exceeded: 0,
        };
        db.add_usage(&[
            count(&key.id, 5, 1),
            count(&other.id, 2, 0),
            count(&key.id, 3, 4),
        ])
        .expect("one call with a key and hour twice");
        let usage = |id| db.usage(id, hour, hour + Duration::hours(1)).expect("read");
        assert_eq!(
            usage(&key.id),
            vec![keygate_core::UsageCount {
                rate_limited: 2,
                ..count(&key.id, 8, 5)
            }],
            "{}",
            db.backend()
        );
        assert_eq!(usage(&other.id), vec![count(&other.id, 2, 0)]);
    });
}

#[test]
fn changing_credits_opens_an_epoch_and_a_shared_pool_stays_shared() {
    on_each_backend(|db| {
        let at = now();
        let key = metered_key(credits(100, None), at);
        db.insert(&key, &Actor::Master).expect("insert");
        // A key spending its creator's pool adds none of its own.
        let (_, mut child) = new_key("owner_1", &["ledgers:read"], at);
        child.credits = key.credits.clone();
        db.insert(&child, &Actor::Master).expect("insert");
        let one = keygate_core::CreditRequest { need: 1 };
        let lease = db
            .take_credits(&key.id, one, at)
            .expect("take")
            .expect("pool");
        let read = db
            .find_by_hash(&child.hash)
            .expect("lookup")
            .expect("found");
        assert_eq!(
            read.credits
                .as_ref()
                .map(|a| (a.pool.clone(), a.credits.remaining)),
            Some((key.id.clone(), 100 - lease.granted)),
            "{}",
            db.backend()
        );

        let patch = keygate_core::KeyPatch::with_metering::<&str>(
            None,
            None,
            None,
            None,
            Some(Some(credits(7, None))),
            at,
        )
        .expect("a valid patch");
        let current = db.find_by_hash(&key.hash).expect("lookup").expect("found");
        let (updated, changes) = current.patched(&patch);
        let event = NewEvent {
            actor: Actor::Master,
            at,
            details: Some(EventDetails::Updated(changes)),
        };
        assert!(db.replace(&current, &updated, &event).expect("replace"));
        let read = db.find_by_hash(&key.hash).expect("lookup").expect("found");
        let account = read.credits.expect("credits");
        assert_eq!(account.credits.remaining, 7);
        assert_eq!(account.epoch, lease.epoch + 1);
        assert!(
            !db.return_credits(&key.id, lease.granted, lease.epoch)
                .expect("return"),
            "the old lease is void"
        );
        assert_eq!(
            db.find_by_hash(&key.hash)
                .expect("lookup")
                .and_then(|k| k.credits)
                .map(|a| a.credits.remaining),
            Some(7)
        );

        // A write from a read older than a change of metering loses: it would undo it.
        let (_, plain_key) = new_key("owner_1", &["ledgers:read"], at);
        db.insert(&plain_key, &Actor::Master).expect("insert");
        let limit = keygate_core::KeyPatch::with_metering::<&str>(
            None,
            None,
            None,
            Some(Some(keygate_core::RateLimit {
                limit: 5,
                window_ms: 1_000,
            })),
            None,
            at,
        )
        .expect("a valid patch");
        let (limited, changes) = plain_key.patched(&limit);
        let event = |changes| NewEvent {
            actor: Actor::Master,
            at,
            details: Some(EventDetails::Updated(changes)),
        };
        assert!(
            db.replace(&plain_key, &limited, &event(changes))
                .expect("replace")
        );
        let (renamed, changes) = plain_key.patched(
            &keygate_core::KeyPatch::new::<&str>(Some("renamed"), None, None, at)
                .expect("a valid patch"),
        );
        assert!(
            !db.replace(&plain_key, &renamed, &event(changes))
                .expect("replace"),
            "{}",
            db.backend()
        );
        assert_eq!(
            db.find_by_hash(&plain_key.hash)
                .expect("lookup")
                .and_then(|k| k.ratelimit),
            limited.ratelimit,
            "the limit set stays"
        );

        // Credits given equal to what the pool shows still start a new balance.
        let now_read = db.find_by_hash(&key.hash).expect("lookup").expect("found");
        let same = keygate_core::KeyPatch::with_metering::<&str>(
            None,
            None,
            None,
            None,
            Some(Some(credits(7, None))),
            at,
        )
        .expect("a valid patch");
        let (reset, changes) = now_read.patched(&same);
        assert_eq!(changes.len(), 1);
        let event = NewEvent {
            actor: Actor::Master,
            at,
            details: Some(EventDetails::Updated(changes)),
        };
        assert!(db.replace(&now_read, &reset, &event).expect("replace"));
        let epoch = |db: &Database| {
            db.find_by_hash(&key.hash)
                .expect("lookup")
                .and_then(|k| k.credits)
                .map(|a| a.epoch)
        };
        assert_eq!(epoch(db), Some(account.epoch + 1));
    });
}

#[test]
fn a_legacy_key_waits_under_its_prefix_until_one_upgrade_stores_its_digest() {
    use keygate_core::{ImportBatch, KeyHash, LegacyHash};
    on_each_backend(|db| {
        let (plain, mut key) = new_key("owner_1", &["ledgers:read"], now());
        key.hash = LegacyHash::placeholder().expect("randomness");
        let secret = plain.expose();
        let bcrypt = "$2b$04$abcdefghijklmnopqrstuu5Gf0W1c9oMfC8uq3yPp4HjhR.7xQ2fG".to_owned();
        let legacy = LegacyHash {
            key: key.id.clone(),
            prefix: secret[..16].to_owned(),
            bcrypt,
        };
        assert!(!db.key_shapes().expect("shapes").legacy_pending);
        let batch = ImportBatch {
            keys: std::slice::from_ref(&key),
            lengths: &[],
            legacy: std::slice::from_ref(&legacy),
        };
        // Dry, nothing; for real, the key and its legacy hash; again, a duplicate.
        assert_eq!(db.import(&batch, &Actor::Import, true).expect("dry"), 1);
        assert!(!db.key_shapes().expect("shapes").legacy_pending);
        assert_eq!(db.import(&batch, &Actor::Import, false).expect("import"), 1);
        assert_eq!(db.import(&batch, &Actor::Import, false).expect("again"), 0);
        assert!(db.key_shapes().expect("shapes").legacy_pending);
        assert_eq!(
            db.legacy_hashes(&secret[..16]).expect("read"),
            vec![legacy.clone()]
        );
        assert_eq!(db.legacy_hashes("0123456789abcdef").expect("read"), vec![]);
        let digest = KeyHash::of(secret);
        assert_eq!(db.find_by_hash(&digest).expect("read"), None);

        // Two instances upgrade at once: both find the key under its digest, and the
        // legacy hash is gone.
        let upgraded = std::thread::scope(|scope| {
            let upgrades: Vec<_> = (0..2)
                .map(|_| scope.spawn(|| db.upgrade_legacy(&legacy, &digest)))
                .collect();
            upgrades
                .into_iter()
                .map(|upgrade| upgrade.join().expect("no panic").expect("upgraded"))
                .collect::<Vec<_>>()
        });
        for found in upgraded {
            let found = found.expect("the key");
            assert_eq!(found.id, key.id);
            assert_eq!(found.hash, digest);
        }
        assert_eq!(
            db.find_by_hash(&digest).expect("read").map(|k| k.id),
            Some(key.id.clone())
        );
        assert_eq!(db.legacy_hashes(&secret[..16]).expect("read"), vec![]);
        assert!(!db.key_shapes().expect("shapes").legacy_pending);
        // Importing it again still finds it by id, and brings no legacy hash back.
        assert_eq!(db.import(&batch, &Actor::Import, false).expect("again"), 0);
        assert_eq!(db.legacy_hashes(&secret[..16]).expect("read"), vec![]);
    });
}
