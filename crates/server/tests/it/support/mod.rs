//! The harness of the HTTP tests: the real app (the same `app()` the binary serves)
//! over a real database, driven in-process.

#![allow(dead_code)]

pub mod process;

use std::sync::Arc;

use actix_http::Request;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::HeaderMap;
use actix_web::test::{self, TestRequest};
use actix_web::web;
use keygate_core::KeyStore;
use keygate_server::{AppState, Settings, app};
use keygate_storage::test_support::TestDatabase;
use serde_json::Value;

/// The master key every test server is configured with.
pub const MASTER: &str = "test-master-key-0123456789abcdefghijklmnop";

/// A running app and the database behind it.
pub struct TestApp<S> {
    pub service: S,
    pub state: web::Data<AppState>,
    /// The database, owned by the first app on it (a peer shares it).
    pub db: Option<TestDatabase>,
    pub background: keygate_server::guard::Background,
    /// The app's clock: move it forward instead of waiting for expiry.
    pub clock: Arc<keygate_core::ShiftedClock>,
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
    settings.database.url = db.url.clone();
    settings.server.secret_key = Some(MASTER.into());
    settings.auth.last_used_flush_ms = 20;
    settings.auth.change_poll_ms = 50;
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
    launch(settings, Some(db), |store| store).await
}

/// Starts a second instance on the database of another, as another process would.
pub async fn start_peer(
    db: &TestDatabase,
) -> TestApp<
    impl Service<Request, Response = ServiceResponse<impl MessageBody>, Error = actix_web::Error>,
> {
    launch(settings(db), None, |store| store).await
}

/// Starts the app on `db` with its store seen through `wrap` (to observe its calls).
pub async fn start_observed(
    db: TestDatabase,
    adjust: impl FnOnce(&mut Settings),
    wrap: impl FnOnce(Arc<dyn KeyStore>) -> Arc<dyn KeyStore>,
) -> TestApp<
    impl Service<Request, Response = ServiceResponse<impl MessageBody>, Error = actix_web::Error>,
> {
    let mut settings = settings(&db);
    adjust(&mut settings);
    launch(settings, Some(db), wrap).await
}

async fn launch(
    settings: Settings,
    db: Option<TestDatabase>,
    wrap: impl FnOnce(Arc<dyn KeyStore>) -> Arc<dyn KeyStore>,
) -> TestApp<
    impl Service<Request, Response = ServiceResponse<impl MessageBody>, Error = actix_web::Error>,
> {
    let clock = Arc::new(keygate_core::ShiftedClock::default());
    let application = keygate_server::Application::build_on(settings, wrap, clock.clone())
        .await
        .expect("the test app builds");
    let state = application.state().clone();
    let background = keygate_server::guard::Guard::start(state.guard()).await;
    let service = test::init_service(app(state.clone())).await;
    TestApp {
        service,
        state,
        db,
        background,
        clock,
    }
}

impl<S> TestApp<S> {
    /// The database this app owns.
    pub fn db(&self) -> &TestDatabase {
        self.db.as_ref().expect("this app owns its database")
    }
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

    /// Revokes `owner`'s key `id` with the master key.
    pub async fn revoke(&self, id: &str, owner: &str) -> Reply {
        self.call(
            Method::DELETE,
            &format!("/api-keys/{id}?owner={owner}"),
            Some(MASTER),
            None,
        )
        .await
    }

    /// The `/metrics` page, read with the master key.
    pub async fn scrape(&self) -> String {
        let request = TestRequest::get()
            .uri("/metrics")
            .insert_header(("X-Blnk-Key", MASTER));
        let response = test::call_service(&self.service, request.to_request()).await;
        String::from_utf8(test::read_body(response).await.to_vec()).expect("text")
    }

    /// Creates a key with the master key and returns its plaintext and id.
    pub async fn new_key(&self, owner: &str, scopes: &[&str]) -> (String, String) {
        let created = self.create_key(MASTER, owner, scopes).await;
        (text(&created["key"]), text(&created["api_key_id"]))
    }
}

/// A forward-auth question about `method uri`, in nginx's headers or Traefik's.
pub fn forward(method: &str, uri: &str, key: Option<&str>, traefik: bool) -> TestRequest {
    let (method_header, uri_header) = if traefik {
        ("X-Forwarded-Method", "X-Forwarded-Uri")
    } else {
        ("X-Original-Method", "X-Original-URI")
    };
    let mut request = TestRequest::get()
        .uri("/forward-auth")
        .insert_header((method_header, method))
        .insert_header((uri_header, uri));
    if let Some(key) = key {
        request = request.insert_header(("X-Blnk-Key", key));
    }
    request
}

/// A whole-second expiry about a year away, such as `2027-03-11T00:00:00Z`.
pub fn next_year() -> String {
    use chrono::Datelike;
    format!("{}-03-11T00:00:00Z", chrono::Utc::now().year() + 1)
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

/// A [`KeyStore`] seen through a window: every call goes to the real store, and is counted.
pub struct CountingStore {
    inner: Arc<dyn KeyStore>,
    pub lookups: std::sync::atomic::AtomicUsize,
    pub writes: std::sync::atomic::AtomicUsize,
    pub usage_batches: std::sync::atomic::AtomicUsize,
    pub usage_rows: std::sync::atomic::AtomicUsize,
    pub credit_takes: std::sync::atomic::AtomicUsize,
}

/// Where [`CountingStore::observer`] leaves the counting store once the app has opened
/// its database.
pub type Slot = Arc<std::sync::OnceLock<Arc<CountingStore>>>;

impl CountingStore {
    /// A wrapper for [`start_observed`] and the slot where it leaves the counting store.
    pub fn observer() -> (
        impl FnOnce(Arc<dyn KeyStore>) -> Arc<dyn KeyStore> + 'static,
        Slot,
    ) {
        let slot: Slot = Arc::new(std::sync::OnceLock::new());
        let filled = slot.clone();
        let wrap = move |store: Arc<dyn KeyStore>| -> Arc<dyn KeyStore> {
            let observed = CountingStore::new(store);
            let _ = filled.set(observed.clone());
            observed
        };
        (wrap, slot)
    }

    pub fn new(inner: Arc<dyn KeyStore>) -> Arc<Self> {
        Arc::new(CountingStore {
            inner,
            lookups: Default::default(),
            writes: Default::default(),
            usage_batches: Default::default(),
            usage_rows: Default::default(),
            credit_takes: Default::default(),
        })
    }

    pub fn count(counter: &std::sync::atomic::AtomicUsize) -> usize {
        counter.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn bump(counter: &std::sync::atomic::AtomicUsize, by: usize) {
    counter.fetch_add(by, std::sync::atomic::Ordering::SeqCst);
}

impl KeyStore for CountingStore {
    fn insert(
        &self,
        key: &keygate_core::ApiKey,
        actor: &keygate_core::Actor,
    ) -> Result<(), keygate_core::StoreError> {
        bump(&self.writes, 1);
        self.inner.insert(key, actor)
    }

    fn find_by_hash(
        &self,
        hash: &keygate_core::KeyHash,
    ) -> Result<Option<keygate_core::ApiKey>, keygate_core::StoreError> {
        bump(&self.lookups, 1);
        self.inner.find_by_hash(hash)
    }

    fn list_by_owner(
        &self,
        owner_id: &str,
    ) -> Result<Vec<keygate_core::ApiKey>, keygate_core::StoreError> {
        self.inner.list_by_owner(owner_id)
    }

    fn revoke(
        &self,
        id: &keygate_core::ApiKeyId,
        owner_id: &str,
        at: chrono::DateTime<chrono::Utc>,
        actor: &keygate_core::Actor,
    ) -> Result<Option<keygate_core::ApiKey>, keygate_core::StoreError> {
        bump(&self.writes, 1);
        self.inner.revoke(id, owner_id, at, actor)
    }

    fn get(
        &self,
        id: &keygate_core::ApiKeyId,
        owner_id: &str,
    ) -> Result<Option<keygate_core::ApiKey>, keygate_core::StoreError> {
        self.inner.get(id, owner_id)
    }

    fn replace(
        &self,
        old: &keygate_core::ApiKey,
        new: &keygate_core::ApiKey,
        event: &keygate_core::NewEvent,
    ) -> Result<bool, keygate_core::StoreError> {
        bump(&self.writes, 1);
        self.inner.replace(old, new, event)
    }

    fn rotate(
        &self,
        old: &keygate_core::ApiKey,
        old_expires_at: chrono::DateTime<chrono::Utc>,
        successor: &keygate_core::ApiKey,
        event: &keygate_core::NewEvent,
    ) -> Result<bool, keygate_core::StoreError> {
        bump(&self.writes, 1);
        self.inner.rotate(old, old_expires_at, successor, event)
    }

    fn events(
        &self,
        id: &keygate_core::ApiKeyId,
    ) -> Result<Vec<keygate_core::KeyEvent>, keygate_core::StoreError> {
        self.inner.events(id)
    }

    fn reads_are_local(&self) -> bool {
        self.inner.reads_are_local()
    }

    fn changes_after(
        &self,
        cursor: Option<keygate_core::ChangeCursor>,
    ) -> Result<keygate_core::Changes, keygate_core::StoreError> {
        self.inner.changes_after(cursor)
    }

    fn record_last_used(
        &self,
        uses: &[(keygate_core::ApiKeyId, chrono::DateTime<chrono::Utc>)],
    ) -> Result<usize, keygate_core::StoreError> {
        bump(&self.usage_batches, 1);
        bump(&self.usage_rows, uses.len());
        self.inner.record_last_used(uses)
    }

    fn take_credits(
        &self,
        pool: &keygate_core::ApiKeyId,
        request: keygate_core::CreditRequest,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<keygate_core::CreditGrant>, keygate_core::StoreError> {
        bump(&self.credit_takes, 1);
        self.inner.take_credits(pool, request, now)
    }

    fn return_credits(
        &self,
        pool: &keygate_core::ApiKeyId,
        amount: i64,
        epoch: i64,
    ) -> Result<bool, keygate_core::StoreError> {
        self.inner.return_credits(pool, amount, epoch)
    }

    fn refill_due(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, keygate_core::StoreError> {
        self.inner.refill_due(now)
    }

    fn add_usage(
        &self,
        counts: &[keygate_core::UsageCount],
    ) -> Result<(), keygate_core::StoreError> {
        self.inner.add_usage(counts)
    }

    fn usage(
        &self,
        id: &keygate_core::ApiKeyId,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<keygate_core::UsageCount>, keygate_core::StoreError> {
        self.inner.usage(id, from, to)
    }

    fn prune_usage(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, keygate_core::StoreError> {
        self.inner.prune_usage(before)
    }

    fn import(
        &self,
        batch: &keygate_core::ImportBatch<'_>,
        actor: &keygate_core::Actor,
        dry_run: bool,
    ) -> Result<usize, keygate_core::StoreError> {
        self.inner.import(batch, actor, dry_run)
    }

    fn key_shapes(&self) -> Result<keygate_core::KeyShapes, keygate_core::StoreError> {
        self.inner.key_shapes()
    }

    fn legacy_hashes(
        &self,
        prefix: &str,
    ) -> Result<Vec<keygate_core::LegacyHash>, keygate_core::StoreError> {
        self.inner.legacy_hashes(prefix)
    }

    fn upgrade_legacy(
        &self,
        legacy: &keygate_core::LegacyHash,
        hash: &keygate_core::KeyHash,
    ) -> Result<Option<keygate_core::ApiKey>, keygate_core::StoreError> {
        self.inner.upgrade_legacy(legacy, hash)
    }
}
