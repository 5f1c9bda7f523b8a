//! Credits without a database write per request: this instance takes a lease (a block
//! of a pool's credits, in one conditional update), spends it in memory, takes the next
//! when it runs out, and gives back what is left when the lease goes idle and on the way
//! out. The pool never goes below zero, so all instances together never admit more than
//! was granted; a crashed instance strands what its leases held (at most
//! [`MAX_LEASE`](keygate_core::metering::MAX_LEASE) a pool), never adds any.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keygate_core::{ApiKeyId, CreditAccount, CreditGrant, CreditRequest};

/// What a spend came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    /// Whether the credits were there.
    pub admitted: bool,
    /// What remains, as far as this instance knows: the pool's balance at its last
    /// grant and what its lease still holds (exact with one instance).
    pub remaining: i64,
    /// When the pool's next refill is due, if it is refilled.
    pub refill_at: Option<DateTime<Utc>>,
}

/// One pool's lease.
#[derive(Debug)]
pub(crate) struct Lease {
    state: Mutex<LeaseState>,
    /// Held while credits are taken from the pool, so that one request takes the next
    /// lease and the others wait for it.
    taking: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct LeaseState {
    /// Credits held and not yet spent.
    left: i64,
    /// The pool's epoch when they were taken.
    epoch: i64,
    /// When the pool's next refill is due: the lease is void from then on.
    refill_at: Option<DateTime<Utc>>,
    /// The pool's balance after the last grant.
    pool_remaining: i64,
    /// When the lease was last used.
    used: Instant,
    /// Until when the pool is known to hold less than a request needs, so that requests
    /// beyond it are refused without asking the database again (a key hammered after its
    /// credits ran out costs no write per request).
    short_until: Option<Instant>,
}

/// How long a pool found short is believed short, unless its epoch changes first (a
/// top-up or a refill): credits given back by other instances are seen after this.
const SHORT_FOR: Duration = Duration::from_secs(1);

impl LeaseState {
    /// Voids what is held if the pool was refilled or changed since it was taken: the
    /// pool's new balance replaced it.
    fn void_if_stale(&mut self, account: &CreditAccount, now: DateTime<Utc>) {
        let refilled = self.refill_at.is_some_and(|at| at <= now);
        if account.epoch > self.epoch || refilled {
            self.left = 0;
            self.pool_remaining = account.credits.remaining;
            self.short_until = None;
        }
    }

    /// Whether the pool was found too short for `cost` a moment ago.
    fn known_short(&self, cost: i64) -> bool {
        self.short_until.is_some_and(|until| Instant::now() < until)
            && cost > self.left.saturating_add(self.pool_remaining)
    }

    fn refusal(&self) -> Spent {
        Spent {
            admitted: false,
            remaining: self.pool_remaining.saturating_add(self.left),
            refill_at: self.refill_at,
        }
    }

    fn try_spend(&mut self, cost: i64) -> Option<Spent> {
        (self.left >= cost).then(|| {
            self.left -= cost;
            self.used = Instant::now();
            Spent {
                admitted: true,
                remaining: self.pool_remaining.saturating_add(self.left),
                refill_at: self.refill_at,
            }
        })
    }

    /// Adds `grant` to what is held; what was held in an older epoch is void.
    fn absorb(&mut self, grant: &CreditGrant) {
        if grant.epoch != self.epoch {
            self.left = 0;
            self.epoch = grant.epoch;
        }
        self.left = self.left.saturating_add(grant.granted);
        self.refill_at = grant.refill_at;
        self.pool_remaining = grant.remaining;
        self.short_until = None;
    }
}

/// Credits this instance holds, by pool.
#[derive(Debug, Default)]
pub struct Leases {
    held: Mutex<HashMap<ApiKeyId, Arc<Lease>>>,
    /// Released leases whose credits could not be given back yet.
    deferred: Mutex<Vec<Unspent>>,
}

/// Credits to give back to a pool, if its epoch is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unspent {
    /// The pool.
    pub pool: ApiKeyId,
    /// How many.
    pub amount: i64,
    /// The epoch they were taken in.
    pub epoch: i64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Leases {
    /// The lease of `account`'s pool, made empty if there is none.
    pub(crate) fn lease(&self, account: &CreditAccount) -> Arc<Lease> {
        let mut held = lock(&self.held);
        if let Some(lease) = held.get(&account.pool) {
            return lease.clone();
        }
        let lease = Arc::new(Lease {
            state: Mutex::new(LeaseState {
                left: 0,
                epoch: account.epoch,
                refill_at: account.refill_at,
                pool_remaining: account.credits.remaining,
                used: Instant::now(),
                short_until: None,
            }),
            taking: tokio::sync::Mutex::new(()),
        });
        held.insert(account.pool.clone(), lease.clone());
        lease
    }

    /// Whether `lease` is still the one held for `pool` (it is dropped when it goes idle).
    fn is_current(&self, pool: &ApiKeyId, lease: &Arc<Lease>) -> bool {
        lock(&self.held)
            .get(pool)
            .is_some_and(|held| Arc::ptr_eq(held, lease))
    }

    /// Spends `cost` credits of `account` at `now`, taking from the pool through `take`
    /// when the lease runs short. `take` runs the store's `take_credits`.
    pub async fn spend<F, Fut, E>(
        &self,
        account: &CreditAccount,
        cost: i64,
        now: DateTime<Utc>,
        take: F,
    ) -> Result<Spent, E>
    where
        F: Fn(CreditRequest) -> Fut,
        Fut: std::future::Future<Output = Result<Option<CreditGrant>, E>>,
    {
        // Twice at most: a grant from a new epoch voids what was held, which the second
        // round makes up for.
        let mut rounds = 0;
        loop {
            let lease = self.lease(account);
            {
                let mut state = lock(&lease.state);
                state.void_if_stale(account, now);
                if let Some(spent) = state.try_spend(cost) {
                    return Ok(spent);
                }
                if state.known_short(cost) {
                    return Ok(state.refusal());
                }
            }
            let _taking = lease.taking.lock().await;
            if !self.is_current(&account.pool, &lease) {
                continue;
            }
            let need = {
                let mut state = lock(&lease.state);
                state.void_if_stale(account, now);
                if let Some(spent) = state.try_spend(cost) {
                    return Ok(spent);
                }
                if state.known_short(cost) {
                    return Ok(state.refusal());
                }
                // In use: not to be released as idle while its next lease is taken.
                state.used = Instant::now();
                cost - state.left
            };
            let Some(grant) = take(CreditRequest { need }).await? else {
                // The pool is gone: nothing to spend.
                return Ok(Spent {
                    admitted: false,
                    remaining: 0,
                    refill_at: None,
                });
            };
            let mut state = lock(&lease.state);
            let epoch_before = state.epoch;
            state.absorb(&grant);
            let spent = state.try_spend(cost);
            if !self.is_current(&account.pool, &lease) && state.left > 0 {
                // Released as idle meanwhile: what it holds goes back with the next release.
                self.defer(vec![Unspent {
                    pool: account.pool.clone(),
                    amount: std::mem::take(&mut state.left),
                    epoch: state.epoch,
                }]);
            }
            if let Some(spent) = spent {
                return Ok(spent);
            }
            rounds += 1;
            if grant.granted == 0 || grant.epoch == epoch_before || rounds >= 2 {
                state.short_until = Some(Instant::now() + SHORT_FOR);
                return Ok(state.refusal());
            }
        }
    }

    /// What this instance holds of `pool` in `epoch`, not yet spent.
    pub fn held(&self, pool: &ApiKeyId, epoch: i64) -> i64 {
        // The map's lock is let go before the lease's is taken (see `release_idle`).
        let lease = lock(&self.held).get(pool).cloned();
        lease.map_or(0, |lease| {
            let state = lock(&lease.state);
            if state.epoch == epoch { state.left } else { 0 }
        })
    }

    /// Drops the leases unused for `idle` (all of them with `Duration::ZERO`), and
    /// returns what they held, to be given back.
    pub fn release_idle(&self, idle: Duration) -> Vec<Unspent> {
        let mut unspent = std::mem::take(&mut *lock(&self.deferred));
        // Locks are taken in one order everywhere: a lease's state, then the map. `spend`
        // holds a state while it asks the map whether its lease is current, so the map
        // is not held here while a state is waited for.
        let leases: Vec<(ApiKeyId, Arc<Lease>)> = lock(&self.held)
            .iter()
            .map(|(pool, lease)| (pool.clone(), lease.clone()))
            .collect();
        for (pool, lease) in leases {
            let mut state = lock(&lease.state);
            if state.used.elapsed() < idle {
                continue;
            }
            let mut held = lock(&self.held);
            // Replaced meanwhile: the new lease is not this one's to release.
            if !held
                .get(&pool)
                .is_some_and(|current| Arc::ptr_eq(current, &lease))
            {
                continue;
            }
            held.remove(&pool);
            if state.left > 0 {
                unspent.push(Unspent {
                    pool,
                    amount: state.left,
                    epoch: state.epoch,
                });
            }
            state.left = 0;
        }
        unspent
    }

    /// Keeps `unspent` to be given back by the next [`Self::release_idle`].
    pub fn defer(&self, unspent: Vec<Unspent>) {
        lock(&self.deferred).extend(unspent);
    }

    /// How many pools this instance holds leases of.
    pub fn len(&self) -> usize {
        lock(&self.held).len()
    }

    /// Whether this instance holds no lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether nothing is held, nor waiting to be given back: releasing would do nothing.
    pub fn is_idle(&self) -> bool {
        self.is_empty() && lock(&self.deferred).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::Credits;
    use std::sync::atomic::{AtomicI64, Ordering};

    fn account(remaining: i64) -> CreditAccount {
        CreditAccount {
            pool: ApiKeyId::new("api_key_pool"),
            credits: Credits {
                remaining,
                refill: None,
            },
            epoch: 0,
            refill_at: None,
        }
    }

    /// A pool in memory, granting as the stores do.
    struct Pool {
        remaining: AtomicI64,
        epoch: AtomicI64,
    }

    impl Pool {
        fn take(&self, request: CreditRequest) -> Result<Option<CreditGrant>, ()> {
            let remaining = self.remaining.load(Ordering::SeqCst);
            let granted = request.grant(remaining);
            self.remaining.fetch_sub(granted, Ordering::SeqCst);
            Ok(Some(CreditGrant {
                granted,
                remaining: remaining - granted,
                epoch: self.epoch.load(Ordering::SeqCst),
                refill_at: None,
            }))
        }
    }

    /// Spending, releasing idle leases and reading what is held, all at once from
    /// several threads: nothing waits forever (the locks are taken in one order), and
    /// not one credit is made or lost.
    #[test]
    fn spends_and_releases_at_once_neither_deadlock_nor_lose_credits() {
        // On a thread of its own, so that a deadlock fails the test instead of hanging it.
        let (finished, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .expect("a runtime");
            let _ = finished.send(runtime.block_on(spend_and_release_at_once()));
        });
        let (admitted, returned) = outcome
            .recv_timeout(Duration::from_secs(60))
            .expect("spending and releasing at once must not deadlock");
        assert_eq!(admitted, 20_000, "plenty of credits: every spend admitted");
        assert_eq!(
            returned + admitted,
            TOTAL,
            "every credit is spent or back in the pool"
        );
    }

    const TOTAL: i64 = 1_000_000;

    /// Four tasks spending while a thread releases idle leases and reads what is held:
    /// how many spends were admitted, and what the pool holds at the end.
    async fn spend_and_release_at_once() -> (i64, i64) {
        let pool = Arc::new(Pool {
            remaining: AtomicI64::new(TOTAL),
            epoch: AtomicI64::new(0),
        });
        let leases = Arc::new(Leases::default());
        let account = account(TOTAL);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let releaser = {
            let (leases, pool, done, pool_id) = (
                leases.clone(),
                pool.clone(),
                done.clone(),
                account.pool.clone(),
            );
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    for unspent in leases.release_idle(Duration::ZERO) {
                        pool.remaining.fetch_add(unspent.amount, Ordering::SeqCst);
                    }
                    let _ = leases.held(&pool_id, 0);
                }
            })
        };
        let spenders: Vec<_> = (0..4)
            .map(|_| {
                let (leases, pool, account) = (leases.clone(), pool.clone(), account.clone());
                tokio::spawn(async move {
                    let mut admitted = 0;
                    for _ in 0..5_000 {
                        let spent = leases
                            .spend(&account, 1, Utc::now(), |r| {
                                std::future::ready(pool.take(r))
                            })
                            .await
                            .expect("no store error");
                        admitted += i64::from(spent.admitted);
                    }
                    admitted
                })
            })
            .collect();
        let mut admitted = 0;
        for spender in spenders {
            admitted += spender.await.expect("a spender");
        }
        done.store(true, Ordering::SeqCst);
        releaser.join().expect("the releaser");
        for unspent in leases.release_idle(Duration::ZERO) {
            pool.remaining.fetch_add(unspent.amount, Ordering::SeqCst);
        }
        (admitted, pool.remaining.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_lease_is_spent_to_the_last_credit_and_remaining_is_exact() {
        let pool = Pool {
            remaining: AtomicI64::new(100),
            epoch: AtomicI64::new(0),
        };
        let leases = Leases::default();
        let now = Utc::now();
        let account = account(100);
        for expected in (0..100).rev() {
            let spent = leases
                .spend(&account, 1, now, |r| std::future::ready(pool.take(r)))
                .await
                .expect("no store error");
            assert!(spent.admitted);
            assert_eq!(spent.remaining, expected);
        }
        let spent = leases
            .spend(&account, 1, now, |r| std::future::ready(pool.take(r)))
            .await
            .expect("no store error");
        assert!(!spent.admitted);
        assert_eq!(pool.remaining.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn idle_leases_are_given_back_and_a_new_epoch_voids_them() {
        let pool = Pool {
            remaining: AtomicI64::new(1_000),
            epoch: AtomicI64::new(0),
        };
        let leases = Leases::default();
        let account = account(1_000);
        let now = Utc::now();
        leases
            .spend(&account, 1, now, |r| std::future::ready(pool.take(r)))
            .await
            .expect("no store error");
        let held = leases.held(&account.pool, 0);
        assert_eq!(held, 62, "a lease of 1/16 of 1,000, one spent");
        assert_eq!(leases.release_idle(Duration::from_secs(60)), vec![]);
        assert_eq!(
            leases.release_idle(Duration::ZERO),
            vec![Unspent {
                pool: account.pool.clone(),
                amount: 62,
                epoch: 0
            }]
        );
        assert!(leases.is_empty());

        // Credits changed: what the lease held is void, not spent.
        leases
            .spend(&account, 1, now, |r| std::future::ready(pool.take(r)))
            .await
            .expect("no store error");
        pool.epoch.store(1, Ordering::SeqCst);
        pool.remaining.store(3, Ordering::SeqCst);
        let changed = CreditAccount {
            epoch: 1,
            credits: Credits {
                remaining: 3,
                refill: None,
            },
            ..account.clone()
        };
        let mut admitted = 0;
        for _ in 0..10 {
            if leases
                .spend(&changed, 1, now, |r| std::future::ready(pool.take(r)))
                .await
                .expect("no store error")
                .admitted
            {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3, "only the new balance is spent");
    }

    #[tokio::test]
    async fn a_costly_request_takes_its_cost_or_nothing() {
        let pool = Pool {
            remaining: AtomicI64::new(10),
            epoch: AtomicI64::new(0),
        };
        let leases = Leases::default();
        let account = account(10);
        let now = Utc::now();
        let spent = leases
            .spend(&account, 11, now, |r| std::future::ready(pool.take(r)))
            .await
            .expect("no store error");
        assert!(!spent.admitted);
        assert_eq!(pool.remaining.load(Ordering::SeqCst), 10, "nothing taken");
        let spent = leases
            .spend(&account, 7, now, |r| std::future::ready(pool.take(r)))
            .await
            .expect("no store error");
        assert!(spent.admitted);
        assert_eq!(spent.remaining, 3);
    }
}
