//! Shared state of the running service, and the authentication of a presented key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::web;
use chrono::Utc;
use keygate_core::{ApiKey, KeyHash, KeyStatus, KeyStore, PlainKey, Principal, StoreError};
use moka::sync::Cache;
use secrecy::{ExposeSecret, SecretString};

use crate::error::ApiError;
use crate::settings::AuthSettings;
use crate::usage::UsageRecorder;

/// Everything a handler or the guard needs, shared by all workers.
pub struct AppState {
    store: Arc<dyn KeyStore>,
    /// `None` when secure mode is off: every request then acts as the master key.
    master: Option<Master>,
    keys: Cache<KeyHash, Arc<ApiKey>>,
    /// Bumped by every change that must not be undone by a lookup already in flight.
    invalidations: AtomicU64,
    usage: Arc<UsageRecorder>,
}

/// How the master key is recognised: by its digest, compared in constant time.
struct Master(KeyHash);

impl AppState {
    /// State over `store`. With `secure` false no key is checked; otherwise `master_key`
    /// (if any) is the master key.
    pub fn new(
        store: Arc<dyn KeyStore>,
        secure: bool,
        master_key: Option<&SecretString>,
        auth: &AuthSettings,
    ) -> Self {
        let master = secure.then(|| {
            // Without a configured master key, no presented key can match this digest:
            // it is the digest of 32 random bytes never held anywhere.
            let hash = match master_key {
                Some(key) => KeyHash::of(key.expose_secret()),
                None => PlainKey::generate()
                    .map(|key| key.hash())
                    .unwrap_or_else(|_| KeyHash::of("")),
            };
            Master(hash)
        });
        AppState {
            store,
            master,
            keys: Cache::builder()
                .max_capacity(auth.cache_capacity)
                .time_to_live(auth.cache_ttl())
                .build(),
            invalidations: AtomicU64::new(0),
            usage: Arc::new(UsageRecorder::default()),
        }
    }

    /// The key store.
    pub fn store(&self) -> Arc<dyn KeyStore> {
        self.store.clone()
    }

    /// The pending `last_used_at` updates.
    pub fn usage(&self) -> Arc<UsageRecorder> {
        self.usage.clone()
    }

    /// Whether requests are authenticated at all.
    pub fn is_secure(&self) -> bool {
        self.master.is_some()
    }

    /// Runs a blocking storage call on the blocking pool, never on an async worker.
    pub async fn with_store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn KeyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        web::block(move || call(&*store))
            .await
            .map_err(|error| {
                tracing::error!(%error, "blocking storage call failed");
                ApiError::Internal
            })?
            .map_err(ApiError::from)
    }

    /// Resolves the key a request presented into the caller it stands for.
    pub async fn authenticate(&self, presented: Option<&str>) -> Result<Principal, ApiError> {
        let Some(Master(master)) = &self.master else {
            return Ok(Principal::Master);
        };
        let presented = presented.ok_or(ApiError::MissingKey)?;
        let hash = KeyHash::of(presented);
        if hash == *master {
            return Ok(Principal::Master);
        }
        let key = match self.keys.get(&hash) {
            Some(key) => key,
            None => self.load(hash).await?.ok_or(ApiError::InvalidKey)?,
        };
        let now = Utc::now();
        match key.status(now) {
            KeyStatus::Active => {
                self.usage.record(&key.id, now);
                Ok(Principal::Key(key))
            }
            KeyStatus::Expired | KeyStatus::Revoked => Err(ApiError::ExpiredKey),
        }
    }

    /// Reads a key missing from the cache, and caches it unless a change raced the read.
    /// Unknown keys are never cached, so a flood of them cannot evict known ones.
    async fn load(&self, hash: KeyHash) -> Result<Option<Arc<ApiKey>>, ApiError> {
        let generation = self.invalidations.load(Ordering::SeqCst);
        let Some(key) = self
            .with_store(move |store| store.find_by_hash(&hash))
            .await?
        else {
            return Ok(None);
        };
        let key = Arc::new(key);
        if self.invalidations.load(Ordering::SeqCst) == generation {
            self.keys.insert(hash, key.clone());
            // A change may have slipped in between the check and the insert.
            if self.invalidations.load(Ordering::SeqCst) != generation {
                self.keys.invalidate(&hash);
            }
        }
        Ok(Some(key))
    }

    /// Forgets a key that changed, so the very next request reads it anew.
    pub fn forget(&self, hash: &KeyHash) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.keys.invalidate(hash);
    }
}
