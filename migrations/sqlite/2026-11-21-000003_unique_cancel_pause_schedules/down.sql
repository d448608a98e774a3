DROP TABLE schedules;
DROP TABLE paused_queues;
DROP INDEX jobs_unique_key_idx;
ALTER TABLE jobs DROP COLUMN attempt_base;
ALTER TABLE jobs DROP COLUMN cancel_requested_at;
ALTER TABLE jobs DROP COLUMN unique_key;
