DROP TABLE legacy_hashes;
