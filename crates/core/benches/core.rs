//! The pure parts of a request's check: hashing the presented key, and the scope algebra.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keygate_core::{Action, KeyHash, PlainKey, Resource, Scope, ScopeSet};

fn key_hashing(c: &mut Criterion) {
    let key = PlainKey::generate().expect("randomness");
    c.bench_function("blake3 of a presented key", |b| {
        b.iter(|| KeyHash::of(black_box(key.expose())))
    });
    c.bench_function("shape check of a presented key", |b| {
        b.iter(|| PlainKey::could_be_issued(black_box(key.expose())))
    });
    c.bench_function("generate a key", |b| b.iter(PlainKey::generate));
}

fn scope_checks(c: &mut Criterion) {
    let scopes = ScopeSet::parse(&[
        "ledgers:read",
        "balances:write",
        "transactions:*",
        "api-keys:read",
    ])
    .expect("valid scopes");
    c.bench_function("permits, last of four scopes", |b| {
        b.iter(|| black_box(&scopes).permits(black_box(Resource::ApiKeys), black_box(Action::Read)))
    });
    c.bench_function("permits, refused by four scopes", |b| {
        b.iter(|| {
            black_box(&scopes).permits(black_box(Resource::Backup), black_box(Action::Delete))
        })
    });
    let requested = ScopeSet::parse(&["ledgers:read", "transactions:write"]).expect("valid scopes");
    c.bench_function("covers, two requested scopes", |b| {
        b.iter(|| black_box(&scopes).first_uncovered(black_box(&requested)))
    });
    c.bench_function("parse a scope", |b| {
        b.iter(|| Scope::try_from(black_box("balance-monitors:write")))
    });
}

criterion_group!(benches, key_hashing, scope_checks);
criterion_main!(benches);
