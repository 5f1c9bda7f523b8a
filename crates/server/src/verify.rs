//! `POST /verify`: for applications that check keys in code rather than at a gateway.
//! The answer is the guard's own decision (authentication, scopes, rate limit, credits),
//! as a verdict in a 200 rather than as the caller's own refusal.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use keygate_core::route::{action_for_method, resource_for};
use keygate_core::{Action, Principal, Resource, ScopeSet, ValidationError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::guard::{GuardError, Metered, RateState};
use crate::keys::views::no_store;
use crate::openapi::ErrorBody;
use crate::state::AppState;

/// The most credits one verification may spend.
pub const MAX_COST: u64 = 1_000_000_000;

/// What to verify: a key, and either a resource and action or a method and path.
#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyRequest {
    /// The key to check.
    key: String,
    /// The resource the request is about, such as `ledgers` (with `action`).
    #[schema(example = "ledgers")]
    resource: Option<String>,
    /// `read`, `write` or `delete` (with `resource`).
    #[schema(example = "read")]
    action: Option<String>,
    /// The request's method (with `path`), such as `GET`.
    method: Option<String>,
    /// The request's path (with `method`), such as `/ledgers/ldg_1`, judged as the
    /// gateways judge it.
    path: Option<String>,
    /// Credits the request spends (1 to 1,000,000,000; default 1).
    cost: Option<u64>,
}

/// The verdict: `valid`, and `code`: `VALID` or the error code the guard would have
/// answered.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct VerifyResponse {
    valid: bool,
    #[schema(example = "VALID")]
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    scopes: Option<ScopeSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<DateTime<Utc>>,
    /// For a key with a rate limit: its window after this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratelimit: Option<VerifyRateLimit>,
    /// For a key with credits: what remains after this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    credits: Option<VerifyCredits>,
}

/// A key's rate-limit window in a verdict.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyRateLimit {
    limit: u64,
    remaining: u64,
    /// Milliseconds until the whole limit is available again.
    reset_ms: u64,
}

/// A key's credits in a verdict.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyCredits {
    remaining: i64,
}

impl From<&RateState> for VerifyRateLimit {
    fn from(rate: &RateState) -> Self {
        VerifyRateLimit {
            limit: rate.limit,
            remaining: rate.remaining,
            reset_ms: u64::try_from(rate.reset.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl VerifyResponse {
    /// The identity of `principal`, as far as a verdict shows it.
    fn of(principal: Option<&Principal>, valid: bool, code: &'static str) -> Self {
        let mut verdict = VerifyResponse {
            valid,
            code,
            ..VerifyResponse::default()
        };
        match principal {
            Some(Principal::Key(key)) => {
                verdict.api_key_id = Some(key.id.to_string());
                verdict.owner_id = Some(key.owner_id.clone());
                verdict.scopes = Some(key.scopes.clone());
                verdict.expires_at = Some(key.expires_at);
            }
            Some(Principal::Master) => {
                verdict.api_key_id = Some("master".into());
                verdict.scopes = ScopeSet::parse(&["*:*"]).ok();
            }
            None => {}
        }
        verdict
    }

    fn metered(mut self, metered: &Metered) -> Self {
        self.ratelimit = metered.rate.as_ref().map(VerifyRateLimit::from);
        self.credits = metered.credits.map(|remaining| VerifyCredits { remaining });
        self
    }
}

impl VerifyRequest {
    /// The resource and action to judge, from whichever pair the request gave.
    #[allow(clippy::type_complexity)]
    fn target(&self) -> Result<(Option<Resource>, Result<Action, &str>), ValidationError> {
        match (&self.resource, &self.action, &self.method, &self.path) {
            (Some(resource), Some(action), None, None) => {
                let action = match Action::try_from(action.as_str()) {
                    Ok(Action::All) | Err(_) => {
                        return Err(ValidationError::new(
                            "action",
                            "must be read, write or delete",
                        ));
                    }
                    Ok(action) => action,
                };
                if resource == "*" {
                    return Err(ValidationError::new("resource", "must name one resource"));
                }
                Ok((Resource::try_from(resource.as_str()).ok(), Ok(action)))
            }
            (None, None, Some(method), Some(path)) => {
                // Read exactly as the gateways read an original request.
                let original = crate::guard::OriginalRequest::new(method, path, "method", "path")
                    .map_err(|error| match error {
                    GuardError::Validation(error) => error,
                    other => ValidationError::new("path", other.to_string()),
                })?;
                Ok((
                    resource_for(&original.path),
                    action_for_method(&original.method).ok_or(method.as_str()),
                ))
            }
            _ => Err(ValidationError::new(
                "resource",
                "give either resource and action, or method and path",
            )),
        }
    }
}

/// Verifies a key for a request, as the guard would judge it.
#[utoipa::path(post, path = "/verify", tag = "verify", request_body = VerifyRequest,
    security(("X-Blnk-Key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The verdict: valid, or the code the guard would have refused with (AUTH_INVALID_API_KEY, AUTH_EXPIRED_API_KEY, AUTH_INSUFFICIENT_PERMISSIONS, AUTH_UNKNOWN_RESOURCE, AUTH_RATE_LIMITED, AUTH_USAGE_EXCEEDED, GEN_RATE_LIMITED when the calling address failed too often)", body = VerifyResponse),
        (status = 400, description = "GEN_MALFORMED_REQUEST or GEN_VALIDATION_ERROR (details.field: resource, action, path or cost)", body = ErrorBody),
        (status = 401, description = "The caller's own key: AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
        (status = 403, description = "The caller's key lacks verify:write", body = ErrorBody),
        (status = 503, description = "GEN_SERVICE_UNAVAILABLE", body = ErrorBody),
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the calling key's rate limit) or AUTH_USAGE_EXCEEDED (its credits); Retry-After where a wait is known", body = ErrorBody),
    ))]
pub async fn verify(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<VerifyRequest>,
) -> Result<HttpResponse, ApiError> {
    let (resource, action) = body.target()?;
    let cost = body.cost.unwrap_or(1);
    if !(1..=MAX_COST).contains(&cost) {
        return Err(ValidationError::new("cost", format!("must be from 1 to {MAX_COST}")).into());
    }
    let guard = state.guard();
    // Failed verifications count against the calling address, like failed sign-ins.
    let peer = request.peer_addr().map(|address| address.ip());
    let client = guard.throttle().client(peer, request.headers());
    let presented = Some(body.key.trim()).filter(|key| !key.is_empty());
    let verdict = match guard.authenticate_client(client, presented).await {
        Err(refusal) => verdict(refusal, None)?,
        Ok(principal) => {
            let known = principal.clone();
            match guard.admit(principal, resource, action, cost).await {
                Ok(admitted) => {
                    VerifyResponse::of(Some(&known), true, "VALID").metered(&admitted.metered)
                }
                Err(refusal) => verdict(refusal, Some(&known))?,
            }
        }
    };
    Ok(HttpResponse::Ok().insert_header(no_store()).json(verdict))
}

/// A refusal as a verdict; failures that are not the key's (the database is away) are
/// the caller's error answer instead.
fn verdict(refusal: GuardError, known: Option<&Principal>) -> Result<VerifyResponse, ApiError> {
    if matches!(refusal, GuardError::Unavailable | GuardError::Internal) {
        return Err(refusal.into());
    }
    let mut verdict = VerifyResponse::of(known, false, refusal.code().as_str());
    verdict.ratelimit = refusal.rate().map(VerifyRateLimit::from);
    if let GuardError::UsageExceeded { remaining, .. } = refusal {
        verdict.credits = Some(VerifyCredits { remaining });
    }
    Ok(verdict)
}
