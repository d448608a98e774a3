//! `jobdb bench --latency`: how long a job waits before an idle worker in another process
//! starts it.
//!
//! The parent spawns one child process running the real worker runtime (concurrency 1,
//! the default poll settings), then enqueues one job at a time: each after the previous one
//! succeeded and a random idle pause of 5–25 ms, so the worker is always idle when the job
//! arrives (as in a quiet service). The parent notes when `enqueue` returned (the commit, the
//! acknowledgement), the handler when it started (wall clock, one machine); the difference is
//! the pickup latency: the cross-process signal (SQLite's `data_version` watcher,
//! PostgreSQL's LISTEN), the claim and the dispatch to the handler thread. (A worker that
//! starts the job before the parent's `enqueue` has returned counts as 0.)

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::quantile_ms;
use jobdb::worker::{Worker, WorkerConfig};
use jobdb::{NewJob, Queue, QueueConnection};

/// What the child measured, printed as JSON on its stdout: (job id, handler start in µs
/// since the epoch).
#[derive(Serialize, Deserialize, Default)]
struct Pickups {
    started_us: Vec<(i64, u64)>,
}

/// The figures `--latency` reports.
#[derive(Debug, Serialize)]
pub struct LatencyReport {
    /// "sqlite", "postgres" or "mysql".
    pub backend: &'static str,
    /// Jobs measured.
    pub jobs: usize,
    /// Median pickup latency.
    pub pickup_p50_ms: f64,
    /// 99th percentile.
    pub pickup_p99_ms: f64,
    /// Slowest pickup.
    pub pickup_max_ms: f64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The parent's side: spawn the worker process, enqueue one job at a time, collect.
pub fn parent<C: QueueConnection>(
    queue: &Queue<C>,
    url: &str,
    queue_name: &str,
    jobs: usize,
) -> Result<LatencyReport> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let child = Command::new(exe)
        .args(["bench", "--latency-child", "--database-url", url])
        .args(["--queue", queue_name, "--jobs", &(jobs + 1).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the latency worker process")?;
    // One job to warm up: the worker is up and idle once it is done (not measured).
    let mut acked = std::collections::HashMap::with_capacity(jobs + 1);
    for i in 0..=jobs {
        std::thread::sleep(Duration::from_millis(fastrand::u64(5..=25)));
        let id = queue.enqueue(&NewJob::new(queue_name, &i)?)?;
        if i > 0 {
            acked.insert(id, now_us());
        }
        let timeout = if i == 0 { 60 } else { 10 };
        let job = queue.wait_for(id, Duration::from_secs(timeout))?;
        if job.state != jobdb::JobState::Succeeded {
            bail!("latency job {id} ended {:?}, not succeeded", job.state);
        }
    }
    let out = child
        .wait_with_output()
        .context("waiting for the latency worker")?;
    if !out.status.success() {
        bail!("the latency worker process failed with {}", out.status);
    }
    let pickups: Pickups =
        serde_json::from_slice(&out.stdout).context("the latency worker printed no report")?;
    // The warm-up job has no acknowledgement time.
    let mut lat: Vec<u64> = pickups
        .started_us
        .into_iter()
        .filter_map(|(id, started)| acked.get(&id).map(|&ack| started.saturating_sub(ack)))
        .collect();
    if lat.len() != jobs {
        bail!("the worker measured {} jobs, expected {jobs}", lat.len());
    }
    lat.sort_unstable();
    Ok(LatencyReport {
        backend: queue.backend(),
        jobs,
        pickup_p50_ms: quantile_ms(&lat, 500),
        pickup_p99_ms: quantile_ms(&lat, 990),
        pickup_max_ms: quantile_ms(&lat, 1000),
    })
}

/// The child's side: the real worker runtime, `jobs` jobs, then its measurements on stdout.
pub fn child<C: QueueConnection>(queue: Queue<C>, queue_name: &str, jobs: usize) -> Result<()> {
    let seen = Arc::new(Mutex::new(Pickups::default()));
    let mut config = WorkerConfig::new(queue_name);
    config.max_jobs = Some(jobs as u64);
    let record = seen.clone();
    let worker = Worker::new(queue, config, move |ctx| {
        let started = now_us();
        record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .started_us
            .push((ctx.job().id, started));
        Ok::<_, jobdb::worker::HandlerError>(())
    });
    let report = worker.run()?;
    if report.succeeded != jobs as u64 {
        bail!(
            "the latency worker finished {} of {jobs} jobs",
            report.succeeded
        );
    }
    let pickups = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    println!("{}", serde_json::to_string(&pickups)?);
    Ok(())
}

/// Prints the report as a table.
pub fn print(r: &LatencyReport) {
    println!(
        "jobdb bench --latency: an idle worker in another process, one job at a time, {} backend",
        r.backend
    );
    println!(
        "  pickup latency over {} jobs   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.jobs, r.pickup_p50_ms, r.pickup_p99_ms, r.pickup_max_ms
    );
}
