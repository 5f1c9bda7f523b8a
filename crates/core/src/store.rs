//! The storage port: what keygate needs from a database, implemented by `keygate-storage`.

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::actor::Actor;
use crate::api_key::{ApiKey, ApiKeyId, Change};
use crate::legacy::LegacyHash;
use crate::metering::{CreditGrant, CreditRequest, Credits, RateLimit, UsageCount};
use crate::scope::ScopeSet;
use crate::secret::KeyHash;

/// Why a storage call failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database could not be reached (or gave no connection in time).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A row with the same identifier or key hash already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Anything else: a failed query, or a row that does not make a valid key.
    #[error("database error: {0}")]
    Internal(String),
}

/// Persistence of API keys. Calls block; async callers run them off their executor.
pub trait KeyStore: Send + Sync + 'static {
    /// Whether reads are answered in-process within microseconds (an embedded database
    /// in WAL mode, where readers never wait for writers), so that handing them to
    /// another thread would cost more than running them where they are.
    fn reads_are_local(&self) -> bool {
        false
    }

    /// The connection pool's size and how many of its connections are idle, if it has one.
    fn pool_state(&self) -> Option<(u32, u32)> {
        None
    }

    /// Stores a new key and its `created` event; it is durable when this returns.
    fn insert(&self, key: &ApiKey, actor: &Actor) -> Result<(), StoreError>;

    /// The key with this hash, whatever its status.
    fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError>;

    /// The keys with these hashes, whatever their status, in no particular order; a
    /// hash no key has finds nothing. One query where the store can (by default, one
    /// lookup a hash).
    fn find_by_hashes(&self, hashes: &[KeyHash]) -> Result<Vec<ApiKey>, StoreError> {
        hashes
            .iter()
            .filter_map(|hash| self.find_by_hash(hash).transpose())
            .collect()
    }

    /// The owner's keys, newest first.
    fn list_by_owner(&self, owner_id: &str) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes the owner's key `id` at `at`, recording a `revoked` event in the same
    /// transaction, and returns it; `None` when the owner has no such key. Revoking a
    /// revoked key changes nothing and records nothing.
    fn revoke(
        &self,
        id: &ApiKeyId,
        owner_id: &str,
        at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Option<ApiKey>, StoreError>;

    /// The change feed that keeps caches honest: the hashes of keys changed (revoked,
    /// updated, rotated) by any instance or tool sharing the database in transactions
    /// that committed after `cursor`, and the cursor to read from next. With no cursor,
    /// no keys and the cursor of the present. Every change is returned by the first read
    /// from a cursor taken before it committed, whatever the clocks of the writers and
    /// however long their transactions waited; a change may be returned more than once.
    fn changes_after(&self, cursor: Option<ChangeCursor>) -> Result<Changes, StoreError>;

    /// The owner's key `id`, whatever its status.
    fn get(&self, id: &ApiKeyId, owner_id: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Replaces `old` (as it was read) by `new`, recording `event`, in one transaction.
    /// `false`, changing nothing, when the stored key is no longer `old` or was revoked:
    /// a concurrent change won.
    fn replace(&self, old: &ApiKey, new: &ApiKey, event: &NewEvent) -> Result<bool, StoreError>;

    /// Rotates `old` (as it was read): stores `successor`, cuts `old`'s expiry to
    /// `old_expires_at`, and records `rotated` and `created` events, in one transaction.
    /// `false`, changing nothing, when the stored key is no longer `old` or was revoked.
    fn rotate(
        &self,
        old: &ApiKey,
        old_expires_at: DateTime<Utc>,
        successor: &ApiKey,
        event: &NewEvent,
    ) -> Result<bool, StoreError>;

    /// The audit trail of key `id`, oldest first.
    fn events(&self, id: &ApiKeyId) -> Result<Vec<KeyEvent>, StoreError>;

    /// Records the latest use of each key, never moving a `last_used_at` backwards.
    /// Returns how many rows changed.
    fn record_last_used(&self, uses: &[(ApiKeyId, DateTime<Utc>)]) -> Result<usize, StoreError>;

    /// Takes credits from `pool` at `now`, in one transaction: first a refill that is
    /// due, then [`CreditRequest::grant`] of what remains, never driving it below zero
    /// whoever else takes at the same time. `None` when there is no such pool.
    fn take_credits(
        &self,
        pool: &ApiKeyId,
        request: CreditRequest,
        now: DateTime<Utc>,
    ) -> Result<Option<CreditGrant>, StoreError>;

    /// Gives `amount` unspent credits back to `pool`, if its epoch is still `epoch` (no
    /// refill or change since they were taken, which would have replaced them).
    /// Returns whether they were given back.
    fn return_credits(&self, pool: &ApiKeyId, amount: i64, epoch: i64) -> Result<bool, StoreError>;

    /// Applies every refill due at `now` (pools no request touched); returns how many.
    fn refill_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError>;

    /// Adds hourly usage counts (each `at` the start of an hour) to what is stored; counts
    /// of one key and hour given more than once are all added.
    fn add_usage(&self, counts: &[UsageCount]) -> Result<(), StoreError>;

    /// Key `id`'s hourly usage from `from` (inclusive) to `to` (exclusive), oldest first.
    fn usage(
        &self,
        id: &ApiKeyId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageCount>, StoreError>;

    /// Deletes usage older than `before`; returns how many hourly rows.
    fn prune_usage(&self, before: DateTime<Utc>) -> Result<usize, StoreError>;

    /// Stores `batch`, keys brought from elsewhere, in one transaction, each audited as
    /// created by `actor`; a key whose id or hash is already stored (or repeated in the
    /// batch) is skipped, and with it its legacy hash. Returns how many were stored, or
    /// with `dry_run` would have been (the transaction is then rolled back).
    fn import(
        &self,
        batch: &ImportBatch<'_>,
        actor: &Actor,
        dry_run: bool,
    ) -> Result<usize, StoreError>;

    /// What a presented key must look like to be worth a lookup, beyond keygate's own
    /// shape: the lengths of imported secrets, and whether legacy keys await their
    /// first use.
    fn key_shapes(&self) -> Result<KeyShapes, StoreError>;

    /// The legacy hashes kept under `prefix` ([`LegacyHash::prefix_of`]), of keys not yet
    /// presented; at most [`crate::legacy::MAX_LEGACY_CANDIDATES`].
    fn legacy_hashes(&self, prefix: &str) -> Result<Vec<LegacyHash>, StoreError>;

    /// Stores `hash`, the digest of a presented key that `legacy` accepted, as its key's
    /// digest, and forgets `legacy`, in one transaction; then returns the key stored
    /// under `hash`. Whoever upgrades a key first wins; a later call finds it upgraded.
    fn upgrade_legacy(
        &self,
        legacy: &LegacyHash,
        hash: &KeyHash,
    ) -> Result<Option<ApiKey>, StoreError>;
}

/// Keys to import, with what is needed to find those not of keygate's own shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportBatch<'a> {
    /// The keys.
    pub keys: &'a [ApiKey],
    /// The lengths of their secrets not of keygate's own shape, remembered so that keys of
    /// those lengths are looked up ([`KeyShapes::lengths`]).
    pub lengths: &'a [u16],
    /// For keys whose plaintext is unknown (stored under a placeholder digest), their
    /// hashes in the system they came from.
    pub legacy: &'a [LegacyHash],
}

/// What a presented key may look like to be worth a lookup, beyond keygate's own shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyShapes {
    /// The lengths of imported secrets not of keygate's own shape.
    pub lengths: Vec<u16>,
    /// Whether some keys wait under a legacy hash for their first use.
    pub legacy_pending: bool,
}

/// A position in the change feed, meaningful only to the store that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeCursor(pub i64);

/// What the change feed holds past a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The keys that changed, each once.
    pub keys: Vec<KeyHash>,
    /// Where the next read starts.
    pub next: ChangeCursor,
    /// The cursor lies ahead of the database (it was replaced, restored, or failed over
    /// to another cluster): what changed since cannot be told, so forget everything.
    pub reset: bool,
}

/// What happened to a key, as its audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created.
    Created,
    /// Its name, scopes or expiry changed.
    Updated,
    /// It was replaced by a successor, and kept working for a grace period.
    Rotated,
    /// It was revoked.
    Revoked,
}

impl EventKind {
    /// The kind named `text` in the audit trail.
    pub fn parse(text: &str) -> Option<Self> {
        [
            EventKind::Created,
            EventKind::Updated,
            EventKind::Rotated,
            EventKind::Revoked,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    /// The kind's name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Rotated => "rotated",
            EventKind::Revoked => "revoked",
        }
    }
}

/// One entry of a key's audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// What happened.
    pub kind: EventKind,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who did it.
    pub actor: Actor,
    /// What changed; never a secret.
    pub details: Option<EventDetails>,
}

/// An event about to be recorded with the change it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Who is making the change.
    pub actor: Actor,
    /// When.
    pub at: DateTime<Utc>,
    /// What changed; never a secret.
    pub details: Option<EventDetails>,
}

/// What an event records beyond its kind, actor and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventDetails {
    /// A key created by rotating another.
    CreatedByRotation {
        /// The key it replaced.
        rotated_from: ApiKeyId,
    },
    /// The fields an update changed, each from and to.
    Updated(Vec<Change>),
    /// A rotation: the successor, and how long the old key kept working.
    Rotated {
        /// The new key.
        rotated_to: ApiKeyId,
        /// The grace period.
        grace_period_seconds: i64,
    },
}

impl EventDetails {
    /// The details of a `kind` event as [`Self::to_json`] recorded them, or `None` when
    /// `json` is not what such an event records.
    pub fn from_json(kind: EventKind, json: &serde_json::Value) -> Option<Self> {
        let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
        match kind {
            EventKind::Created => Some(EventDetails::CreatedByRotation {
                rotated_from: ApiKeyId::new(text(json.get("rotated_from")?)?),
            }),
            EventKind::Rotated => Some(EventDetails::Rotated {
                rotated_to: ApiKeyId::new(text(json.get("rotated_to")?)?),
                grace_period_seconds: json.get("grace_period_seconds")?.as_i64()?,
            }),
            EventKind::Updated => {
                let mut changes = Vec::new();
                for (field, change) in json.as_object()? {
                    let (from, to) = (change.get("from")?, change.get("to")?);
                    let timestamp = |value: &serde_json::Value| {
                        serde_json::from_value::<DateTime<Utc>>(value.clone()).ok()
                    };
                    let scopes = |value: &serde_json::Value| {
                        serde_json::from_value::<ScopeSet>(value.clone()).ok()
                    };
                    let ratelimit = |value: &serde_json::Value| {
                        serde_json::from_value::<Option<RateLimit>>(value.clone()).ok()
                    };
                    let credits = |value: &serde_json::Value| {
                        serde_json::from_value::<Option<Credits>>(value.clone()).ok()
                    };
                    changes.push(match field.as_str() {
                        "name" => Change::Name {
                            from: text(from)?,
                            to: text(to)?,
                        },
                        "scopes" => Change::Scopes {
                            from: scopes(from)?,
                            to: scopes(to)?,
                        },
                        "expires_at" => Change::ExpiresAt {
                            from: timestamp(from)?,
                            to: timestamp(to)?,
                        },
                        "ratelimit" => Change::RateLimit {
                            from: ratelimit(from)?,
                            to: ratelimit(to)?,
                        },
                        "credits" => Change::Credits {
                            from: credits(from)?,
                            to: credits(to)?,
                        },
                        _ => return None,
                    });
                }
                Some(EventDetails::Updated(changes))
            }
            EventKind::Revoked => None,
        }
    }

    /// The details as the audit trail shows them: `{"rotated_from": id}`, `{"name":
    /// {"from": .., "to": ..}, ...}` or `{"rotated_to": id, "grace_period_seconds": n}`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            EventDetails::CreatedByRotation { rotated_from } => {
                json!({ "rotated_from": rotated_from.as_str() })
            }
            EventDetails::Updated(changes) => {
                let mut fields = serde_json::Map::new();
                for change in changes {
                    let (field, from, to) = match change {
                        Change::Name { from, to } => ("name", json!(from), json!(to)),
                        Change::Scopes { from, to } => ("scopes", json!(from), json!(to)),
                        Change::ExpiresAt { from, to } => ("expires_at", json!(from), json!(to)),
                        Change::RateLimit { from, to } => ("ratelimit", json!(from), json!(to)),
                        Change::Credits { from, to } => ("credits", json!(from), json!(to)),
                    };
                    fields.insert(field.to_owned(), json!({ "from": from, "to": to }));
                }
                serde_json::Value::Object(fields)
            }
            EventDetails::Rotated {
                rotated_to,
                grace_period_seconds,
            } => json!({
                "rotated_to": rotated_to.as_str(),
                "grace_period_seconds": grace_period_seconds,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_read_back_as_they_were_recorded() {
        let at: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().expect("a time");
        let cases = [
            (
                EventKind::Created,
                EventDetails::CreatedByRotation {
                    rotated_from: ApiKeyId::new("api_key_1"),
                },
            ),
            (
                EventKind::Rotated,
                EventDetails::Rotated {
                    rotated_to: ApiKeyId::new("api_key_2"),
                    grace_period_seconds: 60,
                },
            ),
            (
                EventKind::Updated,
                // In the order the audit trail lists fields: by name.
                EventDetails::Updated(vec![
                    Change::Credits {
                        from: Some(Credits {
                            remaining: 3,
                            refill: Some(crate::metering::Refill {
                                amount: 10,
                                interval: crate::metering::RefillInterval::Monthly,
                            }),
                        }),
                        to: None,
                    },
                    Change::ExpiresAt {
                        from: at,
                        to: at + chrono::Duration::days(1),
                    },
                    Change::Name {
                        from: "a".into(),
                        to: "b".into(),
                    },
                    Change::RateLimit {
                        from: None,
                        to: Some(RateLimit {
                            limit: 5,
                            window_ms: 1000,
                        }),
                    },
                    Change::Scopes {
                        from: ScopeSet::parse(&["ledgers:read"]).expect("valid"),
                        to: ScopeSet::parse(&["ledgers:*", "balances:read"]).expect("valid"),
                    },
                ]),
            ),
        ];
        for (kind, details) in cases {
            assert_eq!(
                EventDetails::from_json(kind, &details.to_json()),
                Some(details.clone()),
                "{kind:?}"
            );
        }
        assert_eq!(
            EventDetails::from_json(
                EventKind::Updated,
                &serde_json::json!({"colour": {"from": 1, "to": 2}})
            ),
            None
        );
    }
}
