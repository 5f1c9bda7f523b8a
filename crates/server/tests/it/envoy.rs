//! Envoy's two ways to ask: HTTP ext_authz at `/ext-authz/<path>` (in-process, on both
//! backends) and gRPC `Authorization/Check` on `server.grpc_port` (the binary, called by
//! a real gRPC client built from Envoy's protos, as Envoy would call it).

use crate::support;

use std::collections::HashMap;

use actix_web::http::Method;
use actix_web::test::TestRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use keygate_storage::test_support::TestDatabase;
use serde_json::{Value, json};
use support::process::{Running, field, free_port};
use support::{MASTER, start};

on_both_backends!(ext_authz_decides_on_the_request_it_is_sent);

async fn ext_authz_decides_on_the_request_it_is_sent(db: TestDatabase) {
    let app = start(db).await;
    let (reader, id) = app.new_key("alice", &["ledgers:read"]).await;
    let ask = |method: Method, path: &str, key: Option<&str>| {
        let mut request = TestRequest::default().method(method).uri(path);
        if let Some(key) = key {
            request = request.insert_header(("X-Blnk-Key", key));
        }
        request
    };
    let allowed = app
        .send(ask(
            Method::GET,
            "/ext-authz/ledgers/ldg_1?page=2",
            Some(&reader),
        ))
        .await;
    assert_eq!((allowed.status, &allowed.json), (200, &Value::Null));
    let header = |reply: &support::Reply, name: &str| {
        reply
            .headers
            .get(name)
            .map(|value| value.to_str().expect("text").to_owned())
    };
    assert_eq!(header(&allowed, "x-keygate-key-id"), Some(id.clone()));
    assert_eq!(
        header(&allowed, "x-keygate-owner-id").as_deref(),
        Some("alice")
    );
    assert_eq!(
        header(&allowed, "x-keygate-scopes").as_deref(),
        Some("ledgers:read")
    );
    assert_eq!(
        header(&allowed, "x-envoy-auth-headers-to-remove").as_deref(),
        Some("x-blnk-key"),
        "the upstream never sees the key"
    );
    let bearer = app
        .send(
            TestRequest::get()
                .uri("/ext-authz/ledgers")
                .insert_header(("Authorization", format!("Bearer {reader}"))),
        )
        .await;
    assert_eq!(bearer.status, 200);
    assert_eq!(
        header(&bearer, "x-envoy-auth-headers-to-remove").as_deref(),
        Some("authorization")
    );

    // The request's own method is the original method.
    app.send(ask(Method::POST, "/ext-authz/ledgers", Some(&reader)))
        .await
        .assert_error(403, "AUTH_INSUFFICIENT_PERMISSIONS");
    app.send(ask(Method::GET, "/ext-authz/ledgers", None))
        .await
        .assert_error(401, "AUTH_MISSING_API_KEY");
    // The master key has no owner: a client's own X-Keygate-Owner-Id is removed too.
    let master = app
        .send(ask(Method::DELETE, "/ext-authz/balances/b", Some(MASTER)))
        .await;
    assert_eq!(master.status, 200);
    assert_eq!(
        header(&master, "x-envoy-auth-headers-to-remove").as_deref(),
        Some("x-blnk-key,x-keygate-owner-id")
    );
    // The same path rules as every entry point.
    for path in [
        "/ext-authz/ledgers/..%2fbalances",
        "/ext-authz/ledgers/../balances",
        "/ext-authz/ledgers/x?_method=DELETE",
    ] {
        let reply = app.send(ask(Method::GET, path, Some(&reader))).await;
        reply.assert_error(400, "GEN_VALIDATION_ERROR");
        assert_eq!(
            reply.json["error_detail"]["details"]["field"], "path",
            "{path}"
        );
    }
    let dotted = app
        .send(ask(
            Method::GET,
            "/ext-authz/ledgers/./x/../ldg_1",
            Some(&reader),
        ))
        .await;
    assert_eq!(dotted.status, 200, "{}", dotted.json);
    app.send(ask(Method::GET, "/ext-authz", Some(&reader)))
        .await
        .assert_error(403, "AUTH_UNKNOWN_RESOURCE");
    // Only the prefix as sent: a spelling the router decodes is not judged as "/".
    app.send(ask(Method::GET, "/ext%2Dauthz/ledgers", Some(MASTER)))
        .await
        .assert_error(400, "GEN_VALIDATION_ERROR");
    // An identity header in a spelling the gateway would not replace is refused.
    app.send(
        ask(Method::GET, "/ext-authz/ledgers", Some(&reader))
            .insert_header(("x_keygate_owner_id", "bob")),
    )
    .await
    .assert_error(400, "GEN_VALIDATION_ERROR");
    // Any owner reaches the upstream as its UTF-8 bytes, never dropped.
    let (zurich, _) = app.new_key("Zürich AG", &["ledgers:read"]).await;
    let owned = app
        .send(ask(Method::GET, "/ext-authz/ledgers", Some(&zurich)))
        .await;
    assert_eq!(owned.status, 200);
    assert_eq!(
        owned
            .headers
            .get("x-keygate-owner-id")
            .map(|v| v.as_bytes()),
        Some("Zürich AG".as_bytes())
    );
}

/// A `CheckRequest` as Envoy sends it for `method path` with `headers`.
fn check(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    from_client("", method, path, headers)
}

/// [`check`], for a client at `source` (Envoy's view of it; empty: none).
fn from_client(source: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
    let source = (!source.is_empty()).then(|| Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: source.to_owned(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    });
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// What an answer tells Envoy: the rpc status code, the HTTP status, its headers (name,
/// value), the headers to remove, and the body.
fn read(response: &CheckResponse) -> (i32, u16, HashMap<String, String>, Vec<String>, String) {
    let code = response.status.as_ref().map_or(-1, |status| status.code);
    let pairs = |options: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        options
            .iter()
            .filter_map(|option| option.header.as_ref())
            .map(|header| (header.key.clone(), header.value.clone()))
            .collect::<HashMap<_, _>>()
    };
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => (
            code,
            200,
            pairs(&ok.headers),
            ok.headers_to_remove.clone(),
            String::new(),
        ),
        Some(HttpResponse::DeniedResponse(denied)) => (
            code,
            denied
                .status
                .as_ref()
                .and_then(|status| u16::try_from(status.code).ok())
                .unwrap_or(0),
            pairs(&denied.headers),
            Vec::new(),
            denied.body.clone(),
        ),
        other => panic!("no http_response: {other:?}"),
    }
}

#[tokio::test]
async fn grpc_check_answers_as_the_guard_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::sqlite();
    let (port, grpc) = (free_port(), free_port());
    let (port_text, grpc_text) = (port.to_string(), grpc.to_string());
    let server = Running::start(
        dir.path(),
        port,
        &[
            ("KEYGATE_SERVER__PORT", &port_text),
            ("KEYGATE_SERVER__GRPC_PORT", &grpc_text),
            ("KEYGATE_SERVER__SECRET_KEY", MASTER),
            ("KEYGATE_DATABASE__URL", &db.url_string),
            ("KEYGATE_THROTTLE__FAILURES_PER_MINUTE", "3"),
            ("KEYGATE_THROTTLE__BURST", "3"),
            ("KEYGATE_THROTTLE__TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    let create = |body: Value| {
        let (status, created) =
            server.request("POST", "/api-keys", Some(MASTER), Some(&body.to_string()));
        assert_eq!(status, 201, "{created}");
        field(&created, "key")
    };
    let body = |scopes: &[&str]| support::key_request("alice", scopes);
    let reader = create(body(&["ledgers:read"]));
    let mut limited = body(&["ledgers:read"]);
    limited["ratelimit"] = json!({"limit": 1, "window_ms": 60000});
    let limited = create(limited);

    let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("the gRPC port answers");
    let mut ask = async |request: CheckRequest| {
        read(
            &client
                .check(request)
                .await
                .expect("Check answers")
                .into_inner(),
        )
    };

    let (code, status, headers, removed, _) = ask(check(
        "GET",
        "/ledgers/./ldg_1?page=2",
        &[("x-blnk-key", &reader), ("x-keygate-owner-id", "mallory")],
    ))
    .await;
    assert_eq!((code, status), (0, 200));
    assert_eq!(
        headers.get("x-keygate-owner-id").map(String::as_str),
        Some("alice")
    );
    assert_eq!(
        headers.get("x-keygate-scopes").map(String::as_str),
        Some("ledgers:read")
    );
    assert!(headers.contains_key("x-keygate-key-id"));
    assert_eq!(
        removed,
        vec!["x-blnk-key".to_owned()],
        "the key never reaches the upstream"
    );

    let (code, status, headers, _, body) = ask(check(
        "POST",
        "/ledgers",
        &[("authorization", &format!("Bearer {reader}"))],
    ))
    .await;
    assert_eq!((code, status), (7, 403), "PERMISSION_DENIED");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let error: Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(
        error["error_detail"]["code"],
        "AUTH_INSUFFICIENT_PERMISSIONS"
    );

    let (code, status, _, _, body) = ask(check("GET", "/ledgers", &[])).await;
    assert_eq!((code, status), (16, 401), "UNAUTHENTICATED");
    assert!(body.contains("AUTH_MISSING_API_KEY"), "{body}");

    let (_, status, _, _, body) = ask(check(
        "GET",
        "/ledgers/../balances",
        &[("x-blnk-key", &reader)],
    ))
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("GEN_VALIDATION_ERROR"), "{body}");

    // A check carrying more headers than any HTTP server would take is refused.
    let names: Vec<String> = (0..1_001).map(|i| format!("x-filler-{i}")).collect();
    let mut many: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "1")).collect();
    many.push(("x-blnk-key", &reader));
    let (_, status, _, _, body) = ask(check("GET", "/ledgers", &many)).await;
    assert_eq!(status, 400, "{body}");

    // Metering, as everywhere.
    let first = ask(check("GET", "/ledgers", &[("x-blnk-key", &limited)])).await;
    assert_eq!(first.1, 200, "{first:?}");
    let (code, status, headers, _, body) =
        ask(check("GET", "/ledgers", &[("x-blnk-key", &limited)])).await;
    assert_eq!((code, status), (8, 429), "RESOURCE_EXHAUSTED: {body}");
    assert!(body.contains("AUTH_RATE_LIMITED"));
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(
        headers.get("ratelimit-remaining").map(String::as_str),
        Some("0")
    );

    // Guessing through Envoy (a trusted proxy) spends the budget of the client Envoy
    // names, not Envoy's: another client keeps its own.
    let mut statuses = Vec::new();
    for guess in 0..5 {
        let wrong = format!("guess-{guess}-0123456789abcdefghij");
        let asked = from_client("198.51.100.7", "GET", "/ledgers", &[("x-blnk-key", &wrong)]);
        statuses.push(ask(asked).await.1);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let fresh = create(support::key_request("alice", &["ledgers:read"]));
    let other = from_client("198.51.100.8", "GET", "/ledgers", &[("x-blnk-key", &fresh)]);
    assert_eq!(ask(other).await.1, 200, "another client keeps its budget");
    // (A key this instance already holds gets through even so, by design.)
    let unseen = create(support::key_request("alice", &["ledgers:read"]));
    let guesser = from_client(
        "198.51.100.7",
        "GET",
        "/ledgers",
        &[("x-blnk-key", &unseen)],
    );
    assert_eq!(ask(guesser).await.1, 429, "the guesser stays refused");

    // From another address: this one is refused for a while now.
    let (status, metrics) = support::process::http_from(
        Some([127, 0, 0, 2].into()),
        server.port,
        "GET",
        "/metrics",
        &[("X-Blnk-Key", MASTER)],
        None,
    )
    .expect("keygate answers");
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("route=\"/envoy.service.auth.v3.Authorization/Check\",status=\"200\""),
        "{metrics}"
    );

    // A graceful stop covers the gRPC port.
    drop(client);
    assert!(server.stop().success());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err(),
        "the gRPC port is closed"
    );
}
