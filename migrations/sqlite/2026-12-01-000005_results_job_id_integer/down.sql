-- Back to the BIGINT declaration (the same rows; SQLite stores both alike).
CREATE TABLE results_old (
    id          INTEGER PRIMARY KEY NOT NULL,
    job_id      BIGINT  NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL CHECK (attempt >= 1),
    outcome     TEXT    NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    output      TEXT    CHECK (output IS NULL OR json_valid(output)),
    error       TEXT,
    created_at  TIMESTAMP NOT NULL,
    duration_ms BIGINT  NOT NULL DEFAULT 0 CHECK (duration_ms >= 0)
);
INSERT INTO results_old (id, job_id, attempt, outcome, output, error, created_at, duration_ms)
    SELECT id, job_id, attempt, outcome, output, error, created_at, duration_ms FROM results;
DROP TABLE results;
ALTER TABLE results_old RENAME TO results;
CREATE UNIQUE INDEX results_job_attempt_idx ON results (job_id, attempt);
