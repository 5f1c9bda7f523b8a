//! Usage bookkeeping off the request path: each key's latest use (`last_used_at`) and
//! its hourly counts of allowed and refused requests are kept in memory and written in
//! batches.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keygate_core::metering::hour_of;
use keygate_core::{ApiKeyId, KeyStore, StoreError, UsageCount, UsageOutcome};

/// Maps keyed by key id, counted on every request: hashed with foldhash rather than
/// SipHash (the ids are the service's own, random, so there is no flooding to resist).
type ByKey<V> = HashMap<ApiKeyId, V, foldhash::fast::RandomState>;

/// Counts by key, one entry per hour (rarely more than one), in shards by key: every
/// request of an API key counts, and one lock would have every worker wait on it.
#[derive(Debug, Default)]
struct Counts([Mutex<ByKey<Vec<UsageCount>>>; 16]);

impl Counts {
    /// The shard holding `id`'s counts, locked.
    fn of(&self, id: &ApiKeyId) -> MutexGuard<'_, ByKey<Vec<UsageCount>>> {
        let hash = foldhash::fast::FixedState::default().hash_one(id);
        let index = usize::try_from(hash % self.0.len() as u64).unwrap_or_default();
        lock(&self.0[index])
    }

    /// Every shard, locked in turn.
    fn each(&self) -> impl Iterator<Item = MutexGuard<'_, ByKey<Vec<UsageCount>>>> {
        self.0.iter().map(lock)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Latest use of each key, and its counts, since the last flush.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    pending: Mutex<ByKey<DateTime<Utc>>>,
    counts: Counts,
    /// Held while counts are written, and while they are read with what is written, so
    /// that a count is seen exactly once: in memory or in the database.
    writing: Mutex<()>,
}

impl UsageRecorder {
    /// Counts one request of `id` that ended as `outcome` at `at`.
    pub fn count(&self, id: &ApiKeyId, outcome: UsageOutcome, at: DateTime<Utc>) {
        let hour = hour_of(at);
        let mut counts = self.counts.of(id);
        let hours = match counts.get_mut(id) {
            Some(hours) => hours,
            None => counts.entry(id.clone()).or_default(),
        };
        match hours.iter_mut().find(|count| count.at == hour) {
            Some(count) => count.add(outcome),
            None => {
                let mut count = UsageCount::empty(id.clone(), hour);
                count.add(outcome);
                hours.push(count);
            }
        }
    }

    /// `id`'s hourly counts from `from` to `to` (exclusive): those written to `store`
    /// and those still in memory, each counted once. Blocks.
    pub fn read(
        &self,
        store: &dyn KeyStore,
        id: &ApiKeyId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageCount>, StoreError> {
        let _writing = lock(&self.writing);
        let mut counts = store.usage(id, from, to)?;
        let unwritten = self.counts.of(id).get(id).cloned().unwrap_or_default();
        counts.extend(
            unwritten
                .into_iter()
                .filter(|count| from <= count.at && count.at < to),
        );
        Ok(counts)
    }

    /// Counts not yet written, merged into `counts`' hours.
    fn put_back(&self, batch: Vec<UsageCount>) {
        for count in batch {
            let mut counts = self.counts.of(&count.key);
            let hours = counts.entry(count.key.clone()).or_default();
            match hours.iter_mut().find(|held| held.at == count.at) {
                Some(held) => held.merge(&count),
                None => hours.push(count),
            }
        }
    }

    /// Notes that `id` authenticated a request at `at`.
    pub fn record(&self, id: &ApiKeyId, at: DateTime<Utc>) {
        let mut pending = lock(&self.pending);
        match pending.get_mut(id) {
            Some(latest) if *latest >= at => {}
            Some(latest) => *latest = at,
            None => {
                pending.insert(id.clone(), at);
            }
        }
    }

    /// How many keys have uses or counts waiting to be written.
    pub fn pending(&self) -> usize {
        let uses = lock(&self.pending).len();
        let counts = self.counts.each().map(|shard| shard.len()).sum();
        uses.max(counts)
    }

    /// Writes every pending use and count in batches. What could not be written is kept
    /// for the next flush. Returns how many `last_used_at` rows changed.
    pub fn flush(&self, store: &dyn KeyStore) -> Result<usize, StoreError> {
        let _writing = lock(&self.writing);
        let counts: Vec<UsageCount> = self
            .counts
            .each()
            .flat_map(|mut shard| {
                shard
                    .drain()
                    .flat_map(|(_, hours)| hours)
                    .collect::<Vec<_>>()
            })
            .collect();
        if !counts.is_empty()
            && let Err(error) = store.add_usage(&counts)
        {
            self.put_back(counts);
            return Err(error);
        }
        let batch: Vec<(ApiKeyId, DateTime<Utc>)> = { lock(&self.pending).drain().collect() };
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
    // The first write is a period after the start, not whenever this task first runs:
    // an interval's first tick is at once, and a task started late on a busy machine
    // would write the first uses at a moment nothing chose.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
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
