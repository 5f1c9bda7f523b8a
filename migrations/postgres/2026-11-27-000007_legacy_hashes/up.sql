-- Keys brought from a system that kept only bcrypt hashes of them (Blnk's api_keys).
-- Such a key is stored under a placeholder digest no text hashes to, and its old hash
-- waits here, found by the key's first 16 characters, until the key is first presented:
-- then bcrypt checks it once, its blake3 digest replaces the placeholder, and its row
-- here is deleted.
CREATE TABLE legacy_hashes (
    api_key_id  TEXT PRIMARY KEY NOT NULL REFERENCES api_keys (api_key_id),
    key_prefix  TEXT NOT NULL CHECK (length(key_prefix) = 16),
    bcrypt_hash TEXT NOT NULL
);

CREATE INDEX legacy_hashes_prefix ON legacy_hashes (key_prefix);
