//! Guard any actix-web application with keygate's scoped API keys, in-process.
//!
//! A request carries a key in `X-Blnk-Key` (or `Authorization: Bearer`). The guard
//! hashes it once (blake3), finds it in memory or by one indexed lookup in the
//! [`KeyStore`](keygate_core::KeyStore), and checks that its scopes permit the request:
//! the action from the method (`GET` → `read`, `POST` → `write`, `DELETE` → `delete`),
//! the resource from the first segment of the path (`/ledgers/...` → `ledgers`). A
//! handler behind [`require_key`] receives the [`Caller`]; a refused request is answered
//! with Blnk's JSON error and never reaches it. Keys revoked anywhere (another instance,
//! keygate's CLI) stop working within the change-feed period; guessing is throttled per
//! client address; usage is written in batches, never on the request path.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use actix_web::middleware::from_fn;
//! use actix_web::{App, HttpResponse, HttpServer, web};
//! use keygate_guard::{Caller, Guard, GuardSettings, Unobserved, require_key};
//! use keygate_storage::{Database, DatabaseUrl, PoolOptions};
//!
//! async fn ledger(Caller(caller): Caller, id: web::Path<String>) -> HttpResponse {
//!     // Only keys with `ledgers:read` (or a wildcard) get here.
//!     HttpResponse::Ok().json(serde_json::json!({ "ledger": *id, "caller": format!("{caller:?}") }))
//! }
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     let url = DatabaseUrl::parse("sqlite://keygate.db").map_err(std::io::Error::other)?;
//!     let store = Database::connect(&url, &PoolOptions::default()).map_err(std::io::Error::other)?;
//!     let settings = GuardSettings {
//!         master_key: Some("a-long-random-master-key-0123456789".into()),
//!         ..GuardSettings::default()
//!     };
//!     let guard = web::Data::new(Guard::new(Arc::new(store), &settings, Arc::new(Unobserved)));
//!     let _background = Guard::start(&guard).await;
//!     HttpServer::new(move || {
//!         App::new().app_data(guard.clone()).service(
//!             web::scope("")
//!                 .wrap(from_fn(require_key))
//!                 .route("/ledgers/{id}", web::get().to(ledger)),
//!         )
//!     })
//!     .bind(("127.0.0.1", 8080))?
//!     .run()
//!     .await
//! }
//! ```
//!
//! The knobs are [`GuardSettings`] (with documented defaults); metrics reach your own
//! registry through an [`Observer`]. Gateways that ask about a request they will forward
//! (nginx `auth_request`, Traefik `forwardAuth`) name it with headers that
//! [`OriginalRequest`] reads, and [`decide`] answers exactly as the middleware would.

mod background;
mod changes;
pub mod error;
mod guard;
pub mod metering;
mod middleware;
mod observer;
mod original;
pub mod settings;
mod throttle;
mod usage;

pub use background::{Background, FINAL_FLUSH_LIMIT};
pub use error::{GuardError, envelope};
pub use guard::{Guard, MAX_PRESENTED_KEY};
pub use metering::{Admitted, Metered, RateState, rate_headers};
pub use middleware::{
    Caller, KEY_HEADER, KEY_HEADER_NAME, bearer_token, decide, presented_key,
    refuse_method_parameter, require_key,
};
pub use observer::{Observer, Unobserved};
pub use original::{OriginalRequest, canonical};
pub use settings::{GuardSettings, MeteringBackend, MeteringSettings, ThrottleSettings};
pub use throttle::Throttle;
pub use usage::UsageRecorder;
