-- A key is replaced by at most one successor: two rotations of the same key at once
-- cannot both hand out a live key (the second insert fails, and its rotation is lost).
CREATE UNIQUE INDEX api_keys_one_successor ON api_keys (rotated_from) WHERE rotated_from IS NOT NULL;
