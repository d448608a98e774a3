//! The queue's logic, as functions on a `&mut C`: state transitions, leases and
//! retry scheduling. Backend SQL lives in `backend::sqlite`.
//!
//! Each function that writes runs as one short write transaction (`BEGIN IMMEDIATE`), or as a
//! savepoint when the caller already has a transaction open, so a service can enqueue
//! atomically with its own rows. These functions do not retry on busy; [`crate::Queue`] wraps
//! them with the retry loop. No transaction is ever held while a job's handler runs.

use std::time::Duration;

use crate::driver::{AsQueueConnection, ClaimParams, FailParams, QueueConnection};
use crate::driver::{BatchDriver, JobDriver};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::{
    to_json, validate_queue_name, Job, JobState, Lease, NewJob, NewResultRow, Outcome,
    DEFAULT_MAX_PAYLOAD_BYTES,
};

mod batch;
mod progress;
mod read;

pub use batch::{complete_many, heartbeat_many, Completion};
pub use progress::{encode_progress, set_progress, set_progress_many, MAX_PROGRESS_BYTES};
pub use read::{
    any_running, audit, backend_version, explain_claim, get_job, get_results, has_pending_work,
    insert_finished, list_jobs, queued_count, stats, Audit, JobFilter, JobPage, StateCounts, Stats,
    LIST_BUDGET, LIST_WINDOW, MAX_PAGE,
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

pub(crate) use crate::timestamp::now;

/// When a lease taken at `t` for `d` runs out; a lease that would outlast the stored range of
/// timestamps is [`Error::InvalidArgument`] (never clamped: a clamped lease would be a
/// different lease than asked for).
fn after(t: NaiveDateTime, d: Duration) -> Result<NaiveDateTime> {
    crate::timestamp::after("lease", t, d)
}

/// Enqueues one job; returns its id. Payloads over [`DEFAULT_MAX_PAYLOAD_BYTES`] are refused
/// ([`crate::Queue`] uses its configured limit instead).
pub fn enqueue<A: AsQueueConnection>(conn: &mut A, job: &NewJob) -> Result<i64> {
    let conn = conn.queue_connection();
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
pub fn enqueue_many<A: AsQueueConnection>(conn: &mut A, jobs: &[NewJob]) -> Result<Vec<i64>> {
    let conn = conn.queue_connection();
    for job in jobs {
        job.validate(DEFAULT_MAX_PAYLOAD_BYTES)?;
    }
    let mut ids = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(ENQUEUE_CHUNK) {
        ids.extend(insert_validated(conn, chunk)?);
    }
    Ok(ids)
}

/// Enqueues all `jobs` in ONE write transaction (a savepoint inside the caller's), in chunks
/// of [`ENQUEUE_CHUNK`] rows per statement: all or nothing. Every job is validated first.
/// Holds the write lock for the whole insert, so keep such sets to what must be atomic.
pub fn enqueue_all<A: AsQueueConnection>(conn: &mut A, jobs: &[NewJob]) -> Result<Vec<i64>> {
    let conn = conn.queue_connection();
    for job in jobs {
        job.validate(DEFAULT_MAX_PAYLOAD_BYTES)?;
    }
    insert_all_validated(conn, jobs)
}

/// [`enqueue_all`] of already-validated jobs.
pub(crate) fn insert_all_validated<C: QueueConnection>(
    conn: &mut C,
    jobs: &[NewJob],
) -> Result<Vec<i64>> {
    conn.write_transaction(|c| {
        let mut ids = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            ids.extend(insert_validated(c, chunk)?);
        }
        Ok(ids)
    })
}

/// Inserts already-validated jobs in one write transaction (a savepoint inside the caller's).
pub(crate) fn insert_validated<C: QueueConnection>(
    conn: &mut C,
    jobs: &[NewJob],
) -> Result<Vec<i64>> {
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
pub(crate) fn insert_reporting<C: QueueConnection>(
    conn: &mut C,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>> {
    let now = now();
    conn.write_transaction(|c| {
        // Delivered at commit, so a woken worker finds the jobs.
        c.notify_enqueued()?;
        if jobs.iter().all(|j| j.unique_key.is_none()) {
            // The common case: one multi-row INSERT.
            let ids = c.insert_new(jobs, now)?;
            return Ok(ids
                .into_iter()
                .map(|id| Enqueued { id, inserted: true })
                .collect());
        }
        // With unique keys, job by job: ON CONFLICT DO NOTHING … RETURNING only returns the
        // rows it inserted, so a multi-row insert could not say which id belongs to which job.
        jobs.iter()
            .map(|j| {
                if j.unique_key.is_some() {
                    let (id, inserted) = c.insert_new_unique(j, now)?;
                    Ok(Enqueued { id, inserted })
                } else {
                    let id = c
                        .insert_new(std::slice::from_ref(j), now)?
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
pub fn claim<A: AsQueueConnection>(
    conn: &mut A,
    queue: &str,
    limit: u32,
    worker_id: &str,
    lease: Duration,
) -> Result<Vec<Job>> {
    let conn = conn.queue_connection();
    validate_queue_name(queue)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let now = now();
    let until = after(now, lease)?;
    let params = ClaimParams {
        queue,
        limit,
        worker_id,
        now,
        lease_expires_at: until,
    };
    let rows = conn.atomic_write(|c| c.claim(&params))?;
    rows.into_iter().map(Job::try_from).collect()
}

/// Extends a lease by `lease` from now. Fails with [`Error::LeaseLost`] when the job was
/// reclaimed or left `running`, [`Error::NotFound`] when it does not exist, and
/// [`Error::Cancelled`] when a cancel was requested (the lease is still extended, so the
/// handler can wind down; what it reports next is recorded as cancelled). Returns the new
/// expiry.
pub fn heartbeat<A: AsQueueConnection>(
    conn: &mut A,
    lease: Lease,
    lease_for: Duration,
) -> Result<DateTime<Utc>> {
    let conn = conn.queue_connection();
    let now = now();
    let until = after(now, lease_for)?;
    let cancel = conn.atomic_write(|c| match c.heartbeat(lease, now, until)? {
        Some(cancel) => Ok(cancel),
        None => Err(lost_or_missing(c, lease)?),
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
pub fn complete<A: AsQueueConnection>(
    conn: &mut A,
    lease: Lease,
    output: &impl Serialize,
    duration: Duration,
) -> Result<()> {
    let conn = conn.queue_connection();
    complete_json(conn, lease, &to_json("output", output)?, duration)
}

/// [`complete`] with output already serialized as JSON text (trusted to be valid JSON; the
/// column's CHECK refuses anything else).
pub fn complete_json<A: AsQueueConnection>(
    conn: &mut A,
    lease: Lease,
    output_json: &str,
    duration: Duration,
) -> Result<()> {
    let conn = conn.queue_connection();
    crate::models::check_json("output", output_json)?;
    let now = now();
    let row = result_row(
        lease,
        Outcome::Succeeded,
        Some(output_json),
        None,
        now,
        duration,
    );
    let cancelled = conn.atomic_write(|c| {
        if c.succeed_with_result(&row)? == 0 {
            // A cancelled attempt is committed as such (two writes: a transaction of their
            // own); any other reason writes nothing.
            let why = c.write_transaction(|c| settle_unapplied(c, lease, now, duration))?;
            return if why.is_cancelled() {
                Ok(Some(why))
            } else {
                Err(why)
            };
        }
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
pub fn fail<A: AsQueueConnection>(
    conn: &mut A,
    lease: Lease,
    error: &str,
    duration: Duration,
    backoff: &JobBackoff,
) -> Result<JobState> {
    let conn = conn.queue_connection();
    let error = &*crate::models::storable_text(error);
    let now = now();
    conn.write_transaction(|c| {
        // The backoff exponent counts the attempts since the last manual retry (the attempt
        // number itself goes on counting across retries: it is the fencing token).
        let Some(used) = c.attempts_used(lease)? else {
            return Err(lost_or_missing(c, lease)?);
        };
        // A backoff capped past the storable range waits as long as can be stored.
        let retry_at = crate::timestamp::after("job_backoff", now, backoff.delay(used))
            .unwrap_or_else(|_| crate::timestamp::latest());
        let failed = FailParams {
            lease,
            error,
            now,
            retry_at,
        };
        let state = match c.mark_failed(&failed)? {
            Some(state) => state,
            None => return Err(lost_or_missing(c, lease)?),
        };
        c.insert_result(&result_row(
            lease,
            Outcome::Failed,
            None,
            Some(error),
            now,
            duration,
        ))?;
        Ok(state)
    })
}

/// Gives a running job back to the queue untouched (used at shutdown for jobs whose handler
/// did not start or finish). The attempt is given back: it does not count against
/// `max_attempts` (`attempt_base` moves up with it). The attempt number still advances at the
/// next claim: attempt numbers are fencing tokens and are never reused, so a straggling
/// handler can never complete the next owner's attempt.
pub fn release<A: AsQueueConnection>(conn: &mut A, lease: Lease) -> Result<()> {
    let conn = conn.queue_connection();
    let now = now();
    conn.write_transaction(|c| {
        let changed = c.release(lease, now)?;
        fenced(c, changed, lease)
    })
}

/// Requeues (or marks dead, when out of attempts) every running job whose lease expired,
/// recording a failed attempt for each. Returns how many were reaped. Finding them scans the
/// table inside the transaction; [`crate::Queue::reap`] scans on a reader first instead.
pub fn reap<A: AsQueueConnection>(conn: &mut A) -> Result<usize> {
    let conn = conn.queue_connection();
    let now = now();
    conn.write_transaction(|c| {
        let ids = c.expired_leases(now)?;
        reap_listed(c, &ids)
    })
}

/// Ids of running jobs whose lease has expired (a read).
pub fn expired_leases<A: AsQueueConnection>(conn: &mut A) -> Result<Vec<i64>> {
    let conn = conn.queue_connection();
    conn.expired_leases(now())
}

/// Reaps those of `ids` whose lease is still expired (the condition is re-checked, so ids found
/// by an earlier read are safe to pass). Returns how many were reaped.
pub fn reap_listed<A: AsQueueConnection>(conn: &mut A, ids: &[i64]) -> Result<usize> {
    let conn = conn.queue_connection();
    if ids.is_empty() {
        return Ok(0);
    }
    let now = now();
    conn.write_transaction(|c| c.reap_ids(ids, LEASE_EXPIRED_ERROR, now))
}

/// Turns "rows changed" of a fenced update into `Ok` or the right error: [`Error::NotFound`]
/// when the job does not exist, else [`Error::LeaseLost`]. Returning the error from inside the
/// transaction rolls it back, so nothing is written.
fn fenced<C: QueueConnection>(conn: &mut C, changed: usize, lease: Lease) -> Result<()> {
    if changed == 1 {
        return Ok(());
    }
    Err(lost_or_missing(conn, lease)?)
}

/// Why a fenced update did not apply: [`Error::NotFound`] or [`Error::LeaseLost`]. (The outer
/// `Result` is a query error.)
fn lost_or_missing<C: QueueConnection>(conn: &mut C, lease: Lease) -> Result<Error> {
    Ok(if conn.job_exists(lease.job_id)? {
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
fn settle_unapplied<C: QueueConnection>(
    conn: &mut C,
    lease: Lease,
    now: NaiveDateTime,
    duration: Duration,
) -> Result<Error> {
    if conn.finish_cancelled(lease, CANCELLED_ERROR, now)? == 1 {
        conn.insert_result(&result_row(
            lease,
            Outcome::Failed,
            None,
            Some(CANCELLED_ERROR),
            now,
            duration,
        ))?;
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
