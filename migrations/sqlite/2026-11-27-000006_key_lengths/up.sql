-- The lengths of imported secrets that are not of keygate's own shape: a presented key
-- of any other length is refused without a lookup.
CREATE TABLE key_lengths (
    length INTEGER PRIMARY KEY NOT NULL CHECK (length BETWEEN 16 AND 512)
);
