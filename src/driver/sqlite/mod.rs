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
use crate::driver::{parse_state, ClaimParams, FailParams, JobDriver};
use crate::error::Result;
use crate::models::{JobRow, NewJob, NewResultRow};
use crate::models::{JobState, Lease};

use crate::schema::jobs;

mod batch;
mod copy;
mod manage;
mod read;

pub(crate) use read::{
    checkpoint, main_file, page_size, ChangeWatch, CheckpointMode, CheckpointOutcome,
};

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
        timeout_ms: j.timeout_ms(),
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
    pub timeout_ms: Option<i64>,
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

/// Marks a job succeeded if the lease is still ours and no cancel was requested. Returns rows
/// changed (0 or 1).
fn mark_succeeded(conn: &mut SqliteConnection, lease: Lease, now: NaiveDateTime) -> Result<usize> {
    let Lease { job_id, attempt } = lease;
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

impl JobDriver for SqliteConnection {
    const GROUP_COMMIT: bool = true;
    const NAME: &'static str = "sqlite";

    /// Runs `f` as one write transaction. Outside a transaction it is `BEGIN IMMEDIATE`, which
    /// takes the write lock up front: a read followed by a write in a DEFERRED transaction can fail
    /// with BUSY_SNAPSHOT, which no busy handler can cure. Inside the caller's own transaction it
    /// becomes a savepoint, so the work commits or rolls back with the caller's rows.
    fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        if self.in_transaction() {
            return self.transaction(f);
        }
        // BEGIN IMMEDIATE returns once the write lock is ours: from here on the lock is held.
        let result = self.immediate_transaction(|c| {
            crate::db::combine::lock_acquired();
            f(c)
        });
        if result.is_err() && self.in_transaction() {
            // A COMMIT that failed (e.g. busy) can leave the transaction open; roll it back so the
            // connection is clean for the retry, which re-runs the whole transaction. If even the
            // rollback fails, the pool's broken-connection check discards this connection.
            let _ = AnsiTransactionManager::rollback_transaction(self);
        }
        result
    }

    /// Whether a transaction is open (or left in error).
    fn in_transaction(&mut self) -> bool {
        crate::driver::in_transaction(self)
    }

    fn set_commit_sync(&mut self, full: bool) -> Result<()> {
        use diesel::connection::SimpleConnection;
        // The caller makes the commits it needs durable itself (a handle's writer): the
        // guard's own sync after each commit goes too.
        crate::sqlite::set_guard_sync(self, false);
        self.batch_execute(if full {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        })?;
        Ok(())
    }

    fn restore_commit_sync(&mut self) -> Result<()> {
        // The guard syncs this connection's commits again where the pool set it up to (at
        // `Durable` on a file, the only case where a handle's writer lowers its setting:
        // elsewhere the connection was never changed, and this does nothing).
        if !crate::sqlite::set_guard_sync(self, true) && crate::sqlite::guarded_to_sync(self) {
            // The guard could not take it back (it failed to set NORMAL): FULL, synced by
            // SQLite itself, rather than NORMAL with nothing syncing.
            use diesel::connection::SimpleConnection;
            self.batch_execute("PRAGMA synchronous = FULL")
                .map_err(crate::Error::Database)?;
        }
        Ok(())
    }

    /// [`write_transaction`]: SQLite has no cheaper form for one statement, and BEGIN IMMEDIATE
    /// keeps busy handling whole-transaction.
    fn atomic_write<T>(&mut self, f: impl FnOnce(&mut SqliteConnection) -> Result<T>) -> Result<T> {
        self.write_transaction(f)
    }

    /// Inserts validated jobs without unique keys; ids in the order given.
    fn insert_new(&mut self, jobs: &[NewJob], now: NaiveDateTime) -> Result<Vec<i64>> {
        insert_jobs(self, &insert_rows(jobs, now))
    }

    /// Marks a job succeeded (if the lease holds and no cancel was requested) and records its
    /// results row: two statements, inside the caller's transaction (BEGIN IMMEDIATE holds the
    /// write lock, so nothing comes between them). Rows changed (0 or 1).
    fn succeed_with_result(&mut self, row: &NewResultRow<'_>) -> Result<usize> {
        let lease = Lease {
            job_id: row.job_id,
            attempt: row.attempt,
        };
        let changed = mark_succeeded(self, lease, row.created_at)?;
        if changed == 1 {
            self.insert_result(row)?;
        }
        Ok(changed)
    }

    /// `EXPLAIN QUERY PLAN` of the claim statement, one line per plan step.
    fn explain_claim(&mut self) -> Result<String> {
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
            .load(self)?;
        Ok(steps
            .into_iter()
            .map(|s| s.detail)
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The claim: one statement takes up to `limit` due jobs of `queue` in (priority, run_at, id)
    /// order, marks them running, bumps attempts (the new fencing token) and sets the lease.
    fn claim(&mut self, p: &ClaimParams<'_>) -> Result<Vec<JobRow>> {
        let ClaimParams {
            queue,
            limit,
            worker_id,
            now,
            lease_expires_at,
        } = *p;
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
        .load(self)?;
        rows.sort_by_key(|r| (r.priority, r.run_at, r.id));
        Ok(rows)
    }

    /// Extends a lease if it is still ours. Returns `None` if it was not, else whether a cancel
    /// was requested (the lease is extended either way, so the handler can wind down).
    /// (`heartbeat_set` does the same for many leases; this single-row form by primary key is the
    /// cheaper hot path.)
    fn heartbeat(
        &mut self,
        lease: Lease,
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Option<bool>> {
        let Lease { job_id, attempt } = lease;
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
        .get_result(self)
        .optional()?;
        Ok(row.map(|r| r.cancel != 0))
    }

    /// Marks a failed attempt if the lease is still ours: `cancelled` if a cancel was requested,
    /// else back to `queued` at `retry_at` while attempts remain, else `dead`. Returns the new
    /// state, or `None` if the lease was not ours.
    fn mark_failed(&mut self, p: &FailParams<'_>) -> Result<Option<JobState>> {
        let FailParams {
            lease: Lease { job_id, attempt },
            error,
            now,
            retry_at,
        } = *p;
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
        .get_result(self)
        .optional()?;
        row.map(|r| parse_state(Some(job_id), &r.state)).transpose()
    }

    /// Puts a running job back to `queued` (shutdown), if the lease is still ours; a job whose
    /// cancel was requested becomes `cancelled` instead. `attempt_base` moves up by one, so the
    /// released attempt does not count against `max_attempts`.
    fn release(&mut self, lease: Lease, now: NaiveDateTime) -> Result<usize> {
        let Lease { job_id, attempt } = lease;
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
        .execute(self)?)
    }

    /// `attempts - attempt_base` while the lease holds, else `None`.
    fn attempts_used(&mut self, lease: Lease) -> Result<Option<i32>> {
        let Lease { job_id, attempt } = lease;
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
        .get_result(self)
        .optional()?;
        Ok(row.map(|r| r.used))
    }

    /// Inserts one results row.
    fn insert_result(&mut self, row: &NewResultRow<'_>) -> Result<()> {
        cached(
            "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, \
                                  worker_id) \
             VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT worker_id FROM jobs WHERE id = ?))",
            (
                bind::<BigInt, _>(row.job_id),
                bind::<Integer, _>(row.attempt),
                bind::<Text, _>(row.outcome),
                bind::<Nullable<Text>, _>(row.output),
                bind::<Nullable<Text>, _>(row.error),
                bind::<Timestamp, _>(row.created_at),
                bind::<BigInt, _>(row.duration_ms),
                bind::<BigInt, _>(row.job_id),
            ),
        )
        .execute(self)?;
        Ok(())
    }

    /// Ids of running jobs whose lease expired. A scan of the table (no index is kept on running
    /// leases: see the migration), so callers run it on a reader connection, outside the write lock.
    fn expired_leases(&mut self, now: NaiveDateTime) -> Result<Vec<i64>> {
        Ok(jobs::table
            .filter(jobs::state.eq("running"))
            .filter(jobs::lease_expires_at.lt(now))
            .select(jobs::id)
            .load(self)?)
    }
}
