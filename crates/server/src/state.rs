//! The service's shared state: the guard that authenticates every request, the metrics,
//! and the service's own limits.

use std::sync::Arc;

use actix_web::web;
use keygate_core::{Clock, KeyStore, SystemClock};
use keygate_guard::Guard;
use secrecy::SecretString;

use crate::metrics::Metrics;
use crate::settings::Settings;

/// Everything a handler needs, shared by all workers.
pub struct AppState {
    guard: web::Data<Guard>,
    metrics: Arc<Metrics>,
    max_key_lifetime_days: u32,
    console: bool,
}

impl AppState {
    /// State over `store` for `settings`. With secure mode off no key is checked;
    /// otherwise `master_key` (if any) is the master key.
    pub fn new(
        store: Arc<dyn KeyStore>,
        settings: &Settings,
        master_key: Option<&SecretString>,
    ) -> Result<Self, String> {
        Self::with_clock(store, settings, master_key, Arc::new(SystemClock))
    }

    /// [`Self::new`], telling time by `clock`.
    pub fn with_clock(
        store: Arc<dyn KeyStore>,
        settings: &Settings,
        master_key: Option<&SecretString>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
        let guard_settings = settings.guard(master_key.cloned());
        Ok(AppState {
            guard: web::Data::new(
                Guard::new(store, &guard_settings, metrics.clone()).with_clock(clock),
            ),
            metrics,
            max_key_lifetime_days: settings.auth.max_key_lifetime_days,
            console: settings.server.console,
        })
    }

    /// The authentication engine.
    pub fn guard(&self) -> &web::Data<Guard> {
        &self.guard
    }

    /// Where "now" comes from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        self.guard.clock()
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The furthest in the future a key may expire, in days.
    pub fn max_key_lifetime_days(&self) -> u32 {
        self.max_key_lifetime_days
    }

    /// Whether the web console is served.
    pub fn console(&self) -> bool {
        self.console
    }
}
