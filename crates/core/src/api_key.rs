//! The API key entity, its identifier, and the validated input that creates one.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use thiserror::Error;

use crate::metering::{CreditAccount, Credits, RateLimit};
use crate::scope::ScopeSet;
use crate::secret::{KeyHash, PlainKey};

/// The most characters a name or owner may have.
pub const MAX_TEXT_CHARS: usize = 255;
/// The most scopes one key may carry.
pub const MAX_SCOPES: usize = 64;

/// A key's public identifier: `api_key_` and a random UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiKeyId(String);

impl ApiKeyId {
    /// A fresh identifier.
    pub fn generate() -> Self {
        ApiKeyId(format!("api_key_{}", uuid::Uuid::new_v4()))
    }

    /// An identifier as received or stored; it need not name an existing key.
    pub fn new(id: impl Into<String>) -> Self {
        ApiKeyId(id.into())
    }

    /// An identifier from a request path, or `None` when it cannot name any key (too
    /// long, or holding control characters), so that it need not be looked up at all.
    pub fn from_request(text: &str) -> Option<Self> {
        let plausible =
            !text.is_empty() && text.len() <= MAX_TEXT_CHARS && !text.chars().any(char::is_control);
        plausible.then(|| ApiKeyId(text.to_owned()))
    }

    /// The identifier's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a key may authenticate at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Neither revoked nor expired.
    Active,
    /// Past its `expires_at`.
    Expired,
    /// Revoked by its owner or the master key.
    Revoked,
}

/// An API key as stored: everything but the plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Public identifier.
    pub id: ApiKeyId,
    /// Digest of the plaintext, the lookup key.
    pub hash: KeyHash,
    /// Non-secret reminder shown in listings.
    pub hint: String,
    /// Human-readable name.
    pub name: String,
    /// Who the key belongs to.
    pub owner_id: String,
    /// What the key may do.
    pub scopes: ScopeSet,
    /// When the key stops authenticating.
    pub expires_at: DateTime<Utc>,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// When the key last authenticated a request, if ever.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key this one replaced, when it was created by a rotation.
    pub rotated_from: Option<ApiKeyId>,
    /// At most this many requests per window, if limited.
    pub ratelimit: Option<RateLimit>,
    /// The key whose rate-limit window this key's requests count in, when it is not the
    /// key's own: its creator's (a key cannot multiply its rate by minting keys) or its
    /// predecessor's (nor by rotating).
    pub ratelimit_bucket: Option<ApiKeyId>,
    /// The credits its requests spend, if metered by credits.
    pub credits: Option<CreditAccount>,
}

impl ApiKey {
    /// A new key for `spec`, created at `now` from `plain`, whose hash is all it keeps.
    pub fn issue(spec: KeySpec, plain: &PlainKey, now: DateTime<Utc>) -> Self {
        let id = ApiKeyId::generate();
        let now = now.trunc_subsecs(6);
        ApiKey {
            credits: spec.credit_pool.or_else(|| {
                spec.credits
                    .map(|credits| CreditAccount::open(id.clone(), credits, now))
            }),
            ratelimit: spec.ratelimit,
            ratelimit_bucket: spec.ratelimit.and(spec.ratelimit_bucket),
            id,
            hash: plain.hash(),
            hint: plain.hint(),
            name: spec.name,
            owner_id: spec.owner_id,
            scopes: spec.scopes,
            expires_at: spec.expires_at,
            created_at: now,
            last_used_at: None,
            revoked_at: None,
            rotated_from: None,
        }
    }

    /// This key under `id` (an imported key keeps the id it had), its own credits with it.
    pub fn renamed(mut self, id: ApiKeyId) -> Self {
        let old = std::mem::replace(&mut self.id, id);
        if let Some(account) = self.credits.as_mut()
            && account.pool == old
        {
            account.pool = self.id.clone();
        }
        self
    }

    /// The successor of this key in a rotation: a new id and secret, the same name,
    /// owner, scopes, expiry and rate limit, the same credits (shared, not copied: a
    /// rotation never creates credits), and a link back to this key.
    pub fn successor(&self, plain: &PlainKey, now: DateTime<Utc>) -> Self {
        ApiKey {
            id: ApiKeyId::generate(),
            hash: plain.hash(),
            hint: plain.hint(),
            name: self.name.clone(),
            owner_id: self.owner_id.clone(),
            scopes: self.scopes.clone(),
            expires_at: self.expires_at,
            created_at: now.trunc_subsecs(6),
            last_used_at: None,
            revoked_at: None,
            rotated_from: Some(self.id.clone()),
            ratelimit: self.ratelimit,
            ratelimit_bucket: self.ratelimit.map(|_| self.rate_bucket().clone()),
            credits: self.credits.clone(),
        }
    }

    /// This key with `patch` applied, and what changed, field by field.
    pub fn patched(&self, patch: &KeyPatch) -> (ApiKey, Vec<Change>) {
        let mut key = self.clone();
        let mut changes = Vec::new();
        if let Some(name) = &patch.name
            && *name != key.name
        {
            changes.push(Change::Name {
                from: key.name.clone(),
                to: name.clone(),
            });
            key.name = name.clone();
        }
        if let Some(scopes) = &patch.scopes
            && *scopes != key.scopes
        {
            changes.push(Change::Scopes {
                from: key.scopes.clone(),
                to: scopes.clone(),
            });
            key.scopes = scopes.clone();
        }
        if let Some(expires_at) = patch.expires_at
            && expires_at != key.expires_at
        {
            changes.push(Change::ExpiresAt {
                from: key.expires_at,
                to: expires_at,
            });
            key.expires_at = expires_at;
        }
        if let Some(ratelimit) = patch.ratelimit
            && ratelimit != key.ratelimit
        {
            changes.push(Change::RateLimit {
                from: key.ratelimit,
                to: ratelimit,
            });
            key.ratelimit = ratelimit;
            // A limit set on a key keeps the window it counts in: a key limited in its
            // creator's window stays there, so changing its limit cannot start it afresh.
            if ratelimit.is_none() {
                key.ratelimit_bucket = None;
            }
        }
        if let Some(credits) = patch.credits {
            let from = key.credits.as_ref().map(|account| account.credits);
            // Credits given are always a new balance (a new epoch), even when they equal
            // what the database shows: leases held elsewhere are void from then on.
            if credits.is_some() || from.is_some() {
                changes.push(Change::Credits { from, to: credits });
                // Credits set on a key become its own pool's, even if it spent another's
                // (its creator's, or its predecessor's): setting them never changes
                // another key's balance.
                key.credits = credits.map(|credits| match &self.credits {
                    Some(account) if account.pool == self.id => account.replaced(credits, patch.at),
                    _ => CreditAccount::open(self.id.clone(), credits, patch.at),
                });
            }
        }
        (key, changes)
    }

    /// The key whose rate-limit window this key's requests count in.
    pub fn rate_bucket(&self) -> &ApiKeyId {
        self.ratelimit_bucket.as_ref().unwrap_or(&self.id)
    }

    /// Whether the key has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether the key may authenticate at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> KeyStatus {
        if self.is_revoked() {
            KeyStatus::Revoked
        } else if now >= self.expires_at {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// The fields of a key that an update may change; absent fields stay as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPatch {
    /// A new name, trimmed.
    pub name: Option<String>,
    /// New scopes, parsed and de-duplicated.
    pub scopes: Option<ScopeSet>,
    /// A new expiry, in the future.
    pub expires_at: Option<DateTime<Utc>>,
    /// A new rate limit, or `Some(None)` to remove it.
    pub ratelimit: Option<Option<RateLimit>>,
    /// New credits, or `Some(None)` to remove them.
    pub credits: Option<Option<Credits>>,
    /// When the patch is made: refills are due from then on.
    pub at: DateTime<Utc>,
}

impl KeyPatch {
    /// Validates the fields given, as creation would; at least one must be given.
    pub fn new<S: AsRef<str>>(
        name: Option<&str>,
        scopes: Option<&[S]>,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Self, ValidationError> {
        Self::with_metering(name, scopes, expires_at, None, None, now)
    }

    /// [`Self::new`], with metering: `Some(None)` removes a rate limit or credits.
    pub fn with_metering<S: AsRef<str>>(
        name: Option<&str>,
        scopes: Option<&[S]>,
        expires_at: Option<DateTime<Utc>>,
        ratelimit: Option<Option<RateLimit>>,
        credits: Option<Option<Credits>>,
        now: DateTime<Utc>,
    ) -> Result<Self, ValidationError> {
        if name.is_none()
            && scopes.is_none()
            && expires_at.is_none()
            && ratelimit.is_none()
            && credits.is_none()
        {
            return Err(ValidationError::new(
                "body",
                "give at least one of name, scopes, expires_at, ratelimit and credits",
            ));
        }
        let name = name.map(|name| validate_text("name", name)).transpose()?;
        let scopes = scopes.map(validate_scopes).transpose()?;
        if let Some(expires_at) = expires_at
            && expires_at <= now
        {
            return Err(ValidationError::new("expires_at", "must be in the future"));
        }
        Ok(KeyPatch {
            name,
            scopes,
            expires_at: expires_at.map(|at| at.trunc_subsecs(6)),
            ratelimit,
            credits,
            at: now.trunc_subsecs(6),
        })
    }
}

/// One field changed by an update, as the audit trail records it. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The name changed.
    Name {
        /// Before.
        from: String,
        /// After.
        to: String,
    },
    /// The scopes changed.
    Scopes {
        /// Before.
        from: ScopeSet,
        /// After.
        to: ScopeSet,
    },
    /// The expiry changed.
    ExpiresAt {
        /// Before.
        from: DateTime<Utc>,
        /// After.
        to: DateTime<Utc>,
    },
    /// The rate limit was set, changed or removed.
    RateLimit {
        /// Before.
        from: Option<RateLimit>,
        /// After.
        to: Option<RateLimit>,
    },
    /// The credits were set, topped up, changed or removed.
    Credits {
        /// Before (what the database held, not counting leases).
        from: Option<Credits>,
        /// After.
        to: Option<Credits>,
    },
}

/// A field of a request that is present but not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The offending field, as named on the wire.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// An error about `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        ValidationError {
            field,
            message: message.into(),
        }
    }
}

/// The validated description of a key to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Trimmed name.
    pub name: String,
    /// Owner the key will belong to.
    pub owner_id: String,
    /// Parsed, de-duplicated scopes.
    pub scopes: ScopeSet,
    /// Expiry, in the future.
    pub expires_at: DateTime<Utc>,
    /// A rate limit, if any.
    pub ratelimit: Option<RateLimit>,
    /// Credits, if any, in a pool of the key's own.
    pub credits: Option<Credits>,
    /// An existing pool the key spends instead (its creator's).
    pub credit_pool: Option<CreditAccount>,
    /// The rate-limit window the key counts in, when not its own (its creator's).
    pub ratelimit_bucket: Option<ApiKeyId>,
}

impl KeySpec {
    /// Validates raw request fields, naming the first one that is unacceptable.
    pub fn new<S: AsRef<str>>(
        name: &str,
        owner_id: &str,
        scopes: &[S],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Self, ValidationError> {
        let name = validate_text("name", name)?;
        let owner_id = validate_owner(owner_id)?;
        let scopes = validate_scopes(scopes)?;
        if expires_at <= now {
            return Err(ValidationError::new("expires_at", "must be in the future"));
        }
        Ok(KeySpec {
            name,
            owner_id,
            scopes,
            expires_at: expires_at.trunc_subsecs(6),
            ratelimit: None,
            credits: None,
            credit_pool: None,
            ratelimit_bucket: None,
        })
    }
}

/// Checks that `expires_at` is no further than `max_days` after `now`.
pub fn check_lifetime(
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
    max_days: u32,
) -> Result<(), ValidationError> {
    // A limit beyond the calendar's end limits nothing; it must not overflow.
    let limit = chrono::TimeDelta::try_days(i64::from(max_days))
        .and_then(|lifetime| now.checked_add_signed(lifetime));
    if limit.is_some_and(|limit| expires_at > limit) {
        return Err(ValidationError::new(
            "expires_at",
            format!("must be at most {max_days} days away"),
        ));
    }
    Ok(())
}

fn validate_scopes<S: AsRef<str>>(scopes: &[S]) -> Result<ScopeSet, ValidationError> {
    if scopes.is_empty() {
        return Err(ValidationError::new(
            "scopes",
            "at least one scope is required",
        ));
    }
    if scopes.len() > MAX_SCOPES {
        return Err(ValidationError::new(
            "scopes",
            format!("at most {MAX_SCOPES} scopes are allowed"),
        ));
    }
    ScopeSet::parse(scopes).map_err(|e| ValidationError::new("scopes", e.to_string()))
}

/// Checks an owner identifier, from a body or a query string. Owners are compared
/// exactly, so unlike names they are not trimmed.
pub fn validate_owner(owner_id: &str) -> Result<String, ValidationError> {
    if owner_id.trim().is_empty() {
        return Err(ValidationError::new("owner", "must not be empty"));
    }
    validate_text("owner", owner_id)
}

fn validate_text(field: &'static str, text: &str) -> Result<String, ValidationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > MAX_TEXT_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    if text.chars().any(is_bidi_control) {
        return Err(ValidationError::new(
            field,
            "must not contain bidirectional control characters",
        ));
    }
    if trimmed.chars().all(is_invisible) {
        return Err(ValidationError::new(
            field,
            "must contain a visible character",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Characters that reorder the text around them, so that what a listing shows is not
/// what was stored (CVE-2021-42574's "Trojan Source").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that draw nothing: white space, and the format characters and fillers
/// that render as empty.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    fn spec(
        name: &str,
        owner: &str,
        scopes: &[&str],
        expires_in: Duration,
    ) -> Result<KeySpec, ValidationError> {
        KeySpec::new(name, owner, scopes, now() + expires_in, now())
    }

    #[test]
    fn ids_are_prefixed_v4_uuids() {
        let id = ApiKeyId::generate();
        let uuid = id.as_str().strip_prefix("api_key_").expect("prefixed");
        let parsed = uuid::Uuid::parse_str(uuid).expect("a uuid");
        assert_eq!(parsed.get_version_num(), 4);
    }

    #[test]
    fn a_valid_spec_is_trimmed_and_deduplicated() {
        let spec = spec(
            " Service ",
            "owner_1",
            &["ledgers:read", "ledgers:read"],
            Duration::days(1),
        )
        .expect("valid");
        assert_eq!(spec.name, "Service");
        assert_eq!(spec.scopes.to_string(), "ledgers:read");
    }

    #[test]
    fn invalid_fields_are_named() {
        let many: Vec<String> = (0..65).map(|_| "ledgers:read".to_owned()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let long = "x".repeat(256);
        let cases: Vec<(&str, &str, Vec<&str>, Duration, &str)> = vec![
            ("", "o", vec!["ledgers:read"], Duration::days(1), "name"),
            ("   ", "o", vec!["ledgers:read"], Duration::days(1), "name"),
            (&long, "o", vec!["ledgers:read"], Duration::days(1), "name"),
            (
                "a\u{7}b",
                "o",
                vec!["ledgers:read"],
                Duration::days(1),
                "name",
            ),
            ("n", "", vec!["ledgers:read"], Duration::days(1), "owner"),
            ("n", "o\n", vec!["ledgers:read"], Duration::days(1), "owner"),
            (
                "n",
                "o\u{0}x",
                vec!["ledgers:read"],
                Duration::days(1),
                "owner",
            ),
            (
                "\u{202e}gnp.exe",
                "o",
                vec!["ledgers:read"],
                Duration::days(1),
                "name",
            ),
            (
                "\u{200b}",
                "o",
                vec!["ledgers:read"],
                Duration::days(1),
                "name",
            ),
            (
                "\u{200b}\u{feff} \u{2060}",
                "o",
                vec!["ledgers:read"],
                Duration::days(1),
                "name",
            ),
            (
                "n",
                "\u{2066}owner",
                vec!["ledgers:read"],
                Duration::days(1),
                "owner",
            ),
            (
                "n",
                "\u{200b}",
                vec!["ledgers:read"],
                Duration::days(1),
                "owner",
            ),
            ("n", "o", vec![], Duration::days(1), "scopes"),
            ("n", "o", many, Duration::days(1), "scopes"),
            (
                "n",
                "o",
                vec!["ledgers:read", "ledgers:update"],
                Duration::days(1),
                "scopes",
            ),
            (
                "n",
                "o",
                vec!["ledgers:read"],
                Duration::zero(),
                "expires_at",
            ),
            (
                "n",
                "o",
                vec!["ledgers:read"],
                -Duration::days(1),
                "expires_at",
            ),
        ];
        for (name, owner, scopes, expires_in, field) in cases {
            let error = spec(name, owner, &scopes, expires_in).expect_err("invalid");
            assert_eq!(error.field, field, "{name:?} {owner:?} {scopes:?}");
        }
    }

    #[test]
    fn the_bad_scope_is_named_in_the_message() {
        let error = spec(
            "n",
            "o",
            &["ledgers:read", "ledgers:update"],
            Duration::days(1),
        )
        .expect_err("invalid");
        assert!(error.message.contains("update"), "{}", error.message);
    }

    #[test]
    fn lifetimes_are_bounded() {
        assert_eq!(
            check_lifetime(now() + Duration::days(10), now(), 10),
            Ok(())
        );
        let error = check_lifetime(now() + Duration::days(10) + Duration::seconds(1), now(), 10)
            .expect_err("too far");
        assert_eq!(error.field, "expires_at");
        assert_eq!(
            check_lifetime(now() + Duration::days(365), now(), u32::MAX),
            Ok(()),
            "a limit past the calendar's end does not overflow"
        );
    }

    #[test]
    fn status_reflects_revocation_then_expiry() {
        let plain = PlainKey::generate().expect("randomness");
        let spec = spec("n", "o", &["ledgers:read"], Duration::hours(1)).expect("valid");
        let mut key = ApiKey::issue(spec, &plain, now());
        assert_eq!(key.status(now()), KeyStatus::Active);
        assert_eq!(key.status(now() + Duration::hours(1)), KeyStatus::Expired);
        key.revoked_at = Some(now());
        assert_eq!(key.status(now()), KeyStatus::Revoked);
    }

    #[test]
    fn an_issued_key_keeps_the_hash_not_the_plaintext() {
        let plain = PlainKey::generate().expect("randomness");
        let spec = spec("n", "o", &["ledgers:read"], Duration::hours(1)).expect("valid");
        let key = ApiKey::issue(spec, &plain, now());
        assert_eq!(key.hash, plain.hash());
        assert!(!format!("{key:?}").contains(plain.expose()));
        assert_eq!(key.hint, plain.hint());
        assert!(key.hint.len() < 8);
    }
}
