//! The error envelope: every failure becomes `{"error", "error_detail": {code, message}}`
//! with one status per code. Refusals the guard can make (authentication, permissions,
//! bad input, throttling, availability) are the guard's [`GuardError`], with its status
//! and envelope; [`ApiError`] adds what only the key endpoints can say.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use keygate_core::{RuleError, StoreError, ValidationError};
use keygate_guard::GuardError;
use keygate_guard::envelope;
use keygate_guard::error::ErrorCode;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refusal the guard can make: no or a bad key, a rule broken, a malformed or
    /// invalid request, too many failures, the database out of reach, an internal fault.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// No key with that id for that owner.
    #[error("API key not found")]
    KeyNotFound,
    /// The key is revoked, so it cannot be changed.
    #[error("API key is revoked and cannot be changed")]
    KeyRevoked,
    /// The key is expired, so it cannot be rotated.
    #[error("API key is expired and cannot be rotated; create a new one")]
    KeyExpired,
    /// The key was rotated, so its expiry is the end of its grace period.
    #[error(
        "API key was rotated already; it has its successor, and its expiry is the end of its grace period"
    )]
    KeyRotated,
    /// A concurrent change to the same key won.
    #[error("The API key changed while this request was working on it; retry")]
    Conflict,
    /// No such route.
    #[error("Not found")]
    RouteNotFound,
    /// The route exists but not for this method.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// The body is over the limit.
    #[error("Request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
}

impl ApiError {
    /// A failure that is not the client's: details go to the log, never to the client.
    pub const INTERNAL: ApiError = ApiError::Guard(GuardError::Internal);
    /// The database cannot be reached in time.
    pub const UNAVAILABLE: ApiError = ApiError::Guard(GuardError::Unavailable);

    /// The body or query is not what the endpoint expects.
    pub fn malformed(message: impl Into<String>) -> Self {
        ApiError::Guard(GuardError::Malformed(message.into()))
    }

    /// A query string that is not what the endpoint reads.
    pub fn invalid_query(error: impl std::fmt::Display) -> Self {
        Self::malformed(format!("Invalid query string: {error}"))
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Guard(error) => error.code(),
            ApiError::KeyNotFound => ErrorCode::ApikeyNotFound,
            ApiError::KeyRevoked => ErrorCode::ApikeyRevoked,
            ApiError::KeyExpired => ErrorCode::ApikeyExpired,
            ApiError::KeyRotated => ErrorCode::ApikeyRotated,
            ApiError::Conflict => ErrorCode::GenConflict,
            ApiError::RouteNotFound => ErrorCode::GenNotFound,
            ApiError::MethodNotAllowed => ErrorCode::GenMethodNotAllowed,
            ApiError::PayloadTooLarge(_) => ErrorCode::GenPayloadTooLarge,
        }
    }
}

impl From<RuleError> for ApiError {
    fn from(error: RuleError) -> Self {
        ApiError::Guard(error.into())
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        ApiError::Guard(error.into())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::Guard(error.into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Guard(error) => error.status(),
            ApiError::KeyNotFound | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::KeyRevoked
            | ApiError::KeyExpired
            | ApiError::KeyRotated
            | ApiError::Conflict => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Guard(error) => error.error_response(),
            other => envelope(
                other.status_code(),
                other.code(),
                &other.to_string(),
                None,
                None::<Duration>,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;
    use keygate_core::{Action, Resource, Scope};
    use serde_json::Value;

    fn body(error: ApiError) -> (u16, Value) {
        let response = error.error_response();
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .try_into_bytes()
            .expect("a complete body");
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[test]
    fn every_error_has_its_status_and_code() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (GuardError::MissingKey.into(), 401, "AUTH_MISSING_API_KEY"),
            (GuardError::InvalidKey.into(), 401, "AUTH_INVALID_API_KEY"),
            (GuardError::ExpiredKey.into(), 401, "AUTH_EXPIRED_API_KEY"),
            (
                RuleError::InsufficientPermissions(Scope::new(Resource::Ledgers, Action::Write))
                    .into(),
                403,
                "AUTH_INSUFFICIENT_PERMISSIONS",
            ),
            (
                RuleError::MethodNotAllowed("TRACE".into()).into(),
                403,
                "AUTH_INSUFFICIENT_PERMISSIONS",
            ),
            (
                RuleError::UnknownResource.into(),
                403,
                "AUTH_UNKNOWN_RESOURCE",
            ),
            (
                RuleError::CrossOwnerAccess.into(),
                403,
                "AUTH_CROSS_OWNER_ACCESS",
            ),
            (
                RuleError::ScopeEscalation(Scope::EVERYTHING).into(),
                403,
                "AUTH_SCOPE_ESCALATION",
            ),
            (
                RuleError::OwnerRequired.into(),
                400,
                "APIKEY_OWNER_REQUIRED",
            ),
            (ApiError::KeyNotFound, 404, "APIKEY_NOT_FOUND"),
            (ApiError::KeyRevoked, 409, "APIKEY_REVOKED"),
            (ApiError::KeyExpired, 409, "APIKEY_EXPIRED"),
            (ApiError::KeyRotated, 409, "APIKEY_ROTATED"),
            (ApiError::Conflict, 409, "GEN_CONFLICT"),
            (ApiError::malformed("x"), 400, "GEN_MALFORMED_REQUEST"),
            (
                ValidationError::new("name", "bad").into(),
                400,
                "GEN_VALIDATION_ERROR",
            ),
            (ApiError::PayloadTooLarge(1), 413, "GEN_PAYLOAD_TOO_LARGE"),
            (
                GuardError::RateLimited(std::time::Duration::from_millis(1500)).into(),
                429,
                "GEN_RATE_LIMITED",
            ),
            (ApiError::UNAVAILABLE, 503, "GEN_SERVICE_UNAVAILABLE"),
            (ApiError::INTERNAL, 500, "GEN_INTERNAL"),
            (
                GuardError::OperatorTokenRequired.into(),
                401,
                "AUTH_METRICS_TOKEN_REQUIRED",
            ),
        ];
        for (error, status, code) in cases {
            let (got_status, json) = body(error);
            assert_eq!(got_status, status, "{code}");
            assert_eq!(json["error_detail"]["code"], code);
            assert_eq!(json["error"], json["error_detail"]["message"], "{code}");
        }
    }

    #[test]
    fn internal_errors_say_nothing_of_their_cause() {
        let error = ApiError::from(StoreError::Internal(
            "relation api_keys does not exist".into(),
        ));
        let (_, json) = body(error);
        assert_eq!(json["error"], "Internal server error");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let (_, json) = body(ValidationError::new("scopes", "unknown action \"update\"").into());
        assert_eq!(json["error_detail"]["details"]["field"], "scopes");
        assert_eq!(json["error"], "scopes: unknown action \"update\"");
    }
}
