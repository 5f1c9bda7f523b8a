-- Metering. Credits live in pools, named by the key that first had them and shared with
-- its successors by rotation (so a rotation never creates credits). Instances take
-- credits in leases; `epoch` advances with every refill and change, and a lease is given
-- back only into the epoch it was taken from.
CREATE TABLE credit_pools (
    pool_id         TEXT PRIMARY KEY NOT NULL,
    remaining       BIGINT NOT NULL CHECK (remaining >= 0),
    refill_amount   BIGINT CHECK (refill_amount > 0),
    refill_interval TEXT CHECK (refill_interval IN ('daily', 'monthly')),
    refill_at       TIMESTAMPTZ,
    epoch           BIGINT NOT NULL DEFAULT 0,
    CHECK ((refill_amount IS NULL) = (refill_interval IS NULL)),
    CHECK ((refill_amount IS NULL) = (refill_at IS NULL))
);

CREATE INDEX credit_pools_refill_at ON credit_pools (refill_at) WHERE refill_at IS NOT NULL;

ALTER TABLE api_keys ADD COLUMN ratelimit_limit BIGINT;
ALTER TABLE api_keys ADD COLUMN ratelimit_window_ms BIGINT;
-- The key whose rate-limit window this key counts in, when not its own (its creator's or
-- its predecessor's).
ALTER TABLE api_keys ADD COLUMN ratelimit_bucket TEXT;
ALTER TABLE api_keys ADD COLUMN credit_pool TEXT REFERENCES credit_pools (pool_id);

-- Usage per key and hour, added to in batches.
CREATE TABLE key_usage (
    api_key_id     TEXT NOT NULL,
    hour           TIMESTAMPTZ NOT NULL,
    allowed        BIGINT NOT NULL DEFAULT 0,
    denied         BIGINT NOT NULL DEFAULT 0,
    rate_limited   BIGINT NOT NULL DEFAULT 0,
    usage_exceeded BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (api_key_id, hour)
);

CREATE INDEX key_usage_hour ON key_usage (hour);
