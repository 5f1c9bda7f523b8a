DROP TABLE key_usage;
ALTER TABLE api_keys DROP COLUMN credit_pool;
ALTER TABLE api_keys DROP COLUMN ratelimit_bucket;
ALTER TABLE api_keys DROP COLUMN ratelimit_window_ms;
ALTER TABLE api_keys DROP COLUMN ratelimit_limit;
DROP TABLE credit_pools;
