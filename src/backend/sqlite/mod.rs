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

use super::in_transaction;
use super::stmt::{bind, cached};
use crate::error::Result;
use crate::models::{JobRow, NewJob, NewResultRow, ResultRow};

use crate::schema::jobs;

mod batch;
mod manage;
mod read;

pub use batch::*;
pub use manage::*;
pub use read::*;

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

impl super::QueueConnection for SqliteConnection {
    const GROUP_COMMIT: bool = true;

    delegate_queue_connection!();

    fn insert_new(&mut self, jobs: &[NewJob], now: NaiveDateTime) -> Result<Vec<i64>> {
        insert_jobs(self, &insert_rows(jobs, now))
    }

    fn insert_new_unique(&mut self, job: &NewJob, now: NaiveDateTime) -> Result<(i64, bool)> {
        insert_unique(self, &insert_row(job, now))
    }

    fn version(&mut self) -> Result<String> {
        sqlite_version(self)
    }

    fn single_statement<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        write_transaction(self, f)
    }

    fn succeed_with_result(&mut self, row: &NewResultRow<'_>) -> Result<usize> {
        let changed = mark_succeeded(self, row.job_id, row.attempt, row.created_at)?;
        if changed == 1 {
            insert_result(self, row)?;
        }
        Ok(changed)
    }
}

/// The rows to insert for validated jobs.
fn insert_rows(jobs: &[NewJob], now: NaiveDateTime) -> Vec<InsertJob<'_>> {
    jobs.iter().map(|j| insert_row(j, now)).collect()
}

/// A validated job's row: queued, no attempts yet, due at `run_at` or now.
fn insert_row(j: &NewJob, now: NaiveDateTime) -> InsertJob<'_> {
    InsertJob {
        queue: &j.queue,
        state: "queued",
        priority: j.priority,
        payload: &j.payload,
        attempts: 0,
        max_attempts: j.max_attempts,
        run_at: j.run_at.map(|t| t.naive_utc()).unwrap_or(now),
        created_at: now,
        updated_at: now,
        unique_key: j.unique_key.as_deref(),
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
/// cancel was requested becomes `cancelled` instead. `attempt_base` moves up by one, so the
/// released attempt does not count against `max_attempts`.
pub fn release(
    conn: &mut SqliteConnection,
    job_id: i64,
    attempt: i32,
    now: NaiveDateTime,
) -> Result<usize> {
    Ok(cached(
        "UPDATE jobs SET \
           state = CASE WHEN cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END, \
           attempt_base = attempt_base + 1, \
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

/// `attempts - attempt_base` while the lease holds, else `None`.
pub fn attempts_used(
    conn: &mut SqliteConnection,
    job_id: i64,
    attempt: i32,
) -> Result<Option<i32>> {
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
