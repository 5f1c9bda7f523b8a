-- Room in each page for a key's next version: writing last_used_at (a column no index
-- covers) then stays on its page as a heap-only tuple, and none of the table's four
-- indexes is written. Full pages (the default) made every such write a new tuple
-- elsewhere and four index entries. Pages written from now on keep a tenth free.
ALTER TABLE api_keys SET (fillfactor = 90);
