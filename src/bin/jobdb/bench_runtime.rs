//! `jobdb bench --runtime [--async]`: the worker runtimes themselves (`Worker`, or
//! `AsyncWorker` with --async) with a handler that returns at once, so the figure includes
//! what the runtime adds: its claim loop, its heartbeat schedule and its bookkeeping. Both
//! stop when the queue is drained (`exit_when_empty`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use jobdb::{HandlerError, Queue, QueueConnection, WorkerConfig, WorkerReport};
use serde::Serialize;

use crate::bench::{follow, BenchArgs, Measure, PhaseReport, LEASE};

/// The handler's output (≈50 bytes of JSON, as the bench loop's).
#[derive(Serialize)]
struct Output {
    ok: bool,
    note: &'static str,
}

const OUT: Output = Output {
    ok: true,
    note: "lifecycle bench output 50 b",
};

/// Runs the runtime over the queue until it is drained.
pub(crate) fn runtime_phase<C: QueueConnection>(
    args: &BenchArgs,
    queue: &Queue<C>,
    queue_name: &str,
    workers: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<PhaseReport> {
    let mut config = WorkerConfig::new(queue_name).lease(LEASE);
    config.concurrency = workers;
    config.exit_when_empty = true;
    // The drained check runs at most once per poll_max: keep the run's tail short.
    config.poll_max = Duration::from_millis(20);
    let done = Arc::new(AtomicU64::new(0));
    let measure = Measure::start(queue);
    let report = if crate::bench::mode(args) == "async-worker" {
        async_worker(queue, config, &done, progress)?
    } else {
        let counted = done.clone();
        let worker = jobdb::Worker::new(queue.clone(), config, move |_ctx| {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok::<_, HandlerError>(OUT)
        });
        std::thread::scope(|s| {
            let running = s.spawn(|| worker.run());
            follow(progress, &done, || !running.is_finished());
            running
                .join()
                .map_err(|_| anyhow::anyhow!("the worker panicked"))
        })??
    };
    let errors = report.failed + report.lease_lost;
    Ok(measure.finish(queue, report.succeeded, errors, Vec::new()))
}

#[cfg(feature = "tokio")]
fn async_worker<C: QueueConnection>(
    queue: &Queue<C>,
    config: WorkerConfig,
    done: &Arc<AtomicU64>,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<WorkerReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let counted = done.clone();
    let worker = jobdb::AsyncWorker::new(queue.to_async(), config, move |_ctx| {
        counted.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, HandlerError>(OUT) }
    });
    let running = rt.spawn(async move { worker.run().await });
    follow(progress, done, || !running.is_finished());
    Ok(rt.block_on(running)??)
}

#[cfg(not(feature = "tokio"))]
fn async_worker<C: QueueConnection>(
    _queue: &Queue<C>,
    _config: WorkerConfig,
    _done: &Arc<AtomicU64>,
    _progress: Option<&indicatif::ProgressBar>,
) -> Result<WorkerReport> {
    anyhow::bail!("--async needs the `tokio` feature")
}
