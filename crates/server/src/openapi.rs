//! The OpenAPI 3 description of keygate's HTTP API, generated from the handlers' types
//! with utoipa and served at `GET /openapi.json`.

use std::sync::LazyLock;

use actix_web::http::header::{CacheControl, CacheDirective, ETAG, IF_NONE_MATCH};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi, ToSchema};

use crate::api_keys::{CreateKey, KeyView};
use crate::lifecycle::{EventView, RotateKey, UpdateKey};

/// Every error code keygate answers with, described from the one list of them
/// ([`keygate_guard::error::ErrorCode::ALL`]).
#[derive(Debug, Serialize)]
pub struct ErrorCode(keygate_guard::error::ErrorCode);

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        let codes = keygate_guard::error::ErrorCode::ALL.map(|code| code.as_str());
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Every error code keygate answers with."))
            .enum_values(Some(codes))
            .into()
    }
}

impl ToSchema for ErrorCode {}

/// The body of every error.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "Invalid API key", "error_detail": {"code": "AUTH_INVALID_API_KEY", "message": "Invalid API key"}}))]
pub struct ErrorBody {
    /// A sentence for people.
    error: String,
    error_detail: ErrorDetail,
}

/// The machine-readable part of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    code: ErrorCode,
    message: String,
    /// More about it: the offending `field` of a validation error, the refused `scope`
    /// of an escalation.
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

/// `GET /health` and `GET /`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "UP")]
    status: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "X-Blnk-Key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Blnk-Key",
                "The master key or an API key",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[allow(dead_code)]
mod paths {
    use super::ErrorBody;
    use crate::api_keys::{CreateKey, KeyView};
    use crate::lifecycle::{EventView, RotateKey, UpdateKey};

    #[utoipa::path(post, path = "/api-keys", tag = "api-keys", request_body = CreateKey,
        security(("X-Blnk-Key" = []), ("bearer" = [])),
        responses(
            (status = 201, description = "The key, with its secret shown this once", body = KeyView),
            (status = 400, description = "GEN_MALFORMED_REQUEST or GEN_VALIDATION_ERROR", body = ErrorBody),
            (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
            (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS, AUTH_CROSS_OWNER_ACCESS or AUTH_SCOPE_ESCALATION", body = ErrorBody),
            (status = 413, description = "GEN_PAYLOAD_TOO_LARGE", body = ErrorBody),
            (status = 429, description = "GEN_RATE_LIMITED", body = ErrorBody),
            (status = 503, description = "GEN_SERVICE_UNAVAILABLE", body = ErrorBody),
        ))]
    fn create() {}

    #[utoipa::path(get, path = "/api-keys", tag = "api-keys",
        params(("owner" = Option<String>, Query, description = "Whose keys; required for the master key")),
        security(("X-Blnk-Key" = []), ("bearer" = [])),
        responses(
            (status = 200, description = "The owner's keys, newest first, without secrets", body = Vec<KeyView>),
            (status = 400, description = "APIKEY_OWNER_REQUIRED or GEN_VALIDATION_ERROR", body = ErrorBody),
            (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
            (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_CROSS_OWNER_ACCESS", body = ErrorBody),
            (status = 429, description = "GEN_RATE_LIMITED", body = ErrorBody),
            (status = 503, description = "GEN_SERVICE_UNAVAILABLE", body = ErrorBody),
        ))]
    fn list() {}

    #[utoipa::path(get, path = "/api-keys/{id}", tag = "api-keys",
        params(("id" = String, Path, description = "The key's api_key_id"),
               ("owner" = Option<String>, Query, description = "The key's owner; required for the master key")),
        security(("X-Blnk-Key" = []), ("bearer" = [])),
        responses(
            (status = 200, description = "The key, without its secret", body = KeyView),
            (status = 400, description = "APIKEY_OWNER_REQUIRED", body = ErrorBody),
            (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
            (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_CROSS_OWNER_ACCESS", body = ErrorBody),
            (status = 404, description = "APIKEY_NOT_FOUND", body = ErrorBody),
        ))]
    fn get() {}

    #[utoipa::path(patch, path = "/api-keys/{id}", tag = "api-keys", request_body = UpdateKey,
        params(("id" = String, Path, description = "The key's api_key_id"),
               ("owner" = Option<String>, Query, description = "The key's owner; required for the master key")),
        security(("X-Blnk-Key" = []), ("bearer" = [])),
        responses(
            (status = 200, description = "The updated key", body = KeyView),
            (status = 400, description = "GEN_MALFORMED_REQUEST, GEN_VALIDATION_ERROR or APIKEY_OWNER_REQUIRED", body = ErrorBody),
            (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
            (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS, AUTH_CROSS_OWNER_ACCESS, or AUTH_SCOPE_ESCALATION (the caller's scopes must cover the key's, as they stand and as requested)", body = ErrorBody),
            (status = 404, description = "APIKEY_NOT_FOUND", body = ErrorBody),
            (status = 409, description = "APIKEY_REVOKED, APIKEY_ROTATED (a rotated key's expiry is the end of its grace period) or GEN_CONFLICT", body = ErrorBody),
        ))]
    fn update() {}

    #[utoipa::path(delete, path = "/api-keys/{id}", tag = "api-keys",
        params(("id" = String, Path, description = "The key's api_key_id"),
               ("owner" = Option<String>, Query, description = "The key's owner; required for the master key")),
        security(("X-Blnk-Key" = []), ("bearer" = [])),
        responses(
            (status = 204, description = "Revoked: the key works nowhere from now on"),
            (status = 400, description = "APIKEY_OWNER_REQUIRED", body = ErrorBody),
            (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
            (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_CROSS_OWNER_ACCESS", body = ErrorBody),
            (status = 404, description = "APIKEY_NOT_FOUND", body = ErrorBody),
        ))]
    fn revoke() {}

    #[utoipa::path(post, path = "/api-keys/{id}/rotate", tag = "api-keys", request_body(content = Option<RotateKey>),
        params(("id" = String, Path, description = "The key's api_key_id"),
               ("owner" = Option<String>, Query, description = "The key's owner; required for the master key")),
        security(("X-Blnk-Key" = []), ("bearer" = [])),
        responses(
            (status = 201, description = "The successor, with its secret shown this once and rotated_from", body = KeyView),
            (status = 400, description = "GEN_MALFORMED_REQUEST, GEN_VALIDATION_ERROR or APIKEY_OWNER_REQUIRED", body = ErrorBody),
            (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
            (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS, AUTH_CROSS_OWNER_ACCESS or AUTH_SCOPE_ESCALATION", body = ErrorBody),
            (status = 404, description = "APIKEY_NOT_FOUND", body = ErrorBody),
            (status = 409, description = "APIKEY_REVOKED, APIKEY_EXPIRED or GEN_CONFLICT", body = ErrorBody),
        ))]
    fn rotate() {}

    #[utoipa::path(get, path = "/api-keys/{id}/events", tag = "api-keys",
        params(("id" = String, Path, description = "The key's api_key_id"),
               ("owner" = Option<String>, Query, description = "The key's owner; required for the master key")),
        security(("X-Blnk-Key" = []), ("bearer" = [])),
        responses(
            (status = 200, description = "The audit trail, oldest first", body = Vec<EventView>),
            (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
            (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_CROSS_OWNER_ACCESS", body = ErrorBody),
            (status = 404, description = "APIKEY_NOT_FOUND", body = ErrorBody),
        ))]
    fn events() {}

    #[utoipa::path(get, path = "/forward-auth", tag = "gateway",
        params(("X-Original-Method" = Option<String>, Header, description = "The original method (nginx); or X-Forwarded-Method (Traefik)"),
               ("X-Original-URI" = Option<String>, Header, description = "The original URI (nginx); or X-Forwarded-Uri (Traefik)")),
        security(("X-Blnk-Key" = []), ("bearer" = [])),
        responses(
            (status = 204, description = "Allowed; X-Keygate-Key-Id, X-Keygate-Owner-Id and X-Keygate-Scopes name the caller"),
            (status = 400, description = "GEN_MALFORMED_REQUEST: the original request's headers are missing; GEN_VALIDATION_ERROR (details.field names the header): both header families at once, a header twice, or a path upstreams could read differently (encoded / or \\, a backslash, ; parameters, control characters, double encoding, dot segments climbing above the root or changing the first segment)", body = ErrorBody),
            (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
            (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_UNKNOWN_RESOURCE", body = ErrorBody),
            (status = 429, description = "GEN_RATE_LIMITED", body = ErrorBody),
        ))]
    fn forward_auth() {}

    #[utoipa::path(get, path = "/health", tag = "service",
        responses((status = 200, description = "The service is up", body = super::Status)))]
    fn health() {}

    #[utoipa::path(get, path = "/metrics", tag = "service",
        security(("X-Blnk-Key" = []), ("bearer" = [])),
        responses(
            (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
            (status = 401, description = "AUTH_MISSING_API_KEY, or AUTH_METRICS_TOKEN_REQUIRED for any other key (API keys included)", body = ErrorBody),
            (status = 429, description = "GEN_RATE_LIMITED: too many wrong keys from this address", body = ErrorBody),
        ))]
    fn metrics() {}
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "keygate", description = "Fine-grained API keys, wire-compatible with Blnk's /api-keys."),
    paths(
        paths::create, paths::list, paths::get, paths::update, paths::revoke, paths::rotate, paths::events,
        paths::forward_auth, paths::health, paths::metrics
    ),
    components(schemas(CreateKey, UpdateKey, RotateKey, KeyView, EventView, ErrorBody, ErrorDetail, ErrorCode, Status)),
    modifiers(&Security),
)]
pub struct ApiDoc;

/// The description as pretty JSON, as served and as committed in `openapi.json`.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

/// The served description and its entity tag, built on first use.
static SERVED: LazyLock<(Bytes, String)> = LazyLock::new(|| {
    let text = document();
    let tag = format!("\"{}\"", &blake3::hash(text.as_bytes()).to_hex()[..32]);
    (Bytes::from(text), tag)
});

/// `GET /openapi.json`: the same bytes every time, so no caller can make the service
/// rebuild the description, with an `ETag` so clients can skip the download.
pub async fn serve(request: HttpRequest) -> HttpResponse {
    let (body, tag) = &*SERVED;
    let fresh = request
        .headers()
        .get_all(IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|candidate| candidate.trim() == tag || candidate.trim() == "*");
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((ETAG, tag.as_str()))
        .insert_header(CacheControl(vec![CacheDirective::NoCache]));
    if fresh {
        response.finish()
    } else {
        response.content_type("application/json").body(body.clone())
    }
}
