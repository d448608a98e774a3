-- `results.job_id` was declared BIGINT, `jobs.id` INTEGER PRIMARY KEY (the rowid). SQLite stores
-- both as the same 64-bit integer, but `diesel print-schema` in an app without
-- `sqlite_integer_primary_key_is_bigint` printed `jobs.id -> Integer` and
-- `results.job_id -> BigInt`, and the `joinable!` it printed did not compile. Declared INTEGER
-- and referencing the rowid, job_id prints as jobs.id does under either setting (Integer
-- without it, BigInt with it, as diesel's CLI maps a column that references a rowid).
-- SQLite cannot change a column's declared type in place: the table is rebuilt (one copy of
-- the results rows, once), with the same columns in the same order and the same index.
CREATE TABLE results_new (
    -- A plain rowid, not AUTOINCREMENT: that would rewrite sqlite_sequence on every
    -- completion. A result is identified by (job_id, attempt); its id is only a row handle.
    id          INTEGER PRIMARY KEY NOT NULL,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL CHECK (attempt >= 1),
    outcome     TEXT    NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    output      TEXT    CHECK (output IS NULL OR json_valid(output)),
    error       TEXT,
    created_at  TIMESTAMP NOT NULL,
    duration_ms BIGINT  NOT NULL DEFAULT 0 CHECK (duration_ms >= 0)
);
INSERT INTO results_new (id, job_id, attempt, outcome, output, error, created_at, duration_ms)
    SELECT id, job_id, attempt, outcome, output, error, created_at, duration_ms FROM results;
DROP TABLE results;
ALTER TABLE results_new RENAME TO results;
-- One finished attempt can only be recorded once; it also serves the foreign key and
-- "results of job N" lookups.
CREATE UNIQUE INDEX results_job_attempt_idx ON results (job_id, attempt);
