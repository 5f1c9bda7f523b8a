//! Why the guard refuses a request, and the JSON envelope every refusal (and every error
//! of an app built on the guard) is answered with: Blnk's `{"error", "error_detail":
//! {code, message, details?}}`, one status per code.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderValue;
use actix_web::{HttpResponse, ResponseError};
use keygate_core::{RuleError, StoreError, ValidationError};

use crate::metering::RateState;
use serde::Serialize;
use serde_json::Value;

/// Declares [`ErrorCode`] from one list: each variant with its text and meaning, so the
/// enum, [`ErrorCode::ALL`] and [`ErrorCode::as_str`] cannot disagree.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// Every error code keygate answers with (Blnk's catalogue and keygate's own).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears in `error_detail.code`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }
        }
    };
}

error_codes! {
    /// No key on a protected path.
    AuthMissingApiKey => "AUTH_MISSING_API_KEY",
    /// The key matches no key.
    AuthInvalidApiKey => "AUTH_INVALID_API_KEY",
    /// The key is revoked or expired.
    AuthExpiredApiKey => "AUTH_EXPIRED_API_KEY",
    /// The key's scopes do not permit the request.
    AuthInsufficientPermissions => "AUTH_INSUFFICIENT_PERMISSIONS",
    /// The path names no resource.
    AuthUnknownResource => "AUTH_UNKNOWN_RESOURCE",
    /// A key acting on another owner.
    AuthCrossOwnerAccess => "AUTH_CROSS_OWNER_ACCESS",
    /// Granting (or changing a key with) scopes the caller lacks.
    AuthScopeEscalation => "AUTH_SCOPE_ESCALATION",
    /// The key's rate limit is reached; retry after `Retry-After`.
    AuthRateLimited => "AUTH_RATE_LIMITED",
    /// The key has no credits left.
    AuthUsageExceeded => "AUTH_USAGE_EXCEEDED",
    /// An operator endpoint asked with neither the master key nor its token.
    AuthMetricsTokenRequired => "AUTH_METRICS_TOKEN_REQUIRED",
    /// The master key must name an owner.
    ApikeyOwnerRequired => "APIKEY_OWNER_REQUIRED",
    /// No key with that id for that owner.
    ApikeyNotFound => "APIKEY_NOT_FOUND",
    /// The key is revoked, so it cannot be changed.
    ApikeyRevoked => "APIKEY_REVOKED",
    /// The key is expired, so it cannot be rotated.
    ApikeyExpired => "APIKEY_EXPIRED",
    /// The key was rotated already.
    ApikeyRotated => "APIKEY_ROTATED",
    /// The request is not what the endpoint expects.
    GenMalformedRequest => "GEN_MALFORMED_REQUEST",
    /// A field or header is present but unacceptable.
    GenValidationError => "GEN_VALIDATION_ERROR",
    /// The body is over the limit.
    GenPayloadTooLarge => "GEN_PAYLOAD_TOO_LARGE",
    /// Too many failed authentications from this address.
    GenRateLimited => "GEN_RATE_LIMITED",
    /// No such route.
    GenNotFound => "GEN_NOT_FOUND",
    /// The route exists, not for this method.
    GenMethodNotAllowed => "GEN_METHOD_NOT_ALLOWED",
    /// A concurrent change to the same key won.
    GenConflict => "GEN_CONFLICT",
    /// The database cannot be reached in time.
    GenServiceUnavailable => "GEN_SERVICE_UNAVAILABLE",
    /// A failure that is not the client's.
    GenInternal => "GEN_INTERNAL",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a request is refused before it reaches a handler.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// No key on a protected path.
    #[error("Authentication required. Use X-Blnk-Key header")]
    MissingKey,
    /// The key matches no key.
    #[error("Invalid API key")]
    InvalidKey,
    /// The key is revoked or expired.
    #[error("API key is expired or revoked")]
    ExpiredKey,
    /// Neither the master key nor the operator token, on an operator endpoint.
    #[error("Metrics need the master key or the metrics token")]
    OperatorTokenRequired,
    /// The principal may not do this.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The request (a header, the path) cannot be judged.
    #[error("{0}")]
    Malformed(String),
    /// A header or the path is present but unacceptable.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// Too many failed authentications from this client; retry after the duration.
    #[error("Too many failed authentications from this address; retry later")]
    RateLimited(Duration),
    /// The key's rate limit is reached.
    #[error("Rate limit exceeded for this API key; retry later")]
    KeyRateLimited(RateState),
    /// The key has no credits left.
    #[error("This API key has no credits left")]
    UsageExceeded {
        /// The key's rate-limit window, if it has a rate limit.
        rate: Option<RateState>,
        /// The credits left (fewer than the request costs).
        remaining: i64,
        /// How long until the next refill, if the credits are refilled.
        retry_after: Option<Duration>,
    },
    /// The database cannot be reached in time.
    #[error("The service is temporarily unavailable; retry shortly")]
    Unavailable,
    /// A failure that is not the client's: details go to the log, never to the client.
    #[error("Internal server error")]
    Internal,
}

impl GuardError {
    /// The stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            GuardError::MissingKey => ErrorCode::AuthMissingApiKey,
            GuardError::InvalidKey => ErrorCode::AuthInvalidApiKey,
            GuardError::ExpiredKey => ErrorCode::AuthExpiredApiKey,
            GuardError::OperatorTokenRequired => ErrorCode::AuthMetricsTokenRequired,
            GuardError::Rule(rule) => rule_code(rule),
            GuardError::Malformed(_) => ErrorCode::GenMalformedRequest,
            GuardError::Validation(_) => ErrorCode::GenValidationError,
            GuardError::RateLimited(_) => ErrorCode::GenRateLimited,
            GuardError::KeyRateLimited(_) => ErrorCode::AuthRateLimited,
            GuardError::UsageExceeded { .. } => ErrorCode::AuthUsageExceeded,
            GuardError::Unavailable => ErrorCode::GenServiceUnavailable,
            GuardError::Internal => ErrorCode::GenInternal,
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            GuardError::MissingKey
            | GuardError::InvalidKey
            | GuardError::ExpiredKey
            | GuardError::OperatorTokenRequired => StatusCode::UNAUTHORIZED,
            GuardError::Rule(rule) => rule_status(rule),
            GuardError::Malformed(_) | GuardError::Validation(_) => StatusCode::BAD_REQUEST,
            GuardError::RateLimited(_)
            | GuardError::KeyRateLimited(_)
            | GuardError::UsageExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            GuardError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            GuardError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How long the client should wait before trying again, where that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GuardError::RateLimited(wait) => Some(*wait),
            GuardError::KeyRateLimited(rate) => rate.retry_after,
            GuardError::UsageExceeded { retry_after, .. } => *retry_after,
            GuardError::Unavailable => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The key's rate-limit window, for a refusal by metering of a key that has one: its
    /// RateLimit header fields go with the answer.
    pub fn rate(&self) -> Option<&RateState> {
        match self {
            GuardError::KeyRateLimited(rate) => Some(rate),
            GuardError::UsageExceeded { rate, .. } => rate.as_ref(),
            _ => None,
        }
    }

    /// What the error names, for `error_detail.details`.
    pub fn details(&self) -> Option<Value> {
        match self {
            GuardError::Validation(error) => Some(serde_json::json!({ "field": error.field })),
            GuardError::Rule(rule) => rule_details(rule),
            _ => None,
        }
    }
}

/// The code of a rule the principal broke.
pub fn rule_code(rule: &RuleError) -> ErrorCode {
    match rule {
        RuleError::UnknownResource => ErrorCode::AuthUnknownResource,
        RuleError::MethodNotAllowed(_) | RuleError::InsufficientPermissions(_) => {
            ErrorCode::AuthInsufficientPermissions
        }
        RuleError::OwnerRequired => ErrorCode::ApikeyOwnerRequired,
        RuleError::CrossOwnerAccess => ErrorCode::AuthCrossOwnerAccess,
        RuleError::ScopeEscalation(_) | RuleError::MeteringEscalation(_) => {
            ErrorCode::AuthScopeEscalation
        }
    }
}

/// The status of a rule the principal broke.
pub fn rule_status(rule: &RuleError) -> StatusCode {
    match rule {
        RuleError::OwnerRequired => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    }
}

/// The details of a rule the principal broke.
pub fn rule_details(rule: &RuleError) -> Option<Value> {
    match rule {
        RuleError::ScopeEscalation(scope) => {
            Some(serde_json::json!({ "scope": scope.to_string() }))
        }
        RuleError::MeteringEscalation(field) => Some(serde_json::json!({ "field": field })),
        _ => None,
    }
}

impl From<StoreError> for GuardError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                GuardError::Unavailable
            }
            StoreError::Conflict(reason) | StoreError::Internal(reason) => {
                tracing::error!(%reason, "database error");
                GuardError::Internal
            }
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a str,
    error_detail: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

/// The JSON error answer: `status`, `code`, `message` (as both `error` and
/// `error_detail.message`), optional `details`, and `Retry-After` in whole seconds
/// (at least 1) where a wait is known.
pub fn envelope(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
    details: Option<Value>,
    retry_after: Option<Duration>,
) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if let Some(wait) = retry_after {
        let seconds = crate::metering::whole_seconds(wait).max(1);
        response.insert_header(("Retry-After", HeaderValue::from(seconds)));
    }
    response.json(Envelope {
        error: message,
        error_detail: Detail {
            code,
            message,
            details,
        },
    })
}

impl ResponseError for GuardError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = envelope(
            self.status(),
            self.code(),
            &self.to_string(),
            self.details(),
            self.retry_after(),
        );
        if let Some(rate) = self.rate() {
            for (name, value) in crate::metering::rate_headers(rate) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}
