//! The queue's logic, as functions on a `&mut SqliteConnection`: state transitions, leases and
//! retry scheduling. Backend SQL lives in `backend::sqlite`.
//!
//! Each function that writes runs as one short write transaction (`BEGIN IMMEDIATE`), or as a
//! savepoint when the caller already has a transaction open, so a service can enqueue
//! atomically with its own rows. These functions do not retry on busy; [`crate::Queue`] wraps
//! them with the retry loop. No transaction is ever held while a job's handler runs.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::sqlite::SqliteConnection;
use serde::Serialize;

use crate::backend::sqlite as db;
use crate::error::{Error, Result};
use crate::models::{
    to_json, validate_queue_name, Job, JobState, Lease, NewJob, NewResultRow, Outcome,
    DEFAULT_MAX_PAYLOAD_BYTES,
};

mod batch;
mod read;

pub use batch::{complete_many, heartbeat_many, Completion};
pub use read::{
    any_running, audit, explain_claim, get_job, get_results, insert_finished, queued_count,
    sqlite_version, stats, Audit, StateCounts, Stats,
};

/// Largest number of rows inserted by one transaction of [`enqueue_many`]: long enough to
/// amortise the commit, short enough that other writers never wait long for the lock.
pub const ENQUEUE_CHUNK: usize = 1000;

/// Error text recorded for an attempt whose lease expired.
pub const LEASE_EXPIRED_ERROR: &str =
    "lease expired: the worker stopped heartbeating (crashed, killed or stalled)";

/// When a failed job runs again: `base × 2^(attempt-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobBackoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for JobBackoff {
    fn default() -> Self {
        JobBackoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60 * 60),
        }
    }
}

impl JobBackoff {
    /// The delay before the attempt after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        self.base.saturating_mul(2u32.pow(exp)).min(self.max)
    }
}

pub(crate) fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

fn after(t: NaiveDateTime, d: Duration) -> NaiveDateTime {
    // chrono::Duration covers ±292 years; anything longer is clamped far in the future.
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(365 * 100))
}

/// Enqueues one job; returns its id. Payloads over [`DEFAULT_MAX_PAYLOAD_BYTES`] are refused
/// ([`crate::Queue`] uses its configured limit instead).
pub fn enqueue(conn: &mut SqliteConnection, job: &NewJob) -> Result<i64> {
    job.validate(DEFAULT_MAX_PAYLOAD_BYTES)?;
    let ids = insert_validated(conn, std::slice::from_ref(job))?;
    ids.into_iter().next().ok_or_else(|| Error::CorruptRow {
        table: "jobs",
        reason: "INSERT … RETURNING returned no id".into(),
    })
}

/// Enqueues many jobs in transactions of at most [`ENQUEUE_CHUNK`] rows; returns their ids in
/// order. Every job is validated before anything is written. Inside a caller's transaction
/// all chunks commit or roll back with it.
pub fn enqueue_many(conn: &mut SqliteConnection, jobs: &[NewJob]) -> Result<Vec<i64>> {
    for job in jobs {
        job.validate(DEFAULT_MAX_PAYLOAD_BYTES)?;
    }
    let mut ids = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(ENQUEUE_CHUNK) {
        ids.extend(insert_validated(conn, chunk)?);
    }
    Ok(ids)
}

/// Inserts already-validated jobs in one write transaction (a savepoint inside the caller's).
pub(crate) fn insert_validated(conn: &mut SqliteConnection, jobs: &[NewJob]) -> Result<Vec<i64>> {
    Ok(insert_reporting(conn, jobs)?
        .into_iter()
        .map(|e| e.id)
        .collect())
}

/// What enqueueing one job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// The job's id: the new job's, or the live job's that already had the unique key.
    pub id: i64,
    /// False when a live job with the same unique key existed and nothing was inserted.
    pub inserted: bool,
}

/// [`insert_validated`], saying for each job whether it was inserted or a live job with its
/// unique key already existed.
pub(crate) fn insert_reporting(
    conn: &mut SqliteConnection,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>> {
    let now = now();
    let rows: Vec<db::InsertJob<'_>> = jobs
        .iter()
        .map(|j| db::InsertJob {
            queue: &j.queue,
            state: JobState::Queued.as_str(),
            priority: j.priority,
            payload: &j.payload,
            attempts: 0,
            max_attempts: j.max_attempts,
            run_at: j.run_at.map(|t| t.naive_utc()).unwrap_or(now),
            created_at: now,
            updated_at: now,
            unique_key: j.unique_key.as_deref(),
        })
        .collect();
    db::write_transaction(conn, |c| {
        if rows.iter().all(|r| r.unique_key.is_none()) {
            // The common case: one multi-row INSERT.
            let ids = db::insert_jobs(c, &rows)?;
            return Ok(ids
                .into_iter()
                .map(|id| Enqueued { id, inserted: true })
                .collect());
        }
        // With unique keys, row by row: ON CONFLICT DO NOTHING … RETURNING only returns the
        // rows it inserted, so a multi-row insert could not say which id belongs to which job.
        rows.iter()
            .map(|r| {
                if r.unique_key.is_some() {
                    let (id, inserted) = db::insert_unique(c, r)?;
                    Ok(Enqueued { id, inserted })
                } else {
                    let id = db::insert_jobs(c, std::slice::from_ref(r))?
                        .into_iter()
                        .next()
                        .ok_or_else(|| Error::CorruptRow {
                            table: "jobs",
                            reason: "INSERT … RETURNING returned no id".into(),
                        })?;
                    Ok(Enqueued { id, inserted: true })
                }
            })
            .collect()
    })
}

/// Claims up to `limit` due jobs of `queue` for `worker_id`, leased for `lease`. Returns them
/// in claim order (priority, run_at, id); empty when nothing is due.
pub fn claim(
    conn: &mut SqliteConnection,
    queue: &str,
    limit: u32,
    worker_id: &str,
    lease: Duration,
) -> Result<Vec<Job>> {
    validate_queue_name(queue)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let now = now();
    let rows = db::write_transaction(conn, |c| {
        db::claim(c, queue, limit, worker_id, now, after(now, lease))
    })?;
    rows.into_iter().map(Job::try_from).collect()
}

/// Extends a lease by `lease` from now. Fails with [`Error::LeaseLost`] when the job was
/// reclaimed or left `running`, [`Error::NotFound`] when it does not exist, and
/// [`Error::Cancelled`] when a cancel was requested (the lease is still extended, so the
/// handler can wind down; what it reports next is recorded as cancelled). Returns the new
/// expiry.
pub fn heartbeat(
    conn: &mut SqliteConnection,
    lease: Lease,
    lease_for: Duration,
) -> Result<DateTime<Utc>> {
    let now = now();
    let until = after(now, lease_for);
    let cancel = db::write_transaction(conn, |c| {
        match db::heartbeat(c, lease.job_id, lease.attempt, now, until)? {
            Some(cancel) => Ok(cancel),
            None => Err(lost_or_missing(c, lease)?),
        }
    })?;
    if cancel {
        return Err(Error::Cancelled {
            job_id: lease.job_id,
        });
    }
    Ok(until.and_utc())
}

/// Records success: one `succeeded` results row with `output`, and the job `succeeded`, in one
/// transaction. Fenced: if the lease is lost nothing is written ([`Error::LeaseLost`]). If a
/// cancel was requested meanwhile, the attempt is recorded as failed ("cancelled"), the job
/// ends `cancelled`, and the caller gets [`Error::Cancelled`].
pub fn complete(
    conn: &mut SqliteConnection,
    lease: Lease,
    output: &impl Serialize,
    duration: Duration,
) -> Result<()> {
    complete_json(conn, lease, &to_json("output", output)?, duration)
}

/// [`complete`] with output already serialized as JSON text (trusted to be valid JSON; the
/// column's CHECK refuses anything else).
pub fn complete_json(
    conn: &mut SqliteConnection,
    lease: Lease,
    output_json: &str,
    duration: Duration,
) -> Result<()> {
    let now = now();
    let cancelled = db::write_transaction(conn, |c| {
        if db::mark_succeeded(c, lease.job_id, lease.attempt, now)? == 0 {
            // A cancelled attempt is committed as such; any other reason writes nothing.
            let why = settle_unapplied(c, lease, now, duration)?;
            return if why.is_cancelled() {
                Ok(Some(why))
            } else {
                Err(why)
            };
        }
        db::insert_result(
            c,
            &result_row(
                lease,
                Outcome::Succeeded,
                Some(output_json),
                None,
                now,
                duration,
            ),
        )?;
        Ok(None)
    })?;
    cancelled.map_or(Ok(()), Err)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Records a failed attempt: one `failed` results row, and the job back to `queued` after
/// [`JobBackoff::delay`] while attempts remain, else `dead`. Fenced like [`complete`].
/// Returns the job's new state.
pub fn fail(
    conn: &mut SqliteConnection,
    lease: Lease,
    error: &str,
    duration: Duration,
    backoff: &JobBackoff,
) -> Result<JobState> {
    let now = now();
    let retry_at = after(now, backoff.delay(lease.attempt));
    db::write_transaction(conn, |c| {
        let state = match db::mark_failed(c, lease.job_id, lease.attempt, error, now, retry_at)? {
            Some(state) => state,
            None => return fenced(c, 0, lease).map(|()| JobState::Dead),
        };
        db::insert_result(
            c,
            &result_row(lease, Outcome::Failed, None, Some(error), now, duration),
        )?;
        JobState::parse(&state).ok_or_else(|| Error::CorruptRow {
            table: "jobs",
            reason: format!("job {} got unknown state {state:?}", lease.job_id),
        })
    })
}

/// Gives a running job back to the queue untouched (used at shutdown for jobs whose handler
/// did not start or finish). The attempt stays counted: attempt numbers are fencing tokens and
/// are never reused, so a straggling handler can never complete the next owner's attempt.
pub fn release(conn: &mut SqliteConnection, lease: Lease) -> Result<()> {
    let now = now();
    db::write_transaction(conn, |c| {
        let changed = db::release(c, lease.job_id, lease.attempt, now)?;
        fenced(c, changed, lease)
    })
}

/// Requeues (or marks dead, when out of attempts) every running job whose lease expired,
/// recording a failed attempt for each. Returns how many were reaped. Finding them scans the
/// table inside the transaction; [`crate::Queue::reap`] scans on a reader first instead.
pub fn reap(conn: &mut SqliteConnection) -> Result<usize> {
    let now = now();
    db::write_transaction(conn, |c| {
        let ids = db::expired_leases(c, now)?;
        reap_listed(c, &ids)
    })
}

/// Ids of running jobs whose lease has expired (a read).
pub fn expired_leases(conn: &mut SqliteConnection) -> Result<Vec<i64>> {
    db::expired_leases(conn, now())
}

/// Reaps those of `ids` whose lease is still expired (the condition is re-checked, so ids found
/// by an earlier read are safe to pass). Returns how many were reaped.
pub fn reap_listed(conn: &mut SqliteConnection, ids: &[i64]) -> Result<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let ids_json = serde_json::to_string(ids).map_err(|source| Error::Json {
        what: "job ids",
        source,
    })?;
    let now = now();
    db::write_transaction(conn, |c| {
        db::reap_ids(c, &ids_json, LEASE_EXPIRED_ERROR, now)
    })
}

/// Turns "rows changed" of a fenced update into `Ok` or the right error: [`Error::NotFound`]
/// when the job does not exist, else [`Error::LeaseLost`]. Returning the error from inside the
/// transaction rolls it back, so nothing is written.
fn fenced(conn: &mut SqliteConnection, changed: usize, lease: Lease) -> Result<()> {
    if changed == 1 {
        return Ok(());
    }
    Err(lost_or_missing(conn, lease)?)
}

/// Why a fenced update did not apply: [`Error::NotFound`] or [`Error::LeaseLost`]. (The outer
/// `Result` is a query error.)
fn lost_or_missing(conn: &mut SqliteConnection, lease: Lease) -> Result<Error> {
    Ok(if db::job_exists(conn, lease.job_id)? {
        Error::LeaseLost {
            job_id: lease.job_id,
            attempt: lease.attempt,
        }
    } else {
        Error::NotFound {
            job_id: lease.job_id,
        }
    })
}

/// The error of a completion that did not apply. If the lease is still ours but a cancel was
/// requested, the attempt is finished here as cancelled (a failed results row, the job
/// `cancelled`) for the caller's transaction to commit, and the error is [`Error::Cancelled`].
fn settle_unapplied(
    conn: &mut SqliteConnection,
    lease: Lease,
    now: NaiveDateTime,
    duration: Duration,
) -> Result<Error> {
    if db::finish_cancelled(conn, lease.job_id, lease.attempt, CANCELLED_ERROR, now)? == 1 {
        db::insert_result(
            conn,
            &result_row(
                lease,
                Outcome::Failed,
                None,
                Some(CANCELLED_ERROR),
                now,
                duration,
            ),
        )?;
        return Ok(Error::Cancelled {
            job_id: lease.job_id,
        });
    }
    lost_or_missing(conn, lease)
}

/// The `error` of an attempt that finished after its job was cancelled.
pub const CANCELLED_ERROR: &str = "cancelled while running; the handler's result was discarded";

fn result_row<'a>(
    lease: Lease,
    outcome: Outcome,
    output: Option<&'a str>,
    error: Option<&'a str>,
    now: NaiveDateTime,
    duration: Duration,
) -> NewResultRow<'a> {
    NewResultRow {
        job_id: lease.job_id,
        attempt: lease.attempt,
        outcome: outcome.as_str(),
        output,
        error,
        created_at: now,
        duration_ms: millis(duration),
    }
}
