//! Operator features, as functions on a connection like those of `queue.rs`: cancel, retry,
//! prune, pause and resume, and the per-queue activity numbers of `stats`. Each write is one
//! short transaction (a savepoint inside the caller's).

use std::time::Duration;

use crate::driver::{AsQueueConnection, QueueConnection};
use crate::driver::{JobDriver, ManageDriver};
use chrono::NaiveDateTime;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::{validate_queue_name, JobState};

use crate::timestamp::now;

/// What [`cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The job was queued and is now `cancelled`; it will never run.
    Cancelled,
    /// The job is running: it is flagged, its next heartbeat tells the worker, and whatever
    /// the handler reports is recorded as cancelled (never as success).
    Requested,
}

/// Cancels a job: a queued job becomes `cancelled` at once; a running job is flagged (see
/// [`CancelOutcome::Requested`]). A finished job is [`Error::WrongState`]; an unknown id
/// [`Error::NotFound`].
pub fn cancel<A: AsQueueConnection>(conn: &mut A, job_id: i64) -> Result<CancelOutcome> {
    let conn = conn.queue_connection();
    let now = now();
    conn.write_transaction(|c| {
        if c.cancel_queued(job_id, now)? == 1 {
            return Ok(CancelOutcome::Cancelled);
        }
        if c.request_cancel(job_id, now)? == 1 {
            return Ok(CancelOutcome::Requested);
        }
        Err(wrong_state(c, job_id, "cancel", "a queued or running job")?)
    })
}

/// Puts a `dead` or `cancelled` job back to `queued`, due now, with `max_attempts` fresh
/// attempts (attempt numbers go on counting: they are fencing tokens and never reused). A job
/// in another state is [`Error::WrongState`]. If a live job of the same queue took its unique
/// key meanwhile, it is [`Error::UniqueConflict`] and nothing changes.
pub fn retry<A: AsQueueConnection>(conn: &mut A, job_id: i64) -> Result<()> {
    let conn = conn.queue_connection();
    let now = now();
    conn.write_transaction(|c| match c.requeue_finished(job_id, now) {
        Ok(1) => Ok(()),
        Ok(_) => Err(wrong_state(c, job_id, "retry", "a dead or cancelled job")?),
        Err(e) if e.is_unique_violation() => Err(Error::UniqueConflict {
            job_id,
            operation: "retried",
        }),
        Err(e) => Err(e),
    })
}

/// Enqueues `schedule`'s job for `tick` unless some scheduler already did: a compare-and-set
/// on the schedule's `last_tick` and the insert, in one write transaction (a savepoint inside
/// the caller's), so each tick is enqueued once however many schedulers run. Returns the new
/// job's id, or `None` when the tick was already taken.
pub fn enqueue_tick<A: AsQueueConnection>(
    conn: &mut A,
    schedule: &crate::Schedule,
    tick: chrono::DateTime<chrono::Utc>,
) -> Result<Option<i64>> {
    let conn = conn.queue_connection();
    enqueue_tick_validated(
        conn,
        schedule,
        tick,
        crate::models::DEFAULT_MAX_PAYLOAD_BYTES,
    )
}

/// [`enqueue_tick`] with the handle's payload limit.
pub(crate) fn enqueue_tick_validated<C: QueueConnection>(
    conn: &mut C,
    schedule: &crate::Schedule,
    tick: chrono::DateTime<chrono::Utc>,
    max_payload_bytes: usize,
) -> Result<Option<i64>> {
    let tick = crate::timestamp::check("tick", tick)?.naive_utc();
    let job = schedule.job_for(tick.and_utc());
    job.validate(max_payload_bytes)?;
    let now = now();
    conn.write_transaction(|c| {
        if !c.advance_schedule(schedule.name(), tick, now)? {
            return Ok(None);
        }
        let done = crate::queue::insert_reporting(c, std::slice::from_ref(&job))?;
        Ok(done.first().map(|e| e.id))
    })
}

fn wrong_state<C: QueueConnection>(
    c: &mut C,
    job_id: i64,
    operation: &'static str,
    wanted: &'static str,
) -> Result<Error> {
    let job = crate::queue::get_job(c, job_id)?;
    Ok(Error::WrongState {
        job_id,
        state: job.state,
        operation,
        wanted,
    })
}

/// Finished states [`prune`] may delete.
pub const PRUNABLE: [JobState; 3] = [JobState::Succeeded, JobState::Dead, JobState::Cancelled];

/// How [`prune`] works through the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBatch {
    /// Jobs deleted per write transaction (their results go with them).
    pub jobs_per_transaction: usize,
    /// Pause between transactions, so other writers get the lock in between.
    pub pause: Duration,
}

impl Default for PruneBatch {
    /// 500 jobs per transaction (a few ms of write lock), no pause.
    fn default() -> Self {
        PruneBatch {
            jobs_per_transaction: 500,
            pause: Duration::ZERO,
        }
    }
}

/// Checks the states to prune: at least one, finished ones only.
pub(crate) fn check_prune_states(states: &[JobState]) -> Result<()> {
    if states.is_empty() {
        return Err(Error::InvalidArgument {
            field: "state",
            reason: "name at least one state to prune".into(),
        });
    }
    if let Some(s) = states.iter().find(|s| !PRUNABLE.contains(s)) {
        return Err(Error::InvalidArgument {
            field: "state",
            reason: format!(
                "{s} jobs are not finished; only succeeded, dead and cancelled jobs can be pruned"
            ),
        });
    }
    Ok(())
}

/// The cut-off time of a prune: jobs last changed before now minus `older_than`.
pub(crate) fn prune_cutoff(older_than: Duration) -> Result<NaiveDateTime> {
    crate::timestamp::before("older_than", now(), older_than)
}

/// What [`prune`] (and [`crate::Queue::prune`]) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PruneReport {
    /// Jobs deleted (their results rows went with them).
    pub deleted: u64,
    /// Write transactions used.
    pub transactions: u64,
    /// The longest any of them held the write lock, ms (BEGIN IMMEDIATE to COMMIT).
    pub max_lock_hold_ms: f64,
}

/// Deletes jobs in `states` (finished ones only) last changed more than `older_than` ago,
/// with their results, `batch.jobs_per_transaction` per write transaction, on `conn`: each
/// transaction deletes by id and re-checks the condition, so it holds the write lock for a few
/// milliseconds and other writers go on in between. Outside a caller's transaction each
/// batch commits on its own; inside one, everything commits with it.
pub fn prune<A: AsQueueConnection>(
    conn: &mut A,
    older_than: Duration,
    states: &[JobState],
    batch: PruneBatch,
) -> Result<PruneReport> {
    let conn = conn.queue_connection();
    // One connection for both steps: `RefCell` lends it to each in turn.
    let conn = std::cell::RefCell::new(conn);
    prune_with(
        older_than,
        states,
        batch,
        |scan| scan.run(&mut **conn.borrow_mut()),
        |delete| delete.run(&mut **conn.borrow_mut()),
    )
}

/// One scan of the prune loop: the next ids to delete (a read).
pub(crate) struct PruneScan<'a> {
    states: &'a [JobState],
    cutoff: NaiveDateTime,
    after_id: i64,
    limit: usize,
}

impl PruneScan<'_> {
    pub(crate) fn run<C: QueueConnection>(&self, conn: &mut C) -> Result<Vec<i64>> {
        let limit = i64::try_from(self.limit).unwrap_or(i64::MAX);
        conn.finished_before(self.states, self.cutoff, self.after_id, limit)
    }
}

/// One delete of the prune loop: those of `ids` still prunable, with their results, in one
/// write transaction; rows deleted and how long the transaction held the lock.
pub(crate) struct PruneDelete<'a> {
    ids: &'a [i64],
    states: &'a [JobState],
    cutoff: NaiveDateTime,
}

impl PruneDelete<'_> {
    pub(crate) fn run<C: QueueConnection>(&self, conn: &mut C) -> Result<(usize, Duration)> {
        let started = std::time::Instant::now();
        let n =
            conn.write_transaction(|c| c.delete_finished(self.ids, self.states, self.cutoff))?;
        Ok((n, started.elapsed()))
    }
}

/// The prune loop, with each scan and each delete run where the caller says (the handle
/// scans on a reader and deletes on its writer; [`prune`] does both on one connection).
pub(crate) fn prune_with(
    older_than: Duration,
    states: &[JobState],
    batch: PruneBatch,
    mut scan: impl FnMut(&PruneScan<'_>) -> Result<Vec<i64>>,
    mut delete: impl FnMut(&PruneDelete<'_>) -> Result<(usize, Duration)>,
) -> Result<PruneReport> {
    check_prune_states(states)?;
    let limit = batch.jobs_per_transaction.max(1);
    let cutoff = prune_cutoff(older_than)?;
    let mut report = PruneReport::default();
    let mut after_id = 0;
    loop {
        let ids = scan(&PruneScan {
            states,
            cutoff,
            after_id,
            limit,
        })?;
        let Some(&last) = ids.last() else {
            return Ok(report);
        };
        let (deleted, held) = delete(&PruneDelete {
            ids: &ids,
            states,
            cutoff,
        })?;
        report.deleted += deleted as u64;
        report.transactions += 1;
        report.max_lock_hold_ms = report.max_lock_hold_ms.max(held.as_secs_f64() * 1000.0);
        after_id = last;
        if !batch.pause.is_zero() {
            std::thread::sleep(batch.pause);
        }
    }
}

/// Pauses `queue`: no job of it is claimed until [`resume`]. Running jobs finish normally.
/// Returns false if it was already paused.
pub fn pause<A: AsQueueConnection>(conn: &mut A, queue: &str) -> Result<bool> {
    let conn = conn.queue_connection();
    validate_queue_name(queue)?;
    let now = now();
    conn.write_transaction(|c| c.pause_queue(queue, now))
}

/// Resumes a paused queue. Returns false if it was not paused.
pub fn resume<A: AsQueueConnection>(conn: &mut A, queue: &str) -> Result<bool> {
    let conn = conn.queue_connection();
    validate_queue_name(queue)?;
    conn.write_transaction(|c| c.resume_queue(queue))
}

/// Names of the paused queues.
pub fn paused<A: AsQueueConnection>(conn: &mut A) -> Result<Vec<String>> {
    let conn = conn.queue_connection();
    conn.paused_queues()
}

/// Activity of one queue, for `stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueActivity {
    /// Seconds the oldest due job has been waiting to be claimed (`None`: nothing is due).
    pub oldest_due_age_s: Option<f64>,
    /// Jobs that succeeded in the last 60 seconds.
    pub succeeded_last_minute: i64,
    /// Jobs that went dead in the last 60 seconds.
    pub dead_last_minute: i64,
    /// Succeeded per second over the last minute.
    pub throughput_per_sec: f64,
    /// Whether the queue is paused.
    pub paused: bool,
}

/// Per-queue activity (every queue, or only `queue`): oldest due job's wait, jobs finished in
/// the last minute, paused or not. One scan of `jobs`; run it on a reader.
pub fn activity<A: AsQueueConnection>(
    conn: &mut A,
    queue: Option<&str>,
) -> Result<std::collections::BTreeMap<String, QueueActivity>> {
    let conn = conn.queue_connection();
    let now = now();
    let since = crate::timestamp::before("since", now, Duration::from_secs(60))?;
    let paused = conn.paused_queues()?;
    let mut out: std::collections::BTreeMap<String, QueueActivity> = conn
        .queue_activity(queue, now, since)?
        .into_iter()
        .map(|r| {
            let activity = QueueActivity {
                // Clock skew between writers can make a due time look slightly ahead.
                oldest_due_age_s: r.oldest_due_s.map(|s| s.max(0.0)),
                succeeded_last_minute: r.succeeded,
                dead_last_minute: r.dead,
                throughput_per_sec: r.succeeded as f64 / 60.0,
                paused: paused.contains(&r.queue),
            };
            (r.queue, activity)
        })
        .collect();
    // A paused queue with no jobs yet still shows up as paused.
    for q in paused
        .into_iter()
        .filter(|q| queue.is_none_or(|only| only == q))
    {
        out.entry(q).or_default().paused = true;
    }
    Ok(out)
}

/// How long finished jobs are kept, per state; applied by [`crate::Queue::apply_retention`]
/// and, when set in [`crate::WorkerConfig::retention`], by the worker every `every`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Keep succeeded jobs this long (`None`: forever).
    pub succeeded: Option<Duration>,
    /// Keep dead jobs this long (`None`: forever).
    pub dead: Option<Duration>,
    /// Keep cancelled jobs this long (`None`: forever).
    pub cancelled: Option<Duration>,
    /// How often the worker prunes.
    pub every: Duration,
    /// Transaction size and pacing.
    pub batch: PruneBatch,
}

impl Default for Retention {
    /// Succeeded jobs for 1 day, dead and cancelled for 7 days, pruned every 5 minutes.
    fn default() -> Self {
        Retention {
            succeeded: Some(Duration::from_secs(24 * 3600)),
            dead: Some(Duration::from_secs(7 * 24 * 3600)),
            cancelled: Some(Duration::from_secs(7 * 24 * 3600)),
            every: Duration::from_secs(300),
            batch: PruneBatch::default(),
        }
    }
}

impl Retention {
    /// (state, keep for) for each state with a limit.
    pub fn limits(&self) -> impl Iterator<Item = (JobState, Duration)> + '_ {
        [
            (JobState::Succeeded, self.succeeded),
            (JobState::Dead, self.dead),
            (JobState::Cancelled, self.cancelled),
        ]
        .into_iter()
        .filter_map(|(s, d)| d.map(|d| (s, d)))
    }
}
