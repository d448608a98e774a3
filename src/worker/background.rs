//! The worker's background threads: heartbeats and reaping, and optional retention.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::context::{due_progress, restore_due_progress};
use super::{Active, Counters, JobFlags, WorkerConfig};
use crate::manage::Retention;
use crate::models::Lease;
use crate::{Queue, QueueConnection};

/// How long past its time limit a handler may take to stop before the heartbeat thread
/// records the timeout for it.
const OVERDUE_GRACE: Duration = Duration::from_secs(5);

/// Extends the leases of running handlers every `heartbeat_every`, each in its own short
/// transaction, and reaps expired leases every `reap_every`.
pub(super) fn heartbeat_loop<C: QueueConnection>(
    queue: &Queue<C>,
    config: &WorkerConfig,
    active: &Active,
    counters: &Counters,
    stop: &AtomicBool,
) {
    let mut next_beat = Instant::now() + config.heartbeat_every;
    let mut next_reap = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_reap {
            match queue.reap() {
                Ok(0) => {}
                Ok(n) => {
                    counters.reaped.fetch_add(n as u64, Ordering::Relaxed);
                    tracing::info!(reaped = n, "requeued jobs whose lease expired");
                }
                Err(e) => tracing::warn!(error = %e, "reap failed"),
            }
            next_reap = now + config.reap_every;
        }
        // A handler still running well past its time limit (it ignores `should_abandon`):
        // record the timeout, so its lease is not renewed for ever; its late result is then
        // fenced off. One that honours the flag records it itself, at once; the grace covers
        // `--exec` killing its process group (TERM, then KILL 2 s later), so the job is not
        // retried while its last attempt is still being stopped.
        let overdue: Vec<(Lease, Arc<JobFlags>)> = active
            .lock()
            .iter()
            .filter(|(_, f)| f.overdue(OVERDUE_GRACE) && !f.timeout_recorded.load(Ordering::SeqCst))
            .map(|(l, f)| (*l, f.clone()))
            .collect();
        for (lease, flags) in overdue {
            let Some(limit) = flags.timed_out() else {
                continue;
            };
            if flags.timeout_recorded.swap(true, Ordering::SeqCst) {
                continue;
            }
            flags.abandon.store(true, Ordering::SeqCst);
            match queue.fail(lease, &super::timeout_error(limit), limit) {
                Ok(_) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        job_id = lease.job_id,
                        ?limit,
                        "the handler ignored its time limit; attempt failed as timed out"
                    );
                }
                Err(e) => {
                    tracing::warn!(job_id = lease.job_id, error = %e, "could not record a timeout")
                }
            }
        }
        if now >= next_beat {
            // All live leases in one statement, each fenced on its own.
            let (leases, flags): (Vec<Lease>, Vec<Arc<JobFlags>>) =
                active.lock().iter().map(|(l, a)| (*l, a.clone())).unzip();
            if !leases.is_empty() {
                match queue.heartbeat_many(&leases, config.lease) {
                    Ok(each) => {
                        for ((lease, flags), r) in leases.iter().zip(&flags).zip(each) {
                            if let Err(e) = r {
                                if e.is_cancelled() {
                                    flags.cancelled.store(true, Ordering::SeqCst);
                                    tracing::info!(
                                        job_id = lease.job_id,
                                        "heartbeat: the job was cancelled; telling its handler"
                                    );
                                    continue;
                                }
                                flags.abandon.store(true, Ordering::SeqCst);
                                tracing::warn!(job_id = lease.job_id, error = %e, "heartbeat: lease lost; the handler's result will be abandoned");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
                }
            }
            next_beat = now + config.heartbeat_every;
        }
        write_progress(queue, config, active);
        thread::sleep(
            Duration::from_millis(5).max(config.heartbeat_every.min(Duration::from_millis(50))),
        );
    }
}

/// Writes the progress handlers reported, at most once per `progress_every` per job and all
/// due jobs in one statement.
fn write_progress<C: QueueConnection>(queue: &Queue<C>, config: &WorkerConfig, active: &Active) {
    let (items, flags) = due_progress(active.lock().iter(), config.progress_every);
    if items.is_empty() {
        return;
    }
    // A lost lease fails only its own slot, and the next heartbeat tells its handler.
    if let Err(e) = queue.set_progress_many(items.clone()) {
        tracing::warn!(error = %e, "progress write failed; will retry");
        restore_due_progress(items, &flags);
    }
}

/// Applies `retention` every `retention.every` until `stop`, on its own thread so a long
/// prune never delays heartbeats. Each prune transaction is short (see [`Queue::prune`]).
pub(super) fn retention_loop<C: QueueConnection>(
    queue: &Queue<C>,
    retention: &Retention,
    stop: &AtomicBool,
) {
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() >= next {
            match queue.apply_retention(retention) {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "retention: deleted finished jobs"),
                Err(e) => tracing::warn!(error = %e, "retention: prune failed; will retry"),
            }
            next = Instant::now() + retention.every;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
