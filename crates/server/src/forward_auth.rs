//! `/forward-auth`: lets nginx (`auth_request`), Traefik (`forwardAuth`) or Envoy guard
//! any API with these keys. The gateway asks about its original request; the answer is
//! the guard's own decision, on the original method and path.

use actix_web::{HttpRequest, HttpResponse, web};
use keygate_core::Principal;

use crate::error::ApiError;
use crate::state::AppState;
use keygate_guard as guard;
use keygate_guard::OriginalRequest;

/// Decides whether the presented key may make the original request: 204 with the key's
/// identity for the upstream, or the guard's 401/403.
pub async fn decide(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let headers = request.headers();
    let original = OriginalRequest::from_headers(headers)?;
    // With the gateway as a trusted proxy, the throttle sees the client it forwards in
    // X-Forwarded-For, not the gateway.
    let peer = request.peer_addr().map(|address| address.ip());
    let principal = guard::decide(
        state.guard(),
        peer,
        headers,
        &original.method,
        &original.path,
    )
    .await?;
    let mut response = HttpResponse::NoContent();
    match &principal {
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
