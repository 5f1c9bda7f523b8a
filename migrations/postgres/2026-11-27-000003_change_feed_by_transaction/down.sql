DROP INDEX key_events_txid;
ALTER TABLE key_events DROP COLUMN txid;
