-- jobdb on PostgreSQL: the same tables, states, constraints and indexes as the SQLite
-- migrations (migrations/sqlite), in PostgreSQL's own types. Timestamps are TIMESTAMPTZ
-- (instants, UTC on the wire), payloads and outputs JSONB.

CREATE TABLE jobs (
    -- BIGSERIAL: ids are never reused (a sequence does not go back), as with SQLite's
    -- AUTOINCREMENT.
    id                  BIGSERIAL   PRIMARY KEY,
    queue               TEXT        NOT NULL DEFAULT 'default'
                        CHECK (octet_length(queue) BETWEEN 1 AND 255),
    state               TEXT        NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    -- Lower runs first.
    priority            INTEGER     NOT NULL DEFAULT 0,
    payload             JSONB       NOT NULL,
    -- Incremented by every claim; also the lease's fencing token.
    attempts            INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts        INTEGER     NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_at              TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL,
    worker_id           TEXT,
    heartbeat_at        TIMESTAMPTZ,
    lease_expires_at    TIMESTAMPTZ,
    last_error          TEXT,
    -- At most one live (queued or running) job per (queue, unique_key).
    unique_key          TEXT        CHECK (unique_key IS NULL OR octet_length(unique_key) BETWEEN 1 AND 1024),
    -- Set by `cancel` on a running job.
    cancel_requested_at TIMESTAMPTZ,
    -- `attempts` at the last manual retry (fresh attempts count from here).
    attempt_base        INTEGER     NOT NULL DEFAULT 0 CHECK (attempt_base >= 0)
);

-- The claim index: the claim's WHERE (queue, state = 'queued', run_at <= now) and ORDER BY
-- (priority, run_at, id), partial so finished jobs never slow it down.
CREATE INDEX jobs_claim_idx ON jobs (queue, priority, run_at, id) WHERE state = 'queued';

-- Race-free unique jobs: INSERT … ON CONFLICT DO NOTHING against this index.
CREATE UNIQUE INDEX jobs_unique_key_idx ON jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');

-- One row per finished attempt.
CREATE TABLE results (
    id          BIGSERIAL   PRIMARY KEY,
    job_id      BIGINT      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER     NOT NULL CHECK (attempt >= 1),
    outcome     TEXT        NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    output      JSONB,
    error       TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    duration_ms BIGINT      NOT NULL DEFAULT 0 CHECK (duration_ms >= 0)
);

-- One finished attempt is recorded once, whatever the code above does; also serves the
-- foreign key's cascade and "results of job N".
CREATE UNIQUE INDEX results_job_attempt_idx ON results (job_id, attempt);

-- Paused queues are not claimed from.
CREATE TABLE paused_queues (
    queue     TEXT        PRIMARY KEY CHECK (octet_length(queue) BETWEEN 1 AND 255),
    paused_at TIMESTAMPTZ NOT NULL
);

-- Periodic schedules: the last tick enqueued, advanced by compare-and-set.
CREATE TABLE schedules (
    name       TEXT        PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 255),
    last_tick  TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
