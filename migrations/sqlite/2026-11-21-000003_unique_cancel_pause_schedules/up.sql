-- Peer-parity features: unique jobs, cancellation, fresh attempts on retry, paused queues and
-- periodic schedules. New columns are added at the end (ALTER TABLE ADD COLUMN is cheap in
-- SQLite: existing rows are not rewritten).

-- A caller-chosen key: at most one live (queued or running) job per (queue, unique_key).
ALTER TABLE jobs ADD COLUMN unique_key TEXT CHECK (unique_key IS NULL OR length(unique_key) BETWEEN 1 AND 1024);
-- Set by `cancel` on a running job: its next heartbeat tells the worker, and whatever the
-- handler then reports is recorded as cancelled, never as success.
ALTER TABLE jobs ADD COLUMN cancel_requested_at TIMESTAMP;
-- `attempts` at the last manual retry: attempts are fencing tokens and never go back, so a
-- retried job gets fresh attempts by counting from here (attempts - attempt_base < max_attempts).
ALTER TABLE jobs ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0 CHECK (attempt_base >= 0);

-- Race-free uniqueness: enqueue is INSERT … ON CONFLICT DO NOTHING against this index, never
-- check-then-insert. Partial: once a job finishes, its key is free for a new job, and jobs
-- without a key are not in the index at all.
CREATE UNIQUE INDEX jobs_unique_key_idx ON jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');

-- Paused queues are not claimed from. A row per paused queue; resume deletes it.
CREATE TABLE paused_queues (
    queue     TEXT      PRIMARY KEY NOT NULL CHECK (length(queue) BETWEEN 1 AND 255),
    paused_at TIMESTAMP NOT NULL
);

-- One row per periodic schedule: the last tick enqueued. A scheduler advances it with a
-- compare-and-set and enqueues the tick's job in the same transaction, so each tick is
-- enqueued exactly once however many scheduler processes run, with no leader.
CREATE TABLE schedules (
    name       TEXT      PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    last_tick  TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
