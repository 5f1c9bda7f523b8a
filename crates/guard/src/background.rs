//! The work a guard does beside the requests: writing key usage in batches, following
//! the change feed, forgetting quiet addresses; and the last write of usage on the way out.

use std::time::Duration;

use actix_web::web;

use crate::changes;
use crate::guard::Guard;
use crate::usage;

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
        let flusher = usage::flush_periodically(guard.usage(), guard.store(), guard.usage_flush());
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
            ],
        }
    }

    /// Writes pending key usage before stopping, retrying a transient failure (a
    /// deadlock with another instance, a busy file) until [`FINAL_FLUSH_LIMIT`]; what
    /// still cannot be written then is logged as lost.
    pub async fn final_flush(&self) {
        let deadline = tokio::time::Instant::now() + FINAL_FLUSH_LIMIT;
        let mut error = String::from("no time left");
        let mut keys = self.usage().pending();
        while keys > 0 && tokio::time::Instant::now() < deadline {
            let (usage, store) = (self.usage(), self.store());
            match tokio::time::timeout_at(deadline, web::block(move || usage.flush(&*store))).await
            {
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
