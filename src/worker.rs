//! The worker runtime: N threads claim jobs and run a handler; a heartbeat thread keeps their
//! leases alive and reaps other workers' expired leases; shutdown is graceful.
//!
//! No transaction is open while a handler runs: claim, heartbeat and complete/fail are each
//! their own short transaction through the queue's handle (on SQLite group-committed on the
//! process's writer connection, on PostgreSQL on a pooled connection for that call only).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::{Job, JobState, Lease};
use crate::{Queue, QueueConnection};

#[cfg(feature = "tokio")]
mod async_worker;
mod background;
mod context;

#[cfg(feature = "tokio")]
pub use async_worker::{AsyncJobContext, AsyncWorker};
use background::{heartbeat_loop, retention_loop};
use context::JobFlags;
pub use context::{HandlerError, JobContext, ProgressReporter, ShutdownHandle};

/// How a [`Worker`] runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The queue to claim from.
    pub queue: String,
    /// Handler threads.
    pub concurrency: usize,
    /// Lease length; a job whose worker stops heartbeating is reclaimable after this.
    pub lease: Duration,
    /// Heartbeat period (default: a third of the lease, so two can be missed).
    pub heartbeat_every: Duration,
    /// How often expired leases of other workers are reaped.
    pub reap_every: Duration,
    /// First idle poll delay; doubles while idle up to `poll_max`.
    pub poll_min: Duration,
    /// Longest idle poll delay (bounds the pick-up latency of new work).
    pub poll_max: Duration,
    /// After shutdown is requested, how long running handlers may finish before their jobs
    /// are released back to the queue.
    pub grace: Duration,
    /// Stop once the queue has nothing to wait for: no job running (in any process) and none
    /// queued that is due now or waiting out a retry backoff (so a failing job is retried to
    /// its end, at most `Config::job_backoff.max` apart). Jobs delayed by their enqueuer
    /// (`run_at` ahead) and the queued jobs of a paused queue do not keep it running: that
    /// could be for ever. To wait for them, use `exit_when_idle`.
    pub exit_when_empty: bool,
    /// Stop once no thread has claimed a job for this long (nothing claimable: empty, paused
    /// or only delayed jobs) and none of ours is running. `None`: never.
    pub exit_when_idle: Option<Duration>,
    /// Stop after claiming this many jobs in all (finishing them first). `None`: no limit.
    pub max_jobs: Option<u64>,
    /// The time limit of an attempt of a job that has none of its own
    /// ([`crate::NewJob::timeout`]). Past it the handler is told to stop (`--exec` kills the
    /// command's group) and the attempt is failed ("timed out after …") and retried with the
    /// normal backoff. A handler that ignores it is failed by the heartbeat thread, so its
    /// lease is not renewed for ever. `None`: no limit.
    pub job_timeout: Option<Duration>,
    /// Stop on SIGINT / SIGTERM.
    pub handle_signals: bool,
    /// Stored in `jobs.worker_id` (default: `pid<PID>-<random>`).
    pub worker_id: String,
    /// Prune finished jobs on a background thread (default: off).
    pub retention: Option<crate::manage::Retention>,
    /// The least time between two progress writes of one job (default 1 s): a handler's
    /// [`JobContext::set_progress`] only keeps the newest value, and the heartbeat thread
    /// writes what is due, all jobs in one statement. Lower means a livelier dashboard and
    /// more writes; it never adds more than one write transaction per heartbeat tick.
    pub progress_every: Duration,
}

impl WorkerConfig {
    /// Defaults for `queue`: concurrency 1, lease 30 s, grace 30 s.
    pub fn new(queue: impl Into<String>) -> Self {
        let lease = Duration::from_secs(30);
        WorkerConfig {
            queue: queue.into(),
            concurrency: 1,
            lease,
            heartbeat_every: lease / 3,
            reap_every: lease,
            poll_min: Duration::from_millis(5),
            poll_max: Duration::from_millis(200),
            grace: Duration::from_secs(30),
            exit_when_empty: false,
            exit_when_idle: None,
            max_jobs: None,
            job_timeout: None,
            handle_signals: false,
            worker_id: format!("pid{}-{:04x}", std::process::id(), fastrand::u16(..)),
            retention: None,
            progress_every: Duration::from_secs(1),
        }
    }

    /// Sets the lease and derives the heartbeat and reap periods from it (reaping at most
    /// [`MAX_PERIOD`] apart, however long the lease).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.heartbeat_every = lease / 3;
        self.reap_every = lease.min(MAX_PERIOD);
        self
    }

    /// Refuses settings a worker cannot run with (both runtimes check them before starting
    /// anything): bad input, said as such, instead of threads that fail later.
    pub fn validate(&self) -> Result<()> {
        crate::models::validate_queue_name(&self.queue)?;
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(Error::InvalidArgument {
                field: "concurrency",
                reason: format!(
                    "{} is not between 1 and {MAX_CONCURRENCY} (one thread and one pooled \
                 connection each)",
                    self.concurrency
                ),
            });
        }
        if self.lease < MIN_LEASE {
            return Err(Error::InvalidArgument {
                field: "lease",
                reason: format!(
                    "{:?} is shorter than {MIN_LEASE:?}: a lease must outlast the heartbeats \
                 that renew it, or the worker reaps its own jobs",
                    self.lease
                ),
            });
        }
        if self.heartbeat_every.is_zero() || self.heartbeat_every >= self.lease {
            return Err(Error::InvalidArgument {
                field: "heartbeat_every",
                reason: format!(
                    "{:?} must be more than zero and shorter than the lease ({:?})",
                    self.heartbeat_every, self.lease
                ),
            });
        }
        if self.progress_every.is_zero() {
            return Err(Error::InvalidArgument {
                field: "progress_every",
                reason: "must be more than zero (it bounds the progress writes per job)".into(),
            });
        }
        // A lease that would run past the stored range of timestamps fails every claim: say
        // so now, as bad input, instead of starting threads that cannot claim anything.
        crate::timestamp::from_now("lease", self.lease)?;
        if self.reap_every.is_zero() || self.reap_every > MAX_PERIOD {
            return Err(Error::InvalidArgument {
                field: "reap_every",
                reason: format!(
                    "{:?} must be more than zero and at most {MAX_PERIOD:?}",
                    self.reap_every
                ),
            });
        }
        // A keep-for that reaches back past the stored range would fail every prune, every
        // `every`, for as long as the worker runs: refused now, as bad input.
        for (state, keep) in self.retention.iter().flat_map(|r| r.limits()) {
            if crate::manage::prune_cutoff(keep).is_err() {
                return Err(Error::InvalidArgument {
                    field: "retention",
                    reason: format!(
                        "keeping {state} jobs for {keep:?} reaches back before year {} (the \
                         first jobdb stores): leave the limit off to keep them for ever",
                        crate::timestamp::MIN_YEAR
                    ),
                });
            }
        }
        Ok(())
    }
}

/// What a finished [`Worker::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WorkerReport {
    /// Attempts recorded as succeeded.
    pub succeeded: u64,
    /// Attempts recorded as failed (panics included).
    pub failed: u64,
    /// Results abandoned because the lease was lost.
    pub lease_lost: u64,
    /// Jobs released back to the queue at shutdown.
    pub released: u64,
    /// Expired leases of other workers reaped.
    pub reaped: u64,
    /// Jobs cancelled while their handler ran (recorded as cancelled, not succeeded).
    pub cancelled: u64,
    /// Handler threads still running when `run` returned: they ignored the request to stop
    /// (`should_abandon`) past the grace period and the abandon wait, and are left behind;
    /// their jobs were released and whatever they report is refused (fenced by the lease).
    pub detached: u64,
}

/// Most handler threads a worker runs (each holds a pooled connection while it works).
pub const MAX_CONCURRENCY: usize = 1024;

/// The shortest lease a worker takes: its heartbeats (a third of the lease by default) must
/// renew it in time, with a database round trip to spare.
pub const MIN_LEASE: Duration = Duration::from_millis(100);

/// The longest reap period a worker takes (a day: longer is a typo, and a bounded period
/// keeps the background thread's clock arithmetic far from overflow).
pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// How long, past the grace period, handlers told to abandon get to stop before their jobs are
/// released anyway: the shell handler's TERM-to-KILL grace (2 s) and some.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// Leases of the handlers running now, each with its "abandon" flag, for the heartbeat
/// thread and for shutdown.
#[derive(Default)]
struct Active {
    leases: Mutex<HashMap<Lease, Arc<JobFlags>>>,
}

impl Active {
    fn lock(&self) -> MutexGuard<'_, HashMap<Lease, Arc<JobFlags>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still safe to use.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    lease_lost: AtomicU64,
    released: AtomicU64,
    reaped: AtomicU64,
    cancelled: AtomicU64,
}

/// Runs a handler over the jobs of one queue.
pub struct Worker<H, C: QueueConnection = diesel::SqliteConnection> {
    queue: Queue<C>,
    config: WorkerConfig,
    handler: Arc<H>,
    shutdown: ShutdownHandle,
}

impl<H, O, C> Worker<H, C>
where
    H: Fn(&JobContext) -> std::result::Result<O, HandlerError> + Send + Sync + 'static,
    O: Serialize,
    C: QueueConnection,
{
    /// A worker for `config.queue` running `handler`.
    pub fn new(queue: Queue<C>, config: WorkerConfig, handler: H) -> Self {
        Worker {
            queue,
            config,
            handler: Arc::new(handler),
            shutdown: ShutdownHandle::default(),
        }
    }

    /// A handle that stops this worker.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Runs until shutdown, or until a stop mode says so (`exit_when_empty`, `exit_when_idle`,
    /// `max_jobs`). Returns what was done; an error if the worker could not start, or if a
    /// claim failed with an error no retry cures ([`Error::is_permanent`]: a corrupt file, a
    /// table or column missing), after the running jobs were finished or released.
    pub fn run(&self) -> Result<WorkerReport> {
        self.config.validate()?;
        if self.config.handle_signals {
            self.shutdown.stop_on_signals()?;
        }
        let active = Arc::new(Active::default());
        let counters = Arc::new(Counters::default());
        let drained = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let last_running_scan = Arc::new(Mutex::new(None));
        let last_claim = Arc::new(Mutex::new(Instant::now()));
        let claims = Arc::new(AtomicU64::new(0));
        let fatal: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let stop_heartbeats = Arc::new(AtomicBool::new(false));

        let heartbeater = {
            let (queue, config, active, counters, stop) = (
                self.queue.clone(),
                self.config.clone(),
                active.clone(),
                counters.clone(),
                stop_heartbeats.clone(),
            );
            thread::spawn(move || heartbeat_loop(&queue, &config, &active, &counters, &stop))
        };
        let retainer = self.config.retention.clone().map(|retention| {
            let (queue, stop) = (self.queue.clone(), stop_heartbeats.clone());
            thread::spawn(move || retention_loop(&queue, &retention, &stop))
        });
        let threads: Vec<_> = (0..self.config.concurrency)
            .map(|i| {
                let ctx = ThreadCtx {
                    queue: self.queue.clone(),
                    config: self.config.clone(),
                    worker_id: format!("{}/{i}", self.config.worker_id),
                    handler: self.handler.clone(),
                    shutdown: self.shutdown.clone(),
                    active: active.clone(),
                    counters: counters.clone(),
                    drained: drained.clone(),
                    in_flight: in_flight.clone(),
                    last_running_scan: last_running_scan.clone(),
                    last_claim: last_claim.clone(),
                    claims: claims.clone(),
                    fatal: fatal.clone(),
                };
                thread::spawn(move || ctx.run())
            })
            .collect();

        // Wait for the threads to stop on their own (drained) or for shutdown + grace.
        let mut grace_deadline = None;
        while threads.iter().any(|t| !t.is_finished()) {
            if self.shutdown.is_requested() && grace_deadline.is_none() {
                tracing::info!(grace = ?self.config.grace, "shutdown requested; finishing running jobs");
                grace_deadline = Some(Instant::now() + self.config.grace);
                // Idle threads wait for work up to `poll_max`: wake them to see the request.
                self.queue.wake_idle_workers();
            }
            if grace_deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if self.shutdown.is_hurried() {
                tracing::warn!("second stop signal: abandoning running jobs now");
                break;
            }
            // Without heartbeats our leases run out under the handlers: stop, and report it.
            if heartbeater.is_finished() && !self.shutdown.is_requested() {
                tracing::error!("the heartbeat thread stopped; shutting the worker down");
                self.shutdown.shutdown();
            }
            thread::sleep(Duration::from_millis(10));
        }
        // Past the grace period: tell unfinished handlers to stop, give them a moment to (the
        // shell handler kills its whole process group: TERM, then KILL), and only then give
        // their jobs back, so a job is not claimed again while its last attempt still runs.
        let unfinished: Vec<(Lease, Arc<JobFlags>)> = active
            .lock()
            .iter()
            .map(|(lease, flags)| (*lease, flags.clone()))
            .collect();
        for (_, flags) in &unfinished {
            // A job whose lease was already lost is counted as that, by its handler's thread.
            if !flags.abandon.load(Ordering::SeqCst) {
                flags.shutting_down.store(true, Ordering::SeqCst);
            }
            flags.abandon.store(true, Ordering::SeqCst);
        }
        let stop_by = Instant::now() + ABANDON_WAIT;
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < stop_by {
            thread::sleep(Duration::from_millis(10));
        }
        for (lease, flags) in unfinished {
            match self.queue.release(lease) {
                Ok(()) => {
                    counters.released.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        job_id = lease.job_id,
                        "handler did not finish within the grace period; job released"
                    );
                }
                Err(e) => {
                    // Lost meanwhile: counted here, as its handler's thread did not.
                    if e.is_lease_lost() && flags.shutting_down.load(Ordering::SeqCst) {
                        counters.lease_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(job_id = lease.job_id, error = %e, "could not release job")
                }
            }
        }
        stop_heartbeats.store(true, Ordering::SeqCst);
        // A panic of ours (heartbeats, reaping, retention) is a bug, not something to drop:
        // leases went unrenewed while it was down. Reported once the jobs above are released.
        let mut panicked = Vec::new();
        if let Err(panic) = heartbeater.join() {
            panicked.push(format!("heartbeat thread: {}", panic_message(&panic)));
        }
        if let Some(Err(panic)) = retainer.map(|r| r.join()) {
            panicked.push(format!("retention thread: {}", panic_message(&panic)));
        }
        let mut detached = 0;
        for t in threads {
            if t.is_finished() {
                // A handler's panic was already caught and recorded as a failed attempt; a
                // panic here is in the worker's own code.
                if let Err(panic) = t.join() {
                    panicked.push(format!("handler thread: {}", panic_message(&panic)));
                }
            } else {
                detached += 1;
            }
        }
        if detached > 0 {
            tracing::warn!(
                detached,
                "handler threads ignored the request to stop and are left running; their jobs \
                 were released and their results will be refused"
            );
        }
        if !panicked.is_empty() {
            return Err(Error::Internal {
                what: "worker",
                reason: panicked.join("; "),
            });
        }
        if let Some(e) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        Ok(WorkerReport {
            detached,
            succeeded: counters.succeeded.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            lease_lost: counters.lease_lost.load(Ordering::Relaxed),
            released: counters.released.load(Ordering::Relaxed),
            reaped: counters.reaped.load(Ordering::Relaxed),
            cancelled: counters.cancelled.load(Ordering::Relaxed),
        })
    }
}

/// Everything one handler thread needs.
struct ThreadCtx<H, C: QueueConnection> {
    queue: Queue<C>,
    config: WorkerConfig,
    worker_id: String,
    handler: Arc<H>,
    shutdown: ShutdownHandle,
    active: Arc<Active>,
    counters: Arc<Counters>,
    drained: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    last_running_scan: Arc<Mutex<Option<Instant>>>,
    /// When any thread last claimed a job (or the worker started): for `exit_when_idle`.
    last_claim: Arc<Mutex<Instant>>,
    /// Claim slots taken so far, for `max_jobs`: a thread takes one before it claims and
    /// gives it back when the claim was empty, so the worker never claims more than the limit.
    claims: Arc<AtomicU64>,
    /// The first error no retry cures ([`Error::is_permanent`]): the worker shuts down and
    /// `run` returns it.
    fatal: Arc<Mutex<Option<Error>>>,
}

impl<H, O, C> ThreadCtx<H, C>
where
    H: Fn(&JobContext) -> std::result::Result<O, HandlerError>,
    O: Serialize,
    C: QueueConnection,
{
    fn run(&self) {
        let mut idle = self.config.poll_min;
        while !self.shutdown.is_requested() && !self.drained.load(Ordering::SeqCst) {
            if let Some(max) = self.config.max_jobs {
                // Take a slot only while one is free: a thread that finds none leaves the
                // count as it was, so a slot given back after an empty claim is still there
                // for the thread that gave it back (this one quits; that one goes on).
                let took = self
                    .claims
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n < max).then_some(n + 1)
                    });
                if took.is_err() {
                    // Every slot is taken: this thread is done (the others finish theirs).
                    break;
                }
            }
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            // Read before claiming, so an enqueue between an empty claim and the wait below
            // still wakes this thread.
            let seen = self.queue.work_signal();
            let claimed =
                self.queue
                    .claim(&self.config.queue, 1, &self.worker_id, self.config.lease);
            let job = match claimed {
                Ok(mut jobs) if !jobs.is_empty() => jobs.swap_remove(0),
                Ok(_) => {
                    self.give_back_claim_slot();
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    if self.should_stop_idle() {
                        self.drained.store(true, Ordering::SeqCst);
                        break;
                    }
                    // Idle: wait for an enqueue (this process, or any process on PostgreSQL)
                    // or the poll delay, whichever comes first.
                    idle = if self.queue.wait_for_work(seen, idle) {
                        self.config.poll_min
                    } else {
                        (idle * 2).min(self.config.poll_max)
                    };
                    continue;
                }
                Err(e) if e.is_permanent() => {
                    self.give_back_claim_slot();
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    tracing::error!(error = %e, "claim failed and no retry can cure it; stopping");
                    self.fatal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    self.shutdown.shutdown();
                    break;
                }
                Err(e) => {
                    self.give_back_claim_slot();
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    tracing::error!(error = %e, "claim failed; backing off");
                    thread::sleep(self.config.poll_max);
                    continue;
                }
            };
            idle = self.config.poll_min;
            *self.last_claim.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            self.process(job);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A claim that found nothing does not count against `max_jobs`.
    fn give_back_claim_slot(&self) {
        if self.config.max_jobs.is_some() {
            self.claims.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// After an empty claim: whether `exit_when_idle` or `exit_when_empty` says stop.
    fn should_stop_idle(&self) -> bool {
        if let Some(idle) = self.config.exit_when_idle {
            let since = self
                .last_claim
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if since >= idle && self.in_flight.load(Ordering::SeqCst) == 0 {
                tracing::info!(idle = ?since, "nothing claimable for the idle limit; stopping");
                return true;
            }
        }
        self.config.exit_when_empty && self.queue_is_drained()
    }

    /// Drained when no thread of ours is between a claim and its result and the queue has
    /// nothing to wait for ([`crate::queue::has_pending_work`]: nothing running anywhere, and
    /// nothing queued that is due or in a retry backoff). That check scans the queue's jobs,
    /// so it runs at most once per `poll_max` for the whole worker.
    fn queue_is_drained(&self) -> bool {
        if self.in_flight.load(Ordering::SeqCst) != 0 {
            return false;
        }
        {
            let mut last = self
                .last_running_scan
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.config.poll_max) {
                return false;
            }
            *last = Some(Instant::now());
        }
        matches!(self.queue.has_pending_work(&self.config.queue), Ok(false))
    }

    fn process(&self, job: Job) {
        let span = crate::telemetry::span(crate::telemetry::Op::Process, &job.queue, Some(job.id));
        let _entered = span.enter();
        let lease = job.lease();
        // Before the deadline is set: an attempt recorded as timed out never reads shorter
        // than its limit.
        let started = Instant::now();
        let flags = Arc::new(JobFlags::with_timeout(
            job.timeout.or(self.config.job_timeout),
        ));
        self.active.lock().insert(lease, flags.clone());
        let ctx = JobContext { job, flags };
        let outcome = catch_unwind(AssertUnwindSafe(|| (self.handler)(&ctx)));
        let elapsed = started.elapsed();
        self.active.lock().remove(&lease);
        if let Some(limit) = ctx.flags.timed_out() {
            self.record_timeout(lease, limit, elapsed, &ctx.flags);
            return;
        }
        // Cancelled handlers are not abandoned: what they return is recorded as cancelled.
        if ctx.flags.abandon.load(Ordering::SeqCst) {
            // Released at shutdown: the release counts it (`released`), once.
            if !ctx.flags.shutting_down.load(Ordering::SeqCst) {
                self.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(
                job_id = lease.job_id,
                attempt = lease.attempt,
                "lease lost or job released while the handler ran; result abandoned"
            );
            return;
        }
        let recorded = match outcome {
            Ok(Ok(output)) => match serde_json::to_string(&output) {
                Ok(json) => match self.queue.complete_json(lease, &json, elapsed) {
                    // The lease is gone or the job was cancelled: handled below.
                    Err(e) if e.is_lease_lost() || e.is_cancelled() || e.is_connection_lost() => {
                        Err(e)
                    }
                    // The result itself could not be stored (too deep, too big, refused by
                    // the database): the attempt fails with that reason, now, instead of
                    // sitting `running` until its lease expires and reading "lease expired".
                    Err(e) => self
                        .queue
                        .fail(
                            lease,
                            &format!("the handler's result could not be recorded: {e}"),
                            elapsed,
                        )
                        .map(|state| self.failed_counter(state)),
                    Ok(()) => Ok(&self.counters.succeeded),
                },
                Err(e) => self
                    .queue
                    .fail(
                        lease,
                        &format!("output is not serializable as JSON: {e}"),
                        elapsed,
                    )
                    .map(|state| self.failed_counter(state)),
            },
            Ok(Err(e)) => self
                .queue
                .fail(lease, &e.message, elapsed)
                .map(|state| self.failed_counter(state)),
            Err(panic) => {
                let msg = panic_message(&panic);
                tracing::error!(job_id = lease.job_id, panic = %msg, "handler panicked");
                self.queue
                    .fail(lease, &format!("handler panicked: {msg}"), elapsed)
                    .map(|state| self.failed_counter(state))
            }
        };
        match recorded {
            Ok(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_cancelled() => {
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    job_id = lease.job_id,
                    "job was cancelled while it ran; recorded as cancelled"
                );
            }
            Err(e) if e.is_lease_lost() => {
                self.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    job_id = lease.job_id,
                    "lease lost before the result was recorded; result abandoned"
                );
            }
            // The job stays running and its lease will expire: the reaper gives it back.
            Err(e) => {
                tracing::error!(job_id = lease.job_id, error = %e, "could not record the result")
            }
        }
    }
}

impl<H, C: QueueConnection> ThreadCtx<H, C> {
    /// Records an attempt that ran past its time limit, unless the heartbeat thread already
    /// did.
    fn record_timeout(&self, lease: Lease, limit: Duration, elapsed: Duration, flags: &JobFlags) {
        if flags.timeout_recorded.swap(true, Ordering::SeqCst) {
            return;
        }
        match self.queue.fail(lease, &timeout_error(limit), elapsed) {
            Ok(state) => {
                self.failed_counter(state).fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_lease_lost() => {
                self.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(job_id = lease.job_id, error = %e, "could not record the timeout")
            }
        }
    }

    /// A failure recorded on a job whose cancel was requested ends it `cancelled`.
    fn failed_counter(&self, state: JobState) -> &AtomicU64 {
        if state == JobState::Cancelled {
            &self.counters.cancelled
        } else {
            &self.counters.failed
        }
    }
}

/// The error recorded for an attempt past its time limit.
pub(crate) fn timeout_error(limit: Duration) -> String {
    format!("timed out after {limit:?}")
}

/// A caught panic's message, for errors that report it.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
