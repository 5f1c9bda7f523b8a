//! The `api_keys` table, once per backend: the columns are the same, only the SQL type
//! of timestamps differs (native `timestamptz` in PostgreSQL, RFC 3339 text in SQLite).

pub mod postgres {
    diesel::table! {
        api_keys (api_key_id) {
            api_key_id -> Text,
            key_hash -> Binary,
            key_hint -> Text,
            name -> Text,
            owner_id -> Text,
            scopes -> Text,
            expires_at -> Timestamptz,
            created_at -> Timestamptz,
            last_used_at -> Nullable<Timestamptz>,
            is_revoked -> Bool,
            revoked_at -> Nullable<Timestamptz>,
        }
    }
}

pub mod sqlite {
    diesel::table! {
        use diesel::sql_types::*;

        api_keys (api_key_id) {
            api_key_id -> Text,
            key_hash -> Binary,
            key_hint -> Text,
            name -> Text,
            owner_id -> Text,
            scopes -> Text,
            expires_at -> TimestamptzSqlite,
            created_at -> TimestamptzSqlite,
            last_used_at -> Nullable<TimestamptzSqlite>,
            is_revoked -> Bool,
            revoked_at -> Nullable<TimestamptzSqlite>,
        }
    }
}
