//! Beyond Blnk: read one key, update it, rotate it with a grace period, and read its
//! audit trail. The same guard, owner rules and error envelope as `/api-keys`.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Duration, Utc};
use keygate_core::api_key::check_lifetime;
use keygate_core::{
    Actor, ApiKey, EventDetails, EventKind, KeyPatch, KeyStatus, NewEvent, PlainKey,
    ValidationError,
};

use super::address::KeyAddress;
use super::views::{EventView, KeyView, RotateKey, UpdateKey, no_store, parse_timestamp};
use super::{Update, update_key, view};
use crate::error::ApiError;
use crate::guard::Caller;
use crate::openapi::ErrorBody;
use crate::state::AppState;

/// The longest grace period a rotation may give the old key: one day.
pub const MAX_GRACE_SECONDS: i64 = 86_400;

/// The owner's key `id`, as the caller may see it: another owner's key does not exist.
pub(super) async fn owned_key(state: &AppState, address: &KeyAddress) -> Result<ApiKey, ApiError> {
    let (id, owner) = address.resolve()?;
    state
        .guard()
        .read_store(move |store| store.get(&id, &owner))
        .await?
        .ok_or(ApiError::KeyNotFound)
}

/// After a conditional write lost: why, as the client should hear it.
async fn lost_race(state: &AppState, key: &ApiKey) -> ApiError {
    let (id, owner) = (key.id.clone(), key.owner_id.clone());
    match state
        .guard()
        .read_store(move |store| store.get(&id, &owner))
        .await
    {
        Ok(Some(now)) if now.is_revoked() => ApiError::KeyRevoked,
        Ok(None) => ApiError::KeyNotFound,
        Ok(Some(now)) => match was_rotated(state, &now).await {
            Ok(true) => ApiError::KeyRotated,
            Ok(false) => ApiError::Conflict,
            Err(error) => error,
        },
        Err(error) => error.into(),
    }
}

/// `GET /api-keys/{id}`
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
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the calling key's rate limit) or AUTH_USAGE_EXCEEDED (its credits); Retry-After where a wait is known", body = ErrorBody),
    ))]
pub async fn get(
    state: web::Data<AppState>,
    address: KeyAddress,
) -> Result<HttpResponse, ApiError> {
    let key = owned_key(&state, &address).await?;
    Ok(HttpResponse::Ok()
        .insert_header(no_store())
        .json(view(&state, &key, &key.hint)))
}

/// `PATCH /api-keys/{id}`
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
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the calling key's rate limit) or AUTH_USAGE_EXCEEDED (its credits); Retry-After where a wait is known", body = ErrorBody),
    ))]
pub async fn update(
    state: web::Data<AppState>,
    Caller(principal): Caller,
    address: KeyAddress,
    body: web::Json<UpdateKey>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock().now();
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|text| parse_timestamp("expires_at", text))
        .transpose()?;
    let patch = KeyPatch::with_metering(
        body.name.as_deref(),
        body.scopes.as_deref(),
        expires_at,
        body.ratelimit()?,
        body.credits()?,
        now,
    )?;
    if let Some(expires_at) = patch.expires_at {
        check_lifetime(expires_at, now, state.max_key_lifetime_days())?;
    }
    let key = owned_key(&state, &address).await?;
    if key.is_revoked() {
        return Err(ApiError::KeyRevoked);
    }
    // A key may change only keys it could have created: else a narrow key could extend or
    // rename a wider sibling, bring an expired one back to life, or lift its limits.
    principal.may_grant(&key.owner_id, &key.scopes)?;
    if let Some(scopes) = &patch.scopes {
        principal.may_grant(&key.owner_id, scopes)?;
    }
    principal.may_meter(patch.ratelimit, patch.credits)?;
    let (read, actor) = (key.clone(), Actor::from(&principal));
    let updated = match state
        .guard()
        .with_store(move |store| update_key(store, &read, &patch, actor, now))
        .await?
    {
        Update::Unchanged => {
            return Ok(HttpResponse::Ok()
                .insert_header(no_store())
                .json(view(&state, &key, &key.hint)));
        }
        Update::LostRace => return Err(lost_race(&state, &key).await),
        Update::Changed(updated) => *updated,
    };
    state.guard().forget(&key.hash);
    tracing::info!(api_key_id = %key.id, owner_id = %key.owner_id, "API key updated");
    Ok(HttpResponse::Ok()
        .insert_header(no_store())
        .json(view(&state, &updated, &updated.hint)))
}

/// Whether `key` was replaced by a rotation. Storage refuses a second successor and a
/// new expiry for such a key (its expiry is the end of its grace period); this tells a
/// write that lost for that reason from one that lost to another change.
async fn was_rotated(state: &AppState, key: &ApiKey) -> Result<bool, ApiError> {
    let id = key.id.clone();
    let events = state
        .guard()
        .read_store(move |store| store.events(&id))
        .await?;
    Ok(events.iter().any(|event| event.kind == EventKind::Rotated))
}

/// `POST /api-keys/{id}/rotate`: a new key like the old one; the old one keeps working
/// for the grace period, then fails as expired.
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
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the calling key's rate limit) or AUTH_USAGE_EXCEEDED (its credits); Retry-After where a wait is known", body = ErrorBody),
    ))]
pub async fn rotate(
    state: web::Data<AppState>,
    Caller(principal): Caller,
    address: KeyAddress,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock().now();
    let request: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::malformed(format!("Invalid JSON body: {e}")))?
    };
    let grace = request.grace_period_seconds.unwrap_or(0);
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(ValidationError::new(
            "grace_period_seconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS}"),
        )
        .into());
    }
    let key = owned_key(&state, &address).await?;
    match key.status(now) {
        KeyStatus::Revoked => return Err(ApiError::KeyRevoked),
        KeyStatus::Expired => return Err(ApiError::KeyExpired),
        KeyStatus::Active => {}
    }
    // A rotation hands out a key with the old key's scopes and metering: only to a
    // caller who could have granted them.
    principal.may_grant(&key.owner_id, &key.scopes)?;
    principal.may_rotate(&key)?;
    let plain = PlainKey::generate().map_err(|error| {
        tracing::error!(%error, "the operating system's random source failed");
        ApiError::INTERNAL
    })?;
    let successor = key.successor(&plain, now);
    let old_expires_at: DateTime<Utc> = key.expires_at.min(now + Duration::seconds(grace));
    let event = NewEvent {
        actor: Actor::from(&principal),
        at: now,
        details: Some(EventDetails::Rotated {
            rotated_to: successor.id.clone(),
            grace_period_seconds: grace,
        }),
    };
    let (old, new) = (key.clone(), successor.clone());
    if !state
        .guard()
        .with_store(move |store| store.rotate(&old, old_expires_at, &new, &event))
        .await?
    {
        return Err(lost_race(&state, &key).await);
    }
    state.guard().forget(&key.hash);
    tracing::info!(api_key_id = %key.id, rotated_to = %successor.id, grace, "API key rotated");
    Ok(HttpResponse::Created().insert_header(no_store()).json(view(
        &state,
        &successor,
        plain.expose(),
    )))
}

/// `GET /api-keys/{id}/events`: the key's audit trail, oldest first.
#[utoipa::path(get, path = "/api-keys/{id}/events", tag = "api-keys",
    params(("id" = String, Path, description = "The key's api_key_id"),
           ("owner" = Option<String>, Query, description = "The key's owner; required for the master key")),
    security(("X-Blnk-Key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The audit trail, oldest first", body = Vec<EventView>),
        (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
        (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_CROSS_OWNER_ACCESS", body = ErrorBody),
        (status = 404, description = "APIKEY_NOT_FOUND", body = ErrorBody),
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the calling key's rate limit) or AUTH_USAGE_EXCEEDED (its credits); Retry-After where a wait is known", body = ErrorBody),
    ))]
pub async fn events(
    state: web::Data<AppState>,
    address: KeyAddress,
) -> Result<HttpResponse, ApiError> {
    let key = owned_key(&state, &address).await?;
    let id = key.id.clone();
    let events = state
        .guard()
        .read_store(move |store| store.events(&id))
        .await?;
    let views: Vec<EventView> = events.into_iter().map(EventView::from).collect();
    Ok(HttpResponse::Ok().json(views))
}
