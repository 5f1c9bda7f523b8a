//! [`Database`]: a connection pool for one backend, and the [`KeyStore`] queries over it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Text, Timestamptz, TimestamptzSqlite};
use diesel::{PgConnection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use keygate_core::legacy::MAX_LEGACY_CANDIDATES;
use keygate_core::{
    Actor, ApiKey, ApiKeyId, ChangeCursor, Changes, CreditGrant, CreditRequest, EventDetails,
    EventKind, ImportBatch, KeyEvent, KeyHash, KeyShapes, KeyStore, LegacyHash, NewEvent,
    RefillInterval, StoreError, UsageCount,
};

use crate::rows::{EventRow, KeyRow, KeyWithPool, PoolRow};
use crate::url::{Backend, DatabaseUrl};

const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// Serializes concurrent migrations of instances sharing one PostgreSQL database.
const MIGRATION_LOCK: i64 = 0x006b_6579_6761_7465;

/// How many rows one SQLite `last_used_at` statement updates at most (its bind limit).
const LAST_USED_CHUNK: usize = 500;

/// How many rows one PostgreSQL statement that takes its rows as arrays writes at most:
/// no bind limit applies, this only bounds one statement's arrays.
const ARRAY_CHUNK: usize = 10_000;

/// How the connection pool is sized and how long a caller waits for a connection.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_size: u32,
    /// How long to wait for a connection before the database counts as unavailable.
    pub connection_timeout: Duration,
    /// Connections kept open while idle; more are opened on demand up to `max_size`.
    pub min_idle: u32,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_size: 8,
            connection_timeout: Duration::from_secs(5),
            min_idle: 1,
        }
    }
}

enum Pools {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    Postgres(Pool<ConnectionManager<PgConnection>>),
}

/// A migrated database of API keys.
pub struct Database {
    pools: Pools,
}

/// Runs `$body` with a pooled connection `$conn`, the backend's `api_keys` table module
/// as `$t`, its `key_events` module as `$e`, `credit_pools` as `$c` and `key_usage` as
/// `$u`: each query is written once and compiled for both backends.
macro_rules! with_connection {
    ($db:expr, |$conn:ident, $t:ident, $e:ident, $c:ident, $u:ident| $body:expr) => {
        match &$db.pools {
            Pools::Sqlite(pool) => {
                #[allow(unused_imports)]
                use crate::schema::sqlite::{
                    api_keys as $t, credit_pools as $c, key_events as $e, key_lengths,
                    key_usage as $u, legacy_hashes,
                };
                let mut pooled = pool.get().map_err(unavailable)?;
                let $conn: &mut SqliteConnection = &mut pooled;
                $body
            }
            Pools::Postgres(pool) => {
                #[allow(unused_imports)]
                use crate::schema::postgres::{
                    api_keys as $t, credit_pools as $c, key_events as $e, key_lengths,
                    key_usage as $u, legacy_hashes,
                };
                let mut pooled = pool.get().map_err(unavailable)?;
                let $conn: &mut PgConnection = &mut pooled;
                $body
            }
        }
    };
}

/// The keys of the backend's table module `$t`, each with the credit pool (`$c`) it
/// draws on: rows that read as [`KeyWithPool`].
macro_rules! keys {
    ($t:ident, $c:ident) => {
        $t::table
            .left_join($c::table)
            .select(($t::all_columns, $c::all_columns.nullable()))
    };
}

/// The columns of a new `api_keys` row for `$key` (an [`ApiKey`]) whose scopes are
/// already rendered as `$scopes`, in the backend's table module `$t`.
macro_rules! key_row {
    ($t:ident, $key:expr, $scopes:expr) => {
        (
            $t::api_key_id.eq($key.id.as_str()),
            $t::key_hash.eq(&$key.hash.as_bytes()[..]),
            $t::key_hint.eq(&$key.hint),
            $t::name.eq(&$key.name),
            $t::owner_id.eq(&$key.owner_id),
            $t::scopes.eq(&$scopes),
            $t::expires_at.eq($key.expires_at),
            $t::created_at.eq($key.created_at),
            $t::last_used_at.eq($key.last_used_at),
            $t::is_revoked.eq($key.is_revoked()),
            $t::revoked_at.eq($key.revoked_at),
            $t::rotated_from.eq($key.rotated_from.as_ref().map(ApiKeyId::as_str)),
            $t::ratelimit_limit.eq($key.ratelimit.map(|r| whole_i64(r.limit))),
            $t::ratelimit_window_ms.eq($key.ratelimit.map(|r| whole_i64(r.window_ms))),
            $t::credit_pool.eq($key.credits.as_ref().map(|c| c.pool.as_str())),
            $t::ratelimit_bucket.eq($key.ratelimit_bucket.as_ref().map(ApiKeyId::as_str)),
        )
    };
}

/// Filters of a conditional write: the key's metering is still what was read (`$key`, an
/// [`ApiKey`]), NULLs included, so a write from an older read cannot undo a change of it.
macro_rules! metering_unchanged {
    ($query:expr, $key:expr) => {
        $query
            .filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("COALESCE(ratelimit_limit, -1) = ")
                    .bind::<BigInt, _>($key.ratelimit.map_or(-1, |r| whole_i64(r.limit))),
            )
            .filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("COALESCE(ratelimit_window_ms, -1) = ")
                    .bind::<BigInt, _>($key.ratelimit.map_or(-1, |r| whole_i64(r.window_ms))),
            )
            .filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("COALESCE(credit_pool, '') = ")
                    .bind::<Text, _>($key.credits.as_ref().map_or("", |c| c.pool.as_str())),
            )
    };
}

/// The columns of a new `credit_pools` row for `$account` (a `CreditAccount`).
macro_rules! pool_row {
    ($c:ident, $account:expr) => {
        (
            $c::pool_id.eq($account.pool.as_str()),
            $c::remaining.eq($account.credits.remaining),
            $c::refill_amount.eq($account.credits.refill.map(|r| r.amount)),
            $c::refill_interval.eq($account.credits.refill.map(|r| r.interval.as_str())),
            $c::refill_at.eq($account.refill_at),
        )
    };
}

/// A count within the ranges metering allows, as the databases store it.
fn whole_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl Database {
    /// Opens a pool for `url` and applies pending migrations. SQLite files (and their
    /// folders) are created when missing.
    pub fn connect(url: &DatabaseUrl, options: &PoolOptions) -> Result<Self, StoreError> {
        let pools = match url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                create_private(path).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))
                })?;
                let manager = ConnectionManager::<SqliteConnection>::new(path.to_string_lossy());
                let pool = Pool::builder()
                    .max_size(options.max_size)
                    .connection_timeout(options.connection_timeout)
                    .min_idle(Some(options.min_idle))
                    .test_on_check_out(false)
                    .connection_customizer(Box::new(SqliteSettings {
                        busy_timeout: options.connection_timeout,
                    }))
                    .build(manager)
                    .map_err(unavailable)?;
                let mut conn = pool.get().map_err(unavailable)?;
                // One exclusive transaction around all migrations: instances starting
                // together on a new file take turns instead of creating the same table.
                conn.exclusive_transaction(|conn| {
                    conn.run_pending_migrations(SQLITE_MIGRATIONS).map(drop)
                })
                .map_err(|e: Box<dyn std::error::Error + Send + Sync>| {
                    StoreError::Internal(format!("migrating: {e}"))
                })?;
                drop(conn);
                Pools::Sqlite(pool)
            }
            DatabaseUrl::Postgres(url) => {
                let manager =
                    ConnectionManager::<PgConnection>::new(with_network_timeouts(url, options));
                let timeouts = PostgresSettings {
                    timeout: options.connection_timeout,
                };
                let pool = Pool::builder()
                    .max_size(options.max_size)
                    .connection_timeout(options.connection_timeout)
                    .min_idle(Some(options.min_idle))
                    .test_on_check_out(false)
                    .connection_customizer(Box::new(timeouts))
                    .build(manager)
                    .map_err(unavailable)?;
                let mut conn = pool.get().map_err(unavailable)?;
                migrate_postgres(&mut conn, &timeouts)?;
                drop(conn);
                Pools::Postgres(pool)
            }
        };
        Ok(Database { pools })
    }

    /// Which backend this database runs on.
    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite(_) => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }
}

/// Creates the SQLite file, if it does not exist yet, readable and writable by its owner
/// only: it holds every key's digest. SQLite gives its `-wal` and `-shm` files the
/// database file's permissions.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    if path.as_os_str() == ":memory:" || path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

/// `url` with libpq's network timeouts, each unless the URL sets it, all from the pool's
/// timeout T: a server that does not answer must not hold a connection (and the blocking
/// thread waiting on it) much longer than a caller waits.
/// - `connect_timeout` (T in whole seconds, at least 2): a server that does not accept.
/// - `keepalives_idle` (T, at most 60 s), `keepalives_interval` (a third of that),
///   `keepalives_count` (3): an answer that never comes from a server that vanished
///   after taking the request, and an idle connection to it.
/// - `tcp_user_timeout` (2T, at least 2 s): a request the network does not acknowledge,
///   such as one sent into a partition. Without it the kernel retransmits for about
///   fifteen minutes. Twice T, so that it is not shorter than the keepalive probes (it
///   overrides their count): one lost probe must not end a healthy connection.
fn with_network_timeouts(url: &str, options: &PoolOptions) -> String {
    let seconds = options.connection_timeout.as_secs_f64().ceil().max(1.0);
    // At most a minute idle: a NAT on the way may forget a connection quiet for longer.
    let idle = seconds.min(60.0);
    let millis = options
        .connection_timeout
        .as_millis()
        .saturating_mul(2)
        .max(2_000);
    let defaults = [
        ("connect_timeout", seconds.max(2.0).to_string()),
        ("tcp_user_timeout", millis.to_string()),
        ("keepalives_idle", idle.to_string()),
        (
            "keepalives_interval",
            (idle / 3.0).ceil().max(1.0).to_string(),
        ),
        ("keepalives_count", "3".to_owned()),
    ];
    // The query begins at the first `?` after the host, as libpq reads a URL: a
    // password, which ends at the first `@` before any `/`, may hold a `?` itself.
    let host = url.find("://").map_or(0, |scheme| scheme + 3);
    let host = url[host..]
        .find(['@', '/'])
        .filter(|&at| url[host + at..].starts_with('@'))
        .map_or(host, |at| host + at + 1);
    let (base, query) = match url[host..].find('?') {
        Some(mark) => (&url[..host + mark], &url[host + mark + 1..]),
        None => (url, ""),
    };
    let mut parameters: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(str::to_owned)
        .collect();
    for (name, value) in defaults {
        if !parameters
            .iter()
            .any(|pair| pair.split('=').next() == Some(name))
        {
            parameters.push(format!("{name}={value}"));
        }
    }
    format!("{base}?{}", parameters.join("&"))
}

fn migrate_postgres(
    conn: &mut PgConnection,
    timeouts: &PostgresSettings,
) -> Result<(), StoreError> {
    // Migrating (and waiting for another instance to finish migrating) may take longer
    // than a request may wait, but not for ever: an instance stuck mid-migration must
    // not hang every other start.
    conn.batch_execute("SET statement_timeout = 0; SET lock_timeout = '120s'")
        .map_err(query_error)?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(conn)
        .map_err(query_error)?;
    let migrated = conn
        .run_pending_migrations(POSTGRES_MIGRATIONS)
        .map(drop)
        .map_err(|e| StoreError::Internal(format!("migrating: {e}")));
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .execute(conn)
        .map_err(query_error)?;
    conn.batch_execute(&timeouts.statements())
        .map_err(query_error)?;
    migrated
}

/// Per-connection PostgreSQL settings: no statement runs, and no lock is waited for,
/// longer than the pool's timeout, so a locked table or a stuck server costs a caller a
/// bounded wait and an error, never a hang.
#[derive(Debug, Clone, Copy)]
struct PostgresSettings {
    timeout: Duration,
}

impl PostgresSettings {
    /// Every statement and lock wait bounded by the pool's timeout; and a session left
    /// in a transaction twice that long ended by the server, releasing its locks: when
    /// the network drops between keygate and PostgreSQL mid-transaction, keygate's side
    /// gives up, but the server would otherwise keep the transaction, and the rows it
    /// locked, until its own keepalives notice (hours, by default).
    fn statements(&self) -> String {
        let ms = self.timeout.as_millis().max(1);
        let idle = ms.saturating_mul(2).max(1_000);
        format!(
            "SET statement_timeout = {ms}; SET lock_timeout = {ms}; \
             SET idle_in_transaction_session_timeout = {idle}"
        )
    }
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PostgresSettings {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&self.statements())
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Per-connection SQLite settings: WAL so readers never wait for a writer, a busy
/// timeout (the pool's) so concurrent writers queue for a bounded time instead of
/// failing at once or waiting forever, and FULL synchronous so a committed key survives
/// a crash of the process or the machine.
#[derive(Debug)]
struct SqliteSettings {
    busy_timeout: Duration,
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSettings {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {};
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;",
            self.busy_timeout.as_millis().max(1)
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// Messages of errors that mean "the database is busy or stuck, try again shortly":
/// SQLite's busy timeout, and PostgreSQL's statement and lock timeouts and deadlocks.
const TRANSIENT: [&str; 5] = [
    "database is locked",
    "database is busy",
    "canceling statement due to statement timeout",
    "canceling statement due to lock timeout",
    "deadlock detected",
];

fn query_error(error: DieselError) -> StoreError {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            StoreError::Conflict(info.message().to_owned())
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            info,
        ) => StoreError::Unavailable(info.message().to_owned()),
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, info) => {
            StoreError::Unavailable(info.message().to_owned())
        }
        DieselError::DatabaseError(_, info)
            if TRANSIENT.iter().any(|text| info.message().contains(text)) =>
        {
            StoreError::Unavailable(info.message().to_owned())
        }
        other => StoreError::Internal(other.to_string()),
    }
}

fn to_keys(rows: Vec<KeyWithPool>) -> Result<Vec<ApiKey>, StoreError> {
    rows.into_iter().map(ApiKey::try_from).collect()
}

/// Each of `keys` with the pool it names, from `pools` (a key whose pool is missing
/// reads as corrupt, as it would from a join).
fn with_pools(keys: Vec<KeyRow>, pools: Vec<PoolRow>) -> Vec<KeyWithPool> {
    let pools: HashMap<String, PoolRow> = pools
        .into_iter()
        .map(|pool| (pool.pool_id.clone(), pool))
        .collect();
    keys.into_iter()
        .map(|key| {
            // Keys sharing a pool each take a copy of it.
            let pool = key
                .credit_pool
                .as_deref()
                .and_then(|id| pools.get(id))
                .cloned();
            KeyWithPool { key, pool }
        })
        .collect()
}

impl KeyStore for Database {
    fn reads_are_local(&self) -> bool {
        self.backend() == Backend::Sqlite
    }

    fn pool_state(&self) -> Option<(u32, u32)> {
        let state = match &self.pools {
            Pools::Sqlite(pool) => pool.state(),
            Pools::Postgres(pool) => pool.state(),
        };
        Some((state.connections, state.idle_connections))
    }

    fn insert(&self, key: &ApiKey, actor: &Actor) -> Result<(), StoreError> {
        let scopes = key.scopes.to_string();
        let actor = actor.to_string();
        with_connection!(self, |conn, t, e, c, u| {
            conn.transaction(|conn| {
                // A key spending another's pool (its creator's) adds no pool.
                if let Some(account) = key.credits.as_ref().filter(|a| a.pool == key.id) {
                    diesel::insert_into(c::table)
                        .values(pool_row!(c, account))
                        .execute(conn)?;
                }
                diesel::insert_into(t::table)
                    .values(key_row!(t, key, scopes))
                    .execute(conn)?;
                diesel::insert_into(e::table)
                    .values((
                        e::api_key_id.eq(key.id.as_str()),
                        e::kind.eq(EventKind::Created.as_str()),
                        e::actor.eq(&actor),
                        e::at.eq(key.created_at),
                    ))
                    .execute(conn)
            })
            .map(drop)
            .map_err(query_error)
        })
    }

    fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<KeyWithPool> = with_connection!(self, |conn, t, e, c, u| {
            // No `.first()`: its `LIMIT ?` makes SQLite re-prepare the cached statement
            // on every bind, which tripled the lookup's cost. The index is unique anyway.
            keys!(t, c)
                .filter(t::key_hash.eq(&hash.as_bytes()[..]))
                .get_result(conn)
                .optional()
                .map_err(query_error)?
        });
        row.map(ApiKey::try_from).transpose()
    }

    fn find_by_hashes(&self, hashes: &[KeyHash]) -> Result<Vec<ApiKey>, StoreError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let digests: Vec<&[u8]> = hashes.iter().map(|hash| &hash.as_bytes()[..]).collect();
        let rows: Vec<KeyWithPool> = with_connection!(self, |conn, t, e, c, u| {
            keys!(t, c)
                .filter(t::key_hash.eq_any(&digests))
                .load(conn)
                .map_err(query_error)?
        });
        to_keys(rows)
    }

    fn list_by_owner(&self, owner_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        // The owner's keys, then the pools of those that draw on one, rather than one
        // join: for an owner's few keys PostgreSQL plans the join as a hash of every
        // credit pool, a scan of the whole table on each listing, which cost a third of
        // the listing's rate with a thousand pools. Pools are never deleted, so each pool
        // a key names is there for the second read.
        let rows: Vec<KeyWithPool> = with_connection!(self, |conn, t, e, c, u| {
            let keys: Vec<KeyRow> = t::table
                .filter(t::owner_id.eq(owner_id))
                .order((t::created_at.desc(), t::api_key_id.desc()))
                .load(conn)
                .map_err(query_error)?;
            // A key and its successor share a pool: each pool is asked for once.
            let wanted: Vec<&str> = keys
                .iter()
                .filter_map(|key| key.credit_pool.as_deref())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let mut pools: Vec<PoolRow> = Vec::with_capacity(wanted.len());
            // In chunks: SQLite binds one parameter per pool.
            for chunk in wanted.chunks(POOL_CHUNK) {
                pools.extend(
                    c::table
                        .filter(c::pool_id.eq_any(chunk))
                        .load::<PoolRow>(conn)
                        .map_err(query_error)?,
                );
            }
            with_pools(keys, pools)
        });
        to_keys(rows)
    }

    fn revoke(
        &self,
        id: &ApiKeyId,
        owner_id: &str,
        at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Option<ApiKey>, StoreError> {
        let actor = actor.to_string();
        let row: Option<KeyWithPool> = with_connection!(self, |conn, t, e, c, u| {
            conn.transaction(|conn| {
                let key = t::table
                    .filter(t::api_key_id.eq(id.as_str()))
                    .filter(t::owner_id.eq(owner_id));
                let revoked = diesel::update(key.filter(t::is_revoked.eq(false)))
                    .set((t::is_revoked.eq(true), t::revoked_at.eq(Some(at))))
                    .execute(conn)?;
                if revoked > 0 {
                    diesel::insert_into(e::table)
                        .values((
                            e::api_key_id.eq(id.as_str()),
                            e::kind.eq(EventKind::Revoked.as_str()),
                            e::actor.eq(&actor),
                            e::at.eq(at),
                        ))
                        .execute(conn)?;
                }
                keys!(t, c)
                    .filter(t::api_key_id.eq(id.as_str()))
                    .filter(t::owner_id.eq(owner_id))
                    .get_result(conn)
                    .optional()
            })
            .map_err(query_error)?
        });
        row.map(ApiKey::try_from).transpose()
    }

    fn changes_after(&self, cursor: Option<ChangeCursor>) -> Result<Changes, StoreError> {
        // `reset`: the cursor lies ahead of the database (it was replaced or restored), so
        // the feed cannot tell what changed since.
        let (hashes, next, reset): (Vec<Vec<u8>>, i64, bool) = match &self.pools {
            // SQLite has one writer at a time, holding the write lock from its first write
            // to its commit: event ids are handed out in commit order, so everything
            // committed after a read has a larger id than that read saw.
            Pools::Sqlite(pool) => {
                use crate::schema::sqlite::{api_keys as t, key_events as e};
                let mut conn = pool.get().map_err(unavailable)?;
                conn.transaction(|conn| {
                    let last: Option<i64> =
                        e::table.select(diesel::dsl::max(e::event_id)).first(conn)?;
                    let last = last.unwrap_or(0);
                    let after = match cursor {
                        Some(ChangeCursor(after)) if after <= last => after,
                        Some(_) => return Ok((Vec::new(), last, true)),
                        None => return Ok((Vec::new(), last, false)),
                    };
                    // Creations change no cached key, and an import makes thousands:
                    // they are left out here rather than read and dropped. The read sees
                    // one snapshot, so `last` is where the next read starts.
                    let hashes: Vec<Vec<u8>> = e::table
                        .inner_join(t::table)
                        .filter(e::event_id.gt(after))
                        .filter(e::event_id.le(last))
                        .filter(e::kind.ne(EventKind::Created.as_str()))
                        .select(t::key_hash)
                        .load(conn)?;
                    Ok((hashes, last, false))
                })
                .map_err(query_error)?
            }
            // PostgreSQL hands out transaction ids when transactions start writing, not
            // when they commit. A read remembers the oldest transaction still running
            // (its snapshot's xmin); any transaction not visible to that read has an id
            // at least that large, so reading from there again finds it once committed.
            Pools::Postgres(pool) => {
                use crate::schema::postgres::{api_keys as t, key_events as e};
                let mut conn = pool.get().map_err(unavailable)?;
                conn.build_transaction()
                    .repeatable_read()
                    .read_only()
                    .run(|conn| {
                        let xmin: i64 = diesel::select(diesel::dsl::sql::<BigInt>(
                            "pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                        ))
                        .get_result(conn)?;
                        let from = match cursor {
                            Some(ChangeCursor(from)) if from <= xmin => from,
                            // Transaction ids went back: another cluster (a failover to
                            // a logical replica, a restore).
                            Some(_) => return Ok((Vec::new(), xmin, true)),
                            None => return Ok((Vec::new(), xmin, false)),
                        };
                        let hashes = e::table
                            .inner_join(t::table)
                            .filter(e::txid.ge(from))
                            .filter(e::kind.ne(EventKind::Created.as_str()))
                            .select(t::key_hash)
                            .distinct()
                            .load(conn)?;
                        Ok((hashes, xmin, false))
                    })
                    .map_err(query_error)?
            }
        };
        let mut seen = HashSet::with_capacity(hashes.len());
        let mut keys = Vec::with_capacity(hashes.len());
        for bytes in &hashes {
            let hash = KeyHash::from_bytes(bytes)
                .ok_or_else(|| StoreError::Internal("a key_hash is not 32 bytes".into()))?;
            if seen.insert(hash) {
                keys.push(hash);
            }
        }
        Ok(Changes {
            keys,
            next: ChangeCursor(next),
            reset,
        })
    }

    fn get(&self, id: &ApiKeyId, owner_id: &str) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<KeyWithPool> = with_connection!(self, |conn, t, e, c, u| {
            keys!(t, c)
                .filter(t::api_key_id.eq(id.as_str()))
                .filter(t::owner_id.eq(owner_id))
                .get_result(conn)
                .optional()
                .map_err(query_error)?
        });
        row.map(ApiKey::try_from).transpose()
    }

    fn replace(&self, old: &ApiKey, new: &ApiKey, event: &NewEvent) -> Result<bool, StoreError> {
        let (old_scopes, new_scopes) = (old.scopes.to_string(), new.scopes.to_string());
        let actor = event.actor.to_string();
        let details = event.details.as_ref().map(|d| d.to_json().to_string());
        with_connection!(self, |conn, t, e, c, u| {
            let outcome = conn.transaction(|conn| {
                let unchanged = metering_unchanged!(
                    t::table
                        .filter(t::api_key_id.eq(old.id.as_str()))
                        .filter(t::owner_id.eq(&old.owner_id))
                        .filter(t::is_revoked.eq(false))
                        .filter(t::name.eq(&old.name))
                        .filter(t::scopes.eq(&old_scopes))
                        .filter(t::expires_at.eq(old.expires_at)),
                    old
                );
                // New credits replace the pool's balance and refill, in a new epoch; the pool
                // exists before the key names it.
                if let Some(account) = &new.credits
                    && old.credits.as_ref() != Some(account)
                {
                    diesel::insert_into(c::table)
                        .values(pool_row!(c, account))
                        .on_conflict(c::pool_id)
                        .do_update()
                        .set((
                            c::remaining.eq(account.credits.remaining),
                            c::refill_amount.eq(account.credits.refill.map(|r| r.amount)),
                            c::refill_interval
                                .eq(account.credits.refill.map(|r| r.interval.as_str())),
                            c::refill_at.eq(account.refill_at),
                            c::epoch.eq(c::epoch + 1),
                        ))
                        .execute(conn)?;
                }
                let replaced = diesel::update(unchanged)
                    .set((
                        t::name.eq(&new.name),
                        t::scopes.eq(&new_scopes),
                        t::expires_at.eq(new.expires_at),
                        t::ratelimit_limit.eq(new.ratelimit.map(|r| whole_i64(r.limit))),
                        t::ratelimit_window_ms.eq(new.ratelimit.map(|r| whole_i64(r.window_ms))),
                        t::credit_pool.eq(new.credits.as_ref().map(|c| c.pool.as_str())),
                        t::ratelimit_bucket.eq(new.ratelimit_bucket.as_ref().map(ApiKeyId::as_str)),
                    ))
                    .execute(conn)?;
                if replaced != 1 {
                    return Err(DieselError::RollbackTransaction);
                }
                // A rotated key's expiry is the end of its grace period, and its metering is
                // its successor's (their credits are one pool). Checked after the update,
                // which waited for any rotation holding the row, so a successor committed
                // meanwhile is seen.
                if new.expires_at != old.expires_at
                    || new.ratelimit != old.ratelimit
                    || new.credits != old.credits
                {
                    let successors: i64 = t::table
                        .filter(t::rotated_from.eq(old.id.as_str()))
                        .count()
                        .get_result(conn)?;
                    if successors > 0 {
                        return Err(DieselError::RollbackTransaction);
                    }
                }
                diesel::insert_into(e::table)
                    .values((
                        e::api_key_id.eq(old.id.as_str()),
                        e::kind.eq(EventKind::Updated.as_str()),
                        e::actor.eq(&actor),
                        e::details.eq(details.as_deref()),
                        e::at.eq(event.at),
                    ))
                    .execute(conn)?;
                Ok(true)
            });
            match outcome {
                Err(DieselError::RollbackTransaction) => Ok(false),
                other => other.map_err(query_error),
            }
        })
    }

    fn rotate(
        &self,
        old: &ApiKey,
        old_expires_at: DateTime<Utc>,
        successor: &ApiKey,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let old_scopes = old.scopes.to_string();
        let new_scopes = successor.scopes.to_string();
        let actor = event.actor.to_string();
        let created_details = EventDetails::CreatedByRotation {
            rotated_from: old.id.clone(),
        }
        .to_json()
        .to_string();
        let details = event.details.as_ref().map(|d| d.to_json().to_string());
        let rotated = with_connection!(self, |conn, t, e, c, u| {
            conn.transaction(|conn| {
                let unchanged = metering_unchanged!(
                    t::table
                        .filter(t::api_key_id.eq(old.id.as_str()))
                        .filter(t::owner_id.eq(&old.owner_id))
                        .filter(t::is_revoked.eq(false))
                        .filter(t::scopes.eq(&old_scopes))
                        .filter(t::expires_at.eq(old.expires_at)),
                    old
                );
                let cut = diesel::update(unchanged)
                    .set(t::expires_at.eq(old_expires_at))
                    .execute(conn)?;
                if cut != 1 {
                    return Ok(false);
                }
                diesel::insert_into(t::table)
                    .values(key_row!(t, successor, new_scopes))
                    .execute(conn)?;
                diesel::insert_into(e::table)
                    .values(vec![
                        (
                            e::api_key_id.eq(old.id.as_str()),
                            e::kind.eq(EventKind::Rotated.as_str()),
                            e::actor.eq(actor.as_str()),
                            e::details.eq(details.as_deref()),
                            e::at.eq(event.at),
                        ),
                        (
                            e::api_key_id.eq(successor.id.as_str()),
                            e::kind.eq(EventKind::Created.as_str()),
                            e::actor.eq(actor.as_str()),
                            e::details.eq(Some(created_details.as_str())),
                            e::at.eq(successor.created_at),
                        ),
                    ])
                    .execute(conn)?;
                Ok(true)
            })
            .map_err(query_error)
        });
        // Another rotation of the same key inserted its successor first (one successor
        // per key): this one lost the race.
        match rotated {
            Err(StoreError::Conflict(_)) => Ok(false),
            other => other,
        }
    }

    fn events(&self, id: &ApiKeyId) -> Result<Vec<KeyEvent>, StoreError> {
        let rows: Vec<EventRow> = with_connection!(self, |conn, t, e, c, u| {
            e::table
                .filter(e::api_key_id.eq(id.as_str()))
                .order(e::event_id.asc())
                .select((e::kind, e::actor, e::details, e::at))
                .load(conn)
                .map_err(query_error)?
        });
        Ok(rows.into_iter().filter_map(EventRow::into_event).collect())
    }

    fn record_last_used(&self, uses: &[(ApiKeyId, DateTime<Utc>)]) -> Result<usize, StoreError> {
        if uses.is_empty() {
            return Ok(0);
        }
        // One transaction for the whole batch: one commit (and one fsync) however many
        // statements the bind limits split it into.
        match &self.pools {
            Pools::Sqlite(pool) => {
                let mut conn = pool.get().map_err(unavailable)?;
                conn.immediate_transaction(|conn| {
                    uses.chunks(LAST_USED_CHUNK).try_fold(0, |changed, chunk| {
                        let sql = last_used_sql(chunk.len());
                        let mut query = diesel::sql_query(sql).into_boxed();
                        for (id, at) in chunk {
                            query = query
                                .bind::<Text, _>(id.as_str())
                                .bind::<TimestamptzSqlite, _>(*at);
                        }
                        query.execute(conn).map(|rows| changed + rows)
                    })
                })
                .map_err(query_error)
            }
            Pools::Postgres(pool) => {
                // Instances flushing overlapping batches lock the rows in one order, the
                // keys' ids byte by byte (as sorted here, whatever the database's
                // collation), so that no two of them can wait on each other. Each batch
                // travels as two arrays: a statement of a few parameters is parsed and
                // bound in microseconds, where one of a thousand took milliseconds of
                // the server's time every flush.
                let mut uses = uses.to_vec();
                uses.sort_by(|a, b| a.0.cmp(&b.0));
                let mut conn = pool.get().map_err(unavailable)?;
                conn.transaction(|conn| {
                    uses.chunks(ARRAY_CHUNK).try_fold(0, |changed, chunk| {
                        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
                        let times: Vec<DateTime<Utc>> = chunk.iter().map(|(_, at)| *at).collect();
                        diesel::sql_query(
                            "SELECT api_key_id FROM api_keys WHERE api_key_id = ANY($1) \
                             ORDER BY api_key_id COLLATE \"C\" FOR UPDATE",
                        )
                        .bind::<Array<Text>, _>(&ids)
                        .execute(conn)?;
                        diesel::sql_query(
                            "UPDATE api_keys SET last_used_at = v.at \
                             FROM unnest($1::text[], $2::timestamptz[]) AS v (id, at) \
                             WHERE api_keys.api_key_id = v.id \
                             AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < v.at)",
                        )
                        .bind::<Array<Text>, _>(&ids)
                        .bind::<Array<Timestamptz>, _>(&times)
                        .execute(conn)
                        .map(|rows| changed + rows)
                    })
                })
                .map_err(query_error)
            }
        }
    }

    fn take_credits(
        &self,
        pool: &ApiKeyId,
        request: CreditRequest,
        now: DateTime<Utc>,
    ) -> Result<Option<CreditGrant>, StoreError> {
        with_connection!(self, |conn, t, e, c, u| {
            conn.write_transaction(|conn| {
                let this = || c::table.filter(c::pool_id.eq(pool.as_str()));
                // Touch the row first: it is then this transaction's (PostgreSQL's row
                // lock, SQLite's write lock) until it commits, so what is read next cannot
                // change before the grant is written.
                if diesel::update(this())
                    .set(c::epoch.eq(c::epoch))
                    .execute(conn)?
                    == 0
                {
                    return Ok(None);
                }
                let row: PoolRow = this().get_result(conn)?;
                let mut account = row.into_account().ok_or_else(|| {
                    DieselError::DeserializationError("a credit pool is unreadable".into())
                })?;
                if let (Some(refill), Some(due)) = (account.credits.refill, account.refill_at)
                    && due <= now
                {
                    let next = refill.interval.next_after(now);
                    diesel::update(this())
                        .set((
                            c::remaining.eq(refill.amount),
                            c::refill_at.eq(Some(next)),
                            c::epoch.eq(c::epoch + 1),
                        ))
                        .execute(conn)?;
                    account.credits.remaining = refill.amount;
                    account.refill_at = Some(next);
                    account.epoch += 1;
                }
                let granted = request.grant(account.credits.remaining);
                if granted > 0 {
                    diesel::update(this())
                        .set(c::remaining.eq(c::remaining - granted))
                        .execute(conn)?;
                }
                Ok(Some(CreditGrant {
                    granted,
                    remaining: account.credits.remaining - granted,
                    epoch: account.epoch,
                    refill_at: account.refill_at,
                }))
            })
            .map_err(query_error)
        })
    }

    fn return_credits(&self, pool: &ApiKeyId, amount: i64, epoch: i64) -> Result<bool, StoreError> {
        if amount <= 0 {
            return Ok(false);
        }
        with_connection!(self, |conn, t, e, c, u| {
            diesel::update(
                c::table
                    .filter(c::pool_id.eq(pool.as_str()))
                    .filter(c::epoch.eq(epoch)),
            )
            .set(c::remaining.eq(c::remaining + amount))
            .execute(conn)
            .map(|rows| rows == 1)
            .map_err(query_error)
        })
    }

    fn refill_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        const BATCH: i64 = 500;
        let mut refilled = 0;
        loop {
            let (seen, done) = with_connection!(self, |conn, t, e, c, u| {
                // A read first: most sweeps find nothing due, and need no write lock.
                let due: i64 = c::table
                    .filter(c::refill_at.le(now))
                    .count()
                    .get_result(conn)
                    .map_err(query_error)?;
                if due == 0 {
                    return Ok(refilled);
                }
                conn.write_transaction(|conn| {
                    let due: Vec<(String, Option<String>, Option<DateTime<Utc>>)> = c::table
                        .filter(c::refill_at.le(now))
                        .select((c::pool_id, c::refill_interval, c::refill_at))
                        .order(c::refill_at.asc())
                        .limit(BATCH)
                        .load(conn)?;
                    let mut done = 0;
                    for (pool, interval, at) in &due {
                        let Some(interval) = interval.as_deref().and_then(RefillInterval::parse)
                        else {
                            continue;
                        };
                        done += diesel::update(
                            c::table
                                .filter(c::pool_id.eq(pool))
                                .filter(c::refill_at.eq(at)),
                        )
                        .set((
                            c::remaining.eq(c::refill_amount.assume_not_null()),
                            c::refill_at.eq(Some(interval.next_after(now))),
                            c::epoch.eq(c::epoch + 1),
                        ))
                        .execute(conn)?;
                    }
                    Ok((due.len(), done))
                })
                .map_err(query_error)?
            });
            refilled += done;
            if i64::try_from(seen).unwrap_or(i64::MAX) < BATCH || done == 0 {
                return Ok(refilled);
            }
        }
    }

    fn add_usage(&self, counts: &[UsageCount]) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        // Rows are added to in one order, so instances flushing at once never wait on
        // each other in a cycle; counts of one key and hour are summed first, since one
        // PostgreSQL statement may add to a row only once.
        let mut counts = counts.to_vec();
        counts.sort_by(|a, b| (&a.key, a.at).cmp(&(&b.key, b.at)));
        counts.dedup_by(|later, kept| {
            let same = later.key == kept.key && later.at == kept.at;
            if same {
                kept.merge(later);
            }
            same
        });
        match &self.pools {
            Pools::Sqlite(pool) => {
                use crate::schema::sqlite::key_usage as u;
                use diesel::upsert::excluded;
                let mut conn = pool.get().map_err(unavailable)?;
                conn.immediate_transaction(|conn| {
                    // Many rows a statement: a flush of 20,000 keys' counts is 40
                    // statements, not 20,000.
                    for chunk in counts.chunks(USAGE_CHUNK) {
                        let rows: Vec<_> = chunk
                            .iter()
                            .map(|count| {
                                (
                                    u::api_key_id.eq(count.key.as_str()),
                                    u::hour.eq(count.at),
                                    u::allowed.eq(count.allowed),
                                    u::denied.eq(count.denied),
                                    u::rate_limited.eq(count.rate_limited),
                                    u::usage_exceeded.eq(count.usage_exceeded),
                                )
                            })
                            .collect();
                        diesel::insert_into(u::table)
                            .values(&rows)
                            .on_conflict((u::api_key_id, u::hour))
                            .do_update()
                            .set((
                                u::allowed.eq(u::allowed + excluded(u::allowed)),
                                u::denied.eq(u::denied + excluded(u::denied)),
                                u::rate_limited.eq(u::rate_limited + excluded(u::rate_limited)),
                                u::usage_exceeded
                                    .eq(u::usage_exceeded + excluded(u::usage_exceeded)),
                            ))
                            .execute(conn)?;
                    }
                    Ok(())
                })
                .map_err(query_error)
            }
            Pools::Postgres(pool) => {
                // Six arrays a statement rather than six parameters a row: PostgreSQL
                // parsed and bound a statement of 500 rows in milliseconds, on every
                // flush, each second, taking its time from the requests.
                let mut conn = pool.get().map_err(unavailable)?;
                conn.transaction(|conn| {
                    for chunk in counts.chunks(ARRAY_CHUNK) {
                        let column = |f: fn(&UsageCount) -> i64| -> Vec<i64> {
                            chunk.iter().map(f).collect()
                        };
                        let ids: Vec<&str> = chunk.iter().map(|c| c.key.as_str()).collect();
                        let hours: Vec<DateTime<Utc>> = chunk.iter().map(|c| c.at).collect();
                        diesel::sql_query(
                            "INSERT INTO key_usage \
                             (api_key_id, hour, allowed, denied, rate_limited, usage_exceeded) \
                             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int8[], \
                             $4::int8[], $5::int8[], $6::int8[]) \
                             ON CONFLICT (api_key_id, hour) DO UPDATE SET \
                             allowed = key_usage.allowed + excluded.allowed, \
                             denied = key_usage.denied + excluded.denied, \
                             rate_limited = key_usage.rate_limited + excluded.rate_limited, \
                             usage_exceeded = key_usage.usage_exceeded + excluded.usage_exceeded",
                        )
                        .bind::<Array<Text>, _>(&ids)
                        .bind::<Array<Timestamptz>, _>(&hours)
                        .bind::<Array<BigInt>, _>(column(|c| c.allowed))
                        .bind::<Array<BigInt>, _>(column(|c| c.denied))
                        .bind::<Array<BigInt>, _>(column(|c| c.rate_limited))
                        .bind::<Array<BigInt>, _>(column(|c| c.usage_exceeded))
                        .execute(conn)?;
                    }
                    Ok(())
                })
                .map_err(query_error)
            }
        }
    }

    fn usage(
        &self,
        id: &ApiKeyId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageCount>, StoreError> {
        let rows: Vec<(DateTime<Utc>, i64, i64, i64, i64)> =
            with_connection!(self, |conn, t, e, c, u| {
                u::table
                    .filter(u::api_key_id.eq(id.as_str()))
                    .filter(u::hour.ge(from))
                    .filter(u::hour.lt(to))
                    .order(u::hour.asc())
                    .select((
                        u::hour,
                        u::allowed,
                        u::denied,
                        u::rate_limited,
                        u::usage_exceeded,
                    ))
                    .load(conn)
                    .map_err(query_error)?
            });
        Ok(rows
            .into_iter()
            .map(
                |(at, allowed, denied, rate_limited, usage_exceeded)| UsageCount {
                    key: id.clone(),
                    at,
                    allowed,
                    denied,
                    rate_limited,
                    usage_exceeded,
                },
            )
            .collect())
    }

    fn prune_usage(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        with_connection!(self, |conn, t, e, c, u| {
            diesel::delete(u::table.filter(u::hour.lt(before)))
                .execute(conn)
                .map_err(query_error)
        })
    }

    fn import(
        &self,
        batch: &ImportBatch<'_>,
        actor: &Actor,
        dry_run: bool,
    ) -> Result<usize, StoreError> {
        let ImportBatch {
            keys,
            lengths,
            legacy,
        } = *batch;
        let actor = actor.to_string();
        let now = Utc::now().trunc_subsecs(6);
        let mut counted = 0;
        let outcome = with_connection!(self, |conn, t, e, c, u| {
            conn.bulk_mode(true).map_err(query_error)?;
            let outcome = conn.write_transaction(|conn| {
                if !lengths.is_empty() {
                    let rows: Vec<_> = lengths
                        .iter()
                        .map(|length| key_lengths::length.eq(i32::from(*length)))
                        .collect();
                    diesel::insert_into(key_lengths::table)
                        .values(&rows)
                        .on_conflict_do_nothing()
                        .execute(conn)?;
                }
                let mut fresh: Vec<&ApiKey> = Vec::with_capacity(keys.len());
                for chunk in keys.chunks(IMPORT_CHUNK) {
                    let ids: Vec<&str> = chunk.iter().map(|key| key.id.as_str()).collect();
                    let hashes: Vec<&[u8]> =
                        chunk.iter().map(|key| &key.hash.as_bytes()[..]).collect();
                    // Two lookups, each by its own unique index.
                    let stored_ids: Vec<String> = t::table
                        .filter(t::api_key_id.eq_any(&ids))
                        .select(t::api_key_id)
                        .load(conn)?;
                    let stored_hashes: Vec<Vec<u8>> = t::table
                        .filter(t::key_hash.eq_any(&hashes))
                        .select(t::key_hash)
                        .load(conn)?;
                    let stored_ids: HashSet<&str> = stored_ids.iter().map(String::as_str).collect();
                    let stored_hashes: HashSet<&[u8]> =
                        stored_hashes.iter().map(Vec::as_slice).collect();
                    fresh.extend(chunk.iter().filter(|key| {
                        !stored_ids.contains(key.id.as_str())
                            && !stored_hashes.contains(&key.hash.as_bytes()[..])
                    }));
                }
                // Repeated within the batch: the first stands.
                let mut seen_ids = HashSet::with_capacity(fresh.len());
                let mut seen_hashes = HashSet::with_capacity(fresh.len());
                fresh.retain(|key| {
                    let first = !seen_ids.contains(key.id.as_str())
                        && !seen_hashes.contains(key.hash.as_bytes());
                    if first {
                        seen_ids.insert(key.id.as_str());
                        seen_hashes.insert(key.hash.as_bytes());
                    }
                    first
                });
                // In hash order, each statement's rows land near one another in the hash
                // index rather than all over it.
                fresh.sort_unstable_by(|a, b| a.hash.as_bytes().cmp(b.hash.as_bytes()));
                for chunk in fresh.chunks(IMPORT_CHUNK) {
                    let pools: Vec<_> = chunk
                        .iter()
                        .filter_map(|key| key.credits.as_ref().filter(|a| a.pool == key.id))
                        .map(|account| pool_row!(c, account))
                        .collect();
                    if !pools.is_empty() {
                        diesel::insert_into(c::table).values(&pools).execute(conn)?;
                    }
                    let scopes: Vec<String> =
                        chunk.iter().map(|key| key.scopes.to_string()).collect();
                    let rows: Vec<_> = chunk
                        .iter()
                        .zip(&scopes)
                        .map(|(key, scopes)| key_row!(t, key, (*scopes)))
                        .collect();
                    diesel::insert_into(t::table).values(&rows).execute(conn)?;
                    let events: Vec<_> = chunk
                        .iter()
                        .map(|key| {
                            (
                                e::api_key_id.eq(key.id.as_str()),
                                e::kind.eq(EventKind::Created.as_str()),
                                e::actor.eq(&actor),
                                e::at.eq(now),
                            )
                        })
                        .collect();
                    diesel::insert_into(e::table)
                        .values(&events)
                        .execute(conn)?;
                }
                if !legacy.is_empty() {
                    let stored: HashSet<&str> = fresh.iter().map(|key| key.id.as_str()).collect();
                    let rows: Vec<_> = legacy
                        .iter()
                        .filter(|legacy| stored.contains(legacy.key.as_str()))
                        .map(|legacy| {
                            (
                                legacy_hashes::api_key_id.eq(legacy.key.as_str()),
                                legacy_hashes::key_prefix.eq(&legacy.prefix),
                                legacy_hashes::bcrypt_hash.eq(&legacy.bcrypt),
                            )
                        })
                        .collect();
                    for chunk in rows.chunks(IMPORT_CHUNK) {
                        diesel::insert_into(legacy_hashes::table)
                            .values(chunk)
                            .execute(conn)?;
                    }
                }
                counted = fresh.len();
                if dry_run {
                    return Err(DieselError::RollbackTransaction);
                }
                Ok(counted)
            });
            // What was committed stands whether or not the cache is sized back, or the
            // statistics renewed.
            if let Err(error) = conn.bulk_mode(false) {
                tracing::warn!(%error, "could not size the page cache back after an import");
            }
            if outcome.is_ok()
                && !dry_run
                && let Err(error) = conn.after_bulk_write()
            {
                tracing::warn!(%error, "could not renew the planner's statistics after an import");
            }
            outcome
        });
        match outcome {
            Err(DieselError::RollbackTransaction) if dry_run => Ok(counted),
            other => other.map_err(query_error),
        }
    }

    fn key_shapes(&self) -> Result<KeyShapes, StoreError> {
        let (lengths, legacy_pending): (Vec<i32>, bool) =
            with_connection!(self, |conn, t, e, c, u| {
                let lengths = key_lengths::table
                    .select(key_lengths::length)
                    .load(conn)
                    .map_err(query_error)?;
                let pending = diesel::select(diesel::dsl::exists(
                    legacy_hashes::table.select(legacy_hashes::api_key_id),
                ))
                .get_result(conn)
                .map_err(query_error)?;
                (lengths, pending)
            });
        Ok(KeyShapes {
            lengths: lengths
                .into_iter()
                .filter_map(|length| u16::try_from(length).ok())
                .collect(),
            legacy_pending,
        })
    }

    fn legacy_hashes(&self, prefix: &str) -> Result<Vec<LegacyHash>, StoreError> {
        let rows: Vec<(String, String, String)> = with_connection!(self, |conn, t, e, c, u| {
            legacy_hashes::table
                .filter(legacy_hashes::key_prefix.eq(prefix))
                .limit(i64::try_from(MAX_LEGACY_CANDIDATES).unwrap_or(i64::MAX))
                .select((
                    legacy_hashes::api_key_id,
                    legacy_hashes::key_prefix,
                    legacy_hashes::bcrypt_hash,
                ))
                .load(conn)
                .map_err(query_error)?
        });
        Ok(rows
            .into_iter()
            .map(|(key, prefix, bcrypt)| LegacyHash {
                key: ApiKeyId::new(key),
                prefix,
                bcrypt,
            })
            .collect())
    }

    fn upgrade_legacy(
        &self,
        legacy: &LegacyHash,
        hash: &KeyHash,
    ) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<KeyWithPool> = with_connection!(self, |conn, t, e, c, u| {
            conn.write_transaction(|conn| {
                // The delete takes the row's lock: of two instances upgrading the same
                // key, the second waits, deletes nothing and changes nothing.
                let claimed = diesel::delete(
                    legacy_hashes::table
                        .filter(legacy_hashes::api_key_id.eq(legacy.key.as_str()))
                        .filter(legacy_hashes::bcrypt_hash.eq(&legacy.bcrypt)),
                )
                .execute(conn)?;
                if claimed == 1 {
                    diesel::update(t::table.filter(t::api_key_id.eq(legacy.key.as_str())))
                        .set(t::key_hash.eq(&hash.as_bytes()[..]))
                        .execute(conn)?;
                }
                keys!(t, c)
                    .filter(t::key_hash.eq(&hash.as_bytes()[..]))
                    .get_result(conn)
                    .optional()
            })
            .map_err(query_error)?
        });
        row.map(ApiKey::try_from).transpose()
    }
}

/// Hourly counts per statement of a usage flush: 6 columns a row keeps SQLite under its
/// 32,766 bound parameters.
const USAGE_CHUNK: usize = 500;

/// Keys per statement of an import: 16 columns a row keeps SQLite under its 32,766
/// bound parameters.
const IMPORT_CHUNK: usize = 1000;

/// Pools read a statement when listing keys: well under SQLite's bound parameters.
const POOL_CHUNK: usize = 10_000;

/// A transaction that writes: SQLite's takes the write lock at once (a transaction that
/// reads first and writes later fails when another wrote in between), PostgreSQL's is
/// an ordinary one.
trait WriteTransaction: Connection {
    fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DieselError>,
    ) -> Result<T, DieselError>;

    /// Readies the connection for a bulk write (`true`), or sets it back (`false`).
    fn bulk_mode(&mut self, _bulk: bool) -> Result<(), DieselError> {
        Ok(())
    }

    /// Brings the planner up to date after a bulk write committed.
    fn after_bulk_write(&mut self) -> Result<(), DieselError> {
        Ok(())
    }
}

impl WriteTransaction for SqliteConnection {
    fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DieselError>,
    ) -> Result<T, DieselError> {
        self.immediate_transaction(f)
    }

    /// SQLite's default cache (2 MiB) holds a few thousand keys' index pages; random key
    /// hashes then evict and write each page again and again. 256 MiB, while importing.
    fn bulk_mode(&mut self, bulk: bool) -> Result<(), DieselError> {
        let kib = if bulk { 262_144 } else { 2_000 };
        self.batch_execute(&format!("PRAGMA cache_size = -{kib}"))
    }
}

impl WriteTransaction for PgConnection {
    fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DieselError>,
    ) -> Result<T, DieselError> {
        self.transaction(f)
    }

    /// An import's lookups of ids and digests are prepared statements: after five runs
    /// PostgreSQL may settle on a generic plan made with the statistics of a table that
    /// was empty (a scan of every row for each chunk: 0.4 s a chunk at 150,000 keys).
    /// Plans made for each call's own arrays, and statistics renewed after each batch,
    /// keep them on the indexes.
    fn bulk_mode(&mut self, bulk: bool) -> Result<(), DieselError> {
        let mode = if bulk { "force_custom_plan" } else { "auto" };
        self.batch_execute(&format!("SET plan_cache_mode = {mode}"))
    }

    fn after_bulk_write(&mut self) -> Result<(), DieselError> {
        self.batch_execute("ANALYZE api_keys, key_events, legacy_hashes, credit_pools")
    }
}

/// One SQLite UPDATE for a batch of `rows` uses: `(id, time)` pairs as a VALUES list.
fn last_used_sql(rows: usize) -> String {
    format!(
        "UPDATE api_keys SET last_used_at = v.column2 FROM (VALUES {}) AS v \
         WHERE api_keys.api_key_id = v.column1 \
         AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < v.column2)",
        vec!["(?, ?)"; rows].join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_timeouts_follow_the_pool_timeout_and_yield_to_the_url() {
        let cases = [
            (
                "postgres://u@h/db",
                5_000,
                "postgres://u@h/db?connect_timeout=5&tcp_user_timeout=10000&keepalives_idle=5\
                 &keepalives_interval=2&keepalives_count=3",
            ),
            (
                "postgres://u@h/db?sslmode=require&tcp_user_timeout=30000&keepalives_idle=60",
                5_000,
                "postgres://u@h/db?sslmode=require&tcp_user_timeout=30000&keepalives_idle=60\
                 &connect_timeout=5&keepalives_interval=2&keepalives_count=3",
            ),
            (
                "postgres://u@h/db",
                300_000,
                "postgres://u@h/db?connect_timeout=300&tcp_user_timeout=600000\
                 &keepalives_idle=60&keepalives_interval=20&keepalives_count=3",
            ),
            // A `?` in the password is not the query's.
            (
                "postgres://u:pa?ss@h/db?sslmode=require",
                5_000,
                "postgres://u:pa?ss@h/db?sslmode=require&connect_timeout=5\
                 &tcp_user_timeout=10000&keepalives_idle=5&keepalives_interval=2\
                 &keepalives_count=3",
            ),
            (
                "postgres://u:pa?ss@h/db",
                5_000,
                "postgres://u:pa?ss@h/db?connect_timeout=5&tcp_user_timeout=10000\
                 &keepalives_idle=5&keepalives_interval=2&keepalives_count=3",
            ),
            // Floors: 2 s to connect and for unacknowledged data, 1 s for the rest.
            (
                "postgres://u@h/db",
                300,
                "postgres://u@h/db?connect_timeout=2&tcp_user_timeout=2000&keepalives_idle=1\
                 &keepalives_interval=1&keepalives_count=3",
            ),
        ];
        for (url, timeout_ms, expected) in cases {
            let options = PoolOptions {
                connection_timeout: Duration::from_millis(timeout_ms),
                ..PoolOptions::default()
            };
            assert_eq!(with_network_timeouts(url, &options), expected, "{url}");
        }
    }
}
