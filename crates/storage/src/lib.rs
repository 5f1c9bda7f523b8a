//! keygate's persistence: the [`KeyStore`](keygate_core::KeyStore) port implemented with
//! diesel, over SQLite (the embedded default, built from bundled sources) or PostgreSQL
//! (chosen by a `postgres://` URL).
//!
//! [`Database::connect`] opens an r2d2 pool for the URL's backend and applies the
//! embedded migrations of `migrations/<backend>/`. Both backends share one set of
//! queries: each is written once and compiled for each backend's schema.

pub mod blnk;
mod database;
mod rows;
mod schema;
mod url;

pub use database::{Database, PoolOptions};
pub use url::{Backend, DatabaseUrl, UrlError};

#[cfg(feature = "test-support")]
pub mod test_support;
