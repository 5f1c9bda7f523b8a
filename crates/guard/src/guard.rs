//! The [`Guard`]: the authentication engine shared by every worker. It resolves a
//! presented key into a [`Principal`] on the hot path (one blake3 hash, memory, and on a
//! miss one indexed lookup), throttles guessing, keeps its key cache honest through the
//! change feed, and runs storage calls off the async workers within a deadline.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::web;
use chrono::{DateTime, Utc};
use keygate_core::{
    ApiKey, Clock, KeyHash, KeyShapes, KeyStatus, KeyStore, LegacyHash, PlainKey, Principal,
    StoreError, SystemClock,
};
use quick_cache::Weighter;
use quick_cache::sync::{Cache, DefaultLifecycle};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use crate::error::GuardError;
use crate::metering::Meter;
use crate::observer::Observer;
use crate::settings::GuardSettings;
use crate::throttle::Throttle;
use crate::usage::UsageRecorder;

/// What a storage call may take beyond its timeout before the caller is
/// answered 503: the database's own timeouts fire at the pool timeout, and their answer
/// should win.
const STORAGE_GRACE: Duration = Duration::from_millis(250);

/// `feed_read_ms` before the change feed was first read.
const NEVER: u64 = u64::MAX;

/// The longest key text looked at: anything longer is refused before it is hashed.
pub const MAX_PRESENTED_KEY: usize = 512;

/// The authentication engine, shared by all workers (as `web::Data<Guard>`).
pub struct Guard {
    store: Arc<dyn KeyStore>,
    /// `None` when secure mode is off: every request then acts as the master key.
    master: Option<Master>,
    /// Verified keys by digest. Hashed with foldhash rather than SipHash: the digests are
    /// blake3's, uniform whatever text was presented, and only verified keys are kept.
    /// quick_cache rather than a cache with a shared read log: a hit is a shard's read
    /// lock and a flag, so workers on other cores do not contend on every request.
    keys: Cache<KeyHash, Arc<CachedKey>, ByWeight, foldhash::fast::RandomState>,
    /// How long a cached key is trusted before it is read again, in milliseconds.
    cache_ttl_ms: i64,
    /// How old a cached key may be before a use of it has it read again in the
    /// background (three quarters of the time to live), in milliseconds.
    refresh_after_ms: i64,
    /// Cached keys in use that are due to be read again, for [`Self::refresh_due`].
    refreshes: Mutex<Vec<(KeyHash, Arc<CachedKey>)>>,
    /// Storage calls in flight at once: no more than the pool has connections, so
    /// waiting happens here, cheaply, rather than in blocked threads.
    storage_slots: Arc<Semaphore>,
    /// How long a storage call may take, waiting included.
    storage_timeout: Duration,
    /// Bumped by every change, so a lookup that raced it does not cache what it read.
    invalidations: AtomicU64,
    /// When this state was made: the origin of [`Self::feed_read_ms`].
    started: Instant,
    /// When the change feed was last read successfully, in milliseconds since `started`.
    feed_read_ms: AtomicU64,
    /// How long cached keys are trusted after the last successful read of the feed.
    max_staleness: Duration,
    usage: Arc<UsageRecorder>,
    throttle: Throttle,
    observer: Arc<dyn Observer>,
    /// Where "now" comes from, for expiry.
    clock: Arc<dyn Clock>,
    /// The digest of the bearer token that may read operator endpoints, if any.
    operator_token: Option<KeyHash>,
    /// How often the change feed is read and usage written, for the background tasks.
    change_poll: Duration,
    usage_flush: Duration,
    /// [`GuardSettings::last_used_resolution`], in whole seconds (at least one).
    last_used_resolution: i64,
    /// Rate limits and credits.
    meter: Meter,
    /// The lengths of imported secrets not of keygate's own shape, one bit each.
    foreign_lengths: KeyLengths,
    /// Whether keys imported under a legacy (bcrypt) hash await their first use, as the
    /// last read of the feed found.
    legacy_pending: AtomicBool,
    /// bcrypt checks running at once: at most one per core, so that presented legacy
    /// keys cannot take every blocking thread from storage calls.
    legacy_slots: Arc<Semaphore>,
    /// The most blocking calls it runs at once: each holds a storage slot or a bcrypt
    /// slot until its thread is done with it.
    blocking_calls: usize,
}

/// A set of secret lengths (0 to [`MAX_PRESENTED_KEY`]), read on every request without
/// a lock.
#[derive(Debug, Default)]
struct KeyLengths([AtomicU64; MAX_PRESENTED_KEY / 64 + 1]);

impl KeyLengths {
    fn contains(&self, length: usize) -> bool {
        self.0
            .get(length / 64)
            .is_some_and(|word| word.load(Ordering::Relaxed) & (1 << (length % 64)) != 0)
    }

    fn insert(&self, length: usize) {
        if let Some(word) = self.0.get(length / 64) {
            word.fetch_or(1 << (length % 64), Ordering::Relaxed);
        }
    }
}

/// How the master key is recognised: by its digest, compared in constant time.
struct Master(KeyHash);

/// A verified key held in memory.
struct CachedKey {
    key: Arc<ApiKey>,
    /// When it was read (Unix milliseconds, by the guard's clock): it is read again
    /// [`GuardSettings::cache_ttl`] later.
    read_ms: i64,
    /// The second (Unix time) of the latest use of this key that was noted (or, before
    /// any, of its stored `last_used_at`): the next is noted a resolution later, so that
    /// a busy key costs the usage recorder one entry a resolution, not one a request.
    noted_second: AtomicI64,
    /// Whether it waits to be read again in the background (see [`Guard::refresh_due`]).
    refreshing: AtomicBool,
}

impl CachedKey {
    /// `key`, as read at `now`.
    fn read(key: ApiKey, now: DateTime<Utc>) -> Self {
        CachedKey {
            // A stored time ahead of this clock (another instance's, or an import's)
            // must not hold back the next write.
            noted_second: AtomicI64::new(
                key.last_used_at
                    .map_or(i64::MIN, |at| at.timestamp().min(now.timestamp())),
            ),
            read_ms: now.timestamp_millis(),
            key: Arc::new(key),
            refreshing: AtomicBool::new(false),
        }
    }

    /// Whether it may still be used at `ms` (Unix milliseconds): read less than `ttl_ms`
    /// before, and not after (a clock set back reads it again).
    fn is_fresh(&self, ms: i64, ttl_ms: i64) -> bool {
        (0..ttl_ms).contains(&ms.saturating_sub(self.read_ms))
    }

    /// Roughly how many bytes the entry holds, for the cache's memory bound.
    fn weight(&self) -> u64 {
        let key = &self.key;
        let text = key.id.as_str().len() + key.hint.len() + key.name.len() + key.owner_id.len();
        let size = std::mem::size_of::<ApiKey>()
            + std::mem::size_of::<Self>()
            + 96
            + text
            + 8 * key.scopes.len();
        u64::try_from(size).unwrap_or(u64::MAX)
    }
}

/// Runs `call` on the blocking pool, holding `slot` until its thread is done with it,
/// whether or not anyone still waits for it: a caller that times out or goes away
/// (a client that hung up) cannot leave more calls running than there are slots.
async fn block_holding<T: Send + 'static>(
    slot: impl Send + 'static,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, actix_web::error::BlockingError> {
    web::block(move || {
        let _slot = slot;
        call()
    })
    .await
}

/// Weighs cached keys by [`CachedKey::weight`], for the cache's memory bound.
#[derive(Debug, Clone, Copy)]
struct ByWeight;

impl Weighter<KeyHash, Arc<CachedKey>> for ByWeight {
    fn weight(&self, _: &KeyHash, entry: &Arc<CachedKey>) -> u64 {
        entry.weight()
    }
}

/// About what a cached key weighs: the cache expects its bound divided by this many
/// keys (it sizes its record of recently evicted keys by that).
const TYPICAL_ENTRY_BYTES: u64 = 512;

/// Most cached keys waiting to be read again at once; past that, a due key is read on
/// its next use after its time to live, as without refreshes.
const MAX_REFRESHES: usize = 100_000;

/// Keys read again in one query.
const REFRESH_BATCH: usize = 500;

impl Guard {
    /// A guard over `store` with `settings`, reporting to `observer`. With secure mode
    /// off no key is checked and every request acts as the master key.
    pub fn new(
        store: Arc<dyn KeyStore>,
        settings: &GuardSettings,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let master = settings.secure.then(|| {
            // Without a configured master key, no presented key can match this digest:
            // it is the digest of 32 random bytes held nowhere.
            let hash = match &settings.master_key {
                Some(key) => KeyHash::of(key.expose_secret()),
                None => PlainKey::generate()
                    .map(|key| key.hash())
                    .unwrap_or_else(|_| KeyHash::of("")),
            };
            Master(hash)
        });
        let cache_ttl_ms = i64::try_from(settings.cache_ttl.as_millis()).unwrap_or(i64::MAX);
        let legacy_slots = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Guard {
            meter: Meter::new(&settings.metering, observer.clone()),
            observer,
            clock: Arc::new(SystemClock),
            operator_token: settings
                .operator_token
                .as_ref()
                .map(|token| KeyHash::of(token.expose_secret())),
            throttle: Throttle::new(&settings.throttle),
            store,
            master,
            keys: Cache::with(
                usize::try_from((settings.cache_max_bytes / TYPICAL_ENTRY_BYTES).max(64))
                    .unwrap_or(usize::MAX),
                settings.cache_max_bytes.max(1),
                ByWeight,
                foldhash::fast::RandomState::default(),
                DefaultLifecycle::default(),
            ),
            cache_ttl_ms,
            refresh_after_ms: cache_ttl_ms - cache_ttl_ms / 4,
            refreshes: Mutex::new(Vec::new()),
            storage_slots: Arc::new(Semaphore::new(settings.storage_slots.max(1))),
            storage_timeout: settings.storage_timeout,
            invalidations: AtomicU64::new(0),
            started: Instant::now(),
            feed_read_ms: AtomicU64::new(NEVER),
            max_staleness: settings.max_staleness,
            usage: Arc::new(UsageRecorder::default()),
            change_poll: settings.change_poll.max(Duration::from_millis(1)),
            usage_flush: settings.usage_flush.max(Duration::from_millis(1)),
            last_used_resolution: i64::try_from(settings.last_used_resolution.as_secs())
                .unwrap_or(i64::MAX)
                .max(1),
            foreign_lengths: KeyLengths::default(),
            legacy_pending: AtomicBool::new(false),
            legacy_slots: Arc::new(Semaphore::new(legacy_slots)),
            blocking_calls: settings.storage_slots.max(1).saturating_add(legacy_slots),
        }
    }

    /// This guard, telling time by `clock` (the system's by default).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where "now" comes from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// How often the change feed is read.
    pub fn change_poll(&self) -> Duration {
        self.change_poll
    }

    /// How often pending usage is written.
    pub fn usage_flush(&self) -> Duration {
        self.usage_flush
    }

    /// The brute-force throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Where decisions are reported.
    pub fn observer(&self) -> &Arc<dyn Observer> {
        &self.observer
    }

    pub(crate) fn meter_state(&self) -> &Meter {
        &self.meter
    }

    /// [`Self::authenticate`], for a request from `client`: a client that failed too
    /// often is refused (429) without a database lookup, unless its key is already known
    /// to this instance; each unknown key it presents counts against it.
    pub async fn authenticate_client(
        &self,
        client: Option<IpAddr>,
        presented: Option<&str>,
    ) -> Result<Principal, GuardError> {
        let refused = self.throttle.refused(client);
        let outcome = match self.verify(presented, refused).await {
            Err(GuardError::InvalidKey) => Err(self
                .throttle
                .failed(client)
                .map_or(GuardError::InvalidKey, GuardError::RateLimited)),
            other => other,
        };
        self.observer.auth_decision(
            outcome
                .as_ref()
                .map_or_else(|e| e.code().as_str(), |_| "ok"),
        );
        outcome
    }

    /// Admits the master key or the operator token for an operational endpoint, from
    /// `client`. No API key is looked up: any other text is refused alike, and counts as a
    /// failed authentication.
    pub fn admit_operator(
        &self,
        client: Option<IpAddr>,
        presented: Option<&str>,
    ) -> Result<(), GuardError> {
        let Some(Master(master)) = &self.master else {
            return Ok(());
        };
        let presented = presented.ok_or(GuardError::MissingKey)?;
        let hash = KeyHash::of(presented);
        let by_token = self.operator_token.as_ref() == Some(&hash);
        // A refused address is refused before its guess is compared, right or wrong.
        let outcome = if let Some(wait) = self.throttle.refused(client) {
            Err(GuardError::RateLimited(wait))
        } else if by_token || hash == *master {
            Ok(())
        } else {
            Err(self
                .throttle
                .failed(client)
                .map_or(GuardError::OperatorTokenRequired, GuardError::RateLimited))
        };
        // Scrapes are not key checks: only refusals are counted.
        if let Err(refusal) = &outcome {
            self.observer.auth_decision(refusal.code().as_str());
        }
        outcome
    }

    /// The key store.
    pub fn store(&self) -> Arc<dyn KeyStore> {
        self.store.clone()
    }

    /// The most calls the guard runs on a blocking pool at once: every storage call
    /// holds a storage slot, and every bcrypt check a slot of its own, until its thread
    /// is done, even when its caller gave up waiting or went away. The guard's calls
    /// never need more threads than this.
    pub fn blocking_calls(&self) -> usize {
        self.blocking_calls
    }

    /// The pending `last_used_at` updates.
    pub fn usage(&self) -> Arc<UsageRecorder> {
        self.usage.clone()
    }

    /// The pending usage, borrowed: on every request, where cloning the `Arc` would
    /// have every worker write its shared count.
    pub(crate) fn usage_recorder(&self) -> &UsageRecorder {
        &self.usage
    }

    /// Runs a blocking storage call on the blocking pool, never on an async worker, and
    /// answers within the storage timeout (and a little): waiting for a storage
    /// slot, for a connection and for the database all count against it, so a locked
    /// table or a frozen server is a 503, never a hang. A call still running when time
    /// is up finishes (or fails by its own timeouts) on its own thread, and holds its
    /// slot until then: the slots bound the threads the guard's calls take.
    pub async fn with_store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn KeyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, GuardError> {
        // One deadline, from the system clock (a runtime with paused time holds tokio's
        // still): the blocking thread checks it, and tokio's timers are set from it.
        let given_up = std::time::Instant::now() + self.storage_timeout + STORAGE_GRACE;
        let deadline = tokio::time::Instant::from_std(given_up);
        let slot = tokio::time::timeout_at(deadline, self.storage_slots.clone().acquire_owned());
        let Ok(slot) = slot.await else {
            tracing::warn!("no storage slot freed up in time");
            return Err(GuardError::Unavailable);
        };
        let slot = slot.map_err(|_| GuardError::Internal)?;
        let store = self.store.clone();
        let run = move || {
            // A call that gets a thread only once its caller has given up is not made:
            // a write would land after the client was told the service was unavailable.
            if std::time::Instant::now() >= given_up {
                return Err(StoreError::Unavailable(
                    "no thread was free before the call's deadline".into(),
                ));
            }
            call(&*store)
        };
        let Ok(outcome) = tokio::time::timeout_at(deadline, block_holding(slot, run)).await else {
            tracing::warn!("the database did not answer in time");
            return Err(GuardError::Unavailable);
        };
        outcome
            .map_err(|error| {
                tracing::error!(%error, "blocking storage call failed");
                GuardError::Internal
            })?
            .map_err(GuardError::from)
    }

    /// Runs storage work of the guard's own (usage flushes, metering upkeep, the last
    /// flush on the way out) on the blocking pool, holding a storage slot like any
    /// request's call. The pool has a connection for each slot, so a request that holds
    /// a slot never waits for a connection: were a flush to take one without a slot, a
    /// request would wait behind it, and the pool hands a returned connection to
    /// whoever asks first, not to who has waited longest (a long tail on PostgreSQL).
    pub(crate) async fn background_store<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, actix_web::error::BlockingError> {
        // The slots are never closed: a failed acquire cannot happen, and would only
        // mean running without one.
        let slot = self.storage_slots.clone().acquire_owned().await;
        block_holding(slot, call).await
    }

    /// Runs a storage read. An embedded database's reads run right here: they take a few
    /// microseconds, less than the round trip to a blocking thread. A database server's
    /// reads wait on the network, so they go to the blocking pool like every write.
    pub async fn read_store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn KeyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, GuardError> {
        // Only with a free slot and an idle connection at hand: a worker thread must
        // never wait for the pool, or every request it serves (health checks included)
        // would wait with it.
        if self.store.reads_are_local()
            && let Ok(_slot) = self.storage_slots.try_acquire()
            && self.store.pool_state().is_some_and(|(_, idle)| idle > 0)
        {
            return call(&*self.store).map_err(GuardError::from);
        }
        self.with_store(call).await
    }

    /// Resolves the key a request presented into the caller it stands for: one blake3
    /// hash, then memory, then (on a miss) one lookup by the hash's unique index.
    pub async fn authenticate(&self, presented: Option<&str>) -> Result<Principal, GuardError> {
        self.verify(presented, None).await
    }

    /// [`Self::authenticate`], for a client refused for `refused` (if it is): then only
    /// an API key this instance already holds gets through. Letting the master key
    /// through would let a refused address keep guessing it, a 429 for every wrong guess
    /// and a success for the right one. The key is hashed once either way.
    async fn verify(
        &self,
        presented: Option<&str>,
        refused: Option<Duration>,
    ) -> Result<Principal, GuardError> {
        let Some(Master(master)) = &self.master else {
            return Ok(Principal::Master);
        };
        let refusal = |otherwise| refused.map_or(otherwise, GuardError::RateLimited);
        let presented = presented.ok_or_else(|| refusal(GuardError::MissingKey))?;
        if presented.len() > MAX_PRESENTED_KEY {
            return Err(refusal(GuardError::InvalidKey));
        }
        let hash = KeyHash::of(presented);
        let stored_shape = self.could_be_stored(presented);
        if let Some(wait) = refused
            && !(stored_shape && self.keys.contains_key(&hash))
        {
            return Err(GuardError::RateLimited(wait));
        }
        if hash == *master {
            return Ok(Principal::Master);
        }
        if !stored_shape {
            return Err(GuardError::InvalidKey);
        }
        // A cache that has not heard of changes elsewhere for too long is not trusted.
        let now = self.clock.now();
        let now_ms = now.timestamp_millis();
        let cached = self
            .keys
            .get(&hash)
            .filter(|entry| entry.is_fresh(now_ms, self.cache_ttl_ms) && self.feed_is_fresh());
        self.observer.cache(cached.is_some());
        if let Some(entry) = &cached {
            self.refresh_if_due(hash, entry, now_ms);
        }
        let entry = match cached {
            Some(entry) => entry,
            None => match self.load(hash).await? {
                Some(entry) => entry,
                None => self
                    .upgrade_legacy(presented, hash)
                    .await?
                    .ok_or(GuardError::InvalidKey)?,
            },
        };
        match entry.key.status(now) {
            KeyStatus::Active => {
                self.note_use(&entry, now);
                Ok(Principal::Key(entry.key.clone()))
            }
            KeyStatus::Expired | KeyStatus::Revoked => Err(GuardError::ExpiredKey),
        }
    }

    /// Notes a use of `entry`'s key at `now` for `last_used_at`, if the use noted
    /// before it (or the one stored) is at least a resolution old: the stored time lags
    /// the latest use by less than that, and a key costs one row write a resolution
    /// however busy it is. A key read from the database, last used within the
    /// resolution, costs none: a million keys each used now and then write little.
    fn note_use(&self, entry: &CachedKey, now: DateTime<Utc>) {
        let second = now.timestamp();
        let noted = entry.noted_second.load(Ordering::Relaxed);
        if second >= noted.saturating_add(self.last_used_resolution)
            && entry
                .noted_second
                .compare_exchange(noted, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.usage.record(&entry.key.id, now);
        }
    }

    /// Has `entry`, in use at `ms`, read again in the background once it is three
    /// quarters through its time to live: a key in steady use is then never read on a
    /// request's way (where the read doubles that request's time, the slowest
    /// requests of an instance serving many keys), and still never trusted longer.
    fn refresh_if_due(&self, hash: KeyHash, entry: &Arc<CachedKey>, ms: i64) {
        if ms.saturating_sub(entry.read_ms) >= self.refresh_after_ms
            && !entry.refreshing.load(Ordering::Relaxed)
            && entry
                .refreshing
                .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let mut due = self
                .refreshes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if due.len() < MAX_REFRESHES {
                due.push((hash, entry.clone()));
            } else {
                // It is read on its next use after its time to live instead.
                entry.refreshing.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Reads again the cached keys that uses found due ([`Self::refresh_if_due`]), a
    /// batch to a query, each kept only if its entry is still the one that was due:
    /// a key forgotten since (a change, by the feed or here), read anew by a request,
    /// or evicted, is left as it is. Run by a background task every change poll; stops
    /// at the first failed read (those keys are read on use after their time to live).
    pub async fn refresh_due(&self) {
        let due = std::mem::take(
            &mut *self
                .refreshes
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (done, batch) in due.chunks(REFRESH_BATCH).enumerate() {
            // Trusted from before the read, not from when it answered.
            let read_at = self.clock.now();
            let hashes: Vec<KeyHash> = batch.iter().map(|(hash, _)| *hash).collect();
            match self
                .with_store(move |store| store.find_by_hashes(&hashes))
                .await
            {
                Ok(keys) => {
                    let mut read: std::collections::HashMap<KeyHash, ApiKey> =
                        keys.into_iter().map(|key| (key.hash, key)).collect();
                    for (hash, due) in batch {
                        self.replace_if_unchanged(*hash, due, read.remove(hash), read_at);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not read cached keys again ahead of their expiry; they are read on use");
                    for (_, entry) in due.iter().skip(done * REFRESH_BATCH) {
                        entry.refreshing.store(false, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }

    /// Puts `key`, read at `read_at`, in place of `due` if `due` is still the entry
    /// cached under `hash`; a key no longer stored is dropped.
    fn replace_if_unchanged(
        &self,
        hash: KeyHash,
        due: &Arc<CachedKey>,
        key: Option<ApiKey>,
        read_at: DateTime<Utc>,
    ) {
        let generation = self.invalidations.load(Ordering::SeqCst);
        let unchanged = self
            .keys
            .get(&hash)
            .is_some_and(|current| Arc::ptr_eq(&current, due));
        if !unchanged {
            return;
        }
        let Some(key) = key else {
            self.keys.remove(&hash);
            return;
        };
        let entry = CachedKey::read(key, read_at);
        // A use noted on the entry it replaces, not yet written, still counts.
        entry
            .noted_second
            .fetch_max(due.noted_second.load(Ordering::Relaxed), Ordering::Relaxed);
        self.keep(hash, &Arc::new(entry), generation);
    }

    /// Reads a key missing from memory, and keeps it unless a change raced the read.
    /// Unknown keys are never kept, so a flood of them cannot evict known ones.
    async fn load(&self, hash: KeyHash) -> Result<Option<Arc<CachedKey>>, GuardError> {
        let generation = self.invalidations.load(Ordering::SeqCst);
        let key = self
            .read_store(move |store| store.find_by_hash(&hash))
            .await?;
        Ok(key.map(|key| self.remember(hash, key, generation)))
    }

    /// Keeps `key`, read under `hash` when the cache's generation was `generation`,
    /// unless a change raced the read.
    fn remember(&self, hash: KeyHash, key: ApiKey, generation: u64) -> Arc<CachedKey> {
        let entry = Arc::new(CachedKey::read(key, self.clock.now()));
        // With no time to live (auth.cache_ttl_ms = 0), nothing is kept.
        if self.cache_ttl_ms > 0 {
            self.keep(hash, &entry, generation);
        }
        entry
    }

    /// Caches `entry` under `hash` unless the cache's generation has moved past
    /// `generation` (a change raced the read), before or during the insert.
    fn keep(&self, hash: KeyHash, entry: &Arc<CachedKey>, generation: u64) {
        if self.invalidations.load(Ordering::SeqCst) == generation {
            self.keys.insert(hash, entry.clone());
            // A change may have slipped in between the check and the insert.
            if self.invalidations.load(Ordering::SeqCst) != generation {
                self.keys.remove(&hash);
            }
        }
    }

    /// A key imported under a legacy (bcrypt) hash, presented for the first time: found
    /// by its prefix, checked with bcrypt on the blocking pool, and then stored under
    /// `hash`, its digest, so that every later use (on any instance, after any restart)
    /// is an ordinary lookup. `None` when no legacy hash accepts `presented`; that is a
    /// failed authentication like any other, and throttled as one.
    async fn upgrade_legacy(
        &self,
        presented: &str,
        hash: KeyHash,
    ) -> Result<Option<Arc<CachedKey>>, GuardError> {
        if !self.legacy_pending.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Some(prefix) = LegacyHash::prefix_of(presented).map(str::to_owned) else {
            return Ok(None);
        };
        let candidates = self
            .read_store(move |store| store.legacy_hashes(&prefix))
            .await?;
        if candidates.is_empty() {
            return Ok(None);
        }
        let slot = self.legacy_slots.clone().acquire_owned();
        let Ok(Ok(slot)) = tokio::time::timeout(self.storage_timeout, slot).await else {
            tracing::warn!("no bcrypt check could start in time");
            return Err(GuardError::Unavailable);
        };
        let plain = PlainKey::from_presented(presented);
        let observer = self.observer.clone();
        let matched = block_holding(slot, move || {
            candidates
                .into_iter()
                .take(keygate_core::legacy::MAX_LEGACY_CANDIDATES)
                .find(|candidate| {
                    let matched = candidate.matches(plain.expose());
                    observer.legacy_check(matched);
                    matched
                })
        })
        .await
        .map_err(|error| {
            tracing::error!(%error, "a bcrypt check failed to run");
            GuardError::Internal
        })?;
        let Some(legacy) = matched else {
            return Ok(None);
        };
        let generation = self.invalidations.load(Ordering::SeqCst);
        let key = self
            .with_store(move |store| store.upgrade_legacy(&legacy, &hash))
            .await?;
        if key.is_some() {
            tracing::info!("a legacy key was presented and now is found by its digest");
        }
        Ok(key.map(|key| self.remember(hash, key, generation)))
    }

    /// Notes a successful read of the change feed: cached keys are up to date.
    pub(crate) fn feed_was_read(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(NEVER - 1);
        let _ = self
            .feed_read_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |read| {
                (read == NEVER || read < now).then_some(now)
            });
    }

    /// Whether the change feed was read recently enough (`max_staleness`) for cached
    /// keys to be trusted. Before the first read it was not.
    pub fn feed_is_fresh(&self) -> bool {
        let read = self.feed_read_ms.load(Ordering::Relaxed);
        read != NEVER
            && self
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(read))
                <= self.max_staleness
    }

    /// Whether `presented` could be a stored key: of keygate's own shape, or printable
    /// ASCII of a length some imported key has. Anything else is refused without a
    /// lookup.
    fn could_be_stored(&self, presented: &str) -> bool {
        PlainKey::could_be_issued(presented)
            || (self.foreign_lengths.contains(presented.len())
                && PlainKey::could_be_imported(presented))
    }

    /// Learns what imported keys look like: presented keys of these lengths are looked
    /// up, and, while legacy keys await their first use, unknown keys are looked for
    /// among them.
    pub(crate) fn learn_key_shapes(&self, shapes: &KeyShapes) {
        for length in &shapes.lengths {
            self.foreign_lengths.insert(usize::from(*length));
        }
        self.legacy_pending
            .store(shapes.legacy_pending, Ordering::Relaxed);
    }

    /// Forgets every cached key.
    pub(crate) fn forget_all(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.keys.clear();
    }

    /// Forgets a key that changed, so the very next request reads it anew.
    pub fn forget(&self, hash: &KeyHash) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.keys.remove(hash);
    }

    /// Whether the key with this digest is held in memory.
    pub fn is_cached(&self, hash: &KeyHash) -> bool {
        self.keys.contains_key(hash)
    }

    /// How many keys are held in memory, and roughly how many bytes they take.
    pub fn cache_size(&self) -> (u64, u64) {
        (
            u64::try_from(self.keys.len()).unwrap_or(u64::MAX),
            self.keys.weight(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::Observer;
    use crate::settings::GuardSettings;
    use keygate_storage::test_support::TestDatabase;
    use keygate_storage::{Database, PoolOptions};

    /// Counts the keys that got past the shape check to a cache lookup.
    #[derive(Default)]
    struct Lookups(AtomicU64);

    impl Observer for Lookups {
        fn cache(&self, _hit: bool) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A key stored in `store`, and its text.
    fn stored_key(store: &Database) -> PlainKey {
        let now = Utc::now();
        let spec = keygate_core::KeySpec::new(
            "cached",
            "owner_1",
            &["ledgers:read"],
            now + chrono::TimeDelta::days(30),
            now,
        )
        .expect("a valid spec");
        let plain = PlainKey::generate().expect("a key");
        store
            .insert(&ApiKey::issue(spec, &plain, now), &keygate_core::Actor::Cli)
            .expect("stored");
        plain
    }

    #[actix_web::test]
    async fn a_cached_key_is_read_again_once_its_time_to_live_has_passed() {
        let db = TestDatabase::sqlite();
        let store = Database::connect(&db.url, &PoolOptions::default()).expect("a database");
        let plain = stored_key(&store);
        let hash = plain.hash();
        let clock = Arc::new(keygate_core::ShiftedClock::default());
        let lookups = Arc::new(Lookups::default());
        let settings = GuardSettings {
            master_key: Some("a-long-random-master-key-0123456789".into()),
            cache_ttl: Duration::from_secs(60),
            ..GuardSettings::default()
        };
        let guard =
            Guard::new(Arc::new(store), &settings, lookups.clone()).with_clock(clock.clone());
        guard.feed_was_read();

        let authenticated = guard.authenticate(Some(plain.expose())).await;
        assert!(matches!(authenticated, Ok(Principal::Key(_))));
        assert!(guard.is_cached(&hash));
        let entry = guard.keys.get(&hash).expect("cached");
        // Within its time to live the same entry answers; once it has passed the key is
        // read again (a new entry); a clock set back before the read reads it again too.
        clock.advance(chrono::TimeDelta::seconds(59));
        let _ = guard.authenticate(Some(plain.expose())).await;
        let same = guard.keys.get(&hash).expect("cached");
        assert!(
            Arc::ptr_eq(&entry, &same),
            "read again within its time to live"
        );
        clock.advance(chrono::TimeDelta::seconds(2));
        let authenticated = guard.authenticate(Some(plain.expose())).await;
        assert!(matches!(authenticated, Ok(Principal::Key(_))));
        let reread = guard.keys.get(&hash).expect("cached again");
        assert!(
            !Arc::ptr_eq(&entry, &reread),
            "not read again after its time to live"
        );

        // With no time to live nothing is kept, and every use reads the key.
        let db = TestDatabase::sqlite();
        let store = Database::connect(&db.url, &PoolOptions::default()).expect("a database");
        let plain = stored_key(&store);
        let uncached = Guard::new(
            Arc::new(store),
            &GuardSettings {
                cache_ttl: Duration::ZERO,
                ..settings
            },
            lookups,
        );
        uncached.feed_was_read();
        for _ in 0..2 {
            let authenticated = uncached.authenticate(Some(plain.expose())).await;
            assert!(matches!(authenticated, Ok(Principal::Key(_))));
            assert!(!uncached.is_cached(&plain.hash()));
        }
    }

    /// Counts the cache's hits and misses apart.
    #[derive(Default)]
    struct HitsAndMisses {
        hits: AtomicU64,
        misses: AtomicU64,
    }

    impl Observer for HitsAndMisses {
        fn cache(&self, hit: bool) {
            let counter = if hit { &self.hits } else { &self.misses };
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[actix_web::test]
    async fn a_key_in_use_is_read_again_in_the_background_before_its_time_to_live_ends() {
        let db = TestDatabase::sqlite();
        let store =
            Arc::new(Database::connect(&db.url, &PoolOptions::default()).expect("a database"));
        let plain = stored_key(&store);
        let hash = plain.hash();
        let idle = stored_key(&store);
        let clock = Arc::new(keygate_core::ShiftedClock::default());
        let counts = Arc::new(HitsAndMisses::default());
        let settings = GuardSettings {
            master_key: Some("a-long-random-master-key-0123456789".into()),
            cache_ttl: Duration::from_secs(60),
            ..GuardSettings::default()
        };
        let guard = Guard::new(store.clone(), &settings, counts.clone()).with_clock(clock.clone());
        guard.feed_was_read();
        assert!(matches!(
            guard.authenticate(Some(plain.expose())).await,
            Ok(Principal::Key(_))
        ));
        assert!(matches!(
            guard.authenticate(Some(idle.expose())).await,
            Ok(Principal::Key(_))
        ));
        let first = guard.keys.get(&hash).expect("cached");

        // Before three quarters of its time to live nothing is due.
        clock.advance(chrono::TimeDelta::seconds(44));
        assert!(matches!(
            guard.authenticate(Some(plain.expose())).await,
            Ok(Principal::Key(_))
        ));
        guard.refresh_due().await;
        assert!(Arc::ptr_eq(&first, &guard.keys.get(&hash).expect("cached")));

        // A use past them has it read again off the request's way, once however many
        // uses there are; the idle key is not read.
        clock.advance(chrono::TimeDelta::seconds(2));
        for _ in 0..3 {
            assert!(matches!(
                guard.authenticate(Some(plain.expose())).await,
                Ok(Principal::Key(_))
            ));
        }
        assert_eq!(guard.refreshes.lock().expect("unpoisoned").len(), 1);
        // It was revoked meanwhile, with no change feed to say so: the refresh reads it
        // as it is stored.
        store
            .revoke(
                &first.key.id,
                "owner_1",
                Utc::now(),
                &keygate_core::Actor::Cli,
            )
            .expect("revoked")
            .expect("found");
        let idle_entry = guard.keys.get(&idle.hash()).expect("cached");
        guard.refresh_due().await;
        let refreshed = guard.keys.get(&hash).expect("cached again");
        assert!(!Arc::ptr_eq(&first, &refreshed), "not read again");
        assert!(Arc::ptr_eq(
            &idle_entry,
            &guard.keys.get(&idle.hash()).expect("cached")
        ));
        assert!(matches!(
            guard.authenticate(Some(plain.expose())).await,
            Err(GuardError::ExpiredKey)
        ));

        // Past the first read's time to live the refreshed entry still answers, from
        // memory; the idle key, never refreshed, is read on its use.
        clock.advance(chrono::TimeDelta::seconds(20));
        let misses = counts.misses.load(Ordering::SeqCst);
        assert!(matches!(
            guard.authenticate(Some(plain.expose())).await,
            Err(GuardError::ExpiredKey)
        ));
        assert_eq!(
            counts.misses.load(Ordering::SeqCst),
            misses,
            "read on a request"
        );
        assert!(matches!(
            guard.authenticate(Some(idle.expose())).await,
            Ok(Principal::Key(_))
        ));
        assert_eq!(counts.misses.load(Ordering::SeqCst), misses + 1);
        assert!(counts.hits.load(Ordering::SeqCst) >= 6);
    }

    #[actix_web::test]
    async fn a_refresh_never_puts_back_a_key_forgotten_or_read_anew_since_it_was_due() {
        let db = TestDatabase::sqlite();
        let store =
            Arc::new(Database::connect(&db.url, &PoolOptions::default()).expect("a database"));
        let (forgotten, reread) = (stored_key(&store), stored_key(&store));
        let clock = Arc::new(keygate_core::ShiftedClock::default());
        let settings = GuardSettings {
            master_key: Some("a-long-random-master-key-0123456789".into()),
            cache_ttl: Duration::from_secs(60),
            ..GuardSettings::default()
        };
        let guard = Guard::new(store.clone(), &settings, Arc::new(Lookups::default()))
            .with_clock(clock.clone());
        guard.feed_was_read();
        for plain in [&forgotten, &reread] {
            assert!(guard.authenticate(Some(plain.expose())).await.is_ok());
        }
        clock.advance(chrono::TimeDelta::seconds(50));
        for plain in [&forgotten, &reread] {
            assert!(guard.authenticate(Some(plain.expose())).await.is_ok());
        }
        assert_eq!(guard.refreshes.lock().expect("unpoisoned").len(), 2);
        // Queued, then changed: the feed forgets one; the other is forgotten and read
        // anew by a request before the refresh runs.
        guard.forget(&forgotten.hash());
        guard.forget(&reread.hash());
        assert!(guard.authenticate(Some(reread.expose())).await.is_ok());
        let fresh = guard.keys.get(&reread.hash()).expect("read anew");
        guard.refresh_due().await;
        assert!(
            !guard.is_cached(&forgotten.hash()),
            "a forgotten key was put back"
        );
        assert!(
            Arc::ptr_eq(&fresh, &guard.keys.get(&reread.hash()).expect("cached")),
            "a key read anew was replaced by the refresh"
        );
    }

    #[test]
    fn a_call_that_waited_past_its_deadline_for_a_thread_is_not_made() {
        // One blocking thread, held by a call that outlasts the storage timeout (as one
        // waiting on a frozen database does).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .expect("a runtime");
        let db = TestDatabase::sqlite();
        let store = Database::connect(&db.url, &PoolOptions::default()).expect("a database");
        let settings = GuardSettings {
            storage_timeout: Duration::from_millis(200),
            ..GuardSettings::default()
        };
        let guard = Guard::new(Arc::new(store), &settings, Arc::new(Lookups::default()));
        let made = Arc::new(AtomicU64::new(0));
        runtime.block_on(async {
            let frozen = guard.with_store(|_| {
                std::thread::sleep(Duration::from_millis(1500));
                Ok(())
            });
            let counted = made.clone();
            let queued = guard.with_store(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
            let (frozen, queued) = tokio::join!(frozen, queued);
            assert!(matches!(frozen, Err(GuardError::Unavailable)), "{frozen:?}");
            assert!(matches!(queued, Err(GuardError::Unavailable)), "{queued:?}");
            // The frozen call ends, and the queued one gets the thread: too late to run.
            tokio::time::sleep(Duration::from_millis(1800)).await;
        });
        assert_eq!(made.load(Ordering::SeqCst), 0, "the late call was made");
        // A call in time is made.
        let counted = made.clone();
        let later = runtime.block_on(guard.with_store(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
        assert!(later.is_ok(), "{later:?}");
        assert_eq!(made.load(Ordering::SeqCst), 1);
    }

    #[actix_web::test]
    async fn a_call_whose_caller_went_away_keeps_its_slot_until_it_ends() {
        let db = TestDatabase::sqlite();
        let store = Database::connect(&db.url, &PoolOptions::default()).expect("a database");
        let settings = GuardSettings {
            storage_slots: 1,
            storage_timeout: Duration::from_secs(3),
            ..GuardSettings::default()
        };
        let guard = Guard::new(Arc::new(store), &settings, Arc::new(Lookups::default()));
        // Calls running now, and the most that ever ran at once.
        let running = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let call = |millis: u64| {
            let (running, most) = (running.clone(), most.clone());
            move |_: &dyn KeyStore| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(millis));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        };
        // The caller of a long call goes away (a client that hung up) ...
        let gone = tokio::time::timeout(Duration::from_millis(100), guard.with_store(call(800)));
        assert!(gone.await.is_err(), "the long call ended early");
        // ... and the next call waits for the slot rather than running beside it.
        let next = guard.with_store(call(10)).await;
        assert!(next.is_ok(), "{next:?}");
        assert_eq!(most.load(Ordering::SeqCst), 1, "two calls ran on one slot");
    }

    #[actix_web::test]
    async fn only_keys_of_an_imported_length_are_looked_up_beside_keygates_shape() {
        let db = TestDatabase::sqlite();
        let store = Database::connect(&db.url, &PoolOptions::default()).expect("a database");
        let lookups = Arc::new(Lookups::default());
        let settings = GuardSettings {
            master_key: Some("a-long-random-master-key-0123456789".into()),
            ..GuardSettings::default()
        };
        let guard = Guard::new(Arc::new(store), &settings, lookups.clone());
        let looked_up = || lookups.0.load(Ordering::SeqCst);
        let foreign = "x".repeat(33);

        // Of no known shape: refused unread.
        let refused = guard.authenticate(Some(&foreign)).await;
        assert!(matches!(refused, Err(GuardError::InvalidKey)));
        assert_eq!(looked_up(), 0);
        // keygate's own shape is looked up.
        let issued = PlainKey::generate().expect("a key");
        let _ = guard.authenticate(Some(issued.expose())).await;
        assert_eq!(looked_up(), 1);

        // Once a key of 33 characters is imported, such text is looked up (and, unknown,
        // refused); other lengths, and 33 bytes that are not printable ASCII, are not.
        guard.learn_key_shapes(&KeyShapes {
            lengths: vec![33],
            legacy_pending: false,
        });
        let refused = guard.authenticate(Some(&foreign)).await;
        assert!(matches!(refused, Err(GuardError::InvalidKey)));
        assert_eq!(looked_up(), 2);
        for other in [
            "x".repeat(34),
            format!("{}\u{e9}", "x".repeat(31)),
            format!("{}\t", "x".repeat(32)),
        ] {
            // 34 characters; then 33 bytes with a non-ASCII letter; then with a tab.
            assert!([33, 34].contains(&other.len()));
            let refused = guard.authenticate(Some(&other)).await;
            assert!(matches!(refused, Err(GuardError::InvalidKey)));
        }
        assert_eq!(looked_up(), 2, "none of the others was looked up");
    }
}
