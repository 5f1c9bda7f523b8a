//! The tables, once per backend: the columns are the same, only the SQL type
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
            rotated_from -> Nullable<Text>,
        }
    }

    diesel::table! {
        key_events (event_id) {
            event_id -> BigInt,
            api_key_id -> Text,
            kind -> Text,
            actor -> Text,
            details -> Nullable<Text>,
            at -> Timestamptz,
            txid -> BigInt,
        }
    }

    diesel::joinable!(key_events -> api_keys (api_key_id));
    diesel::allow_tables_to_appear_in_same_query!(api_keys, key_events);
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
            rotated_from -> Nullable<Text>,
        }
    }

    diesel::table! {
        use diesel::sql_types::*;

        key_events (event_id) {
            event_id -> BigInt,
            api_key_id -> Text,
            kind -> Text,
            actor -> Text,
            details -> Nullable<Text>,
            at -> TimestamptzSqlite,
        }
    }

    diesel::joinable!(key_events -> api_keys (api_key_id));
    diesel::allow_tables_to_appear_in_same_query!(api_keys, key_events);
}
