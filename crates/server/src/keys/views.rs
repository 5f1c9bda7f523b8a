//! The key endpoints' wire types: what requests carry and what answers show.

use actix_web::http::header::{CacheControl, CacheDirective};
use chrono::{DateTime, Timelike, Utc};
use keygate_core::api_key::check_lifetime;
use keygate_core::{
    ApiKey, ApiKeyId, Credits, KeyEvent, KeySpec, RateLimit, ScopeSet, ValidationError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;

/// `POST /api-keys`. Fields other than these are ignored, so nothing else can be set.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateKey {
    /// A name to recognise the key by (1-255 characters).
    #[schema(example = "Service Account")]
    name: String,
    /// Who the key belongs to (1-255 characters).
    #[schema(example = "owner_id")]
    owner: String,
    /// `resource:action` scopes, 1 to 64.
    #[schema(example = json!(["ledgers:read", "balances:write"]))]
    scopes: Vec<String>,
    /// When the key stops working (RFC 3339), in the future.
    #[schema(format = DateTime, example = "2030-03-11T00:00:00Z")]
    expires_at: String,
    /// At most `limit` requests per `window_ms`; absent or null: no limit.
    #[serde(default)]
    #[schema(value_type = Option<RateLimitView>)]
    ratelimit: Option<Value>,
    /// Credits each admitted request spends one of; absent or null: unlimited.
    #[serde(default)]
    #[schema(value_type = Option<CreditsView>)]
    credits: Option<Value>,
}

impl CreateKey {
    /// The validated key to create, as of `now`, expiring within `max_days`.
    pub fn validate(&self, now: DateTime<Utc>, max_days: u32) -> Result<KeySpec, ApiError> {
        let expires_at = parse_timestamp("expires_at", &self.expires_at)?;
        let mut spec = spec_within(
            &self.name,
            &self.owner,
            &self.scopes,
            expires_at,
            now,
            max_days,
        )?;
        spec.ratelimit = self
            .ratelimit
            .as_ref()
            .map(RateLimit::from_json)
            .transpose()?
            .flatten();
        spec.credits = self
            .credits
            .as_ref()
            .map(Credits::from_json)
            .transpose()?
            .flatten();
        Ok(spec)
    }
}

/// A field that is absent stays `None`; one that is present, even `null`, is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The validated key to create as of `now`, expiring within `max_days`: the rules of
/// `POST /api-keys` and `keygate keys create` alike.
pub fn spec_within<S: AsRef<str>>(
    name: &str,
    owner: &str,
    scopes: &[S],
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
    max_days: u32,
) -> Result<KeySpec, ValidationError> {
    let spec = KeySpec::new(name, owner, scopes, expires_at, now)?;
    check_lifetime(spec.expires_at, now, max_days)?;
    Ok(spec)
}

/// Blnk's "never used" time, the zero of Go's `time.Time`.
const NEVER: &str = "0001-01-01T00:00:00Z";

/// The key object on the wire.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ApiKey)]
pub struct KeyView<'a> {
    /// `api_key_` and a random UUID.
    #[schema(example = "api_key_879f0ecb-e29f-4137-801b-1048366381db")]
    api_key_id: &'a str,
    /// The secret (44 characters) in the response that creates the key, and only there;
    /// elsewhere a short hint such as `YVLI...` from which the key cannot be rebuilt.
    key: &'a str,
    name: &'a str,
    owner_id: &'a str,
    #[schema(value_type = Vec<String>, example = json!(["ledgers:read", "balances:write"]))]
    scopes: &'a ScopeSet,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    /// `0001-01-01T00:00:00Z` until the key first authenticates a request.
    #[serde(serialize_with = "last_used")]
    #[schema(value_type = String, format = DateTime, example = "0001-01-01T00:00:00Z")]
    last_used_at: Option<DateTime<Utc>>,
    is_revoked: bool,
    /// Present once the key is revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<DateTime<Utc>>,
    /// The key this one replaced, for a key made by a rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    rotated_from: Option<&'a str>,
    /// Present only on keys with a rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratelimit: Option<RateLimitView>,
    /// Present only on keys with credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    credits: Option<CreditsView>,
}

/// `ratelimit` on the wire: at most `limit` admitted requests per window.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct RateLimitView {
    /// 1 to 1,000,000,000.
    #[schema(example = 100)]
    limit: u64,
    /// 1,000 to 86,400,000.
    #[schema(example = 60000)]
    window_ms: u64,
}

/// `credits` on the wire.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct CreditsView {
    /// Credits left (0 to 10^12); with several instances it may lag by what the others
    /// hold in leases.
    #[schema(example = 1000)]
    remaining: i64,
    /// Sets `remaining` back to `amount` daily (00:00 UTC) or monthly (the 1st).
    #[serde(skip_serializing_if = "Option::is_none")]
    refill: Option<RefillView>,
}

/// `credits.refill` on the wire.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct RefillView {
    /// What `remaining` is set back to (1 to 10^12).
    #[schema(example = 1000)]
    amount: i64,
    /// `daily` or `monthly`.
    #[schema(example = "daily")]
    interval: &'static str,
}

fn last_used<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serde::Serialize::serialize(at, serializer),
        None => serializer.serialize_str(NEVER),
    }
}

impl<'a> KeyView<'a> {
    pub fn new(key: &'a ApiKey, shown: &'a str) -> Self {
        KeyView {
            api_key_id: key.id.as_str(),
            key: shown,
            name: &key.name,
            owner_id: &key.owner_id,
            scopes: &key.scopes,
            expires_at: key.expires_at,
            created_at: key.created_at,
            last_used_at: key.last_used_at,
            is_revoked: key.is_revoked(),
            revoked_at: key.revoked_at,
            rotated_from: key.rotated_from.as_ref().map(ApiKeyId::as_str),
            ratelimit: key.ratelimit.map(|rate| RateLimitView {
                limit: rate.limit,
                window_ms: rate.window_ms,
            }),
            credits: key.credits.as_ref().map(|account| CreditsView {
                remaining: account.credits.remaining,
                refill: account.credits.refill.map(|refill| RefillView {
                    amount: refill.amount,
                    interval: refill.interval.as_str(),
                }),
            }),
        }
    }

    /// This view with the credits as they stand at `now`, counting `held`, what this
    /// instance holds of them in a lease: a refill that is due has happened.
    pub fn live(mut self, key: &ApiKey, held: i64, now: DateTime<Utc>) -> Self {
        if let (Some(view), Some(account)) = (&mut self.credits, &key.credits) {
            view.remaining = match (account.credits.refill, account.refill_at) {
                (Some(refill), Some(at)) if at <= now => refill.amount,
                _ => account.credits.remaining.saturating_add(held),
            };
        }
        self
    }
}

pub(crate) fn no_store() -> CacheControl {
    CacheControl(vec![CacheDirective::NoStore])
}

pub fn parse_timestamp(field: &'static str, text: &str) -> Result<DateTime<Utc>, ValidationError> {
    let at = DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            ValidationError::new(
                field,
                "must be an RFC 3339 timestamp, such as 2030-01-01T00:00:00Z",
            )
        })?;
    // chrono keeps a leap second (:60) as a nanosecond count past one second, which the
    // two databases store differently: refuse it rather than store two different times.
    if at.nanosecond() >= 1_000_000_000 {
        return Err(ValidationError::new(
            field,
            "must not be a leap second (:60)",
        ));
    }
    Ok(at)
}

/// `PATCH /api-keys/{id}`: any of these; absent fields stay as they are (and `null`
/// ones too, except `ratelimit` and `credits`, which `null` removes).
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateKey {
    pub(crate) name: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) expires_at: Option<String>,
    /// A new rate limit, or `null` to remove it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimitView>)]
    pub(crate) ratelimit: Option<Value>,
    /// New credits (setting `remaining`, e.g. a top-up), or `null` to remove them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CreditsView>)]
    pub(crate) credits: Option<Value>,
}

impl UpdateKey {
    /// The rate limit asked for: `None` if absent, `Some(None)` to remove it.
    pub(crate) fn ratelimit(&self) -> Result<Option<Option<RateLimit>>, ValidationError> {
        self.ratelimit
            .as_ref()
            .map(RateLimit::from_json)
            .transpose()
    }

    /// The credits asked for: `None` if absent, `Some(None)` to remove them.
    pub(crate) fn credits(&self) -> Result<Option<Option<Credits>>, ValidationError> {
        self.credits.as_ref().map(Credits::from_json).transpose()
    }
}

/// `POST /api-keys/{id}/rotate`, whose body is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RotateKey {
    /// How long the old key keeps working, 0 to 86,400 seconds (default 0).
    pub(crate) grace_period_seconds: Option<i64>,
}

/// One entry of the audit trail on the wire.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = KeyEvent)]
pub struct EventView {
    /// `created`, `updated`, `rotated` or `revoked`.
    #[schema(value_type = String)]
    kind: &'static str,
    at: DateTime<Utc>,
    /// `master`, `cli`, or the acting key's `api_key_id`.
    actor: String,
    /// What changed (for `updated`: each field's `from` and `to`); never a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    details: Option<Value>,
}

impl From<KeyEvent> for EventView {
    fn from(event: KeyEvent) -> Self {
        EventView {
            kind: event.kind.as_str(),
            at: event.at,
            actor: event.actor.to_string(),
            details: event.details.map(|details| details.to_json()),
        }
    }
}
