//! Why the guard refuses a request, and the JSON envelope every refusal (and every error
//! of an app built on the guard) is answered with: Blnk's `{"error", "error_detail":
//! {code, message, details?}}`, one status per code.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use keygate_core::{RuleError, StoreError, ValidationError};
use serde::Serialize;
use serde_json::Value;

/// The error codes the guard answers with, each spelled once.
pub mod codes {
    /// No key on a protected path.
    pub const MISSING_API_KEY: &str = "AUTH_MISSING_API_KEY";
    /// The key matches no key.
    pub const INVALID_API_KEY: &str = "AUTH_INVALID_API_KEY";
    /// The key is revoked or expired.
    pub const EXPIRED_API_KEY: &str = "AUTH_EXPIRED_API_KEY";
    /// An operator endpoint was asked with neither the master key nor its token.
    pub const OPERATOR_TOKEN_REQUIRED: &str = "AUTH_METRICS_TOKEN_REQUIRED";
    /// The path names no resource.
    pub const UNKNOWN_RESOURCE: &str = "AUTH_UNKNOWN_RESOURCE";
    /// The key's scopes do not permit the request.
    pub const INSUFFICIENT_PERMISSIONS: &str = "AUTH_INSUFFICIENT_PERMISSIONS";
    /// The master key must name an owner.
    pub const OWNER_REQUIRED: &str = "APIKEY_OWNER_REQUIRED";
    /// A key acting on another owner.
    pub const CROSS_OWNER_ACCESS: &str = "AUTH_CROSS_OWNER_ACCESS";
    /// Granting (or changing a key with) scopes the caller lacks.
    pub const SCOPE_ESCALATION: &str = "AUTH_SCOPE_ESCALATION";
    /// The request is not what the endpoint expects.
    pub const MALFORMED_REQUEST: &str = "GEN_MALFORMED_REQUEST";
    /// A field or header is present but unacceptable.
    pub const VALIDATION_ERROR: &str = "GEN_VALIDATION_ERROR";
    /// Too many failed authentications from this address.
    pub const RATE_LIMITED: &str = "GEN_RATE_LIMITED";
    /// The database cannot be reached in time.
    pub const SERVICE_UNAVAILABLE: &str = "GEN_SERVICE_UNAVAILABLE";
    /// A failure that is not the client's.
    pub const INTERNAL: &str = "GEN_INTERNAL";
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
    /// The database cannot be reached in time.
    #[error("The service is temporarily unavailable; retry shortly")]
    Unavailable,
    /// A failure that is not the client's: details go to the log, never to the client.
    #[error("Internal server error")]
    Internal,
}

impl GuardError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GuardError::MissingKey => codes::MISSING_API_KEY,
            GuardError::InvalidKey => codes::INVALID_API_KEY,
            GuardError::ExpiredKey => codes::EXPIRED_API_KEY,
            GuardError::OperatorTokenRequired => codes::OPERATOR_TOKEN_REQUIRED,
            GuardError::Rule(rule) => rule_code(rule),
            GuardError::Malformed(_) => codes::MALFORMED_REQUEST,
            GuardError::Validation(_) => codes::VALIDATION_ERROR,
            GuardError::RateLimited(_) => codes::RATE_LIMITED,
            GuardError::Unavailable => codes::SERVICE_UNAVAILABLE,
            GuardError::Internal => codes::INTERNAL,
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
            GuardError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GuardError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            GuardError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How long the client should wait before trying again, where that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GuardError::RateLimited(wait) => Some(*wait),
            GuardError::Unavailable => Some(Duration::from_secs(1)),
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
pub fn rule_code(rule: &RuleError) -> &'static str {
    match rule {
        RuleError::UnknownResource => codes::UNKNOWN_RESOURCE,
        RuleError::MethodNotAllowed(_) | RuleError::InsufficientPermissions(_) => {
            codes::INSUFFICIENT_PERMISSIONS
        }
        RuleError::OwnerRequired => codes::OWNER_REQUIRED,
        RuleError::CrossOwnerAccess => codes::CROSS_OWNER_ACCESS,
        RuleError::ScopeEscalation(_) => codes::SCOPE_ESCALATION,
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
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

/// The JSON error answer: `status`, `code`, `message` (as both `error` and
/// `error_detail.message`), optional `details`, and `Retry-After` in whole seconds
/// (at least 1) where a wait is known.
pub fn envelope(
    status: StatusCode,
    code: &str,
    message: &str,
    details: Option<Value>,
    retry_after: Option<Duration>,
) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if let Some(wait) = retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response.insert_header(("Retry-After", seconds.max(1).to_string()));
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
        envelope(
            self.status(),
            self.code(),
            &self.to_string(),
            self.details(),
            self.retry_after(),
        )
    }
}
