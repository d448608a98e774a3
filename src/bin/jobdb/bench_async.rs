//! `jobdb bench --async`: the bench's own loop (claim → heartbeat → complete, one job per
//! claim) as W tokio tasks through `AsyncQueue` instead of W threads, so the two runs differ
//! only in sync against async calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use jobdb::{AsyncQueue, Queue, QueueConnection};

use crate::bench::{follow, Measure, PhaseReport, LEASE, OUTPUT};

/// W tasks on a multi-threaded runtime drain the queue.
pub(crate) fn task_phase<C: QueueConnection>(
    queue: &Queue<C>,
    queue_name: &str,
    workers: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<PhaseReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let measure = Measure::start(queue);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            rt.spawn(task_loop(
                queue.to_async(),
                queue_name.to_owned(),
                format!("bench-{w}"),
                done.clone(),
                errors.clone(),
            ))
        })
        .collect();
    follow(progress, &done, || tasks.iter().any(|t| !t.is_finished()));
    let latencies = rt.block_on(async {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    Ok(measure.finish(
        queue,
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        latencies,
    ))
}

/// One task until the queue is empty; its claim latencies in µs. Errors are counted and
/// logged: the run fails verification if any occurred.
async fn task_loop<C: QueueConnection>(
    queue: AsyncQueue<C>,
    queue_name: String,
    worker_id: String,
    done: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) -> Vec<u64> {
    let mut latencies = Vec::new();
    let count_err = |e: &jobdb::Error| {
        errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "bench task error");
    };
    loop {
        let t = Instant::now();
        let jobs = match queue.claim(&queue_name, 1, &worker_id, LEASE).await {
            Ok(jobs) => jobs,
            Err(e) => {
                count_err(&e);
                continue;
            }
        };
        let Some(job) = jobs.first() else {
            return latencies;
        };
        latencies.push(t.elapsed().as_micros() as u64);
        let lease = job.lease();
        let recorded = match queue.heartbeat(lease, LEASE).await {
            Ok(_) => {
                queue
                    .complete_json(lease, OUTPUT.to_owned(), t.elapsed())
                    .await
            }
            Err(e) => Err(e),
        };
        match recorded {
            Ok(()) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => count_err(&e),
        }
    }
}
