-- Timestamps are text, compared as strings, which orders them correctly only for four-digit
-- years. Before jobdb refused them, a delay, lease or interval past year 9999 was stored as
-- `+10000-…`, which sorts before today: such a job ran at once, such a lease looked expired.
-- jobdb now stores years 1 to 9999 only (src/timestamp.rs); this moves any value written
-- past that range to the last storable instant, which sorts after every other timestamp, as
-- the value meant. Nothing else is touched.
UPDATE jobs SET run_at = '9999-12-31 23:59:59.999999' WHERE run_at LIKE '+%';
UPDATE jobs SET lease_expires_at = '9999-12-31 23:59:59.999999' WHERE lease_expires_at LIKE '+%';
UPDATE schedules SET last_tick = '9999-12-31 23:59:59.999999' WHERE last_tick LIKE '+%';
