-- One row per finished attempt of a job (succeeded or failed).
CREATE TABLE results (
    -- A plain rowid, not AUTOINCREMENT: that would rewrite sqlite_sequence on every
    -- completion. A result is identified by (job_id, attempt); its id is only a row handle.
    id          INTEGER PRIMARY KEY NOT NULL,
    job_id      BIGINT  NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL CHECK (attempt >= 1),
    outcome     TEXT    NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    output      TEXT    CHECK (output IS NULL OR json_valid(output)),
    error       TEXT,
    created_at  TIMESTAMP NOT NULL,
    duration_ms BIGINT  NOT NULL DEFAULT 0 CHECK (duration_ms >= 0)
);

-- One finished attempt can only be recorded once: a second completion of the same attempt
-- is refused by the database itself, whatever the code above it does. It also serves the
-- foreign key (ON DELETE CASCADE) and "results of job N" lookups.
CREATE UNIQUE INDEX results_job_attempt_idx ON results (job_id, attempt);
