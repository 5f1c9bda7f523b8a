//! `/forward-auth`: lets nginx (`auth_request`), Traefik (`forwardAuth`) or Envoy guard
//! any API with these keys. The gateway asks about its original request; the answer is
//! the guard's own decision, on the original method and path.

use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse, web};
use keygate_core::Principal;

use crate::error::ApiError;
use crate::guard;
use crate::state::AppState;

/// The original method, from nginx's or Traefik's header.
const METHOD_HEADERS: [&str; 2] = ["X-Original-Method", "X-Forwarded-Method"];
/// The original URI, from nginx's or Traefik's header.
const URI_HEADERS: [&str; 2] = ["X-Original-URI", "X-Forwarded-Uri"];

fn first_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Result<Option<&'a str>, ApiError> {
    for name in names {
        if let Some(value) = headers.get(*name) {
            return value
                .to_str()
                .map(Some)
                .map_err(|_| ApiError::Malformed(format!("{name} is not valid text")));
        }
    }
    Ok(None)
}

/// Decides whether the presented key may make the original request: 204 with the key's
/// identity for the upstream, or the guard's 401/403.
pub async fn decide(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let headers = request.headers();
    let method = first_header(headers, &METHOD_HEADERS)?.ok_or_else(|| {
        ApiError::Malformed(
            "X-Original-Method (nginx) or X-Forwarded-Method (Traefik) is required".into(),
        )
    })?;
    let uri = first_header(headers, &URI_HEADERS)?.ok_or_else(|| {
        ApiError::Malformed(
            "X-Original-URI (nginx) or X-Forwarded-Uri (Traefik) is required".into(),
        )
    })?;
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    let method = method.trim().to_ascii_uppercase();
    // With the gateway as a trusted proxy, the throttle sees the client it forwards in
    // X-Forwarded-For, not the gateway.
    let peer = request.peer_addr().map(|address| address.ip());
    let principal = guard::decide(&state, peer, headers, &method, path).await?;
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
