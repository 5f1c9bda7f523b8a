//! Envoy's gRPC ext_authz: `envoy.service.auth.v3.Authorization/Check` on
//! `server.grpc_port`. The original request's method, path and headers come in the
//! `CheckRequest`; the answer is the guard's decision, as `OkHttpResponse` (the identity
//! headers, and the key's headers removed) or `DeniedHttpResponse` (the HTTP status, the
//! JSON error body, `Retry-After` and `RateLimit-*`).

use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::web;
use actix_web::{HttpResponse, ResponseError};
use envoy_types::ext_authz::v3::CheckResponseExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HttpStatus,
};
use envoy_types::ext_authz::v3::{OkHttpResponseBuilder, pb::HeaderValueOption};
use keygate_guard::{GuardError, OriginalRequest};

use super::{identity_headers, key_headers, unset_identity_headers};
use crate::state::AppState;

/// The route label of gRPC checks in the request metrics.
pub const CHECK_ROUTE: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The most request headers a check may carry (Envoy forwards at most 100 by default).
const MAX_HEADERS: usize = 1_000;

/// The largest `CheckRequest` accepted, in bytes.
pub const MAX_CHECK_BYTES: usize = 256 * 1024;

/// The `Authorization` service over the app's state.
pub struct Checker {
    state: web::Data<AppState>,
}

impl Checker {
    /// The service over `state`.
    pub fn new(state: web::Data<AppState>) -> Self {
        Checker { state }
    }

    /// The guard's decision on `check` from `peer` (Envoy, or the client Envoy forwards
    /// when Envoy is a trusted proxy), as a `CheckResponse`, and the HTTP status it
    /// stands for.
    pub async fn decide(&self, peer: Option<IpAddr>, check: &CheckRequest) -> (CheckResponse, u16) {
        let http = check
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.request.as_ref())
            .and_then(|request| request.http.as_ref());
        let Some(http) = http else {
            let refusal =
                GuardError::Malformed("the CheckRequest has no attributes.request.http".into());
            return denied(&refusal);
        };
        let headers = match header_map(http) {
            Ok(headers) => headers,
            Err(refusal) => return denied(&refusal),
        };
        let original = match OriginalRequest::new(&http.method, &http.path, "method", "path") {
            Ok(original) => original,
            Err(refusal) => return denied(&refusal),
        };
        // Envoy names the client it serves in the request's source address; believed
        // only from a trusted proxy, as X-Forwarded-For is.
        let source = check
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.source.as_ref())
            .and_then(|source| source.address.as_ref())
            .and_then(|address| address.address.as_ref())
            .and_then(|address| match address {
                envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                    socket,
                ) => socket.address.parse::<IpAddr>().ok(),
                _ => None,
            });
        let peer = match (peer, source) {
            (Some(envoy), Some(client)) if self.state.guard().throttle().trusts(envoy) => {
                Some(client)
            }
            (peer, _) => peer,
        };
        match keygate_guard::decide(
            self.state.guard(),
            peer,
            &headers,
            &original.method,
            &original.path,
        )
        .await
        {
            Ok(admitted) => {
                let mut ok = OkHttpResponseBuilder::new();
                let set = identity_headers(&admitted);
                let unset = unset_identity_headers(&set);
                for (name, value) in set {
                    let value = String::from_utf8_lossy(value.as_bytes());
                    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
                    // The rate-limit window is the client's to see; the identity the
                    // upstream's.
                    if name.as_str().starts_with("ratelimit-") {
                        ok.add_response_header(name.as_str(), value, overwrite, false);
                    } else {
                        ok.add_header(name.as_str(), value, overwrite, false);
                    }
                }
                let unset = unset.into_iter().map(HeaderName::as_str);
                for name in key_headers(&headers).into_iter().chain(unset) {
                    ok.remove_header(name);
                }
                let mut response = CheckResponse::with_status(tonic::Status::ok(""));
                response.set_http_response(ok);
                (response, 200)
            }
            Err(refusal) => denied(&refusal),
        }
    }
}

/// The request headers Envoy sent: its `headers` map, or (with `encode_raw_headers`) its
/// `header_map`. A header that is not a valid HTTP header is refused, as an HTTP server
/// would refuse it.
fn header_map(
    http: &envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> Result<HeaderMap, GuardError> {
    let mut headers = HeaderMap::new();
    let invalid = || GuardError::Malformed("a request header is not valid HTTP".into());
    let mut add = |name: &str, value: &[u8]| -> Result<(), GuardError> {
        // Envoy passes pseudo-headers (`:path`, `:method`) too; they are not headers.
        if name.starts_with(':') {
            return Ok(());
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(value).map_err(|_| invalid())?;
        // Bounded as an HTTP server bounds a request's headers.
        if headers.len() >= MAX_HEADERS {
            return Err(GuardError::Malformed(format!(
                "more than {MAX_HEADERS} request headers"
            )));
        }
        headers.append(name, value);
        Ok(())
    };
    for (name, value) in &http.headers {
        add(name, value.as_bytes())?;
    }
    if let Some(raw) = &http.header_map {
        for header in &raw.headers {
            let value = if header.raw_value.is_empty() {
                header.value.as_bytes()
            } else {
                &header.raw_value
            };
            add(&header.key, value)?;
        }
    }
    Ok(headers)
}

/// A refusal as Envoy's `DeniedHttpResponse`: the status, headers and JSON body keygate
/// answers over HTTP.
fn denied(refusal: &GuardError) -> (CheckResponse, u16) {
    let response: HttpResponse = refusal.error_response();
    let status = response.status().as_u16();
    #[allow(deprecated)]
    let headers: Vec<HeaderValueOption> = response
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some(HeaderValueOption {
                header: Some(envoy_types::ext_authz::v3::pb::HeaderValue {
                    key: name.as_str().to_owned(),
                    value: value.to_str().ok()?.to_owned(),
                    raw_value: Vec::new(),
                }),
                append: None,
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                keep_empty_value: false,
            })
        })
        .collect();
    let body = response
        .into_body()
        .try_into_bytes()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let code = match status {
        400 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        500 => tonic::Code::Internal,
        _ => tonic::Code::PermissionDenied,
    };
    let mut check = CheckResponse::with_status(tonic::Status::new(code, refusal.to_string()));
    check.set_http_response(DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(status),
        }),
        headers,
        body,
    });
    (check, status)
}

/// The HTTP status a check answered as (always one an HTTP answer could carry).
fn http_status(status: u16) -> actix_web::http::StatusCode {
    actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)
}

#[tonic::async_trait]
impl Authorization for Checker {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = Instant::now();
        let peer = request.remote_addr().map(|address| address.ip());
        let (response, status) = self.decide(peer, request.get_ref()).await;
        self.state
            .metrics()
            .request("POST", CHECK_ROUTE, http_status(status), started.elapsed());
        Ok(tonic::Response::new(response))
    }
}
