DROP TABLE key_events;
