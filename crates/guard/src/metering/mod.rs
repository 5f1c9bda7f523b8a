//! Metering: after a key is authenticated and its scopes permit the request, its rate
//! limit and then its credits decide whether it is admitted. The in-process guard,
//! every gateway endpoint and `/verify` go through [`Guard::admit`], so they meter alike.

pub mod credits;
pub mod rate;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use keygate_core::metering::until;
use keygate_core::{Action, ApiKey, Principal, Resource, UsageOutcome};
use secrecy::ExposeSecret;

pub use credits::{Leases, Spent, Unspent};
pub use rate::{RateLimiter, RateState};

use crate::error::GuardError;
use crate::guard::Guard;
use crate::observer::Observer;
use crate::settings::{MeteringBackend, MeteringSettings};

/// What metering found for a request: the key's rate-limit window and credits, if it
/// has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metered {
    /// The rate-limit window after this request.
    pub rate: Option<RateState>,
    /// Credits remaining after this request.
    pub credits: Option<i64>,
}

/// The IETF RateLimit header fields for `rate`, answered for every key with a rate limit: the limit, what remains, and the seconds
/// until the whole limit is available again.
pub fn rate_headers(rate: &RateState) -> [(HeaderName, HeaderValue); 3] {
    let [limit, remaining, reset] = &RATE_HEADERS;
    [
        (limit.clone(), HeaderValue::from(rate.limit)),
        (remaining.clone(), HeaderValue::from(rate.remaining)),
        (reset.clone(), HeaderValue::from(whole_seconds(rate.reset))),
    ]
}

/// The rate-limit headers' names, parsed once rather than on every answer.
static RATE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
];

/// `wait` in whole seconds, rounded up.
pub(crate) fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// An admitted request: who made it, and what metering found.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The caller.
    pub principal: Principal,
    /// Its rate-limit window and credits.
    pub metered: Metered,
}

/// Rate limits and credits of the keys this guard admits.
pub(crate) struct Meter {
    pub(crate) rate: RateLimiter,
    pub(crate) leases: Leases,
    pub(crate) settings: MeteringSettings,
}

impl Meter {
    pub(crate) fn new(settings: &MeteringSettings, observer: Arc<dyn Observer>) -> Self {
        let rate = match &settings.backend {
            MeteringBackend::Local => RateLimiter::local(),
            MeteringBackend::Redis(url) => {
                let report = observer.clone();
                RateLimiter::redis(
                    url.expose_secret(),
                    Arc::new(move |falling_back| report.redis_fallback(falling_back)),
                )
                .unwrap_or_else(|error| {
                    // Settings are checked at start; a URL refused here counts locally.
                    tracing::error!(%error, "metering.redis_url is unusable; counting rate limits in this process");
                    RateLimiter::local()
                })
            }
        };
        Meter {
            rate,
            leases: Leases::default(),
            settings: settings.clone(),
        }
    }
}

impl Guard {
    /// Decides whether `principal` may perform `action` on `resource` at a cost of
    /// `cost` credits: its scopes, then its rate limit, then its credits. A refusal by
    /// scopes costs nothing; one by the rate limit costs no credit. The master key is
    /// never metered. Every outcome of an API key is counted in its usage.
    pub async fn admit(
        &self,
        principal: Principal,
        resource: Option<Resource>,
        action: Result<Action, &str>,
        cost: u64,
    ) -> Result<Admitted, GuardError> {
        let key = match &principal {
            Principal::Master => {
                return Ok(Admitted {
                    principal,
                    metered: Metered::default(),
                });
            }
            Principal::Key(key) => key.clone(),
        };
        let now = self.clock().now();
        if let Err(rule) = principal.authorize(resource, action) {
            self.usage_recorder()
                .count(&key.id, UsageOutcome::Denied, now);
            return Err(rule.into());
        }
        let metered = match self.meter(&key, cost.max(1), now).await {
            Ok(metered) => metered,
            Err(refusal @ (GuardError::KeyRateLimited(_) | GuardError::UsageExceeded { .. })) => {
                let (outcome, label) = match refusal {
                    GuardError::KeyRateLimited(_) => (UsageOutcome::RateLimited, "rate_limited"),
                    _ => (UsageOutcome::UsageExceeded, "usage_exceeded"),
                };
                self.usage_recorder().count(&key.id, outcome, now);
                self.observer().metering_decision(label);
                return Err(refusal);
            }
            // Not the key's doing (the database is away): not counted.
            Err(other) => return Err(other),
        };
        self.usage_recorder()
            .count(&key.id, UsageOutcome::Allowed, now);
        if key.ratelimit.is_some() || key.credits.is_some() {
            self.observer().metering_decision("allowed");
        }
        Ok(Admitted { principal, metered })
    }

    async fn meter(
        &self,
        key: &Arc<ApiKey>,
        cost: u64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Metered, GuardError> {
        let meter = self.meter_state();
        let rate = match key.ratelimit {
            None => None,
            Some(limit) => {
                // A rate limit counts requests, whatever credits they cost.
                let state = meter
                    .rate
                    .check(key.rate_bucket().as_str(), limit.limit, limit.window(), 1)
                    .await;
                if !state.admitted() {
                    return Err(GuardError::KeyRateLimited(state));
                }
                Some(state)
            }
        };
        let Some(account) = &key.credits else {
            return Ok(Metered {
                rate,
                credits: None,
            });
        };
        let cost = i64::try_from(cost).unwrap_or(i64::MAX);
        let spent = meter
            .leases
            .spend(account, cost, now, |request| {
                // Only a lease taken from the database needs the pool's name of its own.
                let pool = account.pool.clone();
                async move {
                    self.with_store(move |store| store.take_credits(&pool, request, now))
                        .await
                }
            })
            .await?;
        if !spent.admitted {
            return Err(GuardError::UsageExceeded {
                rate,
                remaining: spent.remaining,
                retry_after: spent.refill_at.map(|at| until(at, now)),
            });
        }
        Ok(Metered {
            rate,
            credits: Some(spent.remaining),
        })
    }

    /// What this instance holds, unspent, of the credits of `key` (to add to the
    /// database's balance when showing it).
    pub fn credits_held(&self, key: &ApiKey) -> i64 {
        key.credits.as_ref().map_or(0, |account| {
            self.meter_state().leases.held(&account.pool, account.epoch)
        })
    }

    /// Whether rate limits are being counted in this process because Redis cannot be
    /// reached.
    pub fn metering_falls_back(&self) -> bool {
        self.meter_state().rate.falling_back()
    }

    /// Gives back the credits of leases unused for `idle` (all, with `Duration::ZERO`).
    pub(crate) fn release_leases(&self, idle: Duration) -> Result<(), keygate_core::StoreError> {
        give_back(&*self.store(), self.meter_state().leases.release_idle(idle))
    }
}

/// Gives `unspent` credits back to their pools. What cannot be given back is stranded,
/// not retried: a return whose answer was lost may have been applied, and applying it
/// twice would add credits.
pub(crate) fn give_back(
    store: &dyn keygate_core::KeyStore,
    unspent: Vec<Unspent>,
) -> Result<(), keygate_core::StoreError> {
    let mut failure = None;
    for lease in unspent {
        if let Err(error) = store.return_credits(&lease.pool, lease.amount, lease.epoch) {
            tracing::warn!(%error, pool = %lease.pool, credits = lease.amount, "could not give back unspent credits; they stay unspent until the next refill");
            failure = Some(error);
        }
    }
    failure.map_or(Ok(()), Err)
}
