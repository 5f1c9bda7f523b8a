ALTER TABLE api_keys RESET (fillfactor);
