//! One key verification as the guard performs it: from memory (the common case) and
//! with the indexed lookup (a key seen for the first time, or just changed), on SQLite.

use std::sync::Arc;

use actix_web::rt::System;
use chrono::{Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use keygate_core::{Actor, ApiKey, KeySpec, KeyStore, PlainKey};
use keygate_server::{AppState, Settings};
use keygate_storage::test_support::TestDatabase;
use keygate_storage::{Database, PoolOptions};

fn verification(c: &mut Criterion) {
    let db = TestDatabase::sqlite();
    let database = Database::connect(&db.url, &PoolOptions::default()).expect("the database opens");
    let store: Arc<dyn KeyStore> = Arc::new(database);
    let now = Utc::now();
    let spec = KeySpec::new(
        "bench",
        "owner",
        &["api-keys:read"],
        now + Duration::days(1),
        now,
    )
    .expect("valid");
    let plain = PlainKey::generate().expect("randomness");
    store
        .insert(&ApiKey::issue(spec, &plain, now), &Actor::Cli)
        .expect("stored");
    let settings = Settings::defaults();
    let master = "bench-master-key".into();
    let state = AppState::new(store, &settings, Some(&master)).expect("valid settings");
    let system = System::new();
    let presented = plain.expose();

    c.bench_function("verify a cached key", |b| {
        b.iter(|| {
            system
                .block_on(state.guard().authenticate(Some(presented)))
                .expect("authenticates")
        })
    });
    c.bench_function("verify a key with its lookup", |b| {
        b.iter(|| {
            state.guard().forget(&plain.hash());
            system
                .block_on(state.guard().authenticate(Some(presented)))
                .expect("authenticates")
        })
    });
    let direct = state.guard().store();
    let hash = plain.hash();
    c.bench_function("lookup by hash alone, on the calling thread", |b| {
        b.iter(|| direct.find_by_hash(&hash).expect("found"))
    });
    c.bench_function("an empty blocking-pool round trip", |b| {
        b.iter(|| {
            system
                .block_on(async { actix_web::web::block(|| ()).await })
                .expect("ran")
        })
    });
    c.bench_function("refuse a misshapen key", |b| {
        b.iter(|| {
            system
                .block_on(state.guard().authenticate(Some("not-a-key")))
                .expect_err("refused")
        })
    });
}

criterion_group!(benches, verification);
criterion_main!(benches);
