-- The job table. Timestamps are UTC, stored by Diesel as text ("YYYY-MM-DD HH:MM:SS.fff"),
-- which sorts chronologically, so `run_at <= ?` comparisons are plain text comparisons.
CREATE TABLE jobs (
    -- AUTOINCREMENT: ids are never reused after a delete, so an id printed to a user
    -- (or held by a crashed worker) can never come to name a different job.
    id               INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    queue            TEXT    NOT NULL DEFAULT 'default' CHECK (length(queue) BETWEEN 1 AND 255),
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    -- Lower runs first.
    priority         INTEGER NOT NULL DEFAULT 0,
    payload          TEXT    NOT NULL CHECK (json_valid(payload)),
    -- Incremented by every claim; it is also the fencing token of the lease: a heartbeat,
    -- completion or failure only applies while (state, attempts) still match the claim.
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     INTEGER NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_at           TIMESTAMP NOT NULL,
    created_at       TIMESTAMP NOT NULL,
    updated_at       TIMESTAMP NOT NULL,
    worker_id        TEXT,
    heartbeat_at     TIMESTAMP,
    lease_expires_at TIMESTAMP,
    last_error       TEXT
);

-- The claim index: matches the claim's WHERE (queue = ? AND state = 'queued' AND run_at <= ?)
-- and ORDER BY (priority, run_at, id) exactly, so a claim is an index seek with no sort.
-- Partial on state = 'queued': finished jobs are not in it, so the claim costs the same with
-- a million succeeded rows in the table as with none.
CREATE INDEX jobs_claim_idx ON jobs (queue, priority, run_at, id) WHERE state = 'queued';

-- Deliberately no other index. Every index on a column that changes with the job's state is
-- rewritten on each claim, heartbeat or completion: measured with `jobdb bench`, an index on
-- (state, queue) cost about 20% of throughput, and one on running leases about as much.
-- Stats and the reaper's search for expired leases are rare reads that scan the table on a
-- reader connection, outside the write lock.
