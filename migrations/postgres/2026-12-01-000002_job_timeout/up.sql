-- A job's own time limit per attempt, in milliseconds (NULL: the worker's default, if any).
ALTER TABLE jobs ADD COLUMN timeout_ms BIGINT CHECK (timeout_ms IS NULL OR timeout_ms > 0);
