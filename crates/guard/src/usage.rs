//! Usage bookkeeping off the request path: each key's latest use (`last_used_at`) and
//! its hourly counts of allowed and refused requests are kept in memory and written in
//! batches.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use thread_local::ThreadLocal;

use chrono::{DateTime, Utc};
use keygate_core::metering::hour_of;
use keygate_core::{ApiKeyId, KeyStore, StoreError, UsageCount, UsageOutcome};

/// Maps keyed by key id, counted on every request: hashed with foldhash rather than
/// SipHash (the ids are the service's own, random, so there is no flooding to resist).
type ByKey<V> = HashMap<ApiKeyId, V, foldhash::fast::RandomState>;

/// Counts by key, one entry per hour (rarely more than one), kept by each thread for
/// itself: every request of an API key counts, and counts shared by all workers would
/// have them write the same memory (a lock, a table) on every request. A flush gathers
/// every thread's.
#[derive(Debug, Default)]
struct Counts(ThreadLocal<Mutex<ByKey<Vec<UsageCount>>>>);

impl Counts {
    /// This thread's counts, locked (by no one else but a flush or a read).
    fn mine(&self) -> MutexGuard<'_, ByKey<Vec<UsageCount>>> {
        lock(self.0.get_or_default())
    }

    /// Every thread's counts, locked in turn.
    fn each(&self) -> impl Iterator<Item = MutexGuard<'_, ByKey<Vec<UsageCount>>>> {
        self.0.iter().map(lock)
    }
}

/// Adds `count` to the count of its hour in `hours`.
fn merge_into(hours: &mut Vec<UsageCount>, count: &UsageCount) {
    match hours.iter_mut().find(|held| held.at == count.at) {
        Some(held) => held.merge(count),
        None => hours.push(count.clone()),
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
        let mut counts = self.counts.mine();
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
        for shard in self.counts.each() {
            let unwritten = shard.get(id).into_iter().flatten();
            counts.extend(
                unwritten
                    .filter(|count| from <= count.at && count.at < to)
                    .cloned(),
            );
        }
        Ok(counts)
    }

    /// Counts not yet written, merged into `counts`' hours.
    fn put_back(&self, batch: Vec<UsageCount>) {
        let mut counts = self.counts.mine();
        for count in batch {
            merge_into(counts.entry(count.key.clone()).or_default(), &count);
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

    /// How many keys have uses or counts waiting to be written (at most: a key counted
    /// by several threads counts once for each).
    pub fn pending(&self) -> usize {
        let uses = lock(&self.pending).len();
        let counts = self.counts.each().map(|shard| shard.len()).sum();
        uses.max(counts)
    }

    /// Writes every pending use and count in batches. What could not be written is kept
    /// for the next flush. Returns how many `last_used_at` rows changed.
    pub fn flush(&self, store: &dyn KeyStore) -> Result<usize, StoreError> {
        let _writing = lock(&self.writing);
        // A key and hour counted by several threads is sent once per thread: the store
        // sums them.
        let mut counts: Vec<UsageCount> = Vec::new();
        for mut shard in self.counts.each() {
            counts.extend(shard.drain().flat_map(|(_, hours)| hours));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::ApiKeyId;
    use keygate_storage::test_support::TestDatabase;
    use keygate_storage::{Database, PoolOptions};
    use std::sync::Arc;

    /// Allowed requests counted for `id` in `counts`.
    fn allowed(counts: &[UsageCount], id: &ApiKeyId) -> i64 {
        counts
            .iter()
            .filter(|count| count.key == *id)
            .map(|count| count.allowed)
            .sum()
    }

    #[test]
    fn counts_made_on_many_threads_are_read_and_written_once_each() {
        for db in TestDatabase::all() {
            let store = Database::connect(&db.url, &PoolOptions::default()).expect("a database");
            let recorder = Arc::new(UsageRecorder::default());
            let (busy, quiet) = (ApiKeyId::generate(), ApiKeyId::generate());
            let at = Utc::now();
            let (from, to) = (hour_of(at), hour_of(at) + chrono::TimeDelta::hours(1));
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    scope.spawn(|| {
                        for _ in 0..250 {
                            recorder.count(&busy, UsageOutcome::Allowed, at);
                        }
                        recorder.count(&busy, UsageOutcome::Denied, at);
                    });
                }
            });
            recorder.count(&quiet, UsageOutcome::Allowed, at);

            // Before a flush, the counts of every thread are read together.
            let unwritten = recorder.read(&store, &busy, from, to).expect("read");
            assert_eq!(allowed(&unwritten, &busy), 1000, "{}", db.url_string);
            assert_eq!(unwritten.iter().map(|c| c.denied).sum::<i64>(), 4);

            // One row a key and hour, whichever threads counted it (PostgreSQL refuses a
            // statement that updates one row twice).
            recorder.flush(&store).expect("flushed");
            assert_eq!(recorder.pending(), 0);
            let written = store.usage(&busy, from, to).expect("usage");
            assert_eq!(written.len(), 1, "{written:?}");
            assert_eq!(allowed(&written, &busy), 1000);
            assert_eq!(written[0].denied, 4);
            let read = recorder.read(&store, &busy, from, to).expect("read");
            assert_eq!(
                allowed(&read, &busy),
                1000,
                "counted once, not again from memory"
            );
            let quiet_counts = store.usage(&quiet, from, to).expect("usage");
            assert_eq!(allowed(&quiet_counts, &quiet), 1);
        }
    }
}
