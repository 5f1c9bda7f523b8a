//! The auth guard: middleware that turns a request's key into a [`Caller`] allowed to
//! perform it, or answers with the JSON error. Wrap any scope with
//! `from_fn(require_key)` to protect it.

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, HeaderMap, HeaderName};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use keygate_core::CanonicalPath;
use keygate_core::route::{action_for_method, resource_for};
use keygate_core::{Principal, ValidationError};

use crate::error::GuardError;
use crate::guard::Guard;
use crate::metering::{Admitted, rate_headers};
use crate::original;

/// The header Blnk's clients send their key in.
pub const KEY_HEADER: &str = "X-Blnk-Key";

/// [`KEY_HEADER`] as a header name, built once: looking a header up by text parses the
/// text (and copies a custom name) on every request.
pub static KEY_HEADER_NAME: HeaderName = HeaderName::from_static("x-blnk-key");

/// The authenticated, authorized caller of a request, as handlers receive it.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// What a request presented as its key: `Ok(None)` when it presented none.
/// A header that is not valid text is a key that matches nothing.
/// A key header sent twice is refused: a gateway would judge one copy while the API
/// behind it might read the other.
pub fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, GuardError> {
    let once = |name: &HeaderName, field: &'static str| {
        let mut values = headers.get_all(name);
        let first = values.next();
        match values.next() {
            Some(_) => Err(GuardError::from(ValidationError::new(
                field,
                "must be sent once",
            ))),
            None => Ok(first),
        }
    };
    let key = once(&KEY_HEADER_NAME, KEY_HEADER)?;
    let authorization = once(&AUTHORIZATION, "Authorization")?;
    if let Some(value) = key {
        let key = value.to_str().map_err(|_| GuardError::InvalidKey)?.trim();
        return Ok((!key.is_empty()).then_some(key));
    }
    if let Some(value) = authorization {
        let value = value.to_str().map_err(|_| GuardError::InvalidKey)?;
        return Ok(bearer_token(value));
    }
    Ok(None)
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case), if it
/// is one and not empty.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Authenticates the request's key and checks its scopes against the request's
/// resource and action; handlers behind it receive the [`Caller`]. A refusal is answered
/// here, as a response, so outer middleware (headers, logging) still sees it.
pub async fn require_key(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    match admit(&request).await {
        Ok(admitted) => {
            request.extensions_mut().insert(Caller(admitted.principal));
            let mut response = next.call(request).await?;
            if let Some(rate) = &admitted.metered.rate {
                for (name, value) in rate_headers(rate) {
                    response.headers_mut().insert(name, value);
                }
            }
            Ok(response.map_into_left_body())
        }
        Err(refusal) => Ok(request.error_response(refusal).map_into_right_body()),
    }
}

async fn admit(request: &ServiceRequest) -> Result<Admitted, GuardError> {
    let state = request.app_data::<web::Data<Guard>>().ok_or_else(|| {
        tracing::error!("require_key without a web::Data<Guard> in the app's data");
        GuardError::Internal
    })?;
    let peer = request.peer_addr().map(|address| address.ip());
    let path = original::canonical(request.path(), "path")?;
    refuse_method_parameter(request.query_string(), "query")?;
    decide(
        state,
        peer,
        request.headers(),
        request.method().as_str(),
        &path,
    )
    .await
}

/// The guard's decision, for this service's own requests and for a gateway's original
/// ones alike: who presents the key in `headers` (from `peer`, or the client a trusted
/// proxy forwards), whether they may perform `method` on `path`, and whether the key's
/// rate limit and credits admit it (one credit).
pub async fn decide(
    state: &Guard,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    method: &str,
    path: &CanonicalPath,
) -> Result<Admitted, GuardError> {
    refuse_method_override(headers)?;
    let client = state.throttle().client(peer, headers);
    let principal = state
        .authenticate_client(client, presented_key(headers)?)
        .await?;
    state
        .admit(
            principal,
            resource_for(path),
            action_for_method(method).ok_or(method),
            1,
        )
        .await
}

/// Headers with which frameworks (Rails, Laravel, Symfony, ASP.NET, Express) let a
/// `POST` act as another method: judged as a write, it could delete.
const METHOD_OVERRIDES: [&str; 3] = [
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
];

/// Refuses a request that asks, by a header, to be taken for another method. Header
/// names are compared as CGI-style servers read them, `_` and `-` alike.
fn refuse_method_override(headers: &HeaderMap) -> Result<(), GuardError> {
    // Header names arrive lower-cased; compare byte by byte, without allocating, on
    // every guarded request.
    let same = |name: &str, known: &str| name.len() == known.len() && same_prefix(name, known);
    for name in headers.keys() {
        // An identity header spelled with `_`: CGI-style upstreams read it as the one
        // keygate sets, and gateways that replace that one leave this spelling alone.
        if name.as_str().contains('_') && same_prefix(name.as_str(), "x-keygate-") {
            return Err(ValidationError::new(
                "X-Keygate-*",
                "identity headers spelled with underscores are refused: upstreams could read them as keygate's",
            )
            .into());
        }
        if let Some(known) = METHOD_OVERRIDES
            .iter()
            .find(|known| same(name.as_str(), known))
        {
            return Err(ValidationError::new(
                known,
                "method overrides are refused: the key is judged by the request's own method",
            )
            .into());
        }
    }
    Ok(())
}

/// Whether `name` begins with `prefix`, `_` and `-` alike, in any case.
fn same_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.bytes().zip(prefix.bytes()).all(|(a, b)| {
            let a = if a == b'_' { b'-' } else { a };
            a.eq_ignore_ascii_case(&b)
        })
}

/// Refuses a query that asks, by a `_method` parameter, to be taken for another method,
/// however its name is spelled: percent-encoded, in any case, or with the characters
/// PHP turns into `_` (space, `.`, `[`, `+`).
pub fn refuse_method_parameter(query: &str, field: &'static str) -> Result<(), GuardError> {
    let overrides = query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        // Every spelling of `_method` is at most 3 x 7 bytes long: anything else is
        // passed over without decoding.
        if name.len() < 7 || name.len() > 21 {
            return false;
        }
        let decoded = keygate_core::path::percent_decoded(name);
        let normalised: String = decoded
            .chars()
            .map(|c| match c {
                ' ' | '.' | '[' | '+' => '_',
                other => other.to_ascii_lowercase(),
            })
            .collect();
        normalised == "_method"
    });
    if overrides {
        return Err(ValidationError::new(
            field,
            "a _method parameter is refused: the key is judged by the request's own method",
        )
        .into());
    }
    Ok(())
}

impl FromRequest for Caller {
    type Error = GuardError;
    type Future = Ready<Result<Self, GuardError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Only reachable without the guard by a wiring mistake: refuse rather than allow.
        ready(
            request
                .extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(|| {
                    tracing::error!(
                        path = request.path(),
                        "handler reached without the auth guard"
                    );
                    GuardError::Internal
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    #[test]
    fn every_spelling_of_a_method_parameter_is_refused() {
        for query in [
            "_method=DELETE",
            "a=1&_METHOD=DELETE",
            "_%6Dethod=DELETE",
            "%5Fmethod=DELETE",
            ".method=DELETE",
            "+method=DELETE",
            "[method=DELETE",
            "%20method=DELETE",
        ] {
            assert!(refuse_method_parameter(query, "query").is_err(), "{query}");
        }
        for query in ["method=DELETE", "x_method=1", "_methods=1", ""] {
            assert!(refuse_method_parameter(query, "query").is_ok(), "{query}");
        }
    }

    #[test]
    fn override_headers_are_refused_with_either_separator() {
        for name in [
            "x-http-method-override",
            "x_http_method_override",
            "X-Method-Override",
            "x-http-method",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::try_from(name).expect("a header name"),
                HeaderValue::from_static("DELETE"),
            );
            assert!(refuse_method_override(&headers).is_err(), "{name}");
        }
        assert!(refuse_method_override(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn identity_headers_spelled_with_underscores_are_refused() {
        for name in ["x_keygate_owner_id", "X_Keygate-Key-Id", "x-keygate_scopes"] {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::try_from(name).expect("a header name"),
                HeaderValue::from_static("bob"),
            );
            assert!(refuse_method_override(&headers).is_err(), "{name}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-keygate-owner-id"),
            HeaderValue::from_static("bob"),
        );
        assert!(
            refuse_method_override(&headers).is_ok(),
            "the dashed spelling is the gateway's to replace"
        );
    }
}
