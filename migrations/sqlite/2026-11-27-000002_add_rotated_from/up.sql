-- The key a rotation replaced, for keys created by rotating another.
ALTER TABLE api_keys ADD COLUMN rotated_from TEXT;
