//! The error envelope: every failure becomes `{"error", "error_detail": {code, message}}`
//! with one status per code, mapped here and nowhere else.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use keygate_core::{RuleError, StoreError, ValidationError};
use keygate_guard::GuardError;
use keygate_guard::envelope;
use keygate_guard::error::{ErrorCode, rule_code, rule_details, rule_status};
use serde_json::Value;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No key on a protected path.
    #[error("Authentication required. Use X-Blnk-Key header")]
    MissingKey,
    /// The key matches no key.
    #[error("Invalid API key")]
    InvalidKey,
    /// The key is revoked or expired.
    #[error("API key is expired or revoked")]
    ExpiredKey,
    /// The principal may not do this.
    #[error(transparent)]
    Rule(#[from] RuleError),
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
    /// The body or query is not what the endpoint expects.
    #[error("{0}")]
    Malformed(String),
    /// A field is present but unacceptable.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The body is over the limit.
    #[error("Request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// Too many failed authentications from this client; retry after the duration.
    #[error("Too many failed authentications from this address; retry later")]
    RateLimited(std::time::Duration),
    /// `/metrics` without the master key or the metrics token.
    #[error("Metrics need the master key or the metrics token")]
    MetricsForbidden,
    /// The database cannot be reached.
    #[error("The service is temporarily unavailable; retry shortly")]
    Unavailable,
    /// A failure that is not the client's: details go to the log, never to the client.
    #[error("Internal server error")]
    Internal,
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::MissingKey => ErrorCode::AuthMissingApiKey,
            ApiError::InvalidKey => ErrorCode::AuthInvalidApiKey,
            ApiError::ExpiredKey => ErrorCode::AuthExpiredApiKey,
            ApiError::MetricsForbidden => ErrorCode::AuthMetricsTokenRequired,
            ApiError::Rule(rule) => rule_code(rule),
            ApiError::KeyNotFound => ErrorCode::ApikeyNotFound,
            ApiError::KeyRevoked => ErrorCode::ApikeyRevoked,
            ApiError::KeyExpired => ErrorCode::ApikeyExpired,
            ApiError::KeyRotated => ErrorCode::ApikeyRotated,
            ApiError::Conflict => ErrorCode::GenConflict,
            ApiError::RouteNotFound => ErrorCode::GenNotFound,
            ApiError::MethodNotAllowed => ErrorCode::GenMethodNotAllowed,
            ApiError::Malformed(_) => ErrorCode::GenMalformedRequest,
            ApiError::Validation(_) => ErrorCode::GenValidationError,
            ApiError::PayloadTooLarge(_) => ErrorCode::GenPayloadTooLarge,
            ApiError::RateLimited(_) => ErrorCode::GenRateLimited,
            ApiError::Unavailable => ErrorCode::GenServiceUnavailable,
            ApiError::Internal => ErrorCode::GenInternal,
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            ApiError::Validation(error) => Some(serde_json::json!({ "field": error.field })),
            ApiError::Rule(rule) => rule_details(rule),
            _ => None,
        }
    }
}

impl From<GuardError> for ApiError {
    fn from(error: GuardError) -> Self {
        match error {
            GuardError::MissingKey => ApiError::MissingKey,
            GuardError::InvalidKey => ApiError::InvalidKey,
            GuardError::ExpiredKey => ApiError::ExpiredKey,
            GuardError::OperatorTokenRequired => ApiError::MetricsForbidden,
            GuardError::Rule(rule) => ApiError::Rule(rule),
            GuardError::Malformed(message) => ApiError::Malformed(message),
            GuardError::Validation(error) => ApiError::Validation(error),
            GuardError::RateLimited(wait) => ApiError::RateLimited(wait),
            GuardError::Unavailable => ApiError::Unavailable,
            GuardError::Internal => ApiError::Internal,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                ApiError::Unavailable
            }
            StoreError::Conflict(reason) | StoreError::Internal(reason) => {
                tracing::error!(%reason, "database error");
                ApiError::Internal
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::ExpiredKey
            | ApiError::MetricsForbidden => StatusCode::UNAUTHORIZED,
            ApiError::Rule(rule) => rule_status(rule),
            ApiError::KeyNotFound | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::KeyRevoked
            | ApiError::KeyExpired
            | ApiError::KeyRotated
            | ApiError::Conflict => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Malformed(_) | ApiError::Validation(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let retry_after = match self {
            ApiError::Unavailable => Some(std::time::Duration::from_secs(1)),
            ApiError::RateLimited(wait) => Some(*wait),
            _ => None,
        };
        envelope(
            self.status_code(),
            self.code(),
            &self.to_string(),
            self.details(),
            retry_after,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;
    use keygate_core::{Action, Resource, Scope};

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
            (ApiError::MissingKey, 401, "AUTH_MISSING_API_KEY"),
            (ApiError::InvalidKey, 401, "AUTH_INVALID_API_KEY"),
            (ApiError::ExpiredKey, 401, "AUTH_EXPIRED_API_KEY"),
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
            (
                ApiError::Malformed("x".into()),
                400,
                "GEN_MALFORMED_REQUEST",
            ),
            (
                ValidationError::new("name", "bad").into(),
                400,
                "GEN_VALIDATION_ERROR",
            ),
            (ApiError::PayloadTooLarge(1), 413, "GEN_PAYLOAD_TOO_LARGE"),
            (
                ApiError::RateLimited(std::time::Duration::from_millis(1500)),
                429,
                "GEN_RATE_LIMITED",
            ),
            (ApiError::Unavailable, 503, "GEN_SERVICE_UNAVAILABLE"),
            (ApiError::Internal, 500, "GEN_INTERNAL"),
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
