-- jobdb on MySQL 8.0+ / MariaDB 10.6+: the same tables, states, constraints and rules as the
-- SQLite and PostgreSQL migrations, in InnoDB's types. Timestamps are DATETIME(6) holding UTC
-- (the driver binds and reads UTC; the session's time_zone never applies to DATETIME).
-- Payloads, outputs and progress are LONGTEXT holding the JSON text as given, checked by
-- jobdb before every write, not JSON columns: MariaDB's JSON_VALID refuses nesting deeper
-- than 32 levels and MySQL's JSON type 100 (jobdb accepts 128 on every backend), and MySQL's
-- JSON type rewrites the text (key order, spacing) where the other backends keep it verbatim.
-- Text columns compare byte for byte (utf8mb4_bin), as on the other backends: queue 'A' is
-- not queue 'a', and no trailing-space or accent folding.

CREATE TABLE jobs (
    -- AUTO_INCREMENT ids are not reused while the server runs; `jobdb copy` moves the counter
    -- past copied ids.
    id                  BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    queue               VARCHAR(255) NOT NULL DEFAULT 'default'
                        CHECK (octet_length(queue) BETWEEN 1 AND 255),
    state               VARCHAR(16)  NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    -- Lower runs first.
    priority            INT          NOT NULL DEFAULT 0,
    payload             LONGTEXT     NOT NULL,
    -- Incremented by every claim; also the lease's fencing token.
    attempts            INT          NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts        INT          NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_at              DATETIME(6)  NOT NULL,
    created_at          DATETIME(6)  NOT NULL,
    updated_at          DATETIME(6)  NOT NULL,
    worker_id           TEXT         NULL,
    heartbeat_at        DATETIME(6)  NULL,
    lease_expires_at    DATETIME(6)  NULL,
    last_error          TEXT         NULL,
    -- At most one live (queued or running) job per (queue, unique_key): see live_unique_key.
    unique_key          VARCHAR(1024) NULL
                        CHECK (unique_key IS NULL OR octet_length(unique_key) BETWEEN 1 AND 1024),
    -- Set by `cancel` on a running job.
    cancel_requested_at DATETIME(6)  NULL,
    -- `attempts` at the last manual retry (fresh attempts count from here).
    attempt_base        INT          NOT NULL DEFAULT 0 CHECK (attempt_base >= 0),
    -- A job's own time limit per attempt, in milliseconds (NULL: the worker's default).
    timeout_ms          BIGINT       NULL CHECK (timeout_ms IS NULL OR timeout_ms > 0),
    -- The last progress a running attempt reported (small JSON, fenced by the lease).
    progress            LONGTEXT     NULL,
    -- Race-free unique jobs. MySQL has no partial index, so the rule "one live job per
    -- (queue, unique_key)" is a unique index on a generated column that is the key's SHA-256
    -- (with the queue, length-prefixed) while the job is live and NULL otherwise: a unique
    -- index admits any number of NULLs. The hash keeps the index key at 32 bytes (queue and
    -- key together may exceed InnoDB's 3072-byte key limit). Maintained by the server on
    -- every insert and state change, so no check-then-insert race exists.
    live_unique_key     BINARY(32) AS (CASE WHEN unique_key IS NOT NULL
                                             AND state IN ('queued', 'running')
                        THEN UNHEX(SHA2(CONCAT(octet_length(queue), ':', queue, unique_key), 256))
                        END) STORED,
    UNIQUE KEY jobs_unique_key_idx (live_unique_key),
    -- The claim index: the claim's WHERE (queue, state = 'queued', run_at <= now) and ORDER BY
    -- (priority, run_at, id). With state second, finished jobs are a range the claim never
    -- enters (the substitute for PostgreSQL's partial index).
    KEY jobs_claim_idx (queue, state, priority, run_at, id),
    -- The reaper's scan: running jobs by lease expiry.
    KEY jobs_lease_idx (state, lease_expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per finished attempt.
CREATE TABLE results (
    id          BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    job_id      BIGINT      NOT NULL,
    attempt     INT         NOT NULL CHECK (attempt >= 1),
    outcome     VARCHAR(16) NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    output      LONGTEXT    NULL,
    error       TEXT        NULL,
    created_at  DATETIME(6) NOT NULL,
    duration_ms BIGINT      NOT NULL DEFAULT 0 CHECK (duration_ms >= 0),
    -- Who ran the attempt: the lease holder's worker_id when its result was recorded.
    worker_id   TEXT        NULL,
    -- One finished attempt is recorded once, whatever the code above does; also serves the
    -- foreign key and "results of job N".
    UNIQUE KEY results_job_attempt_idx (job_id, attempt),
    CONSTRAINT results_job_fk FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Paused queues are not claimed from.
CREATE TABLE paused_queues (
    queue     VARCHAR(255) NOT NULL PRIMARY KEY CHECK (octet_length(queue) BETWEEN 1 AND 255),
    paused_at DATETIME(6)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Periodic schedules: the last tick enqueued, advanced by compare-and-set.
CREATE TABLE schedules (
    name       VARCHAR(255) NOT NULL PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 255),
    last_tick  DATETIME(6)  NOT NULL,
    updated_at DATETIME(6)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
