//! The work a guard does beside the requests: writing key usage in batches, following
//! the change feed, reading cached keys in use again before they expire, forgetting
//! quiet addresses; and the last write of usage on the way out.

use std::time::Duration;

use actix_web::web;

use crate::changes;
use crate::guard::Guard;

/// How often usage older than the retention is deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// One kind of metering upkeep.
#[derive(Debug, Clone, Copy)]
enum Upkeep {
    /// Give back the credits of idle leases.
    Leases,
    /// Apply refills that are due.
    Refills,
    /// Delete usage past its retention.
    Prune,
}

impl Upkeep {
    /// Does it; blocks.
    fn run(self, guard: &Guard) -> Result<(), keygate_core::StoreError> {
        let settings = &guard.meter_state().settings;
        match self {
            Upkeep::Leases => guard.release_leases(settings.lease_idle),
            Upkeep::Refills => guard.store().refill_due(guard.clock().now()).map(drop),
            Upkeep::Prune => {
                let retention = chrono::Duration::from_std(settings.usage_retention)
                    .unwrap_or(chrono::Duration::MAX);
                match guard.clock().now().checked_sub_signed(retention) {
                    Some(before) => guard.store().prune_usage(before).map(drop),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Gives back idle leases (every usage flush), applies due refills (every refill poll)
/// and deletes usage past its retention (hourly), each off the async workers.
async fn keep_metering(guard: web::Data<Guard>) {
    let refill_poll = guard.meter_state().settings.refill_poll;
    let mut leases = tokio::time::interval(guard.usage_flush());
    let mut refills = tokio::time::interval(refill_poll.max(Duration::from_millis(10)));
    let mut prunes = tokio::time::interval(PRUNE_EVERY);
    for ticker in [&mut leases, &mut refills, &mut prunes] {
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        let upkeep = tokio::select! {
            _ = leases.tick() => Upkeep::Leases,
            _ = refills.tick() => Upkeep::Refills,
            _ = prunes.tick() => Upkeep::Prune,
        };
        // No hop to the blocking pool every period for an instance that holds no lease.
        if matches!(upkeep, Upkeep::Leases) && guard.meter_state().leases.is_idle() {
            continue;
        }
        let worker = guard.clone();
        match guard.background_store(move || upkeep.run(&worker)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, ?upkeep, "metering upkeep failed; will retry"),
            Err(error) => tracing::error!(%error, "metering upkeep task failed"),
        }
    }
}

/// Writes the guard's pending usage every flush period until the task is dropped.
async fn flush_usage_periodically(guard: web::Data<Guard>) {
    let period = guard.usage_flush();
    // The first write is a period after the start, not whenever this task first runs:
    // an interval's first tick is at once, and a task started late on a busy machine
    // would write the first uses at a moment nothing chose.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if guard.usage().pending() == 0 {
            continue;
        }
        let (recorder, store) = (guard.usage(), guard.store());
        match guard
            .background_store(move || recorder.flush(&*store))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not record key usage; will retry"),
            Err(error) => tracing::error!(%error, "usage flush task failed"),
        }
    }
}

/// The guard's background tasks; they stop when this is dropped.
#[must_use = "the background tasks stop when this is dropped"]
pub struct Background {
    tasks: Vec<actix_web::rt::task::JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How long the last write of key usage may take on the way out: a database that does
/// not answer must not keep the process from stopping.
pub const FINAL_FLUSH_LIMIT: Duration = Duration::from_secs(4);

impl Guard {
    /// Reads the change feed once (so that the cache is trusted from the first request,
    /// and no change before this moment can be missed), then starts the background tasks
    /// on the current actix (tokio) runtime.
    pub async fn start(guard: &web::Data<Guard>) -> Background {
        let cursor = changes::read_once(guard, None).await;
        let flusher = flush_usage_periodically(guard.clone());
        let refreshed = guard.clone();
        let refresher = async move {
            let mut ticker = tokio::time::interval(refreshed.change_poll());
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                refreshed.refresh_due().await;
            }
        };
        let watcher = changes::watch(guard.clone(), guard.change_poll(), cursor);
        let tidied = guard.clone();
        let tidier = async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(60));
            loop {
                ticker.tick().await;
                tidied.throttle().tidy();
            }
        };
        Background {
            tasks: vec![
                actix_web::rt::spawn(flusher),
                actix_web::rt::spawn(watcher),
                actix_web::rt::spawn(tidier),
                actix_web::rt::spawn(refresher),
                actix_web::rt::spawn(keep_metering(guard.clone())),
            ],
        }
    }

    /// Writes pending key usage before stopping, retrying a transient failure (a
    /// deadlock with another instance, a busy file) until [`FINAL_FLUSH_LIMIT`]; what
    /// still cannot be written then is logged as lost.
    pub async fn final_flush(&self) {
        let deadline = tokio::time::Instant::now() + FINAL_FLUSH_LIMIT;
        // Unspent credits go back to their pools first: a lease not given back is
        // stranded until the next refill.
        let unspent = self.meter_state().leases.release_idle(Duration::ZERO);
        let store = self.store();
        let give_back = move || crate::metering::give_back(&*store, unspent);
        match tokio::time::timeout_at(deadline, self.background_store(give_back)).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "could not give back unspent credits before stopping");
            }
            Ok(Err(error)) => tracing::warn!(%error, "giving back unspent credits failed"),
            Err(_) => tracing::warn!("the database did not take back unspent credits in time"),
        }
        let mut error = String::from("no time left");
        let mut keys = self.usage().pending();
        while keys > 0 && tokio::time::Instant::now() < deadline {
            let (usage, store) = (self.usage(), self.store());
            let flush = self.background_store(move || usage.flush(&*store));
            match tokio::time::timeout_at(deadline, flush).await {
                Ok(Ok(Ok(_))) => return,
                // A failed batch is pending again: try once more.
                Ok(Ok(Err(failure))) => error = failure.to_string(),
                Ok(Err(failure)) => error = failure.to_string(),
                // The batch is stuck with the call that took it.
                Err(_) => {
                    error = "the database did not answer in time".into();
                    break;
                }
            }
            keys = self.usage().pending();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if keys > 0 {
            tracing::warn!(%error, keys, "could not record the last key usage before stopping");
        }
    }
}
