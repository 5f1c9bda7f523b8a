//! Gateway entry points: nginx (`auth_request`), Traefik (`forwardAuth`) and Caddy
//! (`forward_auth`) ask `/forward-auth`; Envoy's HTTP ext_authz asks `/ext-authz/<path>`,
//! its gRPC ext_authz asks [`grpc`]. Each reads the original request with
//! [`OriginalRequest`] and answers with the guard's own decision ([`guard::decide`]):
//! the same path rules, throttle, metering and metrics as keygate's own API.

pub mod grpc;

use actix_web::http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use keygate_core::Principal;

use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::AppState;
use keygate_guard as guard;
use keygate_guard::{Admitted, OriginalRequest};

/// The identity of an admitted caller for the upstream, and its rate-limit window:
/// `X-Keygate-Key-Id`, `X-Keygate-Owner-Id` (API keys only), `X-Keygate-Scopes`, and
/// `RateLimit-*` for a key with a rate limit.
pub fn identity_headers(admitted: &Admitted) -> Vec<(HeaderName, HeaderValue)> {
    let [key_id, owner_id, scopes] = &IDENTITY_HEADERS;
    let mut headers = Vec::with_capacity(6);
    // Owners and names may be any text but control characters: sent as their UTF-8
    // bytes, which HTTP carries as they are.
    let mut add = |name: &HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.push((name.clone(), value));
        }
    };
    match &admitted.principal {
        Principal::Master => {
            add(key_id, "master");
            add(scopes, "*:*");
        }
        Principal::Key(key) => {
            add(key_id, key.id.as_str());
            add(owner_id, &key.owner_id);
            add(scopes, &key.scopes.text());
        }
    }
    if let Some(rate) = &admitted.metered.rate {
        headers.extend(guard::rate_headers(rate));
    }
    headers
}

/// Every identity header keygate answers with, parsed once: a name made on every
/// answer is checked character by character each time.
static IDENTITY_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-keygate-key-id"),
    HeaderName::from_static("x-keygate-owner-id"),
    HeaderName::from_static("x-keygate-scopes"),
];

/// The identity headers an upstream must not take from the client: those missing from
/// `set` ([`identity_headers`]), such as the owner of the master key.
pub fn unset_identity_headers(set: &[(HeaderName, HeaderValue)]) -> Vec<&'static HeaderName> {
    IDENTITY_HEADERS
        .iter()
        .filter(|name| !set.iter().any(|(have, _)| have == *name))
        .collect()
}

/// The request headers that carry the key, so a gateway can keep it from the upstream.
pub fn key_headers(headers: &HeaderMap) -> Vec<&'static str> {
    let mut names = Vec::with_capacity(2);
    if headers.contains_key(&guard::KEY_HEADER_NAME) {
        names.push("x-blnk-key");
    }
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(guard::bearer_token)
        .is_some();
    if bearer {
        names.push("authorization");
    }
    names
}

/// Decides whether the presented key may make the original request: 200 (empty) with
/// the key's identity for the upstream, or the guard's refusal.
#[utoipa::path(get, path = "/forward-auth", tag = "gateway", operation_id = "forward_auth",
    params(("X-Original-Method" = Option<String>, Header, description = "The original method (nginx); or X-Forwarded-Method (Traefik, Caddy)"),
           ("X-Original-URI" = Option<String>, Header, description = "The original URI (nginx); or X-Forwarded-Uri (Traefik, Caddy)")),
    security(("X-Blnk-Key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Allowed (empty body); X-Keygate-Key-Id, X-Keygate-Owner-Id and X-Keygate-Scopes name the caller, RateLimit-* its window"),
        (status = 400, description = "GEN_MALFORMED_REQUEST: the original request's headers are missing; GEN_VALIDATION_ERROR (details.field names the header): both header families at once, a header twice, or a method override (X-HTTP-Method-Override and the like, or _method), or a path upstreams could read differently (encoded / or \\, a backslash, ; parameters, #, control characters, double encoding, dot segments climbing above the root or changing the first segment, look-alike dots and separators)", body = ErrorBody),
        (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
        (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_UNKNOWN_RESOURCE", body = ErrorBody),
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the key's rate limit) or AUTH_USAGE_EXCEEDED (no credits left); with Retry-After where a wait is known, and RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset for a key with a rate limit", body = ErrorBody),
        (status = 503, description = "GEN_SERVICE_UNAVAILABLE", body = ErrorBody),
    ))]
pub async fn forward_auth(request: HttpRequest) -> HttpResponse {
    // The state borrowed from the request rather than extracted: extracting clones its
    // Arc, a write every worker would make to one cache line on every request.
    let decision = match (
        request.app_data::<web::Data<AppState>>(),
        OriginalRequest::from_headers(request.headers()),
    ) {
        (Some(state), Ok(original)) => judge(state, &request, &original).await,
        (_, Err(refusal)) => Err(ApiError::from(refusal)),
        (None, _) => {
            tracing::error!("forward-auth served without the app's state");
            Err(ApiError::INTERNAL)
        }
    };
    match decision {
        Ok(admitted) => {
            let mut response = HttpResponse::Ok().finish();
            let headers = response.headers_mut();
            let set = identity_headers(&admitted);
            // Those keygate does not set (the master key's owner) are sent empty, so that
            // gateways that copy headers only when present (Caddy, Traefik) still
            // replace a client's own.
            for name in unset_identity_headers(&set) {
                headers.insert(name.clone(), HeaderValue::from_static(""));
            }
            for (name, value) in set {
                headers.insert(name, value);
            }
            response
        }
        // nginx's auth_request keeps only the status and headers of a refusal: the code
        // travels in a header too, for the gateway to answer with it.
        Err(refusal) => {
            let mut response = refusal.error_response();
            response.headers_mut().insert(
                HeaderName::from_static("x-keygate-error"),
                HeaderValue::from_static(refusal.code().as_str()),
            );
            response
        }
    }
}

/// Envoy's HTTP ext_authz (`path_prefix: /ext-authz`): the request's own method, and its
/// path after the prefix, are the original request.
#[utoipa::path(get, path = "/ext-authz/{path}", tag = "gateway", operation_id = "ext_authz",
    params(("path" = String, Path, description = "The original path (and query); any method: the original method")),
    security(("X-Blnk-Key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Allowed (empty body), with the identity headers of /forward-auth and x-envoy-auth-headers-to-remove naming the headers that carried the key (and a client's X-Keygate-Owner-Id where keygate sets none)"),
        (status = 400, description = "GEN_VALIDATION_ERROR (details.field: path): a path upstreams could read differently, or a method override", body = ErrorBody),
        (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
        (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_UNKNOWN_RESOURCE", body = ErrorBody),
        (status = 429, description = "GEN_RATE_LIMITED, AUTH_RATE_LIMITED or AUTH_USAGE_EXCEEDED, with Retry-After where a wait is known", body = ErrorBody),
        (status = 503, description = "GEN_SERVICE_UNAVAILABLE", body = ErrorBody),
    ))]
pub async fn ext_authz(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let uri = request.uri();
    // Routed here on a partly decoded path: the raw one must begin with the prefix too.
    let path = uri
        .path()
        .strip_prefix(EXT_AUTHZ_PREFIX)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .ok_or_else(|| {
            ApiError::from(keygate_core::ValidationError::new(
                "path",
                format!("must begin with {EXT_AUTHZ_PREFIX}/ as sent"),
            ))
        })?;
    let path = if path.is_empty() { "/" } else { path };
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let original = OriginalRequest::new(request.method().as_str(), &target, "method", "path")?;
    let admitted = judge(&state, &request, &original).await?;
    let mut response = HttpResponse::Ok();
    let set = identity_headers(&admitted);
    let unset = unset_identity_headers(&set);
    for header in set {
        response.insert_header(header);
    }
    let mut remove = key_headers(request.headers());
    remove.extend(unset.into_iter().map(HeaderName::as_str));
    if !remove.is_empty() {
        response.insert_header(("x-envoy-auth-headers-to-remove", remove.join(",")));
    }
    Ok(response.finish())
}

/// Where Envoy's HTTP ext_authz asks (its `path_prefix`).
pub const EXT_AUTHZ_PREFIX: &str = "/ext-authz";

/// The guard's decision on `original`, for the client of `request` (its peer, or the
/// client a trusted proxy forwards).
async fn judge(
    state: &AppState,
    request: &HttpRequest,
    original: &OriginalRequest,
) -> Result<Admitted, ApiError> {
    let peer = request.peer_addr().map(|address| address.ip());
    Ok(guard::decide(
        state.guard(),
        peer,
        request.headers(),
        &original.method,
        &original.path,
    )
    .await?)
}
