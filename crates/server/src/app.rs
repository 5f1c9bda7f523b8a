//! The one function that builds the application: routes, guard, limits and error
//! mapping. `main` and every HTTP test serve this same app.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use actix_web::{FromRequest, Handler, Responder};
use serde_json::json;
use std::time::Instant;
use tracing::Instrument;

use crate::error::ApiError;
use crate::guard::Caller;
use crate::guard::require_key;
use crate::state::AppState;
use crate::{console, gateway, keys, metrics, openapi, verify};

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The keygate application over `state`.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let console = state.console();
    App::new()
        .app_data(state.guard().clone())
        .app_data(state)
        .app_data(
            web::JsonConfig::default()
                .limit(BODY_LIMIT)
                .content_type_required(false)
                .error_handler(json_error),
        )
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .app_data(web::PayloadConfig::default().limit(BODY_LIMIT))
        .wrap(from_fn(observe))
        .service(read("/", root))
        .service(read("/health", health))
        .route("/forward-auth", web::route().to(gateway::forward_auth))
        .route(
            gateway::EXT_AUTHZ_PREFIX,
            web::route().to(gateway::ext_authz),
        )
        .service(web::scope(gateway::EXT_AUTHZ_PREFIX).default_service(web::to(gateway::ext_authz)))
        .service(read("/metrics", metrics::serve))
        .service(read("/openapi.json", openapi::serve))
        .configure(|config| {
            if console {
                console::routes(config);
            }
        })
        .service(
            web::scope("")
                .wrap(from_fn(require_key))
                .service(
                    web::resource("/verify")
                        .route(web::post().to(verify::verify))
                        .default_service(web::to(keys::method_not_allowed)),
                )
                .configure(keys::routes)
                .default_service(web::to(keys::not_found)),
        )
}

/// A resource answering GET and HEAD (a read, whose body HTTP then leaves out) with
/// `handler`, and any other method with 405.
pub(crate) fn read<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(keys::method_not_allowed))
}

/// Makes every error answer the JSON envelope, including those that actix-web's own
/// extractors answer in plain text (a body over the limit, an unreadable path).
fn json_errors<B>(response: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response.map_into_left_body();
    }
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(BODY_LIMIT),
        StatusCode::NOT_FOUND => ApiError::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::BAD_REQUEST => ApiError::malformed("The request could not be read"),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::UNAVAILABLE,
        StatusCode::INTERNAL_SERVER_ERROR => ApiError::INTERNAL,
        _ => return response.map_into_left_body(),
    };
    let (request, _) = response.into_parts();
    let answer = error.error_response();
    ServiceResponse::new(request, answer).map_into_right_body()
}

async fn root() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "name": "keygate", "version": env!("CARGO_PKG_VERSION") }))
}

#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, description = "The service is up", body = crate::openapi::Status)))]
pub(crate) async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "UP" }))
}

fn json_error(error: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let api_error = match error {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::PayloadTooLarge(limit),
        JsonPayloadError::Payload(actix_web::error::PayloadError::Overflow) => {
            ApiError::PayloadTooLarge(BODY_LIMIT)
        }
        JsonPayloadError::ContentType => {
            ApiError::malformed("Content-Type must be application/json")
        }
        JsonPayloadError::Deserialize(error)
            if error.is_eof() && error.line() == 1 && error.column() == 0 =>
        {
            ApiError::malformed("Request body is empty: a JSON object is required")
        }
        JsonPayloadError::Deserialize(error) => {
            ApiError::malformed(format!("Invalid JSON body: {error}"))
        }
        other => ApiError::malformed(format!("Could not read the request body: {other}")),
    };
    api_error.into()
}

fn query_error(error: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::invalid_query(error).into()
}

/// Every answer's outer layer: errors as JSON ([`json_errors`]), `X-Content-Type-Options:
/// nosniff`, and a log line in a span (method, route, status, latency, and the acting
/// key's id, never the key) with the request counted in the metrics. One layer rather
/// than three: each layer costs every request a boxed future.
async fn observe<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let started = Instant::now();
    let method = metrics::method_label(request.method());
    let span = tracing::info_span!(
        "request",
        method,
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
        api_key_id = tracing::field::Empty,
    );
    let mut response = json_errors(next.call(request).instrument(span.clone()).await?);
    let headers = response.headers_mut();
    if !headers.contains_key(X_CONTENT_TYPE_OPTIONS) {
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    }
    let elapsed = started.elapsed();
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status();
    // With request logging off (RUST_LOG above info), spend nothing on the span's fields.
    if !span.is_disabled() {
        span.record("route", route.as_str());
        span.record("status", status.as_u16());
        span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
        if let Some(Caller(principal)) = response.request().extensions().get::<Caller>() {
            let actor = match principal {
                keygate_core::Principal::Master => "master",
                keygate_core::Principal::Key(key) => key.id.as_str(),
            };
            span.record("api_key_id", actor);
        }
        span.in_scope(|| tracing::info!("answered"));
    }
    // Borrowed, not cloned: a clone of the shared state's Arc is a write to one cache
    // line that every worker would make on every request.
    if let Some(state) = response.request().app_data::<web::Data<AppState>>() {
        state.metrics().request(method, route, status, elapsed);
    }
    Ok(response)
}
