//! The row as diesel reads it, and its conversion to the domain's [`ApiKey`].

use chrono::{DateTime, Utc};
use diesel::Queryable;
use keygate_core::{
    Actor, ApiKey, ApiKeyId, CreditAccount, Credits, EventDetails, EventKind, KeyEvent, KeyHash,
    RateLimit, Refill, RefillInterval, ScopeSet, StoreError,
};

/// One `api_keys` row, in column order (`api_keys::all_columns`).
#[derive(Queryable)]
pub struct KeyRow {
    pub api_key_id: String,
    pub key_hash: Vec<u8>,
    pub key_hint: String,
    pub name: String,
    pub owner_id: String,
    pub scopes: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub is_revoked: bool,
    pub revoked_at: Option<DateTime<Utc>>,
    pub rotated_from: Option<String>,
    pub ratelimit_limit: Option<i64>,
    pub ratelimit_window_ms: Option<i64>,
    pub credit_pool: Option<String>,
    pub ratelimit_bucket: Option<String>,
}

/// One `credit_pools` row, in column order.
#[derive(Clone, Queryable)]
pub struct PoolRow {
    pub pool_id: String,
    pub remaining: i64,
    pub refill_amount: Option<i64>,
    pub refill_interval: Option<String>,
    pub refill_at: Option<DateTime<Utc>>,
    pub epoch: i64,
}

impl PoolRow {
    /// The pool as the domain sees it, or `None` for a row no version writes.
    pub fn into_account(self) -> Option<CreditAccount> {
        let refill = match (self.refill_amount, self.refill_interval.as_deref()) {
            (Some(amount), Some(interval)) => Some(Refill {
                amount,
                interval: RefillInterval::parse(interval)?,
            }),
            (None, None) => None,
            _ => return None,
        };
        Some(CreditAccount {
            pool: ApiKeyId::new(self.pool_id),
            credits: Credits {
                remaining: self.remaining,
                refill,
            },
            epoch: self.epoch,
            refill_at: self.refill_at,
        })
    }
}

/// A key row with the credit pool it draws on, if any.
#[derive(Queryable)]
pub struct KeyWithPool {
    pub key: KeyRow,
    pub pool: Option<PoolRow>,
}

impl TryFrom<KeyWithPool> for ApiKey {
    type Error = StoreError;

    fn try_from(KeyWithPool { key: row, pool }: KeyWithPool) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Internal(format!("row {}: {what}", row.api_key_id));
        let ratelimit = match (row.ratelimit_limit, row.ratelimit_window_ms) {
            (None, None) => None,
            (Some(limit), Some(window_ms)) => Some(
                u64::try_from(limit)
                    .ok()
                    .zip(u64::try_from(window_ms).ok())
                    .and_then(|(limit, window_ms)| RateLimit::new(limit, window_ms).ok())
                    .ok_or_else(|| corrupt("ratelimit out of range"))?,
            ),
            _ => return Err(corrupt("ratelimit half set")),
        };
        let credits = match (&row.credit_pool, pool) {
            (None, _) => None,
            (Some(_), Some(pool)) => Some(
                pool.into_account()
                    .ok_or_else(|| corrupt("credit pool unreadable"))?,
            ),
            (Some(_), None) => return Err(corrupt("credit pool missing")),
        };
        let hash = KeyHash::from_bytes(&row.key_hash)
            .ok_or_else(|| corrupt("key_hash is not 32 bytes"))?;
        let scopes: Vec<&str> = row.scopes.split_whitespace().collect();
        let scopes = ScopeSet::parse(&scopes).map_err(|e| corrupt(&e.to_string()))?;
        // A row revoked without a time (only possible by hand) still counts as revoked.
        let revoked_at = match (row.is_revoked, row.revoked_at) {
            (true, None) => Some(row.created_at),
            (true, at) => at,
            (false, _) => None,
        };
        Ok(ApiKey {
            id: ApiKeyId::new(row.api_key_id),
            hash,
            hint: row.key_hint,
            name: row.name,
            owner_id: row.owner_id,
            scopes,
            expires_at: row.expires_at,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at,
            rotated_from: row.rotated_from.map(ApiKeyId::new),
            ratelimit_bucket: ratelimit.and(row.ratelimit_bucket.map(ApiKeyId::new)),
            ratelimit,
            credits,
        })
    }
}

/// One `key_events` row as the audit trail shows it.
#[derive(Queryable)]
pub struct EventRow {
    pub kind: String,
    pub actor: String,
    pub details: Option<String>,
    pub at: DateTime<Utc>,
}

impl EventRow {
    /// The event this row records, or `None` (said in the log) for a kind this version
    /// does not know, as a newer version may write during a rolling upgrade. Details that
    /// are not JSON are left out rather than failing the whole trail.
    pub fn into_event(self) -> Option<KeyEvent> {
        let Some(kind) = EventKind::parse(&self.kind) else {
            tracing::warn!(kind = %self.kind, "skipping an audit event of an unknown kind");
            return None;
        };
        let details = self.details.and_then(|text| {
            let read = serde_json::from_str(&text)
                .ok()
                .and_then(|json| EventDetails::from_json(kind, &json));
            if read.is_none() {
                tracing::warn!(kind = %self.kind, "leaving out audit event details this version cannot read");
            }
            read
        });
        Some(KeyEvent {
            kind,
            at: self.at,
            actor: Actor::parse(&self.actor),
            details,
        })
    }
}
