//! Throwaway databases for tests: a fresh SQLite file, or a private schema in the
//! PostgreSQL server named by [`POSTGRES_URL_VAR`], dropped when the guard is.

use std::path::PathBuf;

use diesel::prelude::*;
use diesel::{Connection, PgConnection};

use crate::url::DatabaseUrl;

/// The environment variable naming the PostgreSQL server for tests, for example
/// `postgres://postgres@127.0.0.1:5432/test`.
pub const POSTGRES_URL_VAR: &str = "KEYGATE_TEST_POSTGRES_URL";

/// Whether the tests run under CI (`CI` set, to anything but empty or `false`): then
/// nothing they need may be missing.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|value| !value.is_empty() && value != "false")
}

/// What a test does when `missing` is: under CI it fails, saying so; elsewhere it notes
/// on stderr that it skips, and how to get what is missing (`install`).
pub fn skip_unless_ci(missing: &str, install: &str) {
    assert!(!in_ci(), "{missing}: CI must provide it ({install})");
    eprintln!("skipped: {missing} ({install})");
}

/// A database that exists for one test.
pub struct TestDatabase {
    /// The URL that reaches it.
    pub url: DatabaseUrl,
    /// The raw URL string, as it would appear in configuration.
    pub url_string: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir, PathBuf),
    Postgres { server: String, schema: String },
}

impl TestDatabase {
    /// A fresh SQLite file in a temporary folder.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("keygate.db");
        let url_string = format!("sqlite://{}", path.display());
        TestDatabase {
            url: DatabaseUrl::Sqlite(path.clone()),
            url_string,
            cleanup: Cleanup::Sqlite(dir, path),
        }
    }

    /// A fresh, empty schema on the test PostgreSQL server, reached through a URL whose
    /// `search_path` points at it. `None`, after saying so on stderr, when
    /// [`POSTGRES_URL_VAR`] is unset; under CI (`CI` set) a missing server is a failure.
    pub fn postgres() -> Option<Self> {
        let Ok(server) = std::env::var(POSTGRES_URL_VAR) else {
            skip_unless_ci(
                &format!("PostgreSQL test: {POSTGRES_URL_VAR} is unset"),
                "set it to a PostgreSQL server's URL",
            );
            return None;
        };
        let schema = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::establish(&server)
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} does not reach PostgreSQL: {e}"));
        diesel::sql_query(format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .expect("create the test schema");
        let separator = if server.contains('?') { '&' } else { '?' };
        let url_string = format!("{server}{separator}options=-csearch_path%3D{schema}");
        Some(TestDatabase {
            url: DatabaseUrl::Postgres(url_string.clone()),
            url_string,
            cleanup: Cleanup::Postgres { server, schema },
        })
    }

    /// Both backends: SQLite always, PostgreSQL when configured.
    pub fn all() -> Vec<Self> {
        std::iter::once(Self::sqlite())
            .chain(Self::postgres())
            .collect()
    }

    /// The SQLite file, for tests that read it raw.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.cleanup {
            Cleanup::Sqlite(_, path) => Some(path),
            Cleanup::Postgres { .. } => None,
        }
    }

    /// The PostgreSQL server URL and schema, for tests that dump it.
    pub fn postgres_schema(&self) -> Option<(&str, &str)> {
        match &self.cleanup {
            Cleanup::Sqlite(..) => None,
            Cleanup::Postgres { server, schema } => Some((server, schema)),
        }
    }
}

/// What [`TestDatabase::hold_lock`] locks.
#[derive(Debug, Clone, Copy)]
pub enum Lock<'a> {
    /// The whole `api_keys` table (PostgreSQL: ACCESS EXCLUSIVE, so even reads wait).
    Table,
    /// One key's row (PostgreSQL: FOR UPDATE, so changes to it wait).
    Row(&'a str),
}

/// A lock held by another connection, as another process would hold it; released when
/// dropped.
pub struct HeldLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(holder) = self.holder.take() {
            let _ = holder.join();
        }
    }
}

impl TestDatabase {
    /// Takes `lock` on another connection and holds it until the guard is dropped. On
    /// SQLite either lock is the database's write lock (`BEGIN IMMEDIATE`).
    pub fn hold_lock(&self, lock: Lock<'_>) -> HeldLock {
        use diesel::connection::SimpleConnection;
        let sql = match (&self.cleanup, lock) {
            // Waiting its turn behind the app's own short writes (usage, leases).
            (Cleanup::Sqlite(..), _) => "PRAGMA busy_timeout = 5000; BEGIN IMMEDIATE".to_owned(),
            (Cleanup::Postgres { .. }, Lock::Table) => {
                "BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE".to_owned()
            }
            (Cleanup::Postgres { .. }, Lock::Row(id)) => format!(
                "BEGIN; SELECT 1 FROM api_keys WHERE api_key_id = '{}' FOR UPDATE",
                id.replace('\'', "''")
            ),
        };
        let (url, sqlite) = match &self.cleanup {
            Cleanup::Sqlite(_, path) => (path.to_string_lossy().into_owned(), true),
            Cleanup::Postgres { .. } => (self.url_string.clone(), false),
        };
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (locked, is_locked) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let hold = |conn: &mut dyn SimpleConnection| {
                conn.batch_execute(&sql).expect("take the lock");
                let _ = locked.send(());
                let _ = released.recv();
                conn.batch_execute("COMMIT").expect("release the lock");
            };
            if sqlite {
                hold(&mut diesel::SqliteConnection::establish(&url).expect("a second connection"));
            } else {
                hold(&mut PgConnection::establish(&url).expect("a second connection"));
            }
        });
        is_locked.recv().expect("the lock is held");
        HeldLock {
            release: Some(release),
            holder: Some(holder),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Cleanup::Postgres { server, schema } = &self.cleanup
            && let Ok(mut conn) = PgConnection::establish(server)
        {
            let _ = diesel::sql_query(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut conn);
        }
    }
}
