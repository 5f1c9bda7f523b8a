//! The hot path's promises: what a request costs the database, how fast a change made
//! elsewhere reaches this instance's cache, and what a flood of unknown keys can do.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::Method;
use keygate_core::{KeyStore, PlainKey};
use keygate_storage::test_support::TestDatabase;
use support::{CountingStore, MASTER, start, start_observed, start_peer};

on_both_backends!(
    a_second_instance_sees_a_revocation_within_the_poll_bound,
    requests_write_nothing_and_usage_is_written_in_one_batch,
    last_used_is_written_once_a_resolution_however_busy_the_key,
    keys_that_cannot_be_ours_cost_no_lookup,
);

async fn a_second_instance_sees_a_revocation_within_the_poll_bound(db: TestDatabase) {
    let first = start(db).await;
    let second = start_peer(first.db()).await;
    let (key, id) = first.new_key("alice", &["api-keys:read"]).await;
    assert_eq!(
        second
            .call(Method::GET, "/api-keys", Some(&key), None)
            .await
            .status,
        200
    );
    assert!(
        second
            .state
            .guard()
            .is_cached(&PlainKey::from_presented(&key).hash()),
        "the second instance caches the key"
    );

    let reply = first.revoke(&id, "alice").await;
    assert_eq!(reply.status, 204);
    let revoked = Instant::now();
    loop {
        let reply = second
            .call(Method::GET, "/api-keys", Some(&key), None)
            .await;
        if reply.status == 401 {
            reply.assert_error(401, "AUTH_EXPIRED_API_KEY");
            eprintln!(
                "the second instance refused the key {:?} after its revocation",
                revoked.elapsed()
            );
            break;
        }
        assert_eq!(reply.status, 200, "{}", reply.json);
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "the second instance still accepted the key 1 s after its revocation"
        );
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn requests_write_nothing_and_usage_is_written_in_one_batch(db: TestDatabase) {
    let (observe, counting) = CountingStore::observer();
    let app = start_observed(
        db,
        |settings| settings.auth.last_used_flush_ms = 3_600_000,
        observe,
    )
    .await;
    let counting = counting.get().expect("the store was wrapped").clone();
    let mut keys = Vec::new();
    for _ in 0..5 {
        keys.push(app.new_key("alice", &["api-keys:read"]).await.0);
    }
    let writes_before = CountingStore::count(&counting.writes);
    for round in 0..40 {
        let key = &keys[round % keys.len()];
        assert_eq!(
            app.call(Method::GET, "/api-keys", Some(key), None)
                .await
                .status,
            200
        );
    }
    assert_eq!(
        CountingStore::count(&counting.writes),
        writes_before,
        "authenticating writes nothing"
    );
    assert_eq!(
        CountingStore::count(&counting.usage_batches),
        0,
        "nor records usage on the request path"
    );
    assert_eq!(
        CountingStore::count(&counting.lookups),
        keys.len(),
        "one lookup per key, then memory"
    );

    let store: Arc<dyn KeyStore> = counting.clone();
    let written = app.state.guard().usage().flush(&*store).expect("flush");
    assert_eq!(written, keys.len());
    assert_eq!(
        CountingStore::count(&counting.usage_batches),
        1,
        "one statement for the whole batch"
    );
    assert!(
        CountingStore::count(&counting.usage_rows) <= keys.len(),
        "each key at most once however often it was used"
    );
    let listed = app
        .call(Method::GET, "/api-keys?owner=alice", Some(MASTER), None)
        .await;
    for key in listed.json.as_array().expect("array") {
        assert_ne!(key["last_used_at"], "0001-01-01T00:00:00Z", "{key}");
    }
}

async fn last_used_is_written_once_a_resolution_however_busy_the_key(db: TestDatabase) {
    let (observe, counting) = CountingStore::observer();
    let app = start_observed(
        db,
        |settings| {
            settings.auth.last_used_flush_ms = 3_600_000;
            settings.auth.last_used_resolution_ms = 60_000;
        },
        observe,
    )
    .await;
    let counting = counting.get().expect("the store was wrapped").clone();
    let store: Arc<dyn KeyStore> = counting.clone();
    let (key, _) = app.new_key("alice", &["api-keys:read"]).await;
    let flush = || app.state.guard().usage().flush(&*store).expect("flush");
    let last_used = || async {
        let listed = app
            .call(Method::GET, "/api-keys?owner=alice", Some(MASTER), None)
            .await;
        support::text(&listed.json[0]["last_used_at"])
    };
    let use_key = || async {
        let reply = app.call(Method::GET, "/api-keys", Some(&key), None).await;
        assert_eq!(reply.status, 200, "{}", reply.json);
    };

    // The first use is written; 20 more within the minute are not.
    use_key().await;
    assert_eq!(flush(), 1);
    let first = last_used().await;
    assert_ne!(first, "0001-01-01T00:00:00Z");
    for _ in 0..20 {
        use_key().await;
    }
    // (50 s, not 59: the test's own real time counts too, and a busy machine is slow.)
    app.clock.advance(chrono::TimeDelta::seconds(50));
    use_key().await;
    assert_eq!(flush(), 0, "uses within the resolution write nothing");
    assert_eq!(last_used().await, first);

    // A minute after the written use, the next one is written.
    app.clock.advance(chrono::TimeDelta::seconds(11));
    use_key().await;
    assert_eq!(flush(), 1);
    let second = last_used().await;
    assert!(second > first, "{second} after {first}");

    // Read again from the database (as after a restart or an eviction), a key last used
    // within the resolution writes nothing either; past it, it does.
    app.state
        .guard()
        .forget(&PlainKey::from_presented(&key).hash());
    use_key().await;
    assert_eq!(flush(), 0, "the stored time is recent enough");
    app.state
        .guard()
        .forget(&PlainKey::from_presented(&key).hash());
    app.clock.advance(chrono::TimeDelta::seconds(61));
    use_key().await;
    assert_eq!(flush(), 1);
    assert!(last_used().await > second);
}

async fn keys_that_cannot_be_ours_cost_no_lookup(db: TestDatabase) {
    let (observe, counting) = CountingStore::observer();
    let app = start_observed(db, |_| {}, observe).await;
    let counting = counting.get().expect("the store was wrapped").clone();
    let long = "k".repeat(600);
    let misshapen = [
        "short",
        "YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll2Q",
        "YVLIhuIplUzLRCcT9r7DQ+jsGKCXAn39JQ3n_o/Ll2Q=",
        long.as_str(),
        "' OR '1'='1",
    ];
    for key in misshapen {
        let reply = app.call(Method::GET, "/api-keys", Some(key), None).await;
        reply.assert_error(401, "AUTH_INVALID_API_KEY");
    }
    assert_eq!(CountingStore::count(&counting.lookups), 0);
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[actix_web::test]
async fn a_flood_of_unknown_keys_leaves_known_keys_cached_and_memory_bounded() {
    let app = start(TestDatabase::sqlite()).await;
    let (known, _) = app.new_key("alice", &["api-keys:read"]).await;
    let known_hash = PlainKey::from_presented(&known).hash();
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(&known), None)
            .await
            .status,
        200
    );
    assert!(app.state.guard().is_cached(&known_hash));
    let (entries_before, _) = app.state.guard().cache_size();

    let rss_before = resident_bytes();
    for _ in 0..100_000 {
        let stranger = PlainKey::generate().expect("randomness");
        let reply = app
            .call(Method::GET, "/api-keys", Some(stranger.expose()), None)
            .await;
        assert_eq!(reply.status, 401);
    }
    let rss_after = resident_bytes();

    assert!(
        app.state.guard().is_cached(&known_hash),
        "the known key is still in memory"
    );
    assert_eq!(
        app.state.guard().cache_size().0,
        entries_before,
        "no unknown key was kept"
    );
    assert!(
        app.state.guard().usage().pending() <= 1,
        "no unknown key's use is pending"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024 * 1024,
        "memory grew by {} bytes over 100,000 unknown keys",
        rss_after.saturating_sub(rss_before)
    );
    assert_eq!(
        app.call(Method::GET, "/api-keys", Some(&known), None)
            .await
            .status,
        200
    );
}
