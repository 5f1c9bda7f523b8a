//! `last_used_at` bookkeeping off the request path: uses are noted in memory and
//! written in batches, one statement per batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keygate_core::{ApiKeyId, KeyStore};

/// Latest use of each key since the last flush.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    pending: Mutex<HashMap<ApiKeyId, DateTime<Utc>>>,
}

impl UsageRecorder {
    /// Notes that `id` authenticated a request at `at`.
    pub fn record(&self, id: &ApiKeyId, at: DateTime<Utc>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get_mut(id) {
            Some(latest) if *latest >= at => {}
            Some(latest) => *latest = at,
            None => {
                pending.insert(id.clone(), at);
            }
        }
    }

    /// How many keys have uses waiting to be written.
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Writes every pending use in one batch. Uses that could not be written are kept
    /// for the next flush. Returns how many rows changed.
    pub fn flush(&self, store: &dyn KeyStore) -> Result<usize, keygate_core::StoreError> {
        let batch: Vec<(ApiKeyId, DateTime<Utc>)> = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.drain().collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        store.record_last_used(&batch).inspect_err(|_| {
            for (id, at) in &batch {
                self.record(id, *at);
            }
        })
    }
}

/// Flushes `recorder` into `store` every `period` until the task is dropped.
pub async fn flush_periodically(
    recorder: Arc<UsageRecorder>,
    store: Arc<dyn KeyStore>,
    period: Duration,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if recorder.pending() == 0 {
            continue;
        }
        let (recorder, store) = (recorder.clone(), store.clone());
        match actix_web::web::block(move || recorder.flush(&*store)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not record key usage; will retry"),
            Err(error) => tracing::error!(%error, "usage flush task failed"),
        }
    }
}
