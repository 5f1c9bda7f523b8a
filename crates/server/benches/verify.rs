//! One key verification as the guard performs it: from memory (the common case) and
//! with the indexed lookup (a key seen for the first time, or just changed), on SQLite.

use actix_web::rt::System;
use chrono::{Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use keygate_core::{Actor, ApiKey, KeySpec, PlainKey};
use keygate_server::guard::Guard;
use keygate_server::{Application, Settings};
use keygate_storage::test_support::TestDatabase;

fn verification(c: &mut Criterion) {
    let db = TestDatabase::sqlite();
    let mut settings = Settings::defaults();
    settings.database.url = db.url.clone();
    settings.server.secret_key = Some("bench-master-key-0123456789".into());
    let system = System::new();
    let application = system
        .block_on(Application::build(settings))
        .expect("the service builds");
    let state = application.state().clone();
    // The change feed read once: the cache is trusted.
    let _background = system.block_on(Guard::start(state.guard()));
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
    state
        .guard()
        .store()
        .insert(&ApiKey::issue(spec, &plain, now), &Actor::Cli)
        .expect("stored");
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
