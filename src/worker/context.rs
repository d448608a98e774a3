//! What a handler sees ([`JobContext`]) and returns on failure ([`HandlerError`]), and the
//! [`ShutdownHandle`] that stops a worker or scheduler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::models::Job;

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
    /// A cancel was requested (seen by a heartbeat).
    pub(super) cancelled: AtomicBool,
    /// The attempt's time limit and when it runs out (`None`: no limit).
    pub(super) timeout: Option<(Duration, Instant)>,
    /// The timeout was recorded as the attempt's failure (by the handler's thread or, for a
    /// handler that ignores it, by the heartbeat thread): whoever sets it first records it.
    pub(super) timeout_recorded: AtomicBool,
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

    /// The attempt's time limit, once it has run out.
    pub(super) fn timed_out(&self) -> Option<Duration> {
        self.timeout
            .filter(|(_, deadline)| Instant::now() >= *deadline)
            .map(|(t, _)| t)
    }
}

impl JobContext {
    /// The job being run.
    pub fn job(&self) -> &Job {
        &self.job
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
