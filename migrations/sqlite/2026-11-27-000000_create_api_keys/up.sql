-- API keys. The plaintext key is never stored: only its blake3 digest.
-- Timestamps are RFC 3339 text in UTC, so text order is time order.
CREATE TABLE api_keys (
    api_key_id   TEXT PRIMARY KEY NOT NULL,
    key_hash     BLOB NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    key_hint     TEXT NOT NULL,
    name         TEXT NOT NULL,
    owner_id     TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    is_revoked   BOOLEAN NOT NULL DEFAULT FALSE,
    revoked_at   TEXT,
    CHECK (is_revoked = (revoked_at IS NOT NULL))
);

CREATE INDEX api_keys_owner_created ON api_keys (owner_id, created_at DESC);
