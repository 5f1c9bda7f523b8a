-- API keys. The plaintext key is never stored: only its blake3 digest.
CREATE TABLE api_keys (
    api_key_id   TEXT PRIMARY KEY,
    key_hash     BYTEA NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    key_hint     TEXT NOT NULL,
    name         TEXT NOT NULL,
    owner_id     TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    is_revoked   BOOLEAN NOT NULL DEFAULT FALSE,
    revoked_at   TIMESTAMPTZ,
    CHECK (is_revoked = (revoked_at IS NOT NULL))
);

CREATE INDEX api_keys_owner_created ON api_keys (owner_id, created_at DESC);
