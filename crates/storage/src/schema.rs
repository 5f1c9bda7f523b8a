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
            ratelimit_limit -> Nullable<BigInt>,
            ratelimit_window_ms -> Nullable<BigInt>,
            credit_pool -> Nullable<Text>,
            ratelimit_bucket -> Nullable<Text>,
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

    diesel::table! {
        credit_pools (pool_id) {
            pool_id -> Text,
            remaining -> BigInt,
            refill_amount -> Nullable<BigInt>,
            refill_interval -> Nullable<Text>,
            refill_at -> Nullable<Timestamptz>,
            epoch -> BigInt,
        }
    }

    diesel::table! {
        key_usage (api_key_id, hour) {
            api_key_id -> Text,
            hour -> Timestamptz,
            allowed -> BigInt,
            denied -> BigInt,
            rate_limited -> BigInt,
            usage_exceeded -> BigInt,
        }
    }

    diesel::table! {
        key_lengths (length) {
            length -> Integer,
        }
    }

    diesel::table! {
        legacy_hashes (api_key_id) {
            api_key_id -> Text,
            key_prefix -> Text,
            bcrypt_hash -> Text,
        }
    }

    diesel::joinable!(key_events -> api_keys (api_key_id));
    diesel::joinable!(api_keys -> credit_pools (credit_pool));
    diesel::allow_tables_to_appear_in_same_query!(api_keys, key_events, credit_pools);
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
            ratelimit_limit -> Nullable<BigInt>,
            ratelimit_window_ms -> Nullable<BigInt>,
            credit_pool -> Nullable<Text>,
            ratelimit_bucket -> Nullable<Text>,
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

    diesel::table! {
        use diesel::sql_types::*;

        credit_pools (pool_id) {
            pool_id -> Text,
            remaining -> BigInt,
            refill_amount -> Nullable<BigInt>,
            refill_interval -> Nullable<Text>,
            refill_at -> Nullable<TimestamptzSqlite>,
            epoch -> BigInt,
        }
    }

    diesel::table! {
        use diesel::sql_types::*;

        key_usage (api_key_id, hour) {
            api_key_id -> Text,
            hour -> TimestamptzSqlite,
            allowed -> BigInt,
            denied -> BigInt,
            rate_limited -> BigInt,
            usage_exceeded -> BigInt,
        }
    }

    diesel::table! {
        key_lengths (length) {
            length -> Integer,
        }
    }

    diesel::table! {
        legacy_hashes (api_key_id) {
            api_key_id -> Text,
            key_prefix -> Text,
            bcrypt_hash -> Text,
        }
    }

    diesel::joinable!(key_events -> api_keys (api_key_id));
    diesel::joinable!(api_keys -> credit_pools (credit_pool));
    diesel::allow_tables_to_appear_in_same_query!(api_keys, key_events, credit_pools);
}
