DROP TABLE key_lengths;
