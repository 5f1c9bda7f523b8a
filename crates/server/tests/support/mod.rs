//! The harness of the HTTP tests: the real app (the same `app()` the binary serves)
//! over a real database, driven in-process.

#![allow(dead_code)]

use std::sync::Arc;

use actix_http::Request;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::HeaderMap;
use actix_web::test::{self, TestRequest};
use actix_web::web;
use keygate_core::KeyStore;
use keygate_server::{AppState, Settings, app, usage};
use keygate_storage::test_support::TestDatabase;
use serde_json::Value;

/// The master key every test server is configured with.
pub const MASTER: &str = "test-master-key-0123456789abcdefghijklmnop";

/// A running app and the database behind it.
pub struct TestApp<S> {
    pub service: S,
    pub state: web::Data<AppState>,
    pub db: TestDatabase,
}

/// An answer: status, headers and the body as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub json: Value,
}

impl Reply {
    /// The error code of an error reply.
    pub fn code(&self) -> &str {
        self.json["error_detail"]["code"]
            .as_str()
            .unwrap_or("<no code>")
    }

    /// Asserts the status and error code, with the body in the message.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.code()), (status, code), "{}", self.json);
        assert_eq!(
            self.json["error"], self.json["error_detail"]["message"],
            "{}",
            self.json
        );
    }
}

/// Test settings: the database, the master key, fast usage flushes.
pub fn settings(db: &TestDatabase) -> Settings {
    let mut settings = Settings::defaults();
    settings.database.url = db.url_string.clone();
    settings.server.secret_key = Some(MASTER.into());
    settings.auth.last_used_flush_ms = 20;
    settings
}

/// Starts the app on `db` with the test settings.
pub async fn start(
    db: TestDatabase,
) -> TestApp<
    impl Service<Request, Response = ServiceResponse<impl MessageBody>, Error = actix_web::Error>,
> {
    start_with(db, |_| {}).await
}

/// Starts the app on `db` with the test settings, adjusted by `adjust`.
pub async fn start_with(
    db: TestDatabase,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp<
    impl Service<Request, Response = ServiceResponse<impl MessageBody>, Error = actix_web::Error>,
> {
    let mut settings = settings(&db);
    adjust(&mut settings);
    let database = keygate_server::open_database(&settings)
        .await
        .expect("the test database opens");
    let store: Arc<dyn KeyStore> = database;
    let state = web::Data::new(AppState::new(
        store,
        settings.server.secure,
        settings.server.secret_key.as_ref(),
        &settings.auth,
    ));
    actix_web::rt::spawn(usage::flush_periodically(
        state.usage(),
        state.store(),
        settings.auth.last_used_flush(),
    ));
    let service = test::init_service(app(state.clone())).await;
    TestApp { service, state, db }
}

impl<S, B> TestApp<S>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    /// Sends a prepared request.
    pub async fn send(&self, request: TestRequest) -> Reply {
        let response = test::call_service(&self.service, request.to_request()).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = test::read_body(response).await;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("a JSON body, got {:?}", String::from_utf8_lossy(&bytes))
            })
        };
        Reply {
            status,
            headers,
            json,
        }
    }

    /// `method path` with `key` in X-Blnk-Key (if any) and `body` as JSON (if any).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = TestRequest::default().method(method).uri(path);
        if let Some(key) = key {
            request = request.insert_header(("X-Blnk-Key", key));
        }
        if let Some(body) = body {
            request = request.set_json(body);
        }
        self.send(request).await
    }

    /// Creates a key for `owner` with `scopes` as `by`, asserting it was created.
    pub async fn create_key(&self, by: &str, owner: &str, scopes: &[&str]) -> Value {
        let reply = self
            .call(
                Method::POST,
                "/api-keys",
                Some(by),
                Some(key_request(owner, scopes)),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.json);
        reply.json
    }

    /// Creates a key with the master key and returns its plaintext and id.
    pub async fn new_key(&self, owner: &str, scopes: &[&str]) -> (String, String) {
        let created = self.create_key(MASTER, owner, scopes).await;
        (text(&created["key"]), text(&created["api_key_id"]))
    }
}

/// A creation body expiring in 30 days.
pub fn key_request(owner: &str, scopes: &[&str]) -> Value {
    serde_json::json!({
        "name": "Service Account",
        "owner": owner,
        "scopes": scopes,
        "expires_at": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
    })
}

/// A JSON string's text.
pub fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a string, got {value}"))
        .to_owned()
}

/// Declares each listed `async fn name(db: TestDatabase)` as a test on SQLite and, when
/// configured, on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name(keygate_storage::test_support::TestDatabase::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $name() {
                    if let Some(db) = keygate_storage::test_support::TestDatabase::postgres() {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}
