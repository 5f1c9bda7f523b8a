//! `/api-keys`: create, list and revoke keys, under Blnk's owner rules.

use actix_web::http::header::{CacheControl, CacheDirective};
use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use chrono::{DateTime, Timelike, Utc};
use keygate_core::api_key::{check_lifetime, validate_owner};
use keygate_core::{Actor, ApiKey, ApiKeyId, KeySpec, PlainKey, ScopeSet, ValidationError};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::guard::Caller;
use crate::lifecycle;
use crate::openapi::ErrorBody;
use crate::state::AppState;

/// Routes under `/api-keys`; they expect the guard in front of them.
pub fn routes(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/api-keys")
            .service(
                web::resource("")
                    .route(web::post().to(create))
                    .route(web::get().to(list))
                    .route(web::head().to(list))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/{id}")
                    .route(web::get().to(lifecycle::get))
                    .route(web::head().to(lifecycle::get))
                    .route(web::patch().to(lifecycle::update))
                    .route(web::delete().to(revoke))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/{id}/rotate")
                    .route(web::post().to(lifecycle::rotate))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/{id}/events")
                    .route(web::get().to(lifecycle::events))
                    .route(web::head().to(lifecycle::events))
                    .default_service(web::to(method_not_allowed)),
            )
            .default_service(web::to(not_found)),
    );
}

pub(crate) async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Answers a path no route matches.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

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
}

impl CreateKey {
    /// The validated key to create, as of `now`, expiring within `max_days`.
    pub fn validate(&self, now: DateTime<Utc>, max_days: u32) -> Result<KeySpec, ApiError> {
        let expires_at = parse_timestamp("expires_at", &self.expires_at)?;
        let spec = KeySpec::new(&self.name, &self.owner, &self.scopes, expires_at, now)?;
        check_lifetime(spec.expires_at, now, max_days)?;
        Ok(spec)
    }
}

/// `?owner=` on list and revoke.
#[derive(Debug, Deserialize)]
pub struct OwnerQuery {
    owner: Option<String>,
}

impl FromRequest for OwnerQuery {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    /// Unlike `web::Query`, which turns bytes that are not UTF-8 into U+FFFD (so that
    /// `%FF` and `%FE` would name the same owner), refuses them.
    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let query = request.query_string();
        let checked = query.split('&').try_for_each(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let readable = |text: &str| {
                percent_decode_str(&text.replace('+', " "))
                    .decode_utf8()
                    .is_ok()
            };
            if readable(name) && readable(value) {
                Ok(())
            } else {
                let field = if readable(name) && name == "owner" {
                    "owner"
                } else {
                    "query"
                };
                Err(ValidationError::new(field, "must percent-encode UTF-8 text").into())
            }
        });
        ready(checked.and_then(|()| {
            web::Query::<OwnerQuery>::from_query(query)
                .map(web::Query::into_inner)
                .map_err(|error| ApiError::Malformed(format!("Invalid query string: {error}")))
        }))
    }
}

impl OwnerQuery {
    /// The owner named, if any: an empty `owner=` names none, as in Blnk.
    pub(crate) fn owner(&self) -> Result<Option<String>, ValidationError> {
        match self.owner.as_deref() {
            None | Some("") => Ok(None),
            Some(owner) => validate_owner(owner).map(Some),
        }
    }
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
        }
    }
}

pub(crate) fn no_store() -> CacheControl {
    CacheControl(vec![CacheDirective::NoStore])
}

pub(crate) fn parse_timestamp(
    field: &'static str,
    text: &str,
) -> Result<DateTime<Utc>, ValidationError> {
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
pub(crate) async fn create(
    state: web::Data<AppState>,
    Caller(principal): Caller,
    body: web::Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let now = Utc::now();
    let spec = body.validate(now, state.max_key_lifetime_days())?;
    principal.may_grant(&spec.owner_id, &spec.scopes)?;
    let plain = PlainKey::generate().map_err(|error| {
        tracing::error!(%error, "the operating system's random source failed");
        ApiError::Internal
    })?;
    let key = ApiKey::issue(spec, &plain, now);
    let stored = key.clone();
    let actor = Actor::from(&principal);
    state
        .guard()
        .with_store(move |store| store.insert(&stored, &actor))
        .await?;
    tracing::info!(api_key_id = %key.id, owner_id = %key.owner_id, "API key created");
    Ok(HttpResponse::Created()
        .insert_header(no_store())
        .json(KeyView::new(&key, plain.expose())))
}

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
pub(crate) async fn list(
    state: web::Data<AppState>,
    Caller(principal): Caller,
    query: OwnerQuery,
) -> Result<HttpResponse, ApiError> {
    let requested = query.owner()?;
    let owner = principal.target_owner(requested.as_deref())?.to_owned();
    let keys = state
        .guard()
        .read_store(move |store| store.list_by_owner(&owner))
        .await?;
    let views: Vec<KeyView<'_>> = keys
        .iter()
        .map(|key| KeyView::new(key, &key.hint))
        .collect();
    Ok(HttpResponse::Ok().insert_header(no_store()).json(views))
}

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
pub(crate) async fn revoke(
    state: web::Data<AppState>,
    Caller(principal): Caller,
    id: web::Path<String>,
    query: OwnerQuery,
) -> Result<HttpResponse, ApiError> {
    let (id, owner) = lifecycle::addressed(&principal, &id, &query)?;
    let actor = Actor::from(&principal);
    let revoked = state
        .guard()
        .with_store(move |store| store.revoke(&id, &owner, Utc::now(), &actor))
        .await?
        .ok_or(ApiError::KeyNotFound)?;
    state.guard().forget(&revoked.hash);
    tracing::info!(api_key_id = %revoked.id, owner_id = %revoked.owner_id, "API key revoked");
    Ok(HttpResponse::NoContent().finish())
}
