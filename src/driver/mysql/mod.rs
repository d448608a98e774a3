//! MySQL / MariaDB SQL, and nothing else: the same functions as the SQLite and PostgreSQL
//! drivers, with the same names, arguments and results, so the queue logic sits on it too.
//!
//! Differences that matter:
//! - MySQL has no `UPDATE … RETURNING`. A write that must say what it changed first locks the
//!   rows it may change with a fenced `SELECT … FOR UPDATE` (by id, in id order, so two
//!   transactions lock in the same order), then changes exactly those by id, in the same
//!   transaction. The claim is `SELECT … ORDER BY priority, run_at, id LIMIT n FOR UPDATE SKIP
//!   LOCKED`, then `UPDATE … WHERE id IN (…)`, then the rows read back: all inside ONE
//!   transaction, so no other claimer can take a job between the pick and the update (the
//!   race fang's MySQL path has, whose pick runs outside the transaction).
//! - Those writes therefore run in a transaction of their own (a savepoint inside the
//!   caller's); a write that is one statement (a heartbeat's fenced UPDATE, a release, a
//!   cancel) runs alone in autocommit, as on PostgreSQL. Sessions are READ COMMITTED (see
//!   `pool/mysql.rs`): no gap locks, so claims never block enqueues.
//! - Columns are DATETIME(6) holding UTC, bound and read as UTC `NaiveDateTime`s; JSON is
//!   LONGTEXT, checked by jobdb before it is written (see the migration for why).
//! - Sets of leases travel as one JSON array read by `JSON_TABLE` (MySQL 8.0, MariaDB 10.6);
//!   sets of ids the database handed out, and state names, are written into the statement as
//!   integer and fixed literals (never user text).

use chrono::NaiveDateTime;
use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Integer, Nullable, Text};

use crate::driver::stmt::{bind, cached, cached_with_ids, MAX_CACHED_IDS};
use crate::driver::{parse_state, ClaimParams, FailParams, JobDriver};
use crate::error::Result;
use crate::models::JobState;
use crate::models::{JobRow, Lease, NewJob, NewResultRow};

mod batch;
mod copy;
mod manage;
mod read;

/// The columns of `jobs` as [`JobRow`] reads them (not the generated `live_unique_key`).
pub(crate) const JOB_COLUMNS: &str = "id, queue, state, priority, payload, attempts, \
    max_attempts, run_at, created_at, updated_at, worker_id, heartbeat_at, lease_expires_at, \
    last_error, unique_key, cancel_requested_at, attempt_base, timeout_ms, progress";

#[derive(QueryableByName)]
pub(crate) struct Id {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
}

/// `(a, b, c)`: ids the database handed out, as literals for `IN`. Only integers are ever
/// written into SQL text this way.
pub(crate) fn id_list(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('(');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(')');
    s
}

/// `('succeeded','dead')`: fixed state names as literals for `IN` (MySQL compares a
/// `JSON_TABLE` column to ours only after a collation dance, and the names are our own).
pub(crate) fn state_list(states: &[JobState]) -> String {
    let names: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("({})", names.join(","))
}

/// The last id an INSERT generated on this connection.
pub(crate) fn last_insert_id(conn: &mut MysqlConnection) -> Result<i64> {
    let r: Id = diesel::sql_query("SELECT LAST_INSERT_ID() AS id").get_result(conn)?;
    Ok(r.id)
}

/// The step between the AUTO_INCREMENT ids of one multi-row INSERT, if they are evenly
/// spaced, so that `LAST_INSERT_ID()` (the first row's) gives all of them: InnoDB's
/// `innodb_autoinc_lock_mode` 0 or 1 (MariaDB's default) guarantee it for an INSERT whose
/// row count is known, `auto_increment_increment` apart (1 unless a multi-primary setup
/// changed it); 2 (MySQL 8's default) interleaves concurrent inserts and does not (`None`).
fn id_step(conn: &mut MysqlConnection) -> Result<Option<i64>> {
    #[derive(QueryableByName)]
    struct Mode {
        #[diesel(sql_type = BigInt)]
        mode: i64,
        #[diesel(sql_type = BigInt)]
        step: i64,
    }
    let m: Mode = diesel::sql_query(
        "SELECT @@innodb_autoinc_lock_mode AS mode, @@auto_increment_increment AS step",
    )
    .get_result(conn)?;
    Ok((m.mode < 2).then_some(m.step))
}

/// Rows per multi-row INSERT: 11 binds each, well under MySQL's 65,535 placeholders.
const INSERT_CHUNK: usize = 2_000;

/// Inserts validated jobs in multi-row INSERTs (one row per INSERT where the ids of one
/// would not be evenly spaced); ids in the order given.
fn insert_jobs(
    conn: &mut MysqlConnection,
    jobs: &[NewJob],
    now: NaiveDateTime,
) -> Result<Vec<i64>> {
    use crate::schema_mysql::jobs::dsl as j;
    let step = if jobs.len() > 1 { id_step(conn)? } else { None };
    let chunk = if step.is_some() { INSERT_CHUNK } else { 1 };
    let step = step.unwrap_or(1);
    let mut ids = Vec::with_capacity(jobs.len());
    for part in jobs.chunks(chunk) {
        let rows: Vec<_> = part
            .iter()
            .map(|job| {
                (
                    j::queue.eq(&job.queue),
                    j::state.eq("queued"),
                    j::priority.eq(job.priority),
                    j::payload.eq(&job.payload),
                    j::attempts.eq(0),
                    j::max_attempts.eq(job.max_attempts),
                    j::run_at.eq(job.run_at.map(|t| t.naive_utc()).unwrap_or(now)),
                    j::created_at.eq(now),
                    j::updated_at.eq(now),
                    j::unique_key.eq(job.unique_key.as_deref()),
                    j::timeout_ms.eq(job.timeout_ms()),
                )
            })
            .collect();
        let n = diesel::insert_into(j::jobs).values(&rows).execute(conn)?;
        let first = last_insert_id(conn)?;
        if n != part.len() {
            return Err(crate::Error::Internal {
                what: "enqueue",
                reason: format!("an INSERT of {} jobs inserted {n}", part.len()),
            });
        }
        ids.extend((0..part.len() as i64).map(|k| first + k * step));
    }
    Ok(ids)
}

/// The claim's statements, inside its transaction: pick due jobs in (priority, run_at, id)
/// order, skipping rows other claimers hold (the paused-queue subquery is a plain consistent
/// read, which InnoDB does not lock even inside a locking read: a pause or resume in flight
/// neither blocks nor is skipped), mark them running with a new attempt and lease, read them
/// back.
fn claim_in_transaction(conn: &mut MysqlConnection, p: &ClaimParams<'_>) -> Result<Vec<JobRow>> {
    let ClaimParams {
        queue,
        limit,
        worker_id,
        now,
        lease_expires_at,
    } = *p;
    let picked: Vec<Id> = cached(
        "SELECT id FROM jobs WHERE queue = ? AND state = 'queued' AND run_at <= ? \
           AND NOT EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue = ?) \
         ORDER BY priority, run_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
        (
            bind::<Text, _>(queue),
            bind::<Datetime, _>(now),
            bind::<Text, _>(queue),
            bind::<BigInt, _>(i64::from(limit)),
        ),
    )
    .load(conn)?;
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = picked.iter().map(|r| r.id).collect();
    const MARK: &str =
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, \
         heartbeat_at = ?, lease_expires_at = ?, updated_at = ? WHERE id";
    let marks = || {
        (
            bind::<Text, _>(worker_id),
            bind::<Datetime, _>(now),
            bind::<Datetime, _>(lease_expires_at),
            bind::<Datetime, _>(now),
        )
    };
    let read_back = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id");
    // Cached statements for the usual sizes (a prepare and a close saved each).
    let mut rows: Vec<JobRow> = if ids.len() <= MAX_CACHED_IDS {
        cached_with_ids(MARK, marks(), &ids, "").execute(conn)?;
        cached_with_ids(&read_back, (), &ids, "").load(conn)?
    } else {
        let list = id_list(&ids);
        diesel::sql_query(format!("{MARK} IN {list}"))
            .bind::<Text, _>(worker_id)
            .bind::<Datetime, _>(now)
            .bind::<Datetime, _>(lease_expires_at)
            .bind::<Datetime, _>(now)
            .execute(conn)?;
        diesel::sql_query(format!("{read_back} IN {list}")).load(conn)?
    };
    rows.sort_by_key(|r| (r.priority, r.run_at, r.id));
    Ok(rows)
}

/// A failed attempt's statements, inside its transaction (see [`JobDriver::mark_failed`]).
fn mark_failed_in_transaction(
    conn: &mut MysqlConnection,
    p: &FailParams<'_>,
) -> Result<Option<JobState>> {
    let FailParams {
        lease: Lease { job_id, attempt },
        error,
        now,
        retry_at,
    } = *p;
    let changed = cached(
        "UPDATE jobs SET \
           state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                        WHEN attempts - attempt_base >= max_attempts THEN 'dead' \
                        ELSE 'queued' END, \
           run_at = CASE WHEN cancel_requested_at IS NOT NULL \
                           OR attempts - attempt_base >= max_attempts THEN run_at ELSE ? END, \
           last_error = ?, lease_expires_at = NULL, updated_at = ? \
         WHERE id = ? AND state = 'running' AND attempts = ?",
        (
            bind::<Datetime, _>(retry_at),
            bind::<Text, _>(error),
            bind::<Datetime, _>(now),
            bind::<BigInt, _>(job_id),
            bind::<Integer, _>(attempt),
        ),
    )
    .execute(conn)?;
    if changed == 0 {
        return Ok(None);
    }
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        state: String,
    }
    let row: Row = cached(
        "SELECT state FROM jobs WHERE id = ?",
        (bind::<BigInt, _>(job_id),),
    )
    .get_result(conn)?;
    parse_state(Some(job_id), &row.state).map(Some)
}

/// A completion's statements, inside its transaction (see [`JobDriver::succeed_with_result`]).
fn succeed_in_transaction(conn: &mut MysqlConnection, row: &NewResultRow<'_>) -> Result<usize> {
    let changed = cached(
        "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = ?, \
           last_error = NULL \
         WHERE id = ? AND state = 'running' AND attempts = ? AND cancel_requested_at IS NULL",
        (
            bind::<Datetime, _>(row.created_at),
            bind::<BigInt, _>(row.job_id),
            bind::<Integer, _>(row.attempt),
        ),
    )
    .execute(conn)?;
    if changed == 0 {
        return Ok(0);
    }
    conn.insert_result(row)?;
    Ok(changed)
}

#[derive(QueryableByName)]
struct Cancel {
    #[diesel(sql_type = Integer)]
    cancel: i32,
}

impl JobDriver for MysqlConnection {
    const GROUP_COMMIT: bool = false;
    const NAME: &'static str = "mysql";

    /// Runs `f` as one write transaction (a savepoint inside the caller's transaction).
    fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut MysqlConnection) -> Result<T>,
    ) -> Result<T> {
        self.transaction(f)
    }

    /// Whether a transaction is open (or left in error).
    fn in_transaction(&mut self) -> bool {
        crate::driver::in_transaction(self)
    }

    /// The pool's session settings (READ COMMITTED above all; see `pool/mysql.rs`), and the
    /// socket close-on-exec, as the pool's customizer sets up each of its connections.
    fn prepare_session(&mut self) -> Result<()> {
        use diesel::connection::SimpleConnection;
        self.batch_execute(crate::pool::MYSQL_SESSION_SETTINGS)?;
        Ok(crate::pool::close_on_exec(self)?)
    }

    /// Outside a transaction the statements alone, as on PostgreSQL: each driver method whose
    /// write is more than one statement (a locking read and its write) runs them in a
    /// transaction of its own; inside one, a savepoint.
    fn atomic_write<T>(&mut self, f: impl FnOnce(&mut MysqlConnection) -> Result<T>) -> Result<T> {
        if crate::driver::in_transaction(self) {
            self.write_transaction(f)
        } else {
            f(self)
        }
    }

    /// Inserts validated jobs without unique keys; ids in the order given.
    fn insert_new(&mut self, jobs: &[NewJob], now: NaiveDateTime) -> Result<Vec<i64>> {
        if jobs.len() <= 1 {
            return insert_jobs(self, jobs, now);
        }
        // The look-up of the lock mode and the INSERTs (one per chunk) commit together.
        self.transaction(|c| insert_jobs(c, jobs, now))
    }

    /// The claim, in a transaction of its own (a savepoint inside the caller's): pick due jobs in (priority, run_at, id)
    /// order, skipping rows other claimers hold, mark them running with a new attempt (the
    /// fencing token) and lease, read them back.
    fn claim(&mut self, p: &ClaimParams<'_>) -> Result<Vec<JobRow>> {
        self.transaction(|c| claim_in_transaction(c, p))
    }

    /// `EXPLAIN` of the claim's locking read, one line per table access (its key and rows).
    fn explain_claim(&mut self) -> Result<String> {
        #[derive(QueryableByName)]
        struct Line {
            #[diesel(sql_type = Nullable<Text>)]
            table: Option<String>,
            #[diesel(sql_type = Nullable<Text>)]
            key: Option<String>,
            #[diesel(sql_type = Nullable<Text>, column_name = "Extra")]
            extra: Option<String>,
        }
        let lines: Vec<Line> = diesel::sql_query(
            "EXPLAIN SELECT id FROM jobs WHERE queue = 'default' AND state = 'queued' \
             AND run_at <= UTC_TIMESTAMP(6) ORDER BY priority, run_at, id LIMIT 1 \
             FOR UPDATE SKIP LOCKED",
        )
        .load(self)?;
        Ok(lines
            .into_iter()
            .map(|l| {
                format!(
                    "table {} key {} {}",
                    l.table.unwrap_or_default(),
                    l.key.as_deref().unwrap_or("(none: full scan)"),
                    l.extra.unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Extends a lease if it is still ours: `None` if it was not, else whether a cancel was
    /// requested (the lease is extended either way). Two statements, no transaction needed:
    /// the fenced UPDATE alone decides whether the lease held; the read after it can only see
    /// a cancel requested since, which is news the handler wants anyway.
    fn heartbeat(
        &mut self,
        lease: Lease,
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Option<bool>> {
        let Lease { job_id, attempt } = lease;
        let changed = cached(
            "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
             WHERE id = ? AND state = 'running' AND attempts = ?",
            (
                bind::<Datetime, _>(now),
                bind::<Datetime, _>(lease_expires_at),
                bind::<Datetime, _>(now),
                bind::<BigInt, _>(job_id),
                bind::<Integer, _>(attempt),
            ),
        )
        .execute(self)?;
        if changed == 0 {
            return Ok(None);
        }
        let row: Cancel = cached(
            "SELECT (cancel_requested_at IS NOT NULL) AS cancel FROM jobs WHERE id = ?",
            (bind::<BigInt, _>(job_id),),
        )
        .get_result(self)?;
        Ok(Some(row.cancel != 0))
    }

    /// Marks a failed attempt if the lease is still ours: `cancelled` if a cancel was requested,
    /// else back to `queued` at `retry_at` while attempts remain, else `dead`. Returns the new
    /// state, or `None` if the lease was not ours. (MySQL assigns SET columns left to right,
    /// reading earlier assignments: `run_at`'s CASE reads no column `state`'s changes.)
    fn mark_failed(&mut self, p: &FailParams<'_>) -> Result<Option<JobState>> {
        self.transaction(|c| mark_failed_in_transaction(c, p))
    }

    /// Puts a running job back to `queued` (shutdown) if the lease is still ours; `cancelled`
    /// instead when a cancel was requested. `attempt_base` moves up by one, so the released
    /// attempt does not count against `max_attempts`.
    fn release(&mut self, lease: Lease, now: NaiveDateTime) -> Result<usize> {
        let Lease { job_id, attempt } = lease;
        Ok(cached(
            "UPDATE jobs SET \
               state = CASE WHEN cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END, \
               attempt_base = attempt_base + 1, \
               run_at = ?, lease_expires_at = NULL, updated_at = ? \
             WHERE id = ? AND state = 'running' AND attempts = ?",
            (
                bind::<Datetime, _>(now),
                bind::<Datetime, _>(now),
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

    /// Marks a job succeeded (if the lease is still ours and no cancel was requested) and
    /// inserts its results row from the row it just locked, in the caller's transaction. Rows
    /// changed (0 or 1).
    fn succeed_with_result(&mut self, row: &NewResultRow<'_>) -> Result<usize> {
        self.transaction(|c| succeed_in_transaction(c, row))
    }

    /// Inserts one results row, with the job's current lease holder as the attempt's worker
    /// (read from the job's row, so a job that is not there is [`crate::Error::NotFound`],
    /// where the other backends' foreign key refuses the row).
    fn insert_result(&mut self, row: &NewResultRow<'_>) -> Result<()> {
        let inserted = cached(
            "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, \
                                  worker_id) \
             SELECT ?, ?, ?, ?, ?, ?, ?, worker_id FROM jobs WHERE id = ?",
            (
                bind::<BigInt, _>(row.job_id),
                bind::<Integer, _>(row.attempt),
                bind::<Text, _>(row.outcome),
                bind::<Nullable<Text>, _>(row.output),
                bind::<Nullable<Text>, _>(row.error),
                bind::<Datetime, _>(row.created_at),
                bind::<BigInt, _>(row.duration_ms),
                bind::<BigInt, _>(row.job_id),
            ),
        )
        .execute(self)?;
        if inserted == 0 {
            return Err(crate::Error::NotFound { job_id: row.job_id });
        }
        Ok(())
    }

    /// Ids of running jobs whose lease expired (a plain read; the reap re-checks under lock).
    fn expired_leases(&mut self, now: NaiveDateTime) -> Result<Vec<i64>> {
        let rows: Vec<Id> = cached(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < ?",
            (bind::<Datetime, _>(now),),
        )
        .load(self)?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }
}
