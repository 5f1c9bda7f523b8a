//! Keeps this instance's key cache honest about changes made elsewhere: another instance,
//! or an operator's command, sharing the database.
//!
//! Every change to a key is recorded in `key_events` in the same transaction as the
//! change. This task reads the feed every `auth.change_poll_ms` and forgets the changed
//! keys, so another instance's revocation is seen within that period. Each read
//! overlaps the previous one by [`LOOKBACK`], so a change whose transaction committed
//! late, or was stamped by a clock slightly behind, is still seen. Unlike a
//! notification channel, the feed is durable: nothing is lost while the database is
//! briefly out of reach, and it works the same on SQLite and PostgreSQL.

use std::time::Duration;

use actix_web::web;
use chrono::Utc;

use crate::state::AppState;

/// How far each read of the feed reaches back before the previous read.
pub const LOOKBACK: Duration = Duration::from_secs(5);

/// Reads the change feed every `period`, forgetting changed keys, until dropped.
pub async fn watch(state: web::Data<AppState>, period: Duration) {
    let lookback = chrono::Duration::from_std(LOOKBACK).unwrap_or(chrono::Duration::seconds(5));
    let mut since = Utc::now() - lookback;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Utc::now();
        match state
            .read_store(move |store| store.changed_since(since))
            .await
        {
            Ok(hashes) => {
                for hash in &hashes {
                    state.forget(hash);
                }
                since = started - lookback;
            }
            Err(error) => tracing::warn!(%error, "could not read the key change feed; will retry"),
        }
    }
}
