//! The key endpoints: Blnk's `POST/GET/DELETE /api-keys` here, the lifecycle beyond
//! Blnk (read, update, rotate, audit trail) in [`lifecycle`]; their wire types in
//! [`views`] and the key a request addresses in [`address`].

pub mod address;
pub mod lifecycle;
pub mod usage;
pub mod views;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use keygate_core::{
    Actor, ApiKey, EventDetails, KeyPatch, KeySpec, KeyStore, NewEvent, PlainKey, StoreError,
};

use crate::error::ApiError;
use crate::guard::Caller;
use crate::openapi::ErrorBody;
use crate::state::AppState;
pub use address::{KeyAddress, OwnerQuery};
use views::no_store;
pub use views::{CreateKey, EventView, KeyView, RotateKey, UpdateKey};

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
                web::resource("/{id}/usage")
                    .route(web::get().to(usage::usage))
                    .route(web::head().to(usage::usage))
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

/// The key object of `key`, showing `shown` as its `key`, with its credits as they
/// stand now on this instance.
pub(crate) fn view<'a>(state: &AppState, key: &'a ApiKey, shown: &'a str) -> KeyView<'a> {
    KeyView::new(key, shown).live(key, state.guard().credits_held(key), state.clock().now())
}

pub(crate) async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Answers a path no route matches.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

/// What [`update_key`] did.
#[derive(Debug)]
pub enum Update {
    /// The patch changes nothing; nothing was written.
    Unchanged,
    /// The key as it now is.
    Changed(Box<ApiKey>),
    /// Another change to the key was written since it was read; nothing was.
    LostRace,
}

/// Applies `patch` to `key` (as read) as `actor` at `now`, with its `updated` event
/// naming what changed. The API's PATCH and `keygate keys update` both update keys here.
pub fn update_key(
    store: &dyn KeyStore,
    key: &ApiKey,
    patch: &KeyPatch,
    actor: Actor,
    now: DateTime<Utc>,
) -> Result<Update, StoreError> {
    let (updated, changes) = key.patched(patch);
    if changes.is_empty() {
        return Ok(Update::Unchanged);
    }
    let event = NewEvent {
        actor,
        at: now,
        details: Some(EventDetails::Updated(changes)),
    };
    Ok(if store.replace(key, &updated, &event)? {
        Update::Changed(Box::new(updated))
    } else {
        Update::LostRace
    })
}

/// Issues a key for `spec` at `now` and stores it (with its `created` event by `actor`):
/// the key, and its secret, which exists nowhere else. The API and `keygate keys create`
/// both issue keys here.
pub fn issue_key(
    store: &dyn KeyStore,
    spec: KeySpec,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<(ApiKey, PlainKey), StoreError> {
    let plain = PlainKey::generate().map_err(|error| {
        StoreError::Internal(format!(
            "the operating system's random source failed: {error}"
        ))
    })?;
    let key = ApiKey::issue(spec, &plain, now);
    store.insert(&key, actor)?;
    Ok((key, plain))
}

#[utoipa::path(post, path = "/api-keys", tag = "api-keys", request_body = CreateKey,
    security(("X-Blnk-Key" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "The key, with its secret shown this once", body = KeyView),
        (status = 400, description = "GEN_MALFORMED_REQUEST or GEN_VALIDATION_ERROR", body = ErrorBody),
        (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
        (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS, AUTH_CROSS_OWNER_ACCESS or AUTH_SCOPE_ESCALATION", body = ErrorBody),
        (status = 413, description = "GEN_PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the calling key's rate limit) or AUTH_USAGE_EXCEEDED (its credits); Retry-After where a wait is known", body = ErrorBody),
        (status = 503, description = "GEN_SERVICE_UNAVAILABLE", body = ErrorBody),
    ))]
pub(crate) async fn create(
    state: web::Data<AppState>,
    Caller(principal): Caller,
    body: web::Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock().now();
    let mut spec = body.validate(now, state.max_key_lifetime_days())?;
    principal.may_grant(&spec.owner_id, &spec.scopes)?;
    principal.meter_new_key(&mut spec)?;
    let actor = Actor::from(&principal);
    let (key, plain) = state
        .guard()
        .with_store(move |store| issue_key(store, spec, &actor, now))
        .await?;
    tracing::info!(api_key_id = %key.id, owner_id = %key.owner_id, "API key created");
    Ok(HttpResponse::Created()
        .insert_header(no_store())
        .json(view(&state, &key, plain.expose())))
}

#[utoipa::path(get, path = "/api-keys", tag = "api-keys",
    params(("owner" = Option<String>, Query, description = "Whose keys; required for the master key")),
    security(("X-Blnk-Key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The owner's keys, newest first, without secrets", body = Vec<KeyView>),
        (status = 400, description = "APIKEY_OWNER_REQUIRED or GEN_VALIDATION_ERROR", body = ErrorBody),
        (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
        (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_CROSS_OWNER_ACCESS", body = ErrorBody),
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the calling key's rate limit) or AUTH_USAGE_EXCEEDED (its credits); Retry-After where a wait is known", body = ErrorBody),
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
        .map(|key| view(&state, key, &key.hint))
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
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the calling key's rate limit) or AUTH_USAGE_EXCEEDED (its credits); Retry-After where a wait is known", body = ErrorBody),
    ))]
pub(crate) async fn revoke(
    state: web::Data<AppState>,
    Caller(principal): Caller,
    address: KeyAddress,
) -> Result<HttpResponse, ApiError> {
    let (id, owner) = address.resolve()?;
    let (actor, now) = (Actor::from(&principal), state.clock().now());
    let revoked = state
        .guard()
        .with_store(move |store| store.revoke(&id, &owner, now, &actor))
        .await?
        .ok_or(ApiError::KeyNotFound)?;
    state.guard().forget(&revoked.hash);
    tracing::info!(api_key_id = %revoked.id, owner_id = %revoked.owner_id, "API key revoked");
    Ok(HttpResponse::NoContent().finish())
}
