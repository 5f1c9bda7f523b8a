//! `GET /api-keys/{id}/usage`: a key's requests by hour or day, allowed and refused.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Duration, Utc};
use keygate_core::metering::{day_of, hour_of};
use keygate_core::{UsageCount, ValidationError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::address::KeyAddress;
use super::lifecycle::owned_key;
use super::views::{no_store, parse_timestamp};
use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::AppState;

/// The longest range one answer covers, in buckets: 31 days of hours, or 3 years of days.
const MAX_HOURS: i64 = 31 * 24;
const MAX_DAYS: i64 = 3 * 366;

/// `?from=&to=&granularity=`, beside `?owner=`.
#[derive(Debug, Default, Deserialize)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
}

/// One bucket of usage.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UsageBucket)]
pub struct UsageView {
    /// The start of the hour or day (UTC).
    at: DateTime<Utc>,
    /// Requests admitted.
    allowed: i64,
    /// Requests the key's scopes refused (403).
    denied: i64,
    /// Requests its rate limit refused (429 `AUTH_RATE_LIMITED`).
    rate_limited: i64,
    /// Requests refused for want of credits (429 `AUTH_USAGE_EXCEEDED`).
    usage_exceeded: i64,
}

impl From<UsageCount> for UsageView {
    fn from(count: UsageCount) -> Self {
        UsageView {
            at: count.at,
            allowed: count.allowed,
            denied: count.denied,
            rate_limited: count.rate_limited,
            usage_exceeded: count.usage_exceeded,
        }
    }
}

/// `GET /api-keys/{id}/usage`: the key's usage, oldest first; hours (or days) without
/// requests are left out. By default the last 24 hours by hour, or the last 30 days by
/// day. Counts are kept in memory and written every second or so; this instance's are
/// included at once.
#[utoipa::path(get, path = "/api-keys/{id}/usage", tag = "api-keys",
    params(("id" = String, Path, description = "The key's api_key_id"),
           ("owner" = Option<String>, Query, description = "The key's owner; required for the master key"),
           ("from" = Option<String>, Query, description = "RFC 3339; the first bucket holding it is included (default: 24 hours or 30 days ago)"),
           ("to" = Option<String>, Query, description = "RFC 3339; buckets starting at or after it are left out (default: now)"),
           ("granularity" = Option<String>, Query, description = "`hour` (default) or `day`; at most 744 hours or 1,098 days")),
    security(("X-Blnk-Key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Usage buckets, oldest first", body = Vec<UsageView>),
        (status = 400, description = "APIKEY_OWNER_REQUIRED or GEN_VALIDATION_ERROR (details.field: from, to or granularity)", body = ErrorBody),
        (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
        (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_CROSS_OWNER_ACCESS", body = ErrorBody),
        (status = 404, description = "APIKEY_NOT_FOUND", body = ErrorBody),
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the calling key's rate limit) or AUTH_USAGE_EXCEEDED (its credits); Retry-After where a wait is known", body = ErrorBody),
    ))]
pub async fn usage(
    state: web::Data<AppState>,
    address: KeyAddress,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<UsageQuery>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(ApiError::invalid_query)?;
    let now = state.clock().now();
    let (by_day, from, to) = range(&query, now)?;
    let id = owned_key(&state, &address).await?.id;
    let (key_id, recorder) = (id.clone(), state.guard().usage());
    let counts = state
        .guard()
        .with_store(move |store| recorder.read(store, &key_id, from, to))
        .await?;
    let bucket = |at| if by_day { day_of(at) } else { hour_of(at) };
    let mut buckets: BTreeMap<DateTime<Utc>, UsageCount> = BTreeMap::new();
    for count in counts {
        let at = bucket(count.at);
        buckets
            .entry(at)
            .or_insert_with(|| UsageCount::empty(id.clone(), at))
            .merge(&count);
    }
    let views: Vec<UsageView> = buckets.into_values().map(UsageView::from).collect();
    Ok(HttpResponse::Ok().insert_header(no_store()).json(views))
}

/// Whether buckets are days, and the hours (or days) the answer covers.
fn range(
    query: &UsageQuery,
    now: DateTime<Utc>,
) -> Result<(bool, DateTime<Utc>, DateTime<Utc>), ValidationError> {
    let by_day = match query.granularity.as_deref() {
        None | Some("hour") => false,
        Some("day") => true,
        Some(_) => {
            return Err(ValidationError::new(
                "granularity",
                "must be \"hour\" or \"day\"",
            ));
        }
    };
    let (unit, most) = if by_day {
        (Duration::days(1), MAX_DAYS)
    } else {
        (Duration::hours(1), MAX_HOURS)
    };
    let align = |at| if by_day { day_of(at) } else { hour_of(at) };
    // An offset's `+` arrives as a space when the client did not percent-encode it; only
    // there (after the date and time) is a space read back as `+`, so that a space
    // between date and time (which RFC 3339 allows) stays one.
    let timestamp = |field, text: &str| {
        let restored = match text.get(..19).zip(text.get(19..)) {
            Some((date_time, rest)) => format!("{date_time}{}", rest.replace(' ', "+")),
            None => text.to_owned(),
        };
        parse_timestamp(field, &restored)
    };
    let to = match &query.to {
        Some(text) => timestamp("to", text)?,
        None => align(now) + unit,
    };
    let from = match &query.from {
        Some(text) => align(timestamp("from", text)?),
        None => {
            align(now) + unit
                - if by_day {
                    Duration::days(30)
                } else {
                    Duration::hours(24)
                }
        }
    };
    if from >= to {
        return Err(ValidationError::new("from", "must be before to"));
    }
    if (to - from) > unit * i32::try_from(most).unwrap_or(i32::MAX) {
        return Err(ValidationError::new(
            "from",
            format!("the range may cover at most {most} buckets"),
        ));
    }
    Ok((by_day, from, to))
}
