ALTER TABLE results DROP COLUMN worker_id;
ALTER TABLE jobs DROP COLUMN progress;
