//! What a handler sees ([`JobContext`]) and returns on failure ([`HandlerError`]), and the
//! [`ShutdownHandle`] that stops a worker or scheduler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::{Job, Lease};

/// Why a handler failed; recorded as the attempt's `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// The message stored in `results.error` and `jobs.last_error`.
    pub message: String,
}

impl HandlerError {
    /// A failure with this message.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        HandlerError {
            message: message.to_string(),
        }
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError { message }
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::msg(message)
    }
}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        HandlerError::msg(e)
    }
}

/// So `?` on a Diesel query in a handler (the app's own tables) fails the attempt with the
/// query's error as the recorded message.
impl From<diesel::result::Error> for HandlerError {
    fn from(e: diesel::result::Error) -> Self {
        HandlerError::msg(e)
    }
}

impl From<std::io::Error> for HandlerError {
    fn from(e: std::io::Error) -> Self {
        HandlerError::msg(e)
    }
}

/// What a handler sees: the job (through `Deref`, so `ctx.payload()` works) and whether it
/// should stop early.
#[derive(Debug)]
pub struct JobContext {
    pub(super) job: Job,
    pub(super) flags: Arc<JobFlags>,
}

/// What the heartbeat thread and shutdown tell a running handler.
#[derive(Debug, Default)]
pub(super) struct JobFlags {
    /// The result can no longer be recorded (lease lost, or released at shutdown).
    pub(super) abandon: AtomicBool,
    /// Abandoned because the worker shuts down and gives the job back: counted as released,
    /// not as a lost lease.
    pub(super) shutting_down: AtomicBool,
    /// A cancel was requested (seen by a heartbeat).
    pub(super) cancelled: AtomicBool,
    /// The attempt's time limit and when it runs out (`None`: no limit).
    pub(super) timeout: Option<(Duration, Instant)>,
    /// The timeout was recorded as the attempt's failure (by the handler's thread or, for a
    /// handler that ignores it, by the heartbeat thread): whoever sets it first records it.
    pub(super) timeout_recorded: AtomicBool,
    /// The handler's latest progress not yet written, and when the last was.
    pub(super) progress: Mutex<ProgressSlot>,
}

/// A handler's progress between its `set_progress` calls and the heartbeat thread's writes.
#[derive(Debug, Default)]
pub(super) struct ProgressSlot {
    /// The newest value reported and not yet written (JSON text).
    pending: Option<String>,
    /// When a value of this attempt was last handed to the writer.
    written_at: Option<Instant>,
}

impl JobFlags {
    pub(super) fn with_timeout(timeout: Option<Duration>) -> JobFlags {
        JobFlags {
            timeout: timeout.map(|t| (t, Instant::now() + t)),
            ..JobFlags::default()
        }
    }

    /// Whether the limit ran out more than `grace` ago (the handler ignores it).
    pub(super) fn overdue(&self, grace: Duration) -> bool {
        self.timeout
            .is_some_and(|(_, deadline)| Instant::now() >= deadline + grace)
    }

    /// Keeps `json` as the newest progress (a newer one replaces it before it is written).
    pub(super) fn report_progress(&self, json: String) {
        self.progress_slot().pending = Some(json);
    }

    /// The pending progress, if one is pending and the last write was at least `every` ago
    /// (the first of an attempt is due at once); marks it written now.
    fn take_due_progress(&self, every: Duration, now: Instant) -> Option<String> {
        let mut slot = self.progress_slot();
        if slot.written_at.is_some_and(|at| now < at + every) {
            return None;
        }
        let json = slot.pending.take()?;
        slot.written_at = Some(now);
        Some(json)
    }

    /// Puts back a value whose write failed, unless a newer one came meanwhile.
    fn restore_progress(&self, json: String) {
        let mut slot = self.progress_slot();
        if slot.pending.is_none() {
            slot.pending = Some(json);
        }
    }

    fn progress_slot(&self) -> std::sync::MutexGuard<'_, ProgressSlot> {
        // Plain assignments under the lock: a poisoned slot is still consistent.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The attempt's time limit, once it has run out.
    pub(super) fn timed_out(&self) -> Option<Duration> {
        self.timeout
            .filter(|(_, deadline)| Instant::now() >= *deadline)
            .map(|(t, _)| t)
    }
}

/// The progress due to be written now, of the running jobs in `running`: at most one value
/// per job per `every`, all of them for one statement. Returns them with their flags, for
/// [`restore_due_progress`] when the write fails.
pub(super) fn due_progress<'a>(
    running: impl Iterator<Item = (&'a Lease, &'a Arc<JobFlags>)>,
    every: Duration,
) -> (Vec<(Lease, String)>, Vec<Arc<JobFlags>>) {
    let now = Instant::now();
    running
        .filter_map(|(lease, flags)| {
            let json = flags.take_due_progress(every, now)?;
            Some(((*lease, json), flags.clone()))
        })
        .unzip()
}

/// After a failed write of `items`: each value goes back to its job's slot (unless the
/// handler reported a newer one), to be written at the next tick.
pub(super) fn restore_due_progress(items: Vec<(Lease, String)>, flags: &[Arc<JobFlags>]) {
    for ((_, json), f) in items.into_iter().zip(flags) {
        f.restore_progress(json);
    }
}

impl JobContext {
    /// The job being run.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// Reports this attempt's progress: a small JSON value (at most
    /// [`crate::queue::MAX_PROGRESS_BYTES`] as JSON text), e.g. `json!({"done": 120, "of":
    /// 500})`, shown by `jobdb show`, the dashboard and [`crate::Job::progress`].
    ///
    /// Call it as often as you like: it only keeps the newest value, and the worker's
    /// heartbeat thread writes it at most once per [`crate::WorkerConfig::progress_every`] per
    /// job (all due jobs in one statement, fenced by the lease), so progress never floods the
    /// writer. A value reported just before the handler returns may therefore never be
    /// written; the job's result is the final word. The stored value outlives the attempt,
    /// so a retried attempt can resume from `ctx.progress()`.
    ///
    /// Fails only on bad input ([`Error::InvalidArgument`] when too large, [`Error::Json`]
    /// when not serializable), before anything is kept.
    pub fn set_progress(&self, value: &impl Serialize) -> Result<()> {
        self.flags
            .report_progress(crate::queue::encode_progress(value)?);
        Ok(())
    }

    /// True once the handler should stop: the job was cancelled ([`JobContext::is_cancelled`]),
    /// the lease was lost (another worker owns the job now), or shutdown passed its grace
    /// period and released the job. A long-running handler should check this and return;
    /// what it returns then is recorded as cancelled, or discarded.
    pub fn should_abandon(&self) -> bool {
        self.flags.abandon.load(Ordering::SeqCst) || self.is_cancelled() || self.is_timed_out()
    }

    /// True once the attempt ran past its time limit ([`crate::NewJob::timeout`], else
    /// [`crate::WorkerConfig::job_timeout`]): the attempt is recorded as failed ("timed out
    /// after …") whatever the handler returns.
    pub fn is_timed_out(&self) -> bool {
        self.flags.timed_out().is_some()
    }

    /// The cancellation token: true once someone cancelled this job while it ran (seen by the
    /// worker's next heartbeat, so within `heartbeat_every`). Whatever the handler returns
    /// afterwards is recorded as a cancelled attempt, never as success.
    pub fn is_cancelled(&self) -> bool {
        self.flags.cancelled.load(Ordering::SeqCst)
    }
}

/// A handle that reports one attempt's progress from anywhere (another thread, a reader of a
/// child's output): what [`JobContext::set_progress`] does, detached from the context's
/// lifetime. Cheap to clone; reports after the attempt ended are kept nowhere.
#[derive(Debug, Clone)]
pub struct ProgressReporter {
    flags: Arc<JobFlags>,
}

impl ProgressReporter {
    /// As [`JobContext::set_progress`].
    pub fn report(&self, value: &impl Serialize) -> Result<()> {
        self.flags
            .report_progress(crate::queue::encode_progress(value)?);
        Ok(())
    }
}

impl JobContext {
    /// A [`ProgressReporter`] for this attempt, for work the handler hands to other threads.
    pub fn progress_reporter(&self) -> ProgressReporter {
        ProgressReporter {
            flags: self.flags.clone(),
        }
    }
}

impl std::ops::Deref for JobContext {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.job
    }
}

/// Asks a running [`Worker`](crate::Worker) to stop (cloneable, usable from any thread).
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle {
    pub(super) flag: Arc<AtomicBool>,
    /// Set by [`ShutdownHandle::hurry`].
    hurried: Arc<AtomicBool>,
    /// SIGINT/SIGTERM received (after [`ShutdownHandle::stop_on_signals`]).
    signals: Arc<std::sync::atomic::AtomicUsize>,
}

impl ShutdownHandle {
    /// Stop claiming; let running handlers finish within the grace period.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown was requested (by [`ShutdownHandle::shutdown`] or a signal).
    pub fn is_requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || self.signals.load(Ordering::SeqCst) >= 1
    }

    /// Requests shutdown on SIGINT or SIGTERM.
    ///
    /// The first signal asks for a graceful stop; a second one (INT or TERM again, as an
    /// impatient operator sends) hurries it: running handlers are abandoned at once instead
    /// of after the grace period.
    pub fn stop_on_signals(&self) -> Result<()> {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // The handler only bumps an atomic counter (async-signal-safe); the worker reads
            // it. A counter, not a flag, so the second signal can be told from the first.
            let seen = self.signals.clone();
            // SAFETY: the closure does one atomic fetch_add, which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    seen.fetch_add(1, Ordering::SeqCst);
                })
            }
            .map_err(|e| Error::InvalidArgument {
                field: "handle_signals",
                reason: format!("cannot install the signal handler: {e}"),
            })?;
        }
        Ok(())
    }

    /// Stop now: abandon running handlers without waiting for the grace period.
    pub fn hurry(&self) {
        self.shutdown();
        self.hurried.store(true, Ordering::SeqCst);
    }

    /// Whether [`ShutdownHandle::hurry`] was called or a second signal arrived.
    pub fn is_hurried(&self) -> bool {
        self.hurried.load(Ordering::SeqCst) || self.signals.load(Ordering::SeqCst) >= 2
    }
}
