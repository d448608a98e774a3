//! The async worker (feature `tokio`): the sync [`crate::Worker`]'s guarantees for `async`
//! handlers. One claim loop takes as many jobs as there are free permits (a semaphore bounds
//! concurrency), each job runs as a task of its own, a heartbeat task renews all live leases
//! in one statement and reaps other workers' expired ones, and shutdown is graceful.
//!
//! Why tasks and not threads: an async handler spends its time waiting on I/O (an HTTP call,
//! the app's own database); a thread each would cap concurrency at what threads cost. All
//! database calls go through [`AsyncQueue`], so no runtime thread waits on the database.
//!
//! What a handler is told, through its [`AsyncJobContext::token`]: the job was cancelled
//! (seen by the next heartbeat), its lease was lost, its time limit ran out, or shutdown
//! passed its grace period. Async cancellation is cooperative: a handler that ignores the
//! token is aborted (dropped at its next `.await`) once the time limit's grace or the
//! shutdown's abandon wait has passed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::context::{due_progress, restore_due_progress, JobFlags};
use super::{panic_message, timeout_error, Counters, HandlerError, WorkerConfig, WorkerReport};
use super::{ShutdownHandle, ABANDON_WAIT};
use crate::error::{Error, Result};
use crate::models::{Job, JobState, Lease};
use crate::{AsyncQueue, QueueConnection};

/// How long past its time limit a handler may take to stop before it is aborted and the
/// timeout recorded (the sync worker's grace for handlers that ignore their limit).
const OVERDUE_GRACE: Duration = Duration::from_secs(5);

/// Most jobs one claim takes (free permits beyond it wait for the next claim).
const MAX_CLAIM: usize = 64;

/// What an async handler gets: the job (through `Deref`) and the token that fires when it
/// should stop. Owned, so the handler's future can be `'static`.
#[derive(Debug)]
pub struct AsyncJobContext {
    job: Job,
    token: CancellationToken,
    flags: Arc<JobFlags>,
}

impl AsyncJobContext {
    /// The job being run.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// Fires when the handler should stop: the job was cancelled (within one heartbeat), the
    /// lease was lost, the attempt's time limit ran out, or shutdown passed its grace period.
    /// Use it in `tokio::select!`, or pass a clone to the work the handler starts. What the
    /// handler returns afterwards is recorded as cancelled (a cancelled job), as the timeout
    /// (a time limit), or discarded (a lost or released lease).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether someone cancelled this job while it ran (the token fired for that reason).
    pub fn is_cancelled(&self) -> bool {
        self.flags.cancelled.load(Ordering::SeqCst)
    }

    /// Whether the attempt ran past its time limit.
    pub fn is_timed_out(&self) -> bool {
        self.flags.timed_out().is_some()
    }

    /// Whether the handler should stop now (the token fired).
    pub fn should_abandon(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Reports this attempt's progress, as [`crate::JobContext::set_progress`] does: the
    /// newest value is kept and the heartbeat task writes it at most once per
    /// [`crate::WorkerConfig::progress_every`] per job. Never waits.
    pub fn set_progress(&self, value: &impl serde::Serialize) -> crate::Result<()> {
        self.flags
            .report_progress(crate::queue::encode_progress(value)?);
        Ok(())
    }
}

impl std::ops::Deref for AsyncJobContext {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.job
    }
}

/// A job running now: what the heartbeat task and shutdown tell it, and how to abort it.
struct Running {
    flags: Arc<JobFlags>,
    token: CancellationToken,
    handler: AbortHandle,
}

/// What the worker's tasks share.
#[derive(Default)]
struct Shared {
    running: Mutex<HashMap<Lease, Running>>,
    counters: Counters,
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, HashMap<Lease, Running>> {
        // Single inserts and removes: a poisoned lock still holds a consistent map.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, state: JobState) {
        let counter = if state == JobState::Cancelled {
            &self.counters.cancelled
        } else {
            &self.counters.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs an async handler over the jobs of one queue: `|ctx| async move { … }` returning
/// `Result<impl Serialize, HandlerError>`.
///
/// ```no_run
/// # async fn demo(queue: jobdb::AsyncQueue) -> jobdb::Result<()> {
/// use jobdb::{AsyncWorker, HandlerError, WorkerConfig};
/// let mut config = WorkerConfig::new("emails");
/// config.concurrency = 16;
/// let worker = AsyncWorker::new(queue, config, |ctx| async move {
///     let to: String = ctx.payload().map_err(HandlerError::from)?;
///     tokio::select! {
///         _ = ctx.token().cancelled() => Err(HandlerError::msg("stopped")),
///         _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => Ok(to),
///     }
/// });
/// let stop = worker.shutdown_token();
/// tokio::spawn(async move { tokio::signal::ctrl_c().await.ok(); stop.cancel() });
/// let report = worker.run().await?;
/// # let _ = report; Ok(()) }
/// ```
pub struct AsyncWorker<H, C: QueueConnection = diesel::SqliteConnection> {
    queue: AsyncQueue<C>,
    config: WorkerConfig,
    handler: Arc<H>,
    shutdown: CancellationToken,
    hurry: CancellationToken,
}

impl<H, F, O, C> AsyncWorker<H, C>
where
    H: Fn(AsyncJobContext) -> F + Send + Sync + 'static,
    F: Future<Output = std::result::Result<O, HandlerError>> + Send + 'static,
    O: Serialize + Send + 'static,
    C: QueueConnection,
{
    /// A worker for `config.queue` running `handler`; `config.concurrency` jobs at a time.
    pub fn new(queue: impl Into<AsyncQueue<C>>, config: WorkerConfig, handler: H) -> Self {
        // Hurrying is a shutdown too: the shutdown token is the hurry token's child.
        let hurry = CancellationToken::new();
        AsyncWorker {
            queue: queue.into(),
            config,
            handler: Arc::new(handler),
            shutdown: hurry.child_token(),
            hurry,
        }
    }

    /// Cancel it to stop the worker gracefully: no more claims, running handlers get the
    /// grace period to finish, then their tokens fire and their jobs are released.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Cancel it to stop at once: running handlers' tokens fire without waiting for the grace
    /// period (a second SIGINT/SIGTERM does the same).
    pub fn hurry_token(&self) -> CancellationToken {
        self.hurry.clone()
    }

    /// Runs until shutdown or a stop mode (`exit_when_empty`, `exit_when_idle`, `max_jobs`);
    /// returns what was done; an error if the worker could not start, or if a claim failed
    /// with an error no retry cures ([`Error::is_permanent`]: a corrupt file, a table or
    /// column missing), after the running jobs were finished or released.
    pub async fn run(&self) -> Result<WorkerReport> {
        self.config.validate()?;
        let stop_background = CancellationToken::new();
        if self.config.handle_signals {
            self.relay_signals(&stop_background)?;
        }
        let shared = Arc::new(Shared::default());
        let heartbeats = tokio::spawn(heartbeat_loop(
            self.queue.clone(),
            self.config.clone(),
            shared.clone(),
            stop_background.clone(),
        ));
        if let Some(retention) = self.config.retention.clone() {
            tokio::spawn(retention_loop(
                self.queue.clone(),
                retention,
                stop_background.clone(),
            ));
        }
        let mut jobs = JoinSet::new();
        let fatal = self.claim_loop(&shared, &mut jobs).await;
        let detached = self.drain(&shared, &mut jobs).await;
        stop_background.cancel();
        let mut panicked = Vec::new();
        if let Err(e) = heartbeats.await {
            if e.is_panic() {
                panicked.push(format!(
                    "heartbeat task: {}",
                    panic_message(&e.into_panic())
                ));
            }
        }
        if !panicked.is_empty() {
            return Err(Error::Internal {
                what: "worker",
                reason: panicked.join("; "),
            });
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        let c = &shared.counters;
        Ok(WorkerReport {
            detached,
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            lease_lost: c.lease_lost.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            reaped: c.reaped.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
        })
    }

    /// SIGINT/SIGTERM: the first cancels the shutdown token, the second the hurry token.
    /// (Through signal-hook's counter, polled: no I/O driver needed in the runtime.)
    fn relay_signals(&self, stop: &CancellationToken) -> Result<()> {
        let signals = ShutdownHandle::default();
        signals.stop_on_signals()?;
        let (shutdown, hurry, stop) = (self.shutdown.clone(), self.hurry.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if signals.is_requested() {
                    shutdown.cancel();
                }
                if signals.is_hurried() {
                    hurry.cancel();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Ok(())
    }

    /// Claims while there are free permits and no stop, and starts a task per job; returns
    /// the error that stopped it, if one no retry cures did.
    async fn claim_loop(&self, shared: &Arc<Shared>, jobs: &mut JoinSet<()>) -> Option<Error> {
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let mut claimed_total: u64 = 0;
        let mut idle = self.config.poll_min;
        let mut last_claim = Instant::now();
        let mut last_scan: Option<Instant> = None;
        loop {
            while let Some(done) = jobs.try_join_next() {
                log_job_task_panic(done);
            }
            let first = tokio::select! {
                p = permits.clone().acquire_owned() => p,
                _ = self.shutdown.cancelled() => return None,
            };
            let Ok(first) = first else { return None };
            let mut taken = vec![first];
            while taken.len() < MAX_CLAIM {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => taken.push(p),
                    Err(_) => break,
                }
            }
            if let Some(max) = self.config.max_jobs {
                let left = max.saturating_sub(claimed_total);
                if left == 0 {
                    return None;
                }
                taken.truncate(usize::try_from(left).unwrap_or(usize::MAX));
            }
            let seen = match self.queue.work_signal().await {
                Ok(seen) => seen,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the wake-up listener; polling");
                    0
                }
            };
            let limit = u32::try_from(taken.len()).unwrap_or(u32::MAX);
            let claimed = self
                .queue
                .claim(
                    &self.config.queue,
                    limit,
                    &self.config.worker_id,
                    self.config.lease,
                )
                .await;
            match claimed {
                Ok(found) if !found.is_empty() => {
                    claimed_total += found.len() as u64;
                    idle = self.config.poll_min;
                    last_claim = Instant::now();
                    for (job, permit) in found.into_iter().zip(taken) {
                        jobs.spawn(self.run_job(shared.clone(), job, permit));
                    }
                }
                Ok(_) => {
                    drop(taken);
                    if self.idle_stop(jobs.len(), last_claim, &mut last_scan).await {
                        return None;
                    }
                    let woke = tokio::select! {
                        w = self.queue.wait_for_work(seen, idle) => w,
                        _ = self.shutdown.cancelled() => return None,
                    };
                    idle = if woke {
                        self.config.poll_min
                    } else {
                        (idle * 2).min(self.config.poll_max)
                    };
                }
                Err(e) if e.is_permanent() => {
                    tracing::error!(error = %e, "claim failed and no retry can cure it; stopping");
                    // Shut down as on a signal: running jobs get the grace period, then are
                    // released.
                    self.shutdown.cancel();
                    return Some(e);
                }
                Err(e) => {
                    drop(taken);
                    tracing::error!(error = %e, "claim failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.poll_max) => {}
                        _ = self.shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// After an empty claim: whether `exit_when_idle` or `exit_when_empty` says stop. The
    /// drained check scans the queue, so it runs at most once per `poll_max`.
    async fn idle_stop(
        &self,
        in_flight: usize,
        last_claim: Instant,
        last_scan: &mut Option<Instant>,
    ) -> bool {
        if in_flight != 0 {
            return false;
        }
        if let Some(idle) = self.config.exit_when_idle {
            if last_claim.elapsed() >= idle {
                tracing::info!(idle = ?last_claim.elapsed(), "nothing claimable for the idle limit; stopping");
                return true;
            }
        }
        if !self.config.exit_when_empty
            || last_scan.is_some_and(|t| t.elapsed() < self.config.poll_max)
        {
            return false;
        }
        *last_scan = Some(Instant::now());
        matches!(
            self.queue.has_pending_work(&self.config.queue).await,
            Ok(false)
        )
    }

    /// One job: its handler as a task of its own (so a panic is caught and it can be
    /// aborted), raced against its time limit; then the outcome recorded, fenced by the lease.
    fn run_job(
        &self,
        shared: Arc<Shared>,
        job: Job,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (queue, handler) = (self.queue.clone(), self.handler.clone());
        let limit = job.timeout.or(self.config.job_timeout);
        let span = crate::telemetry::span(crate::telemetry::Op::Process, &job.queue, Some(job.id));
        tracing::Instrument::instrument(
            async move {
                let lease = job.lease();
                // Before the deadline is set: a timed-out attempt never reads shorter than its limit.
                let started = Instant::now();
                let flags = Arc::new(JobFlags::with_timeout(limit));
                let token = CancellationToken::new();
                let ctx = AsyncJobContext {
                    job,
                    token: token.clone(),
                    flags: flags.clone(),
                };
                let mut task = tokio::spawn(async move { handler(ctx).await });
                shared.running().insert(
                    lease,
                    Running {
                        flags: flags.clone(),
                        token: token.clone(),
                        handler: task.abort_handle(),
                    },
                );
                let deadline = flags.timeout.map(|(_, at)| at);
                let outcome = tokio::select! {
                    r = &mut task => Some(r),
                    _ = sleep_until(deadline), if deadline.is_some() => None,
                };
                let Some(outcome) = outcome else {
                    // Past the limit: tell the handler, give it the grace to stop, then abort it.
                    token.cancel();
                    if tokio::time::timeout(OVERDUE_GRACE, &mut task)
                        .await
                        .is_err()
                    {
                        task.abort();
                    }
                    shared.running().remove(&lease);
                    record_timeout(&queue, &shared, lease, &flags, started.elapsed()).await;
                    drop(permit);
                    return;
                };
                shared.running().remove(&lease);
                let elapsed = started.elapsed();
                if flags.timed_out().is_some() {
                    record_timeout(&queue, &shared, lease, &flags, elapsed).await;
                } else if flags.abandon.load(Ordering::SeqCst) {
                    // Released at shutdown: the release counts it (`released`), once.
                    if !flags.shutting_down.load(Ordering::SeqCst) {
                        shared.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(
                        job_id = lease.job_id,
                        "lease lost or job released while the handler ran; result abandoned"
                    );
                } else {
                    record(&queue, &shared, lease, outcome, elapsed).await;
                }
                drop(permit);
            },
            span,
        )
    }

    /// After the claim loop: let running jobs finish within the grace period; past it, fire
    /// their tokens, give them the abandon wait, abort what is left and release their jobs.
    /// Returns how many handler tasks were still running after the abort.
    async fn drain(&self, shared: &Shared, jobs: &mut JoinSet<()>) -> u64 {
        if self.shutdown.is_cancelled() && !jobs.is_empty() {
            tracing::info!(grace = ?self.config.grace, "shutdown requested; finishing running jobs");
        }
        {
            let finished = async {
                while let Some(done) = jobs.join_next().await {
                    log_job_task_panic(done);
                }
            };
            tokio::pin!(finished);
            // A stop mode ended the claims: running jobs finish, unless shutdown comes.
            tokio::select! {
                _ = &mut finished => return 0,
                _ = self.shutdown.cancelled() => {}
            }
            tokio::select! {
                _ = &mut finished => return 0,
                _ = tokio::time::sleep(self.config.grace) => {}
                _ = self.hurry.cancelled() => {
                    tracing::warn!("stop now requested: abandoning running jobs");
                }
            }
        }
        let unfinished: Vec<(Lease, Arc<JobFlags>)> = {
            let running = shared.running();
            for r in running.values() {
                // A job whose lease was already lost is counted as that, by its task.
                if !r.flags.abandon.load(Ordering::SeqCst) {
                    r.flags.shutting_down.store(true, Ordering::SeqCst);
                }
                r.flags.abandon.store(true, Ordering::SeqCst);
                r.token.cancel();
            }
            running
                .iter()
                .map(|(lease, r)| (*lease, r.flags.clone()))
                .collect()
        };
        let finished = async {
            while let Some(done) = jobs.join_next().await {
                log_job_task_panic(done);
            }
        };
        let handlers: Vec<AbortHandle> = shared
            .running()
            .values()
            .map(|r| r.handler.clone())
            .collect();
        if tokio::time::timeout(ABANDON_WAIT, finished).await.is_err() {
            handlers.iter().for_each(AbortHandle::abort);
            jobs.abort_all();
            while jobs.join_next().await.is_some() {}
        }
        for (lease, flags) in unfinished {
            match self.queue.release(lease).await {
                Ok(()) => {
                    shared.counters.released.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        job_id = lease.job_id,
                        "handler did not finish within the grace period; job released"
                    );
                }
                Err(e) => {
                    // Lost meanwhile: counted here, as its task did not.
                    if e.is_lease_lost() && flags.shutting_down.load(Ordering::SeqCst) {
                        shared.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(job_id = lease.job_id, error = %e, "could not release job")
                }
            }
        }
        // An aborted task stops at its next `.await`; one stuck in blocking code does not.
        tokio::task::yield_now().await;
        handlers.iter().filter(|h| !h.is_finished()).count() as u64
    }
}

/// Sleeps until `deadline` (never, without one: the branch is disabled then).
async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// A job task's own panic is a bug of ours (the handler's is caught inside): say so.
fn log_job_task_panic(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(panic = %panic_message(&e.into_panic()), "a job task panicked");
        }
    }
}

/// Records what the handler's task ended with: its output, its error, or its panic.
async fn record<C: QueueConnection, O: Serialize>(
    queue: &AsyncQueue<C>,
    shared: &Shared,
    lease: Lease,
    outcome: std::result::Result<std::result::Result<O, HandlerError>, tokio::task::JoinError>,
    elapsed: Duration,
) {
    let failure = match outcome {
        Ok(Ok(output)) => match serde_json::to_string(&output) {
            Ok(json) => match queue.complete_json(lease, json, elapsed).await {
                Ok(()) => {
                    shared.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) if e.is_lease_lost() || e.is_cancelled() || e.is_connection_lost() => {
                    return settled(shared, lease, &e);
                }
                Err(e) => format!("the handler's result could not be recorded: {e}"),
            },
            Err(e) => format!("output is not serializable as JSON: {e}"),
        },
        Ok(Err(e)) => e.message,
        Err(e) if e.is_panic() => {
            let msg = panic_message(&e.into_panic());
            tracing::error!(job_id = lease.job_id, panic = %msg, "handler panicked");
            format!("handler panicked: {msg}")
        }
        // Aborted by shutdown: the job is released there.
        Err(_) => return,
    };
    match queue.fail(lease, &failure, elapsed).await {
        Ok(state) => shared.count(state),
        Err(e) => settled(shared, lease, &e),
    }
}

/// A result the database refused: counted by why.
fn settled(shared: &Shared, lease: Lease, e: &Error) {
    if e.is_cancelled() {
        shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            job_id = lease.job_id,
            "job was cancelled while it ran; recorded as cancelled"
        );
    } else if e.is_lease_lost() {
        shared.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            job_id = lease.job_id,
            "lease lost before the result was recorded; result abandoned"
        );
    } else {
        // The job stays running and its lease expires: the reaper gives it back.
        tracing::error!(job_id = lease.job_id, error = %e, "could not record the result");
    }
}

/// Records an attempt that ran past its time limit as failed ("timed out after …").
async fn record_timeout<C: QueueConnection>(
    queue: &AsyncQueue<C>,
    shared: &Shared,
    lease: Lease,
    flags: &JobFlags,
    elapsed: Duration,
) {
    let Some((limit, _)) = flags.timeout else {
        return;
    };
    match queue.fail(lease, &timeout_error(limit), elapsed).await {
        Ok(state) => shared.count(state),
        Err(e) => settled(shared, lease, &e),
    }
}

/// Renews every live lease in one statement each `heartbeat_every` and reaps expired leases
/// each `reap_every`; fires the token of a handler whose job was cancelled or whose lease was
/// lost.
async fn heartbeat_loop<C: QueueConnection>(
    queue: AsyncQueue<C>,
    config: WorkerConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut next_beat = Instant::now() + config.heartbeat_every;
    let mut next_reap = Instant::now();
    let tick = Duration::from_millis(5).max(config.heartbeat_every.min(Duration::from_millis(50)));
    while !stop.is_cancelled() {
        let now = Instant::now();
        if now >= next_reap {
            match queue.reap().await {
                Ok(0) => {}
                Ok(n) => {
                    shared
                        .counters
                        .reaped
                        .fetch_add(n as u64, Ordering::Relaxed);
                    tracing::info!(reaped = n, "requeued jobs whose lease expired");
                }
                Err(e) => tracing::warn!(error = %e, "reap failed"),
            }
            next_reap = now + config.reap_every;
        }
        if now >= next_beat {
            beat(&queue, &config, &shared).await;
            next_beat = now + config.heartbeat_every;
        }
        write_progress(&queue, &config, &shared).await;
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One heartbeat of every running job.
async fn beat<C: QueueConnection>(queue: &AsyncQueue<C>, config: &WorkerConfig, shared: &Shared) {
    let (leases, live): (Vec<Lease>, Vec<(Arc<JobFlags>, CancellationToken)>) = shared
        .running()
        .iter()
        .map(|(l, r)| (*l, (r.flags.clone(), r.token.clone())))
        .unzip();
    if leases.is_empty() {
        return;
    }
    match queue.heartbeat_many(leases.clone(), config.lease).await {
        Ok(each) => {
            for ((lease, (flags, token)), r) in leases.iter().zip(&live).zip(each) {
                let Err(e) = r else { continue };
                if e.is_cancelled() {
                    flags.cancelled.store(true, Ordering::SeqCst);
                    tracing::info!(
                        job_id = lease.job_id,
                        "heartbeat: the job was cancelled; telling its handler"
                    );
                } else {
                    flags.abandon.store(true, Ordering::SeqCst);
                    tracing::warn!(job_id = lease.job_id, error = %e, "heartbeat: lease lost; the handler's result will be abandoned");
                }
                token.cancel();
            }
        }
        Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
    }
}

/// Writes the progress handlers reported, at most once per `progress_every` per job.
async fn write_progress<C: QueueConnection>(
    queue: &AsyncQueue<C>,
    config: &WorkerConfig,
    shared: &Shared,
) {
    let (items, flags) = {
        let running = shared.running();
        due_progress(
            running.iter().map(|(l, r)| (l, &r.flags)),
            config.progress_every,
        )
    };
    if items.is_empty() {
        return;
    }
    // A lost lease fails only its own slot, and the heartbeat tells its handler.
    if let Err(e) = queue.set_progress_many(items.clone()).await {
        tracing::warn!(error = %e, "progress write failed; will retry");
        restore_due_progress(items, &flags);
    }
}

/// Applies `retention` every `retention.every` (each prune on the blocking pool).
async fn retention_loop<C: QueueConnection>(
    queue: AsyncQueue<C>,
    retention: crate::manage::Retention,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let keep = retention.clone();
        match queue.blocking(move |q| q.apply_retention(&keep)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(pruned = n, "retention: deleted finished jobs"),
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "retention: prune failed; will retry")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
