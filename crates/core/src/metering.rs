//! Metering: how much a key may do, beside what it may do. A rate limit bounds requests
//! per window; credits are spent one per admitted request (or `cost` at once) and may be
//! refilled daily or monthly. Usage is counted per key and hour.
//!
//! Credits are shared by every instance through the database without a write per
//! request: an instance takes a *lease* (a block of credits, in one conditional update),
//! spends it in memory, and gives back what is left. [`CreditRequest::grant`] sizes the
//! lease, so that what a crashed instance can strand stays small.

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api_key::{ApiKeyId, ValidationError};

/// The largest `ratelimit.limit`.
pub const MAX_LIMIT: u64 = 1_000_000_000;
/// The shortest `ratelimit.window_ms`: one second.
pub const MIN_WINDOW_MS: u64 = 1_000;
/// The longest `ratelimit.window_ms`: one day.
pub const MAX_WINDOW_MS: u64 = 86_400_000;
/// The most credits a key may hold or be refilled to.
pub const MAX_CREDITS: i64 = 1_000_000_000_000;
/// The most credits one lease takes.
pub const MAX_LEASE: i64 = 1_000;
/// A lease takes at most this fraction (1/n) of what remains, so that instances share
/// what is left and a crash strands little.
pub const LEASE_SHARE: i64 = 16;

/// At most `limit` requests per window of `window_ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests admitted per window (a burst of this many is admitted at once).
    pub limit: u64,
    /// The window, in milliseconds.
    pub window_ms: u64,
}

impl RateLimit {
    /// A rate limit, checked against the ranges of the contract.
    pub fn new(limit: u64, window_ms: u64) -> Result<Self, ValidationError> {
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ValidationError::new(
                "ratelimit.limit",
                format!("must be an integer from 1 to {MAX_LIMIT}"),
            ));
        }
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
            return Err(ValidationError::new(
                "ratelimit.window_ms",
                format!("must be an integer from {MIN_WINDOW_MS} to {MAX_WINDOW_MS}"),
            ));
        }
        Ok(RateLimit { limit, window_ms })
    }

    /// Whether this limit is at least as loose as `other`, in burst and in rate: a key
    /// limited by `self` may give another key `other`.
    pub fn covers(&self, other: &RateLimit) -> bool {
        let rate = |limit: u64, per: u64| u128::from(limit) * u128::from(per);
        other.limit <= self.limit
            && rate(other.limit, self.window_ms) <= rate(self.limit, other.window_ms)
    }

    /// The window.
    pub fn window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.window_ms)
    }

    /// `{"limit": .., "window_ms": ..}` from a request; `null` is `None` (no limit).
    pub fn from_json(value: &Value) -> Result<Option<Self>, ValidationError> {
        if value.is_null() {
            return Ok(None);
        }
        let object = value.as_object().ok_or_else(|| {
            ValidationError::new(
                "ratelimit",
                "must be an object {\"limit\": n, \"window_ms\": ms}, or null",
            )
        })?;
        only(object, "ratelimit", &["limit", "window_ms"])?;
        let limit = whole(object.get("limit"), "ratelimit.limit")?;
        let window_ms = whole(object.get("window_ms"), "ratelimit.window_ms")?;
        Self::new(limit, window_ms).map(Some)
    }

    /// `100/1m` (also `/s`, `/h`, `/d`, or a number of seconds, minutes, hours or days
    /// such as `/30s`), as the command line takes it; `none` is `None`.
    pub fn parse_short(text: &str) -> Result<Option<Self>, ValidationError> {
        let bad = || {
            ValidationError::new(
                "ratelimit",
                format!("{text:?} is not LIMIT/WINDOW such as 100/1m, 10/s or 5000/1h"),
            )
        };
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        let (limit, window) = text.trim().split_once('/').ok_or_else(bad)?;
        let limit: u64 = limit.trim().parse().map_err(|_| bad())?;
        let window = window.trim();
        let split = window.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (count, unit) = window.split_at(split);
        let count: u64 = if count.is_empty() {
            1
        } else {
            count.parse().map_err(|_| bad())?
        };
        let unit_ms: u64 = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        Self::new(limit, count.checked_mul(unit_ms).ok_or_else(bad)?).map(Some)
    }
}

/// How often credits are set back to their refill amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefillInterval {
    /// At 00:00 UTC every day.
    Daily,
    /// At 00:00 UTC on the first of every month.
    Monthly,
}

impl RefillInterval {
    /// The interval named `text` (`daily` or `monthly`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "daily" => Some(RefillInterval::Daily),
            "monthly" => Some(RefillInterval::Monthly),
            _ => None,
        }
    }

    /// The interval's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefillInterval::Daily => "daily",
            RefillInterval::Monthly => "monthly",
        }
    }

    /// The first refill strictly after `at`.
    pub fn next_after(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let date = at.date_naive();
        let next = match self {
            RefillInterval::Daily => date.succ_opt(),
            RefillInterval::Monthly => {
                let (year, month) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                chrono::NaiveDate::from_ymd_opt(year, month, 1)
            }
        };
        // Only past the calendar's end is there no next day; never refill then.
        next.map_or(DateTime::<Utc>::MAX_UTC, |day| {
            Utc.from_utc_datetime(&day.and_time(NaiveTime::MIN))
        })
    }
}

/// Credits set back to `amount` at every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Refill {
    /// What `remaining` is set back to.
    pub amount: i64,
    /// When.
    pub interval: RefillInterval,
}

/// A key's credits: each admitted request spends one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Credits {
    /// What is left to spend.
    pub remaining: i64,
    /// How the credits are refilled, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
}

/// Refuses a field of `object` (the value of `field`) other than `known`: a misspelt
/// `refil` would otherwise leave credits that never refill, silently.
fn only(
    object: &serde_json::Map<String, Value>,
    field: &'static str,
    known: &[&str],
) -> Result<(), ValidationError> {
    match object.keys().find(|name| !known.contains(&name.as_str())) {
        None => Ok(()),
        Some(name) => {
            let name: String = name.chars().take(40).collect();
            Err(ValidationError::new(
                field,
                format!("has no field {name:?}; it takes {}", known.join(" and ")),
            ))
        }
    }
}

impl Credits {
    /// `{"remaining": n, "refill"?: {"amount": n, "interval": "daily"|"monthly"}}` from
    /// a request; `null` is `None` (no credits: unlimited use).
    pub fn from_json(value: &Value) -> Result<Option<Self>, ValidationError> {
        if value.is_null() {
            return Ok(None);
        }
        let object = value.as_object().ok_or_else(|| {
            ValidationError::new(
                "credits",
                "must be an object {\"remaining\": n, \"refill\": {...}}, or null",
            )
        })?;
        only(object, "credits", &["remaining", "refill"])?;
        let remaining = credit_count(object.get("remaining"), "credits.remaining", 0)?;
        let refill = match object.get("refill") {
            None | Some(Value::Null) => None,
            Some(Value::Object(refill)) => {
                only(refill, "credits.refill", &["amount", "interval"])?;
                let amount = credit_count(refill.get("amount"), "credits.refill.amount", 1)?;
                let interval = refill
                    .get("interval")
                    .and_then(Value::as_str)
                    .and_then(RefillInterval::parse)
                    .ok_or_else(|| {
                        ValidationError::new(
                            "credits.refill.interval",
                            "must be \"daily\" or \"monthly\"",
                        )
                    })?;
                Some(Refill { amount, interval })
            }
            Some(_) => {
                return Err(ValidationError::new(
                    "credits.refill",
                    "must be an object {\"amount\": n, \"interval\": \"daily\"}, or null",
                ));
            }
        };
        Ok(Some(Credits { remaining, refill }))
    }

    /// Credits from the command line: `remaining`, and a refill such as `1000/daily`.
    pub fn from_short(remaining: i64, refill: Option<&str>) -> Result<Self, ValidationError> {
        let remaining = in_credit_range(remaining, "credits.remaining", 0)?;
        let refill = refill
            .map(|text| {
                let bad = || {
                    ValidationError::new(
                        "credits.refill",
                        format!("{text:?} is not AMOUNT/daily or AMOUNT/monthly"),
                    )
                };
                let (amount, interval) = text.split_once('/').ok_or_else(bad)?;
                let amount = amount.trim().parse().map_err(|_| bad())?;
                Ok::<_, ValidationError>(Refill {
                    amount: in_credit_range(amount, "credits.refill.amount", 1)?,
                    interval: RefillInterval::parse(interval.trim()).ok_or_else(bad)?,
                })
            })
            .transpose()?;
        Ok(Credits { remaining, refill })
    }
}

fn whole(value: Option<&Value>, field: &'static str) -> Result<u64, ValidationError> {
    value
        .and_then(Value::as_u64)
        .ok_or_else(|| ValidationError::new(field, "must be a positive whole number"))
}

fn credit_count(
    value: Option<&Value>,
    field: &'static str,
    least: i64,
) -> Result<i64, ValidationError> {
    let count = value.and_then(Value::as_i64).ok_or_else(|| {
        ValidationError::new(
            field,
            format!("must be a whole number from {least} to {MAX_CREDITS}"),
        )
    })?;
    in_credit_range(count, field, least)
}

fn in_credit_range(count: i64, field: &'static str, least: i64) -> Result<i64, ValidationError> {
    if (least..=MAX_CREDITS).contains(&count) {
        Ok(count)
    } else {
        Err(ValidationError::new(
            field,
            format!("must be a whole number from {least} to {MAX_CREDITS}"),
        ))
    }
}

/// A key's credits as stored: a pool (named by the key that first had them, and shared
/// with its successors by rotation, so a rotation never creates credits), what it holds,
/// and its epoch, which every refill and every change of the credits advances, so that a
/// lease taken before cannot be given back into the new balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditAccount {
    /// The pool's name.
    pub pool: ApiKeyId,
    /// What the pool holds (not counting what instances hold in leases) and its refill.
    pub credits: Credits,
    /// Advanced by every refill and change.
    pub epoch: i64,
    /// When the next refill is due, for credits that are refilled.
    pub refill_at: Option<DateTime<Utc>>,
}

impl CreditAccount {
    /// A new pool named `pool` holding `credits`, opened at `now`.
    pub fn open(pool: ApiKeyId, credits: Credits, now: DateTime<Utc>) -> Self {
        CreditAccount {
            pool,
            refill_at: credits.refill.map(|refill| refill.interval.next_after(now)),
            credits,
            epoch: 0,
        }
    }

    /// This pool holding `credits` instead, from `now`: a new epoch, so that no lease of
    /// the old balance is given back into the new one.
    pub fn replaced(&self, credits: Credits, now: DateTime<Utc>) -> Self {
        CreditAccount {
            pool: self.pool.clone(),
            refill_at: credits.refill.map(|refill| refill.interval.next_after(now)),
            credits,
            epoch: self.epoch + 1,
        }
    }
}

/// How many credits an instance asks the pool for: at least `need` (what the request
/// at hand costs beyond what it still holds), and as a lease, more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditRequest {
    /// What must be granted for the request at hand; less is no use.
    pub need: i64,
}

impl CreditRequest {
    /// What to take from a pool holding `remaining`: nothing if it holds less than
    /// `need`; else `need`, or a lease of 1/[`LEASE_SHARE`] of what remains (at most
    /// [`MAX_LEASE`]), whichever is more, never more than remains.
    pub fn grant(&self, remaining: i64) -> i64 {
        if self.need <= 0 || remaining < self.need {
            return 0;
        }
        let share = (remaining + LEASE_SHARE - 1) / LEASE_SHARE;
        share.min(MAX_LEASE).max(self.need).min(remaining)
    }
}

/// What a pool granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditGrant {
    /// Credits now held by the caller (0 when the pool holds less than was needed).
    pub granted: i64,
    /// What the pool holds after the grant.
    pub remaining: i64,
    /// The pool's epoch: a lease is given back only into the same epoch.
    pub epoch: i64,
    /// When the next refill is due; the lease is void from then on.
    pub refill_at: Option<DateTime<Utc>>,
}

/// How a request of a key ended, as usage counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageOutcome {
    /// Admitted.
    Allowed,
    /// Refused by the key's scopes (403).
    Denied,
    /// Refused by the key's rate limit.
    RateLimited,
    /// Refused for want of credits.
    UsageExceeded,
}

/// A key's usage in one hour (or, summed, one day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCount {
    /// Whose.
    pub key: ApiKeyId,
    /// The start of the hour (or day).
    pub at: DateTime<Utc>,
    /// Admitted requests.
    pub allowed: i64,
    /// Requests refused by the key's scopes.
    pub denied: i64,
    /// Requests refused by the rate limit.
    pub rate_limited: i64,
    /// Requests refused for want of credits.
    pub usage_exceeded: i64,
}

impl UsageCount {
    /// Nothing counted yet for `key` in the hour starting at `at`.
    pub fn empty(key: ApiKeyId, at: DateTime<Utc>) -> Self {
        UsageCount {
            key,
            at,
            allowed: 0,
            denied: 0,
            rate_limited: 0,
            usage_exceeded: 0,
        }
    }

    /// Counts one `outcome`.
    pub fn add(&mut self, outcome: UsageOutcome) {
        let counter = match outcome {
            UsageOutcome::Allowed => &mut self.allowed,
            UsageOutcome::Denied => &mut self.denied,
            UsageOutcome::RateLimited => &mut self.rate_limited,
            UsageOutcome::UsageExceeded => &mut self.usage_exceeded,
        };
        *counter = counter.saturating_add(1);
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &UsageCount) {
        self.allowed = self.allowed.saturating_add(other.allowed);
        self.denied = self.denied.saturating_add(other.denied);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
        self.usage_exceeded = self.usage_exceeded.saturating_add(other.usage_exceeded);
    }
}

/// The start of the hour holding `at`.
pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    let seconds = at.timestamp();
    DateTime::from_timestamp(seconds - seconds.rem_euclid(3600), 0).unwrap_or(at)
}

/// The start of the day (UTC) holding `at`.
pub fn day_of(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.from_utc_datetime(&at.date_naive().and_time(NaiveTime::MIN))
}

/// How long until `at`, from `now` (zero when it has passed).
pub fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> std::time::Duration {
    (at - now)
        .max(Duration::zero())
        .to_std()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("a time")
    }

    #[test]
    fn a_misspelt_field_of_a_limit_or_credits_is_refused_not_dropped() {
        let refused = |field: &str, result: Result<(), ValidationError>| {
            let error = result.expect_err("refused");
            assert_eq!(error.field, field);
            assert!(error.message.contains("has no field"), "{}", error.message);
        };
        refused(
            "ratelimit",
            RateLimit::from_json(&json!({"limit": 5, "window_ms": 60000, "burst": 9})).map(drop),
        );
        refused(
            "credits",
            Credits::from_json(
                &json!({"remaining": 5, "refil": {"amount": 5, "interval": "daily"}}),
            )
            .map(drop),
        );
        refused(
            "credits.refill",
            Credits::from_json(
                &json!({"remaining": 5, "refill": {"amount": 5, "interval": "daily", "at": 1}}),
            )
            .map(drop),
        );
        let good = json!({"remaining": 5, "refill": {"amount": 5, "interval": "daily"}});
        assert!(Credits::from_json(&good).is_ok());
    }

    #[test]
    fn rate_limits_are_checked_against_the_contract() {
        assert_eq!(
            RateLimit::from_json(&json!({"limit": 100, "window_ms": 60000})),
            Ok(Some(RateLimit {
                limit: 100,
                window_ms: 60_000
            }))
        );
        assert_eq!(RateLimit::from_json(&Value::Null), Ok(None));
        for (value, field) in [
            (json!({"limit": 0, "window_ms": 60000}), "ratelimit.limit"),
            (
                json!({"limit": 1_000_000_001u64, "window_ms": 60000}),
                "ratelimit.limit",
            ),
            (json!({"limit": -1, "window_ms": 60000}), "ratelimit.limit"),
            (json!({"limit": 1.5, "window_ms": 60000}), "ratelimit.limit"),
            (
                json!({"limit": "10", "window_ms": 60000}),
                "ratelimit.limit",
            ),
            (json!({"window_ms": 60000}), "ratelimit.limit"),
            (
                json!({"limit": 10, "window_ms": 999}),
                "ratelimit.window_ms",
            ),
            (
                json!({"limit": 10, "window_ms": 86_400_001}),
                "ratelimit.window_ms",
            ),
            (json!({"limit": 10}), "ratelimit.window_ms"),
            (json!([10, 1000]), "ratelimit"),
            (json!(10), "ratelimit"),
        ] {
            let error = RateLimit::from_json(&value).expect_err("invalid");
            assert_eq!(error.field, field, "{value}");
        }
    }

    #[test]
    fn a_limit_covers_tighter_limits_only() {
        let own = RateLimit {
            limit: 100,
            window_ms: 60_000,
        };
        let tighter = [(100, 60_000), (10, 60_000), (100, 120_000), (1, 1_000)];
        for (limit, window_ms) in tighter {
            assert!(
                own.covers(&RateLimit { limit, window_ms }),
                "{limit}/{window_ms}"
            );
        }
        // A larger burst, or a faster rate, even with a smaller burst.
        let looser = [(101, 60_000), (200, 120_000), (2, 1_000), (100, 59_999)];
        for (limit, window_ms) in looser {
            assert!(
                !own.covers(&RateLimit { limit, window_ms }),
                "{limit}/{window_ms}"
            );
        }
    }

    #[test]
    fn short_rate_limits_read_as_the_command_line_writes_them() {
        let parse = |text| RateLimit::parse_short(text).expect(text);
        assert_eq!(parse("100/1m"), RateLimit::new(100, 60_000).ok());
        assert_eq!(parse("10/s"), RateLimit::new(10, 1_000).ok());
        assert_eq!(parse("5000/1h"), RateLimit::new(5_000, 3_600_000).ok());
        assert_eq!(parse("7/30s"), RateLimit::new(7, 30_000).ok());
        assert_eq!(parse("none"), None);
        for bad in [
            "100", "x/1m", "100/1y", "100/0s", "100/2d", "0/1m", "100/m1",
        ] {
            assert!(RateLimit::parse_short(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credits_are_checked_and_name_the_field() {
        assert_eq!(
            Credits::from_json(
                &json!({"remaining": 5, "refill": {"amount": 10, "interval": "daily"}})
            ),
            Ok(Some(Credits {
                remaining: 5,
                refill: Some(Refill {
                    amount: 10,
                    interval: RefillInterval::Daily
                })
            }))
        );
        assert_eq!(
            Credits::from_json(&json!({"remaining": 0})),
            Ok(Some(Credits {
                remaining: 0,
                refill: None
            }))
        );
        for (value, field) in [
            (json!({"remaining": -1}), "credits.remaining"),
            (json!({"remaining": 1e13}), "credits.remaining"),
            (json!({}), "credits.remaining"),
            (
                json!({"remaining": 1, "refill": {"amount": 0, "interval": "daily"}}),
                "credits.refill.amount",
            ),
            (
                json!({"remaining": 1, "refill": {"amount": 5, "interval": "weekly"}}),
                "credits.refill.interval",
            ),
            (json!({"remaining": 1, "refill": 5}), "credits.refill"),
            (json!("lots"), "credits"),
        ] {
            let error = Credits::from_json(&value).expect_err("invalid");
            assert_eq!(error.field, field, "{value}");
        }
        assert_eq!(
            Credits::from_short(1000, Some("500/monthly")),
            Ok(Credits {
                remaining: 1000,
                refill: Some(Refill {
                    amount: 500,
                    interval: RefillInterval::Monthly
                })
            })
        );
        assert!(Credits::from_short(1000, Some("500/weekly")).is_err());
        assert!(Credits::from_short(-1, None).is_err());
    }

    #[test]
    fn refills_fall_on_utc_midnights_and_firsts() {
        let daily = RefillInterval::Daily;
        assert_eq!(
            daily.next_after(at("2026-11-27T15:00:00Z")),
            at("2026-11-28T00:00:00Z")
        );
        assert_eq!(
            daily.next_after(at("2026-11-28T00:00:00Z")),
            at("2026-11-29T00:00:00Z"),
            "strictly after"
        );
        let monthly = RefillInterval::Monthly;
        assert_eq!(
            monthly.next_after(at("2026-12-31T23:59:59Z")),
            at("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            monthly.next_after(at("2027-01-01T00:00:00Z")),
            at("2027-02-01T00:00:00Z")
        );
    }

    #[test]
    fn leases_share_what_remains_and_cover_the_need() {
        let one = CreditRequest { need: 1 };
        assert_eq!(one.grant(0), 0);
        assert_eq!(one.grant(1), 1);
        assert_eq!(one.grant(300), 19);
        assert_eq!(one.grant(1_000_000), MAX_LEASE);
        let five = CreditRequest { need: 5 };
        assert_eq!(five.grant(4), 0, "less than needed is no use");
        assert_eq!(five.grant(5), 5);
        assert_eq!(five.grant(40), 5);
        let big = CreditRequest { need: 5_000 };
        assert_eq!(
            big.grant(1_000_000),
            5_000,
            "a costly request takes its cost"
        );
        assert_eq!(CreditRequest { need: 0 }.grant(10), 0);
    }

    #[test]
    fn hours_and_days_start_on_the_hour_and_at_midnight() {
        assert_eq!(
            hour_of(at("2026-11-27T10:59:59.9Z")),
            at("2026-11-27T10:00:00Z")
        );
        assert_eq!(
            day_of(at("2026-11-27T10:59:59Z")),
            at("2026-11-27T00:00:00Z")
        );
    }
}
