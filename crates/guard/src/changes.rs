//! Keeps this instance's key cache honest about changes made elsewhere: another instance,
//! or an operator's command, sharing the database.
//!
//! Every change to a key is recorded in `key_events` in the same transaction as the
//! change. This task reads the feed every `change_poll` from a cursor the store
//! hands back ([`KeyStore::changes_after`]) and forgets the changed keys.
//!
//! Why no change can be skipped: the cursor is not a time. On SQLite it is the last event
//! id read, and ids are handed out in commit order (one writer at a time). On PostgreSQL
//! it is the oldest transaction still running when the feed was last read; a transaction
//! that had not committed by then has an id at least that large, so the next read (which
//! takes every event from that id on) finds it, however long it waited for locks and
//! whatever the writer's clock said. So a change is seen by every instance within one
//! poll period plus one read after it commits. The feed is durable: nothing is lost while
//! the database is briefly out of reach, and the CLI's changes are in it too.
//!
//! While the feed cannot be read, cached keys are trusted for at most
//! `max_staleness` after the last successful read ([`Guard::feed_is_fresh`]);
//! after that they are read again, so a key revoked elsewhere stops working here too, and
//! a database that cannot be reached answers 503.
//!
//! [`KeyStore::changes_after`]: keygate_core::KeyStore::changes_after

use std::time::Duration;

use actix_web::web;

use keygate_core::ChangeCursor;

use crate::guard::Guard;

/// Reads the change feed once, forgetting what it says changed; the cursor to read from
/// next, or `None` (having said so) when it could not be read.
pub async fn read_once(state: &Guard, cursor: Option<ChangeCursor>) -> Option<ChangeCursor> {
    // The shapes of imported keys are read with every read of the feed, so a key
    // imported elsewhere is looked up here from the next read on; failing to read them
    // only delays that, and does not age the cache.
    match state.read_store(|store| store.key_shapes()).await {
        Ok(shapes) => state.learn_key_shapes(&shapes),
        Err(error) => {
            tracing::warn!(%error, "could not read the shapes of imported keys; will retry")
        }
    }
    match state
        .read_store(move |store| store.changes_after(cursor))
        .await
    {
        Ok(changes) => {
            if changes.reset || cursor.is_none() {
                // Nothing says what changed before this read: hold nothing read before it.
                if changes.reset {
                    tracing::warn!(
                        "the change feed went back (a restored or replaced database); forgetting every cached key"
                    );
                }
                state.forget_all();
            }
            for hash in &changes.keys {
                state.forget(hash);
            }
            // Only once the changed keys are forgotten is the cache fresh again.
            state.feed_was_read();
            Some(changes.next)
        }
        Err(error) => {
            tracing::warn!(%error, "could not read the key change feed; will retry");
            None
        }
    }
}

/// Reads the change feed every `period` from `cursor`, forgetting changed keys, until
/// dropped.
pub async fn watch(state: web::Data<Guard>, period: Duration, mut cursor: Option<ChangeCursor>) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut failing = cursor.is_none();
    loop {
        ticker.tick().await;
        match read_once(&state, cursor).await {
            Some(next) => {
                cursor = Some(next);
                if failing {
                    tracing::info!("the key change feed is readable");
                    failing = false;
                }
            }
            None => failing = true,
        }
    }
}
