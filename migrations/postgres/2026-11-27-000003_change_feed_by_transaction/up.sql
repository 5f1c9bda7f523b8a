-- The change feed is read by transaction, not by time: each event records the id of the
-- transaction that wrote it, and a reader remembers the oldest transaction still running
-- when it last read (pg_snapshot_xmin). Every transaction that had not committed then has
-- an id at least that large, so the next read finds its events however late it commits,
-- and no writer's clock is involved.
ALTER TABLE key_events
    ADD COLUMN txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);

CREATE INDEX key_events_txid ON key_events (txid);
