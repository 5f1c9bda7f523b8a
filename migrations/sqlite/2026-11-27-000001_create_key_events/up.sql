-- The audit trail of every key: one row per change, written in the same transaction as
-- the change. Instances also read it (by `at`) to drop changed keys from their caches.
CREATE TABLE key_events (
    event_id   INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    api_key_id TEXT NOT NULL REFERENCES api_keys (api_key_id),
    kind       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    details    TEXT,
    at         TEXT NOT NULL
);

CREATE INDEX key_events_key ON key_events (api_key_id, event_id);
CREATE INDEX key_events_at ON key_events (at);
