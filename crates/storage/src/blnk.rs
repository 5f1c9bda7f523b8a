//! Reading a Blnk deployment's API keys (its `api_keys` table, schema `blnk`), for
//! `keygate import blnk`. Blnk keeps a bcrypt hash of each key and its first 16
//! characters (`key_prefix`); both come along, so its clients keep their keys.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Nullable, Text, Timestamptz};
use diesel::{PgConnection, QueryableByName};
use keygate_core::StoreError;

/// One row of Blnk's `api_keys`, as Blnk stored it.
#[derive(Debug, Clone, QueryableByName)]
pub struct BlnkKey {
    /// `api_key_` and a UUID.
    #[diesel(sql_type = Text)]
    pub api_key_id: String,
    /// The bcrypt hash of the key (Blnk's `key` column).
    #[diesel(sql_type = Text)]
    pub key: String,
    /// The key's first 16 characters; absent on rows older than Blnk's prefix column.
    #[diesel(sql_type = Nullable<Text>)]
    pub key_prefix: Option<String>,
    /// The key's name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// Who the key belongs to.
    #[diesel(sql_type = Text)]
    pub owner_id: String,
    /// Its scopes, as Blnk accepted them (unchecked).
    #[diesel(sql_type = Array<Text>)]
    pub scopes: Vec<String>,
    /// When it expires.
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
    /// When it was created.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// When it was last used (Blnk sets it at creation too).
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Whether it was revoked.
    #[diesel(sql_type = Bool)]
    pub is_revoked: bool,
    /// When it was revoked.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A connection to a Blnk deployment's PostgreSQL, read only.
pub struct BlnkSource {
    conn: PgConnection,
    /// The schema holding `api_keys`, checked to be a plain identifier.
    schema: String,
}

impl BlnkSource {
    /// Connects to the PostgreSQL at `url` (a `postgres://` URL), whose schema `schema`
    /// (Blnk's is `blnk`) holds Blnk's `api_keys`. Every read runs in a read-only
    /// transaction.
    pub fn connect(url: &str, schema: &str) -> Result<Self, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Internal(
                "the Blnk database must be a postgres:// URL".into(),
            ));
        }
        let plain = schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && schema.len() <= 63
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(StoreError::Internal(
                "the schema must be a plain lower-case identifier".into(),
            ));
        }
        let conn = PgConnection::establish(url).map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to Blnk's database: {e}"))
        })?;
        Ok(BlnkSource {
            conn,
            schema: schema.to_owned(),
        })
    }

    /// How many keys the table holds.
    pub fn count(&mut self) -> Result<i64, StoreError> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            count: i64,
        }
        let query = format!("SELECT count(*) AS count FROM {}.api_keys", self.schema);
        let schema = self.schema.clone();
        self.conn
            .build_transaction()
            .read_only()
            .run(|conn| diesel::sql_query(query).get_result::<Count>(conn))
            .map(|row| row.count)
            .map_err(|e| read_error(&schema, e))
    }

    /// Up to `limit` keys whose id sorts after `after` (from the first with `None`), in
    /// id order: pages of a table too large to hold at once.
    pub fn page(&mut self, after: Option<&str>, limit: i64) -> Result<Vec<BlnkKey>, StoreError> {
        // `to_jsonb(k) ->> 'key_prefix'` reads the prefix where the column exists and
        // NULL where the deployment predates it, with one query for both.
        let query = format!(
            "SELECT api_key_id, key, to_jsonb(k) ->> 'key_prefix' AS key_prefix, name, owner_id, \
             scopes, expires_at, created_at, last_used_at, is_revoked, revoked_at \
             FROM {}.api_keys k WHERE api_key_id > $1 ORDER BY api_key_id LIMIT $2",
            self.schema
        );
        let schema = self.schema.clone();
        let after = after.unwrap_or("").to_owned();
        self.conn
            .build_transaction()
            .read_only()
            .run(|conn| {
                diesel::sql_query(query)
                    .bind::<Text, _>(after)
                    .bind::<diesel::sql_types::BigInt, _>(limit)
                    .load(conn)
            })
            .map_err(|e| read_error(&schema, e))
    }
}

fn read_error(schema: &str, error: diesel::result::Error) -> StoreError {
    StoreError::Internal(format!("cannot read {schema}.api_keys: {error}"))
}
