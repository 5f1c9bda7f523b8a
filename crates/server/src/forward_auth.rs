//! `/forward-auth`: lets nginx (`auth_request`), Traefik (`forwardAuth`) or Envoy guard
//! any API with these keys. The gateway asks about its original request; the answer is
//! the guard's own decision, on the original method and path.

use actix_web::{HttpRequest, HttpResponse, web};
use keygate_core::Principal;

use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::AppState;
use keygate_guard as guard;
use keygate_guard::OriginalRequest;

/// Decides whether the presented key may make the original request: 204 with the key's
/// identity for the upstream, or the guard's 401/403.
#[utoipa::path(get, path = "/forward-auth", tag = "gateway", operation_id = "forward_auth",
    params(("X-Original-Method" = Option<String>, Header, description = "The original method (nginx); or X-Forwarded-Method (Traefik)"),
           ("X-Original-URI" = Option<String>, Header, description = "The original URI (nginx); or X-Forwarded-Uri (Traefik)")),
    security(("X-Blnk-Key" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Allowed; X-Keygate-Key-Id, X-Keygate-Owner-Id and X-Keygate-Scopes name the caller"),
        (status = 400, description = "GEN_MALFORMED_REQUEST: the original request's headers are missing; GEN_VALIDATION_ERROR (details.field names the header): both header families at once, a header twice, or a method override (X-HTTP-Method-Override and the like, or _method), or a path upstreams could read differently (encoded / or \\, a backslash, ; parameters, #, control characters, double encoding, dot segments climbing above the root or changing the first segment, look-alike dots and separators)", body = ErrorBody),
        (status = 401, description = "AUTH_MISSING_API_KEY, AUTH_INVALID_API_KEY or AUTH_EXPIRED_API_KEY", body = ErrorBody),
        (status = 403, description = "AUTH_INSUFFICIENT_PERMISSIONS or AUTH_UNKNOWN_RESOURCE", body = ErrorBody),
        (status = 429, description = "GEN_RATE_LIMITED (this address failed too often), AUTH_RATE_LIMITED (the key's rate limit) or AUTH_USAGE_EXCEEDED (no credits left); with Retry-After where a wait is known, and RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset for a key with a rate limit", body = ErrorBody),
        (status = 503, description = "GEN_SERVICE_UNAVAILABLE", body = ErrorBody),
    ))]
pub async fn decide(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let headers = request.headers();
    let original = OriginalRequest::from_headers(headers)?;
    // With the gateway as a trusted proxy, the throttle sees the client it forwards in
    // X-Forwarded-For, not the gateway.
    let peer = request.peer_addr().map(|address| address.ip());
    let admitted = guard::decide(
        state.guard(),
        peer,
        headers,
        &original.method,
        &original.path,
    )
    .await?;
    let mut response = HttpResponse::NoContent();
    if let Some(rate) = &admitted.metered.rate {
        for header in guard::rate_headers(rate) {
            response.insert_header(header);
        }
    }
    match &admitted.principal {
        Principal::Master => {
            response.insert_header(("X-Keygate-Key-Id", "master"));
            response.insert_header(("X-Keygate-Scopes", "*:*"));
        }
        Principal::Key(key) => {
            response.insert_header(("X-Keygate-Key-Id", key.id.as_str()));
            response.insert_header(("X-Keygate-Owner-Id", key.owner_id.as_str()));
            response.insert_header(("X-Keygate-Scopes", key.scopes.to_string()));
        }
    }
    Ok(response.finish())
}
