//! SQLite SQL, and nothing else: each function is one or two statements. The queue logic
//! (what to call, in which transaction, with which timestamps) lives in `queue.rs`.
//!
//! `state = 'queued'` / `'running'` are written as literals, never bound: the partial claim
//! index `WHERE state = 'queued'` can only be used when the query names the same constant.

use chrono::NaiveDateTime;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamp};
use diesel::sqlite::SqliteConnection;

use super::stmt::{bind, cached};
use crate::error::{Error, Result};
use crate::models::{JobRow, NewResultRow, ResultRow};

mod manage;
use crate::schema::{jobs, results};
pub use manage::*;

/// Runs `f` as one write transaction. Outside a transaction it is `BEGIN IMMEDIATE`, which
/// takes the write lock up front: a read followed by a write in a DEFERRED transaction can fail
/// with BUSY_SNAPSHOT, which no busy handler can cure. Inside the caller's own transaction it
/// becomes a savepoint, so the work commits or rolls back with the caller's rows.
pub fn write_transaction<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&mut SqliteConnection) -> Result<T>,
) -> Result<T> {
    if in_transaction(conn) {
        return conn.transaction(f);
    }
    let result = conn.immediate_transaction(f);
    if result.is_err() && in_transaction(conn) {
        // A COMMIT that failed (e.g. busy) can leave the transaction open; roll it back so the
        // connection is clean for the retry, which re-runs the whole transaction. If even the
        // rollback fails, the pool's broken-connection check discards this connection.
        let _ = AnsiTransactionManager::rollback_transaction(conn);
    }
    result
}

/// Whether a transaction is open on `conn` (or left in error, needing a rollback).
pub fn in_transaction(conn: &mut SqliteConnection) -> bool {
    use diesel::connection::TransactionManagerStatus;
    match AnsiTransactionManager::transaction_manager_status_mut(conn) {
        TransactionManagerStatus::Valid(status) => status.transaction_depth().is_some(),
        // An in-error status means a transaction is open and must be rolled back.
        TransactionManagerStatus::InError => true,
    }
}

/// A row to insert into `jobs`: every column given, so a multi-row insert needs no DEFAULT.
#[derive(Insertable)]
#[diesel(table_name = jobs)]
pub struct InsertJob<'a> {
    pub queue: &'a str,
    pub state: &'a str,
    pub priority: i32,
    pub payload: &'a str,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub unique_key: Option<&'a str>,
}

/// Inserts the rows in one statement and returns their ids in the order given. AUTOINCREMENT
/// assigns ascending ids in VALUES order; RETURNING's row order is unspecified, so we sort.
pub fn insert_jobs(conn: &mut SqliteConnection, rows: &[InsertJob<'_>]) -> Result<Vec<i64>> {
    let mut ids: Vec<i64> = diesel::insert_into(jobs::table)
        .values(rows)
        .returning(jobs::id)
        .get_results(conn)?;
    ids.sort_unstable();
    Ok(ids)
}

/// The claim statement. Its inner SELECT is served by `jobs_claim_idx` with no sort step; the
/// paused check is a constant subquery (one primary-key probe per claim, not per row).
const CLAIM_SQL: &str =
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, \
     heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
     WHERE id IN (SELECT id FROM jobs WHERE queue = ? AND state = 'queued' AND run_at <= ? \
                  AND NOT EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue = ?) \
                  ORDER BY priority, run_at, id LIMIT {limit}) \
     RETURNING *";

/// The claim statement for a given LIMIT. The limit is inlined, not bound: SQLite marks a
/// bound `LIMIT ?` so that every rebind (Diesel rebinds on each execution) expires the
/// prepared statement, which then re-prepares on every claim. Inlined, each distinct limit
/// is one cached statement (callers use a handful of batch sizes).
fn claim_sql(limit: u32) -> String {
    CLAIM_SQL.replace("{limit}", &limit.to_string())
}

/// `EXPLAIN QUERY PLAN` of the claim statement, one line per plan step.
pub fn explain_claim(conn: &mut SqliteConnection) -> Result<String> {
    #[derive(QueryableByName)]
    struct Step {
        #[diesel(sql_type = Text)]
        detail: String,
    }
    let steps: Vec<Step> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {}", claim_sql(1)))
        .bind::<Text, _>("")
        .bind::<Timestamp, _>(NaiveDateTime::default())
        .bind::<Timestamp, _>(NaiveDateTime::default())
        .bind::<Timestamp, _>(NaiveDateTime::default())
        .bind::<Text, _>("default")
        .bind::<Timestamp, _>(NaiveDateTime::default())
        .bind::<Text, _>("default")
        .load(conn)?;
    Ok(steps
        .into_iter()
        .map(|s| s.detail)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The claim: one statement takes up to `limit` due jobs of `queue` in (priority, run_at, id)
/// order, marks them running, bumps attempts (the new fencing token) and sets the lease.
pub fn claim(
    conn: &mut SqliteConnection,
    queue: &str,
    limit: u32,
    worker_id: &str,
    now: NaiveDateTime,
    lease_expires_at: NaiveDateTime,
) -> Result<Vec<JobRow>> {
    let mut rows: Vec<JobRow> = cached(
        claim_sql(limit),
        (
            bind::<Text, _>(worker_id),
            bind::<Timestamp, _>(now),
            bind::<Timestamp, _>(lease_expires_at),
            bind::<Timestamp, _>(now),
            bind::<Text, _>(queue),
            bind::<Timestamp, _>(now),
            bind::<Text, _>(queue),
        ),
    )
    .load(conn)?;
    rows.sort_by_key(|r| (r.priority, r.run_at, r.id));
    Ok(rows)
}

/// Extends a lease if it is still ours. Returns `None` if it was not, else whether a cancel
/// was requested (the lease is extended either way, so the handler can wind down).
/// (`heartbeat_set` does the same for many leases; this single-row form by primary key is the
/// cheaper hot path.)
pub fn heartbeat(
    conn: &mut SqliteConnection,
    job_id: i64,
    attempt: i32,
    now: NaiveDateTime,
    lease_expires_at: NaiveDateTime,
) -> Result<Option<bool>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Integer)]
        cancel: i32,
    }
    let row: Option<Row> = cached(
        "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
         WHERE id = ? AND state = 'running' AND attempts = ? \
         RETURNING cancel_requested_at IS NOT NULL AS cancel",
        (
            bind::<Timestamp, _>(now),
            bind::<Timestamp, _>(lease_expires_at),
            bind::<Timestamp, _>(now),
            bind::<BigInt, _>(job_id),
            bind::<Integer, _>(attempt),
        ),
    )
    .get_result(conn)
    .optional()?;
    Ok(row.map(|r| r.cancel != 0))
}

/// Extends many leases in one statement. `leases_json` is `[[id, attempt], …]`; returns
/// `(id, cancel requested)` for each lease that was still ours (the others are not touched).
pub fn heartbeat_set(
    conn: &mut SqliteConnection,
    leases_json: &str,
    now: NaiveDateTime,
    lease_expires_at: NaiveDateTime,
) -> Result<Vec<(i64, bool)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Integer)]
        cancel: i32,
    }
    let rows: Vec<Row> = cached(
        "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
         FROM (SELECT value ->> 0 AS lid, value ->> 1 AS latt FROM json_each(?)) AS l \
         WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
         RETURNING jobs.id AS id, jobs.cancel_requested_at IS NOT NULL AS cancel",
        (
            bind::<Timestamp, _>(now),
            bind::<Timestamp, _>(lease_expires_at),
            bind::<Timestamp, _>(now),
            bind::<Text, _>(leases_json),
        ),
    )
    .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.id, r.cancel != 0)).collect())
}

/// Marks many jobs succeeded in one statement, each only if its lease is still ours.
/// `leases_json` is `[[id, attempt], …]`; returns the ids that were marked.
pub fn succeed_set(
    conn: &mut SqliteConnection,
    leases_json: &str,
    now: NaiveDateTime,
) -> Result<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let rows: Vec<Row> = cached(
        "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = ?, \
           last_error = NULL \
         FROM (SELECT value ->> 0 AS lid, value ->> 1 AS latt FROM json_each(?)) AS l \
         WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
           AND jobs.cancel_requested_at IS NULL \
         RETURNING jobs.id AS id",
        (bind::<Timestamp, _>(now), bind::<Text, _>(leases_json)),
    )
    .load(conn)?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Inserts many succeeded results rows in one statement. `rows_json` is
/// `[[job_id, attempt, output_json_text, duration_ms], …]`.
pub fn insert_succeeded_results(
    conn: &mut SqliteConnection,
    rows_json: &str,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(cached(
        "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms) \
         SELECT value ->> 0, value ->> 1, 'succeeded', value ->> 2, NULL, ?, value ->> 3 \
         FROM json_each(?)",
        (bind::<Timestamp, _>(now), bind::<Text, _>(rows_json)),
    )
    .execute(conn)?)
}

/// Marks a job succeeded if the lease is still ours and no cancel was requested. Returns rows
/// changed (0 or 1).
pub fn mark_succeeded(
    conn: &mut SqliteConnection,
    job_id: i64,
    attempt: i32,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(cached(
        "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = ?, \
         last_error = NULL \
         WHERE id = ? AND state = 'running' AND attempts = ? AND cancel_requested_at IS NULL",
        (
            bind::<Timestamp, _>(now),
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
    conn: &mut SqliteConnection,
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
    let row: Option<Row> = cached(
        "UPDATE jobs SET \
           state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                        WHEN attempts - attempt_base >= max_attempts THEN 'dead' ELSE 'queued' END, \
           run_at = CASE WHEN cancel_requested_at IS NOT NULL \
                           OR attempts - attempt_base >= max_attempts THEN run_at ELSE ? END, \
           last_error = ?, lease_expires_at = NULL, updated_at = ? \
         WHERE id = ? AND state = 'running' AND attempts = ? RETURNING state",
        (
            bind::<Timestamp, _>(retry_at),
            bind::<Text, _>(error),
            bind::<Timestamp, _>(now),
            bind::<BigInt, _>(job_id),
            bind::<Integer, _>(attempt),
        ),
    )
    .get_result(conn)
    .optional()?;
    Ok(row.map(|r| r.state))
}

/// Puts a running job back to `queued` (shutdown), if the lease is still ours; a job whose
/// cancel was requested becomes `cancelled` instead.
pub fn release(
    conn: &mut SqliteConnection,
    job_id: i64,
    attempt: i32,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(cached(
        "UPDATE jobs SET \
           state = CASE WHEN cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END, \
           run_at = ?, lease_expires_at = NULL, updated_at = ? \
         WHERE id = ? AND state = 'running' AND attempts = ?",
        (
            bind::<Timestamp, _>(now),
            bind::<Timestamp, _>(now),
            bind::<BigInt, _>(job_id),
            bind::<Integer, _>(attempt),
        ),
    )
    .execute(conn)?)
}

/// Inserts one results row.
pub fn insert_result(conn: &mut SqliteConnection, row: &NewResultRow<'_>) -> Result<()> {
    cached(
        "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            bind::<BigInt, _>(row.job_id),
            bind::<Integer, _>(row.attempt),
            bind::<Text, _>(row.outcome),
            bind::<Nullable<Text>, _>(row.output),
            bind::<Nullable<Text>, _>(row.error),
            bind::<Timestamp, _>(row.created_at),
            bind::<BigInt, _>(row.duration_ms),
        ),
    )
    .execute(conn)?;
    Ok(())
}

/// Ids of running jobs whose lease expired. A scan of the table (no index is kept on running
/// leases: see the migration), so callers run it on a reader connection, outside the write lock.
pub fn expired_leases(conn: &mut SqliteConnection, now: NaiveDateTime) -> Result<Vec<i64>> {
    Ok(jobs::table
        .filter(jobs::state.eq("running"))
        .filter(jobs::lease_expires_at.lt(now))
        .select(jobs::id)
        .load(conn)?)
}

/// Reaps the listed jobs (a JSON array of ids) whose lease is still expired: records a failed
/// attempt for each, then requeues it (or marks it dead when out of attempts, or cancelled when
/// a cancel was requested). Both statements
/// re-check the predicate inside the write transaction, so a stale id list is harmless.
/// Returns the number of jobs reaped.
pub fn reap_ids(
    conn: &mut SqliteConnection,
    ids_json: &str,
    error: &str,
    now: NaiveDateTime,
) -> Result<usize> {
    cached(
        "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms) \
         SELECT id, attempts, 'failed', NULL, ?, ?, 0 FROM jobs \
         WHERE id IN (SELECT value FROM json_each(?)) \
           AND state = 'running' AND lease_expires_at < ?",
        (
            bind::<Text, _>(error),
            bind::<Timestamp, _>(now),
            bind::<Text, _>(ids_json),
            bind::<Timestamp, _>(now),
        ),
    )
    .execute(conn)?;
    Ok(cached(
        "UPDATE jobs SET \
           state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                        WHEN attempts - attempt_base >= max_attempts THEN 'dead' ELSE 'queued' END, \
           run_at = ?, last_error = ?, lease_expires_at = NULL, updated_at = ? \
         WHERE id IN (SELECT value FROM json_each(?)) \
           AND state = 'running' AND lease_expires_at < ?",
        (
            bind::<Timestamp, _>(now),
            bind::<Text, _>(error),
            bind::<Timestamp, _>(now),
            bind::<Text, _>(ids_json),
            bind::<Timestamp, _>(now),
        ),
    )
    .execute(conn)?)
}

/// One job row, `None` if no such id.
pub fn find_job(conn: &mut SqliteConnection, job_id: i64) -> Result<Option<JobRow>> {
    Ok(jobs::table
        .find(job_id)
        .select(JobRow::as_select())
        .first(conn)
        .optional()?)
}

/// Whether a job with this id exists.
pub fn job_exists(conn: &mut SqliteConnection, job_id: i64) -> Result<bool> {
    Ok(diesel::select(diesel::dsl::exists(jobs::table.find(job_id))).get_result(conn)?)
}

/// All results rows of a job, by attempt.
pub fn results_of(conn: &mut SqliteConnection, job_id: i64) -> Result<Vec<ResultRow>> {
    Ok(results::table
        .filter(results::job_id.eq(job_id))
        .order((results::attempt, results::id))
        .select(ResultRow::as_select())
        .load(conn)?)
}

/// `(queue, state, count)` for every queue (or one).
pub fn count_by_queue_state(
    conn: &mut SqliteConnection,
    queue: Option<&str>,
) -> Result<Vec<(String, String, i64)>> {
    let mut q = jobs::table
        .group_by((jobs::queue, jobs::state))
        .select((jobs::queue, jobs::state, diesel::dsl::count_star()))
        .into_boxed();
    if let Some(queue) = queue {
        q = q.filter(jobs::queue.eq(queue));
    }
    Ok(q.load(conn)?)
}

/// Queued jobs of `queue`, due or not (served by the claim index).
pub fn queued_count(conn: &mut SqliteConnection, queue: &str) -> Result<i64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let row: Row = cached(
        "SELECT count(*) AS n FROM jobs WHERE queue = ? AND state = 'queued'",
        (bind::<Text, _>(queue),),
    )
    .get_result(conn)?;
    Ok(row.n)
}

/// Whether any job of `queue` is running (a scan: no index on running jobs).
pub fn any_running(conn: &mut SqliteConnection, queue: &str) -> Result<bool> {
    Ok(diesel::select(diesel::dsl::exists(
        jobs::table
            .filter(jobs::queue.eq(queue))
            .filter(jobs::state.eq("running")),
    ))
    .get_result(conn)?)
}

/// `sqlite_version()`.
pub fn sqlite_version(conn: &mut SqliteConnection) -> Result<String> {
    Ok(diesel::select(diesel::dsl::sql::<Text>("sqlite_version()")).get_result(conn)?)
}

/// Exactly-once audit of one queue, in SQL: (jobs, jobs not succeeded, jobs with more than one
/// succeeded results row).
pub fn audit(conn: &mut SqliteConnection, queue: &str) -> Result<(i64, i64, i64)> {
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
                coalesce(sum(state <> 'succeeded'), 0) AS not_succeeded, \
                coalesce(sum((SELECT count(*) FROM results r WHERE r.job_id = j.id \
                              AND r.outcome = 'succeeded') > 1), 0) AS duplicated \
         FROM jobs j WHERE queue = ?",
    )
    .bind::<Text, _>(queue)
    .get_result(conn)?;
    Ok((r.jobs, r.not_succeeded, r.duplicated))
}

/// How hard a checkpoint tries (SQLite's `wal_checkpoint` modes we use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copies what it can without waiting for any lock; never blocks readers or writers.
    Passive,
    /// Takes the write lock, copies everything, waits (busy handler) for readers of the old
    /// WAL, then resets the WAL and truncates its file to zero bytes.
    Truncate,
}

/// What `PRAGMA wal_checkpoint` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct CheckpointOutcome {
    /// 1 when the checkpoint could not finish (a lock or a reader was in the way), else 0.
    /// Not an error: the work done so far stays done.
    #[diesel(sql_type = Integer)]
    pub busy: i32,
    /// Frames in the WAL (-1 when not in WAL mode).
    #[diesel(sql_type = BigInt, column_name = log)]
    pub log_frames: i64,
    /// Frames copied into the database so far.
    #[diesel(sql_type = BigInt)]
    pub checkpointed: i64,
}

/// `PRAGMA wal_checkpoint(mode)`. The statement text is fixed per mode (no user input).
pub fn checkpoint(conn: &mut SqliteConnection, mode: CheckpointMode) -> Result<CheckpointOutcome> {
    let sql = match mode {
        CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        CheckpointMode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    Ok(diesel::sql_query(sql).get_result(conn)?)
}

/// `PRAGMA page_size`, in bytes.
pub fn page_size(conn: &mut SqliteConnection) -> Result<u64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        page_size: i64,
    }
    let r: Row = diesel::sql_query("PRAGMA page_size").get_result(conn)?;
    u64::try_from(r.page_size).map_err(|_| Error::CorruptRow {
        table: "pragma page_size",
        reason: format!("negative page size {}", r.page_size),
    })
}

/// Inserts `n` already-succeeded jobs on `queue` in one statement (for `jobdb bench --finished`:
/// measuring the claim with a large history in the table).
pub fn insert_finished(
    conn: &mut SqliteConnection,
    queue: &str,
    n: i64,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(diesel::sql_query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
         INSERT INTO jobs (queue, state, priority, payload, attempts, max_attempts, run_at, \
                           created_at, updated_at) \
         SELECT ?, 'succeeded', 0, '{\"history\":true}', 1, 5, ?, ?, ? FROM n",
    )
    .bind::<BigInt, _>(n)
    .bind::<Text, _>(queue)
    .bind::<Timestamp, _>(now)
    .bind::<Timestamp, _>(now)
    .bind::<Timestamp, _>(now)
    .execute(conn)?)
}
