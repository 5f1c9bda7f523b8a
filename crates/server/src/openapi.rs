//! The OpenAPI 3 description of keygate's HTTP API, generated from the handlers' types
//! with utoipa and served at `GET /openapi.json`.

use std::sync::LazyLock;

use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::assets::Asset;
use crate::keys::usage::UsageView;
use crate::keys::views::{CreditsView, RateLimitView, RefillView};
use crate::keys::{CreateKey, EventView, KeyView, RotateKey, UpdateKey};
use crate::verify::{VerifyCredits, VerifyRateLimit, VerifyRequest, VerifyResponse};

/// The OpenAPI schema of the error codes, described from the one list of them
/// ([`keygate_guard::error::ErrorCode::ALL`]); named `ErrorCode` in the document.
struct ErrorCodeSchema;

impl utoipa::PartialSchema for ErrorCodeSchema {
    fn schema() -> RefOr<Schema> {
        let codes: Vec<&str> = keygate_guard::error::ErrorCode::ALL
            .iter()
            .map(|code| code.as_str())
            .collect();
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Every error code keygate answers with."))
            .enum_values(Some(codes))
            .into()
    }
}

impl ToSchema for ErrorCodeSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "ErrorCode".into()
    }
}

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
    #[schema(value_type = ErrorCodeSchema)]
    code: String,
    message: String,
    /// More about it: the offending `field` of a validation error, the refused `scope`
    /// (or metering `field`) of an escalation.
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

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "keygate", description = "Fine-grained API keys, wire-compatible with Blnk's /api-keys."),
    paths(
        crate::keys::create, crate::keys::list, crate::keys::lifecycle::get, crate::keys::lifecycle::update,
        crate::keys::revoke, crate::keys::lifecycle::rotate, crate::keys::lifecycle::events,
        crate::keys::usage::usage, crate::verify::verify,
        crate::gateway::forward_auth, crate::gateway::ext_authz, crate::app::health, crate::metrics::serve
    ),
    components(schemas(
        CreateKey, UpdateKey, RotateKey, KeyView, RateLimitView, CreditsView, RefillView, EventView,
        UsageView, VerifyRequest, VerifyResponse, VerifyRateLimit, VerifyCredits,
        ErrorBody, ErrorDetail, ErrorCodeSchema, Status
    )),
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

/// The served description, built on first use.
static SERVED: LazyLock<Asset> = LazyLock::new(|| Asset::new(document(), "application/json"));

/// `GET /openapi.json`: the same bytes every time, so no caller can make the service
/// rebuild the description, with an `ETag` so clients can skip the download.
pub async fn serve(request: HttpRequest) -> HttpResponse {
    SERVED.serve(&request, |_| {})
}
