//! PostgreSQL SQL, and nothing else: the same functions as `backend::sqlite`, with the same
//! names, arguments and results, so the queue logic can sit on either.
//!
//! Differences that matter:
//! - The claim is one statement: a CTE picks due jobs `ORDER BY priority, run_at, id LIMIT n
//!   FOR UPDATE SKIP LOCKED` and the UPDATE marks them running. Concurrent claimers skip each
//!   other's locked rows instead of waiting on them, so no two get the same job and none
//!   queues behind another.
//! - Write transactions are plain `BEGIN` (READ COMMITTED): every write is a single fenced
//!   UPDATE/INSERT whose WHERE PostgreSQL re-checks against the newest row version, so no
//!   stronger isolation is needed and serialization failures cannot happen.
//! - Columns are TIMESTAMPTZ and JSONB; rows are read back as UTC `timestamp` and `text`
//!   (`AT TIME ZONE 'UTC'`, `::text`) into the same row types as SQLite's, and timestamps are
//!   bound as instants (`Timestamptz`), so the session's TimeZone setting never matters.
//! - Sets of leases or ids travel as one JSONB array (`jsonb_array_elements`), as SQLite's
//!   travel through `json_each`.

use std::sync::OnceLock;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};

use crate::backend::stmt::{bind, cached};
use crate::backend::{leases_json, LeaseRow};
use crate::error::{Error, Result};
use crate::models::{JobRow, Lease, NewJob, NewResultRow, ResultRow};

mod manage;
pub use manage::*;

/// The columns of `jobs` as [`JobRow`] reads them.
pub(crate) const JOB_COLUMNS: &str = "id, queue, state, priority, payload::text AS payload, \
    attempts, max_attempts, (run_at AT TIME ZONE 'UTC') AS run_at, \
    (created_at AT TIME ZONE 'UTC') AS created_at, (updated_at AT TIME ZONE 'UTC') AS updated_at, \
    worker_id, (heartbeat_at AT TIME ZONE 'UTC') AS heartbeat_at, \
    (lease_expires_at AT TIME ZONE 'UTC') AS lease_expires_at, last_error, unique_key, \
    (cancel_requested_at AT TIME ZONE 'UTC') AS cancel_requested_at, attempt_base";

/// A UTC timestamp as an instant, for binding to TIMESTAMPTZ.
pub(crate) fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

#[derive(QueryableByName)]
pub(crate) struct Id {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
}

/// Runs `f` as one write transaction (a savepoint inside the caller's transaction).
pub fn write_transaction<T>(
    conn: &mut PgConnection,
    f: impl FnOnce(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    conn.transaction(f)
}

/// A job to insert, as one element of the JSONB array [`insert_jobs`] takes.
#[derive(Debug, serde::Serialize)]
#[allow(missing_docs)] // the columns are documented in the migration
pub struct InsertJob<'a> {
    pub queue: &'a str,
    pub priority: i32,
    /// The payload, embedded as JSON (not as a string).
    pub payload: Box<serde_json::value::RawValue>,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<&'a str>,
}

/// A validated job's row.
fn insert_row(j: &NewJob, now: NaiveDateTime) -> Result<InsertJob<'_>> {
    let payload =
        serde_json::value::RawValue::from_string(j.payload.clone()).map_err(|source| {
            Error::Json {
                what: "payload",
                source,
            }
        })?;
    Ok(InsertJob {
        queue: &j.queue,
        priority: j.priority,
        payload,
        max_attempts: j.max_attempts,
        run_at: j.run_at.unwrap_or_else(|| utc(now)),
        unique_key: j.unique_key.as_deref(),
    })
}

impl super::QueueConnection for PgConnection {
    const GROUP_COMMIT: bool = false;

    delegate_queue_connection!();

    fn insert_new(&mut self, jobs: &[NewJob], now: NaiveDateTime) -> Result<Vec<i64>> {
        let rows = jobs
            .iter()
            .map(|j| insert_row(j, now))
            .collect::<Result<Vec<_>>>()?;
        insert_jobs(self, &rows, now)
    }

    fn insert_new_unique(&mut self, job: &NewJob, now: NaiveDateTime) -> Result<(i64, bool)> {
        insert_unique(self, &insert_row(job, now)?, now)
    }

    fn version(&mut self) -> Result<String> {
        server_version(self)
    }

    fn single_statement<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if crate::backend::in_transaction(self) {
            write_transaction(self, f)
        } else {
            f(self)
        }
    }

    fn succeed_with_result(&mut self, row: &NewResultRow<'_>) -> Result<usize> {
        succeed_with_result(self, row)
    }

    fn notify_enqueued(&mut self) -> Result<()> {
        diesel::sql_query(NOTIFY_ENQUEUED).execute(self)?;
        Ok(())
    }
}

/// The channel enqueues `NOTIFY` and idle workers' listeners `LISTEN` on, as a literal for
/// `concat!`.
macro_rules! enqueued_channel {
    () => {
        "jobdb_enqueued"
    };
}

/// `NOTIFY` on it, as one fixed statement.
const NOTIFY_ENQUEUED: &str = concat!("NOTIFY ", enqueued_channel!());
/// `LISTEN` on it.
pub const LISTEN_ENQUEUED: &str = concat!("LISTEN ", enqueued_channel!());

/// Inserts the rows in one statement and returns their ids in the order given (the sequence
/// numbers rows in the order of `ord`; we sort, as RETURNING's order is unspecified).
pub fn insert_jobs(
    conn: &mut PgConnection,
    rows: &[InsertJob<'_>],
    now: NaiveDateTime,
) -> Result<Vec<i64>> {
    let json = serde_json::to_string(rows).map_err(|source| Error::Json {
        what: "jobs",
        source,
    })?;
    let mut ids: Vec<i64> = diesel::sql_query(
        "INSERT INTO jobs (queue, state, priority, payload, attempts, max_attempts, run_at, \
                           created_at, updated_at, unique_key) \
         SELECT r.queue, 'queued', r.priority, r.payload, 0, r.max_attempts, r.run_at, $2, $2, \
                r.unique_key \
         FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (queue text, priority int, \
                payload jsonb, max_attempts int, run_at timestamptz, unique_key text)) \
              WITH ORDINALITY AS r(queue, priority, payload, max_attempts, run_at, unique_key, ord) \
         ORDER BY r.ord RETURNING id",
    )
    .bind::<Text, _>(json)
    .bind::<Timestamptz, _>(utc(now))
    .load::<Id>(conn)?
    .into_iter()
    .map(|r| r.id)
    .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The claim: one statement takes up to `limit` due jobs of `queue` in (priority, run_at, id)
/// order, skipping rows other claimers hold, and marks them running with a new attempt (the
/// fencing token) and lease.
pub fn claim(
    conn: &mut PgConnection,
    queue: &str,
    limit: u32,
    worker_id: &str,
    now: NaiveDateTime,
    lease_expires_at: NaiveDateTime,
) -> Result<Vec<JobRow>> {
    let now = utc(now);
    let mut rows: Vec<JobRow> = cached(
        claim_sql(),
        (
            bind::<Text, _>(queue),
            bind::<Timestamptz, _>(now),
            bind::<Text, _>(queue),
            bind::<BigInt, _>(i64::from(limit)),
            bind::<Text, _>(worker_id),
            bind::<Timestamptz, _>(now),
            bind::<Timestamptz, _>(utc(lease_expires_at)),
            bind::<Timestamptz, _>(now),
        ),
    )
    .load(conn)?;
    rows.sort_by_key(|r| (r.priority, r.run_at, r.id));
    Ok(rows)
}

/// The claim statement, built once (it embeds the column list).
fn claim_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH picked AS ( \
           SELECT id FROM jobs \
           WHERE queue = ? AND state = 'queued' AND run_at <= ? \
             AND NOT EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue = ?) \
           ORDER BY priority, run_at, id LIMIT ? \
           FOR UPDATE SKIP LOCKED) \
         UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, \
           heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
         WHERE id IN (SELECT id FROM picked) \
         RETURNING {JOB_COLUMNS}"
        )
    })
}

/// `EXPLAIN` of the claim's SELECT, one line per plan node.
pub fn explain_claim(conn: &mut PgConnection) -> Result<String> {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let lines: Vec<Line> = diesel::sql_query(
        "EXPLAIN SELECT id FROM jobs WHERE queue = 'default' AND state = 'queued' \
         AND run_at <= now() ORDER BY priority, run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .load(conn)?;
    Ok(lines
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n"))
}

#[derive(QueryableByName)]
struct Cancel {
    #[diesel(sql_type = Integer)]
    cancel: i32,
}

/// Extends a lease if it is still ours: `None` if it was not, else whether a cancel was
/// requested (the lease is extended either way).
pub fn heartbeat(
    conn: &mut PgConnection,
    job_id: i64,
    attempt: i32,
    now: NaiveDateTime,
    lease_expires_at: NaiveDateTime,
) -> Result<Option<bool>> {
    let now = utc(now);
    let row: Option<Cancel> = cached(
        "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
         WHERE id = ? AND state = 'running' AND attempts = ? \
         RETURNING (cancel_requested_at IS NOT NULL)::int AS cancel",
        (
            bind::<Timestamptz, _>(now),
            bind::<Timestamptz, _>(utc(lease_expires_at)),
            bind::<Timestamptz, _>(now),
            bind::<BigInt, _>(job_id),
            bind::<Integer, _>(attempt),
        ),
    )
    .get_result(conn)
    .optional()?;
    Ok(row.map(|r| r.cancel != 0))
}

/// The leases of a `[[id, attempt], …]` JSONB array, as a derived table `l(lid, latt)`.
const LEASES: &str = "(SELECT (e->>0)::bigint AS lid, (e->>1)::int AS latt \
                       FROM jsonb_array_elements(?::jsonb) e) AS l";

/// Extends many leases in one statement; returns `(lease, cancel requested)` for each lease
/// that was still ours (keyed by lease, as on SQLite).
pub fn heartbeat_set(
    conn: &mut PgConnection,
    leases: &[Lease],
    now: NaiveDateTime,
    lease_expires_at: NaiveDateTime,
) -> Result<Vec<(Lease, bool)>> {
    let now = utc(now);
    static SQL: OnceLock<String> = OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
             FROM {LEASES} \
             WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
             RETURNING jobs.id AS id, jobs.attempts AS attempts, \
                       (jobs.cancel_requested_at IS NOT NULL)::int AS cancel"
        )
    });
    let rows: Vec<LeaseRow> = cached(
        sql.as_str(),
        (
            bind::<Timestamptz, _>(now),
            bind::<Timestamptz, _>(utc(lease_expires_at)),
            bind::<Timestamptz, _>(now),
            bind::<Text, _>(leases_json(leases)?),
        ),
    )
    .load(conn)?;
    Ok(rows.iter().map(|r| (r.lease(), r.cancel != 0)).collect())
}

/// Marks many jobs succeeded in one statement, each only if its lease is still ours and no
/// cancel was requested; returns the leases marked.
pub fn succeed_set(
    conn: &mut PgConnection,
    leases: &[Lease],
    now: NaiveDateTime,
) -> Result<Vec<Lease>> {
    static SQL: OnceLock<String> = OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = ?, \
               last_error = NULL \
             FROM {LEASES} \
             WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
               AND jobs.cancel_requested_at IS NULL \
             RETURNING jobs.id AS id, jobs.attempts AS attempts, 0 AS cancel"
        )
    });
    let rows: Vec<LeaseRow> = cached(
        sql.as_str(),
        (
            bind::<Timestamptz, _>(utc(now)),
            bind::<Text, _>(leases_json(leases)?),
        ),
    )
    .load(conn)?;
    Ok(rows.iter().map(LeaseRow::lease).collect())
}

/// Inserts many succeeded results rows in one statement. `rows_json` is
/// `[[job_id, attempt, output_json_text, duration_ms], …]`.
pub fn insert_succeeded_results(
    conn: &mut PgConnection,
    rows_json: &str,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(cached(
        "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms) \
         SELECT (e->>0)::bigint, (e->>1)::int, 'succeeded', (e->>2)::jsonb, NULL, ?, \
                (e->>3)::bigint \
         FROM jsonb_array_elements(?::jsonb) e",
        (bind::<Timestamptz, _>(utc(now)), bind::<Text, _>(rows_json)),
    )
    .execute(conn)?)
}

/// Marks a job succeeded if the lease is still ours and no cancel was requested. Rows
/// changed (0 or 1).
pub fn mark_succeeded(
    conn: &mut PgConnection,
    job_id: i64,
    attempt: i32,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(cached(
        "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = ?, \
           last_error = NULL \
         WHERE id = ? AND state = 'running' AND attempts = ? AND cancel_requested_at IS NULL",
        (
            bind::<Timestamptz, _>(utc(now)),
            bind::<BigInt, _>(job_id),
            bind::<Integer, _>(attempt),
        ),
    )
    .execute(conn)?)
}

/// Marks a failed attempt if the lease is still ours: `cancelled` if a cancel was requested,
/// else back to `queued` at `retry_at` while attempts remain, else `dead`. Returns the new
/// state, or `None` if the lease was not ours.
pub fn mark_failed(
    conn: &mut PgConnection,
    job_id: i64,
    attempt: i32,
    error: &str,
    now: NaiveDateTime,
    retry_at: NaiveDateTime,
) -> Result<Option<String>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        state: String,
    }
    let row: Option<Row> = diesel::sql_query(
        "UPDATE jobs SET \
           state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                        WHEN attempts - attempt_base >= max_attempts THEN 'dead' \
                        ELSE 'queued' END, \
           run_at = CASE WHEN cancel_requested_at IS NOT NULL \
                           OR attempts - attempt_base >= max_attempts THEN run_at ELSE $1 END, \
           last_error = $2, lease_expires_at = NULL, updated_at = $3 \
         WHERE id = $4 AND state = 'running' AND attempts = $5 RETURNING state",
    )
    .bind::<Timestamptz, _>(utc(retry_at))
    .bind::<Text, _>(error)
    .bind::<Timestamptz, _>(utc(now))
    .bind::<BigInt, _>(job_id)
    .bind::<Integer, _>(attempt)
    .get_result(conn)
    .optional()?;
    Ok(row.map(|r| r.state))
}

/// Puts a running job back to `queued` (shutdown) if the lease is still ours; `cancelled`
/// instead when a cancel was requested. `attempt_base` moves up by one, so the released
/// attempt does not count against `max_attempts`.
pub fn release(
    conn: &mut PgConnection,
    job_id: i64,
    attempt: i32,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(diesel::sql_query(
        "UPDATE jobs SET \
           state = CASE WHEN cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END, \
           attempt_base = attempt_base + 1, \
           run_at = $1, lease_expires_at = NULL, updated_at = $1 \
         WHERE id = $2 AND state = 'running' AND attempts = $3",
    )
    .bind::<Timestamptz, _>(utc(now))
    .bind::<BigInt, _>(job_id)
    .bind::<Integer, _>(attempt)
    .execute(conn)?)
}

/// `attempts - attempt_base` while the lease holds, else `None`.
pub fn attempts_used(conn: &mut PgConnection, job_id: i64, attempt: i32) -> Result<Option<i32>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Integer)]
        used: i32,
    }
    let row: Option<Row> = cached(
        "SELECT attempts - attempt_base AS used FROM jobs \
         WHERE id = ? AND state = 'running' AND attempts = ?",
        (bind::<BigInt, _>(job_id), bind::<Integer, _>(attempt)),
    )
    .get_result(conn)
    .optional()?;
    Ok(row.map(|r| r.used))
}

/// Marks a job succeeded (if the lease is still ours and no cancel was requested) and inserts
/// its results row, in ONE statement. Rows changed (0 or 1).
pub fn succeed_with_result(conn: &mut PgConnection, row: &NewResultRow<'_>) -> Result<usize> {
    let now = utc(row.created_at);
    Ok(cached(
        "WITH done AS ( \
           UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = ?, \
             last_error = NULL \
           WHERE id = ? AND state = 'running' AND attempts = ? AND cancel_requested_at IS NULL \
           RETURNING id, attempts) \
         INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms) \
         SELECT id, attempts, ?, ?::jsonb, ?, ?, ? FROM done",
        (
            bind::<Timestamptz, _>(now),
            bind::<BigInt, _>(row.job_id),
            bind::<Integer, _>(row.attempt),
            bind::<Text, _>(row.outcome),
            bind::<Nullable<Text>, _>(row.output),
            bind::<Nullable<Text>, _>(row.error),
            bind::<Timestamptz, _>(now),
            bind::<BigInt, _>(row.duration_ms),
        ),
    )
    .execute(conn)?)
}

/// Inserts one results row (the output is JSON text; it becomes JSONB).
pub fn insert_result(conn: &mut PgConnection, row: &NewResultRow<'_>) -> Result<()> {
    cached(
        "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms) \
         VALUES (?, ?, ?, ?::jsonb, ?, ?, ?)",
        (
            bind::<BigInt, _>(row.job_id),
            bind::<Integer, _>(row.attempt),
            bind::<Text, _>(row.outcome),
            bind::<Nullable<Text>, _>(row.output),
            bind::<Nullable<Text>, _>(row.error),
            bind::<Timestamptz, _>(utc(row.created_at)),
            bind::<BigInt, _>(row.duration_ms),
        ),
    )
    .execute(conn)?;
    Ok(())
}

/// Ids of running jobs whose lease expired.
pub fn expired_leases(conn: &mut PgConnection, now: NaiveDateTime) -> Result<Vec<i64>> {
    let rows: Vec<Id> =
        diesel::sql_query("SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < $1")
            .bind::<Timestamptz, _>(utc(now))
            .load(conn)?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Reaps the listed jobs (a JSON array of ids) whose lease is still expired: requeued, dead
/// when out of attempts, or cancelled when requested, each with a failed results row. Returns
/// the number reaped.
///
/// ONE statement: the fenced UPDATE feeds the INSERT. Two statements (INSERT, then UPDATE)
/// let a heartbeat commit in between under READ COMMITTED: the INSERT saw the old, expired
/// lease and wrote a failed row, the UPDATE saw the new one and skipped the job, leaving it
/// `running` with a stray result that broke its owner's completion and every later reap.
/// Here the UPDATE takes each row lock and re-checks the predicate on the newest version, and
/// only the rows it changed get a result.
pub fn reap_ids(
    conn: &mut PgConnection,
    ids_json: &str,
    error: &str,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(diesel::sql_query(
        "WITH reaped AS ( \
           UPDATE jobs SET \
             state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                          WHEN attempts - attempt_base >= max_attempts THEN 'dead' \
                          ELSE 'queued' END, \
             run_at = $3, last_error = $2, lease_expires_at = NULL, updated_at = $3 \
           WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text($1::jsonb)) \
             AND state = 'running' AND lease_expires_at < $3 \
           RETURNING id, attempts) \
         INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms) \
         SELECT id, attempts, 'failed', NULL, $2, $3, 0 FROM reaped",
    )
    .bind::<Text, _>(ids_json)
    .bind::<Text, _>(error)
    .bind::<Timestamptz, _>(utc(now))
    .execute(conn)?)
}

/// One job row, `None` if no such id.
pub fn find_job(conn: &mut PgConnection, job_id: i64) -> Result<Option<JobRow>> {
    Ok(
        diesel::sql_query(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind::<BigInt, _>(job_id)
            .get_result(conn)
            .optional()?,
    )
}

/// Whether a job with this id exists.
pub fn job_exists(conn: &mut PgConnection, job_id: i64) -> Result<bool> {
    let r: Count = cached(
        "SELECT count(*) AS n FROM jobs WHERE id = ?",
        (bind::<BigInt, _>(job_id),),
    )
    .get_result(conn)?;
    Ok(r.n > 0)
}

/// All results rows of a job, by attempt.
pub fn results_of(conn: &mut PgConnection, job_id: i64) -> Result<Vec<ResultRow>> {
    Ok(diesel::sql_query(
        "SELECT id, job_id, attempt, outcome, output::text AS output, error, \
                (created_at AT TIME ZONE 'UTC') AS created_at, duration_ms \
         FROM results WHERE job_id = $1 ORDER BY attempt, id",
    )
    .bind::<BigInt, _>(job_id)
    .load(conn)?)
}

/// `(queue, state, count)` for every queue (or one).
pub fn count_by_queue_state(
    conn: &mut PgConnection,
    queue: Option<&str>,
) -> Result<Vec<(String, String, i64)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        queue: String,
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT queue, state, count(*) AS n FROM jobs \
         WHERE $1::text IS NULL OR queue = $1 GROUP BY queue, state",
    )
    .bind::<Nullable<Text>, _>(queue)
    .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.queue, r.state, r.n)).collect())
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Queued jobs of `queue`, due or not (served by the claim index).
pub fn queued_count(conn: &mut PgConnection, queue: &str) -> Result<i64> {
    let r: Count = cached(
        "SELECT count(*) AS n FROM jobs WHERE queue = ? AND state = 'queued'",
        (bind::<Text, _>(queue),),
    )
    .get_result(conn)?;
    Ok(r.n)
}

/// Whether any job of `queue` is running.
pub fn any_running(conn: &mut PgConnection, queue: &str) -> Result<bool> {
    let r: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM (SELECT 1 FROM jobs WHERE queue = $1 AND state = 'running' \
         LIMIT 1) x",
    )
    .bind::<Text, _>(queue)
    .get_result(conn)?;
    Ok(r.n > 0)
}

/// `SHOW server_version`.
pub fn server_version(conn: &mut PgConnection) -> Result<String> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        server_version: String,
    }
    let r: Row = diesel::sql_query("SHOW server_version").get_result(conn)?;
    Ok(r.server_version)
}

/// Exactly-once audit of one queue: (jobs, jobs not succeeded, jobs with more than one
/// succeeded results row).
pub fn audit(conn: &mut PgConnection, queue: &str) -> Result<(i64, i64, i64)> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        jobs: i64,
        #[diesel(sql_type = BigInt)]
        not_succeeded: i64,
        #[diesel(sql_type = BigInt)]
        duplicated: i64,
    }
    let r: Row = diesel::sql_query(
        "SELECT count(*) AS jobs, \
                count(*) FILTER (WHERE state <> 'succeeded') AS not_succeeded, \
                count(*) FILTER (WHERE (SELECT count(*) FROM results r WHERE r.job_id = j.id \
                                        AND r.outcome = 'succeeded') > 1) AS duplicated \
         FROM jobs j WHERE queue = $1",
    )
    .bind::<Text, _>(queue)
    .get_result(conn)?;
    Ok((r.jobs, r.not_succeeded, r.duplicated))
}

/// Inserts `n` already-succeeded jobs on `queue` in one statement (benchmark history).
pub fn insert_finished(
    conn: &mut PgConnection,
    queue: &str,
    n: i64,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(diesel::sql_query(
        "INSERT INTO jobs (queue, state, priority, payload, attempts, max_attempts, run_at, \
                           created_at, updated_at) \
         SELECT $2, 'succeeded', 0, '{\"history\":true}'::jsonb, 1, 5, $3, $3, $3 \
         FROM generate_series(1, $1)",
    )
    .bind::<BigInt, _>(n)
    .bind::<Text, _>(queue)
    .bind::<Timestamptz, _>(utc(now))
    .execute(conn)?)
}
