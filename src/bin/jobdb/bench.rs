//! `jobdb bench`: the "lifecycle" workload, measured and verified.
//!
//! Enqueue N jobs (≈100-byte JSON payloads) in batches; then W workers, each on its own pooled
//! connection, loop claim → one heartbeat → complete with a ≈50-byte output. With
//! `--processes P` the parent spawns P copies of itself, each running W/P workers on the same
//! file, and aggregates their reports. At the end SQL counts lost and duplicated jobs.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use jobdb::queue::Completion;
use jobdb::{Config, NewJob, Queue, QueueConnection, WithQueue};

/// Arguments of `jobdb bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Jobs to enqueue and process
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Worker threads in all (split evenly over --processes)
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// OS processes sharing the database
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Jobs per claim; heartbeats and completions of a claim are committed together
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// Put this many already-succeeded jobs on the queue first (claim cost with a long history)
    #[arg(long, default_value_t = 0)]
    pub finished: u64,
    /// Measure pickup latency instead: an idle worker in another process, one job at a time
    /// (this many jobs; 300 if no number is given)
    #[arg(long, value_name = "JOBS", num_args = 0..=1, default_missing_value = "300")]
    pub latency: Option<usize>,
    /// When commits reach the disk (SQLite): durable (the default: enqueues and results are
    /// synced before they are acknowledged), normal, or full; overrides JOBDB_SYNCHRONOUS,
    /// and is passed to --processes children
    #[arg(long)]
    pub synchronous: Option<jobdb::Synchronous>,
    /// Also measure the app's own writes: the parent inserts a row every 10 ms through the
    /// persistence handle while the workers run
    #[arg(long)]
    pub app_writes: bool,
    /// Workers as tokio tasks through the async API (`AsyncQueue`) instead of threads; with
    /// --runtime, the async worker (`AsyncWorker`) instead of the sync one
    #[cfg(feature = "tokio")]
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Run the worker runtime (`Worker`, or `AsyncWorker` with --async: claims, heartbeats on
    /// their own schedule, results) with a handler that returns at once, instead of the bench's
    /// own claim → heartbeat → complete loop; claim latency is not measured per claim then
    #[arg(long)]
    pub runtime: bool,
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    /// Internal: run the worker process of --latency
    #[arg(long, hide = true)]
    pub latency_child: bool,
    /// Internal: run only the worker phase (used by --processes)
    #[arg(long, hide = true)]
    pub child: bool,
    /// Internal: the queue the parent enqueued into
    #[arg(long, hide = true, default_value = "bench")]
    pub queue: String,
}

pub(crate) const LEASE: Duration = Duration::from_secs(120);
pub(crate) const OUTPUT: &str = r#"{"ok":true,"note":"lifecycle bench output 50 b"}"#;

/// What one process's worker phase measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct PhaseReport {
    start_unix_ms: f64,
    end_unix_ms: f64,
    completed: u64,
    errors: u64,
    busy_retries: u64,
    busy_exhausted: u64,
    commits: u64,
    #[serde(default)]
    wal_syncs: u64,
    #[serde(default)]
    sync_wait_p99_ms: f64,
    peak_rss_kib: u64,
    claim_latencies_us: Vec<u64>,
}

/// The final report (`--json` prints it as one object).
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// "sqlite", "postgres" or "mysql".
    pub backend: &'static str,
    /// Jobs processed.
    pub jobs: usize,
    /// Already-succeeded jobs put on the queue before the run.
    pub finished: u64,
    /// Worker threads in all.
    pub workers: usize,
    /// OS processes.
    pub processes: usize,
    /// Jobs per claim.
    pub batch: u32,
    /// Jobs per second of the worker phase.
    pub jobs_per_sec: f64,
    /// Jobs per second of the enqueue phase.
    pub enqueue_per_sec: f64,
    /// Median claim latency.
    pub claim_p50_ms: f64,
    /// 99th percentile claim latency.
    pub claim_p99_ms: f64,
    /// 99.9th percentile claim latency.
    pub claim_p999_ms: f64,
    /// Slowest claim.
    pub claim_max_ms: f64,
    /// Each process's share of the work and its own claim tail: fairness across processes.
    pub per_process: Vec<ProcessFigures>,
    /// Transactions re-run because the database was busy.
    pub busy_retries: u64,
    /// Operations that gave up busy (surfaced as errors).
    pub busy_exhausted: u64,
    /// Write transactions committed by the worker phase (group commit makes this smaller than
    /// the number of operations: 3 per job).
    pub commits: u64,
    /// `fdatasync`s of the WAL for durable acknowledgements (SQLite, durable): one covers
    /// every commit before it.
    pub wal_syncs: u64,
    /// The slowest process's 99th percentile wait for that sync after a commit.
    pub sync_wait_p99_ms: f64,
    /// Errors that reached the workers.
    pub errors: u64,
    /// Jobs not succeeded at the end.
    pub lost: i64,
    /// Jobs with more than one succeeded result.
    pub duplicated: i64,
    /// Largest peak RSS of any process, in MiB.
    pub peak_rss_mib: f64,
    /// `sqlite_version()` (null on PostgreSQL).
    pub sqlite_version: Option<String>,
    /// The SQLite library or PostgreSQL server version.
    pub backend_version: String,
    /// The database used.
    pub database: String,
    /// With `--app-writes`: the latency of the app's own writes during the worker phase.
    pub app_writes: Option<AppWriteFigures>,
    /// SQLite's durability setting of the run ("durable", "normal", "full"); null on
    /// PostgreSQL, where the server's `synchronous_commit` decides.
    pub synchronous: Option<String>,
    /// Who ran the jobs: "threads" (the bench's loop on threads, the default), "tasks" (the
    /// same loop as tokio tasks, --async), "worker" (--runtime) or "async-worker" (--runtime
    /// --async).
    pub mode: &'static str,
}

/// What `--app-writes` measured.
#[derive(Debug, Serialize)]
pub struct AppWriteFigures {
    /// Writes made.
    pub writes: usize,
    /// Median latency of one write.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest write.
    pub max_ms: f64,
}

/// The table `--app-writes` inserts into (created for the run, dropped after).
const APP_TABLE: &str = "jobdb_bench_app_writes";

/// `--app-writes`: while the workers run, the parent process writes a row of "its own" every
/// 10 ms through the persistence handle (`Db::write`), as a service beside its workers would.
struct AppWrites {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<Result<Vec<u64>>>,
    db: ExecSql,
}

/// Runs one SQL text as an app write.
type ExecSql = Box<dyn Fn(&str) -> jobdb::Result<()> + Send>;

impl AppWrites {
    fn start<C: QueueConnection>(queue: &Queue<C>) -> Result<AppWrites> {
        let exec = {
            let db = queue.db().clone();
            move |sql: &str| {
                let sql = sql.to_owned();
                db.write(move |c| {
                    diesel::connection::SimpleConnection::batch_execute(c, &sql)?;
                    Ok(())
                })
            }
        };
        exec(&format!(
            "CREATE TABLE IF NOT EXISTS {APP_TABLE} (note TEXT NOT NULL)"
        ))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (stop, exec) = (stop.clone(), exec.clone());
            thread::spawn(move || {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    exec(&format!(
                        "INSERT INTO {APP_TABLE} (note) VALUES ('app write')"
                    ))?;
                    lat.push(t.elapsed().as_micros() as u64);
                    thread::sleep(Duration::from_millis(10));
                }
                Ok(lat)
            })
        };
        Ok(AppWrites {
            stop,
            thread,
            db: Box::new(exec),
        })
    }

    fn finish(self) -> Result<AppWriteFigures> {
        self.stop.store(true, Ordering::Relaxed);
        let lat = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the app-writes thread panicked"))?;
        (self.db)(&format!("DROP TABLE IF EXISTS {APP_TABLE}"))?;
        let mut lat = lat?;
        lat.sort_unstable();
        Ok(AppWriteFigures {
            writes: lat.len(),
            p50_ms: quantile_ms(&lat, 500),
            p99_ms: quantile_ms(&lat, 990),
            max_ms: quantile_ms(&lat, 1000),
        })
    }
}

/// One process's figures in a `--processes` run.
#[derive(Debug, Serialize)]
pub struct ProcessFigures {
    /// Jobs this process completed.
    pub completed: u64,
    /// Its claim latency, 99th percentile.
    pub claim_p99_ms: f64,
    /// Its claim latency, 99.9th percentile.
    pub claim_p999_ms: f64,
    /// Its slowest claim.
    pub claim_max_ms: f64,
}

/// The `per_mille`th latency of sorted µs samples, in ms (0 for none).
pub(crate) fn quantile_ms(sorted_us: &[u64], per_mille: usize) -> f64 {
    let i = (sorted_us.len() * per_mille / 1000).min(sorted_us.len().saturating_sub(1));
    sorted_us.get(i).map_or(0.0, |&us| us as f64 / 1000.0)
}

/// Runs the bench. `database_url` is `Some` only when the user gave `--database-url` on the
/// command line; otherwise a fresh temporary file is used and removed afterwards.
pub fn run(args: &BenchArgs, database_url: Option<&str>) -> Result<()> {
    if args.workers == 0 || args.processes == 0 || args.batch == 0 {
        bail!("--workers, --processes and --batch must be at least 1");
    }
    if args.batch > 1 && mode(args) != "threads" {
        bail!("--batch is for the bench's own loop on threads; with --async or --runtime the workers claim on their own");
    }
    let mut config = Config::from_env()?;
    config.pool_size = config.pool_size.max(args.workers as u32 + 2);
    if let Some(sync) = args.synchronous {
        config.sqlite.pragmas.synchronous = sync;
        // Children read it from the environment like any setting.
        std::env::set_var("JOBDB_SYNCHRONOUS", sync.to_string());
    }
    let synchronous = config.sqlite.pragmas.synchronous;
    if args.child || args.latency_child {
        let url = database_url.context("--child needs --database-url")?;
        return jobdb::open_any(url, config, Child(args))?;
    }
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let url = match database_url {
        Some(url) => url.to_owned(),
        None => tmp
            .path()
            .join("bench.sqlite3")
            .to_string_lossy()
            .into_owned(),
    };
    jobdb::open_any(
        &url.clone(),
        config,
        Parent {
            args,
            url,
            synchronous,
        },
    )?
}

/// A `--child` process: one worker phase on the parent's queue, its report on stdout.
struct Child<'a>(&'a BenchArgs);

impl WithQueue for Child<'_> {
    type Output = Result<()>;
    fn with<C: QueueConnection>(self, queue: Queue<C>) -> Result<()> {
        let args = self.0;
        if args.latency_child {
            return crate::latency::child(queue, &args.queue, args.jobs);
        }
        let report = worker_phase(args, &queue, &args.queue, args.workers, None)?;
        println!("{}", serde_json::to_string(&report)?);
        Ok(())
    }
}

/// The parent: enqueue, work (here or in child processes), verify, report.
struct Parent<'a> {
    args: &'a BenchArgs,
    url: String,
    synchronous: jobdb::Synchronous,
}

impl WithQueue for Parent<'_> {
    type Output = Result<()>;
    fn with<C: QueueConnection>(self, queue: Queue<C>) -> Result<()> {
        let Parent {
            args,
            url,
            synchronous,
        } = self;
        let queue_name = format!(
            "bench-{}",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
        );

        if let Some(jobs) = args.latency {
            if jobs == 0 {
                bail!("--latency needs at least 1 job");
            }
            let report = crate::latency::parent(&queue, &url, &queue_name, jobs)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                crate::latency::print(&report);
            }
            return Ok(());
        }
        let progress = indicatif::ProgressBar::new(args.jobs as u64 * 2);
        progress.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg:9} [{bar:40}] {pos}/{len} ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        if args.finished > 0 {
            progress.set_message("history");
            queue.insert_finished(&queue_name, args.finished)?;
        }
        progress.set_message("enqueue");
        let started = Instant::now();
        let payload_pad = "x".repeat(60);
        for chunk in (0..args.jobs).collect::<Vec<_>>().chunks(1000) {
            let jobs = chunk
                .iter()
                .map(|i| {
                    NewJob::new(
                        queue_name.as_str(),
                        &serde_json::json!({"n": i, "kind": "bench", "pad": payload_pad}),
                    )
                })
                .collect::<jobdb::Result<Vec<_>>>()?;
            queue.enqueue_many(&jobs)?;
            progress.inc(jobs.len() as u64);
        }
        let enqueue_secs = started.elapsed().as_secs_f64();
        progress.set_message("work");

        let app = args
            .app_writes
            .then(|| AppWrites::start(&queue))
            .transpose()?;
        let phases = if args.processes == 1 {
            worker_phase(args, &queue, &queue_name, args.workers, Some(&progress)).map(|p| vec![p])
        } else {
            spawn_children(args, &url, &queue_name, &queue, &progress)
        };
        let app_writes = app.map(AppWrites::finish).transpose()?;
        let phases = phases?;
        progress.finish_and_clear();

        let audit = queue.audit(&queue_name)?;
        let mut report = summarize(
            args,
            &url,
            &phases,
            enqueue_secs,
            audit,
            queue.backend(),
            queue.backend_version()?,
        );
        report.app_writes = app_writes;
        if report.backend == "sqlite" {
            report.synchronous = Some(synchronous.to_string());
        }
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_table(&report);
        }
        if report.lost != 0 || report.duplicated != 0 || report.errors != 0 {
            bail!(
                "verification failed: {} lost, {} duplicated, {} errors",
                report.lost,
                report.duplicated,
                report.errors
            );
        }
        Ok(())
    }
}

/// The worker phase in the mode the flags name (see [`BenchReport::mode`]).
fn worker_phase<C: QueueConnection>(
    args: &BenchArgs,
    queue: &Queue<C>,
    queue_name: &str,
    workers: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<PhaseReport> {
    match mode(args) {
        "threads" => thread_phase(queue, queue_name, workers, args.batch, progress),
        #[cfg(feature = "tokio")]
        "tasks" => crate::bench_async::task_phase(queue, queue_name, workers, progress),
        _ => crate::bench_runtime::runtime_phase(args, queue, queue_name, workers, progress),
    }
}

/// Who runs the jobs (see [`BenchReport::mode`]).
pub(crate) fn mode(args: &BenchArgs) -> &'static str {
    #[cfg(feature = "tokio")]
    let asynchronous = args.asynchronous;
    #[cfg(not(feature = "tokio"))]
    let asynchronous = false;
    match (args.runtime, asynchronous) {
        (false, false) => "threads",
        (false, true) => "tasks",
        (true, false) => "worker",
        (true, true) => "async-worker",
    }
}

/// What a worker phase counts before it starts, to report the phase's own share.
pub(crate) struct Measure {
    start_unix_ms: f64,
    before: jobdb::RetrySnapshot,
    syncs_before: u64,
}

impl Measure {
    pub(crate) fn start<C: QueueConnection>(queue: &Queue<C>) -> Measure {
        Measure {
            start_unix_ms: unix_ms(),
            before: queue.retry_stats(),
            syncs_before: queue.metrics().wal.syncs,
        }
    }

    pub(crate) fn finish<C: QueueConnection>(
        self,
        queue: &Queue<C>,
        completed: u64,
        errors: u64,
        claim_latencies_us: Vec<u64>,
    ) -> PhaseReport {
        let after = queue.retry_stats();
        let metrics = queue.metrics();
        PhaseReport {
            start_unix_ms: self.start_unix_ms,
            end_unix_ms: unix_ms(),
            completed,
            errors,
            busy_retries: after.busy_retries - self.before.busy_retries,
            busy_exhausted: after.busy_exhausted - self.before.busy_exhausted,
            commits: after.transactions - self.before.transactions,
            wal_syncs: metrics.wal.syncs - self.syncs_before,
            sync_wait_p99_ms: metrics.sync_wait.p99_ms,
            peak_rss_kib: peak_rss_kib(),
            claim_latencies_us,
        }
    }
}

/// Shows `done` on the progress bar until `running` says stop.
pub(crate) fn follow(
    progress: Option<&indicatif::ProgressBar>,
    done: &AtomicU64,
    running: impl Fn() -> bool,
) {
    // Polled every 2 ms, the bar drawn every 100: the phase's end time is taken when this
    // returns, so a coarse poll would round every run's duration up to its step (up to 5%
    // of a two-second run, in the noise of every ratio).
    let base = progress.map(|p| p.position());
    let mut drawn = Instant::now();
    while running() {
        if let (Some(p), Some(base)) = (progress, base) {
            if drawn.elapsed() >= Duration::from_millis(100) {
                p.set_position(base + done.load(Ordering::Relaxed));
                drawn = Instant::now();
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// W threads drain the queue: claim → heartbeat → complete (batched when `batch` > 1).
fn thread_phase<C: QueueConnection>(
    queue: &Queue<C>,
    queue_name: &str,
    workers: usize,
    batch: u32,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<PhaseReport> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let measure = Measure::start(queue);
    let latencies: Vec<u64> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (done, errors) = (done.clone(), errors.clone());
                s.spawn(move || {
                    worker_loop(
                        queue,
                        queue_name,
                        &format!("bench-{w}"),
                        batch,
                        &done,
                        &errors,
                    )
                })
            })
            .collect();
        follow(progress, &done, || handles.iter().any(|h| !h.is_finished()));
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    Ok(measure.finish(
        queue,
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        latencies,
    ))
}

/// One worker until the queue is empty. Returns its claim latencies in µs. Errors are counted
/// and logged, never hidden: the run fails verification if any occurred.
fn worker_loop<C: QueueConnection>(
    queue: &Queue<C>,
    queue_name: &str,
    worker_id: &str,
    batch: u32,
    done: &AtomicU64,
    errors: &AtomicU64,
) -> Vec<u64> {
    let mut latencies = Vec::new();
    let mut count_err = |e: &jobdb::Error| {
        errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "bench worker error");
    };
    loop {
        let t = Instant::now();
        let jobs = match queue.claim(queue_name, batch, worker_id, LEASE) {
            Ok(jobs) => jobs,
            Err(e) => {
                count_err(&e);
                continue;
            }
        };
        if jobs.is_empty() {
            return latencies;
        }
        latencies.push(t.elapsed().as_micros() as u64);
        if jobs.len() == 1 {
            let lease = jobs[0].lease();
            let result = queue
                .heartbeat(lease, LEASE)
                .and_then(|_| queue.complete_json(lease, OUTPUT, t.elapsed()));
            match result {
                Ok(()) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => count_err(&e),
            }
            continue;
        }
        let leases: Vec<_> = jobs.iter().map(|j| j.lease()).collect();
        match queue.heartbeat_many(&leases, LEASE) {
            Ok(each) => each
                .iter()
                .filter_map(|r| r.as_ref().err())
                .for_each(&mut count_err),
            Err(e) => count_err(&e),
        }
        let items: Vec<_> = leases
            .iter()
            .map(|&lease| Completion {
                lease,
                output_json: OUTPUT.to_owned(),
                duration: t.elapsed(),
            })
            .collect();
        match queue.complete_many(items) {
            Ok(each) => {
                for r in each {
                    match r {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => count_err(&e),
                    }
                }
            }
            Err(e) => count_err(&e),
        }
    }
}

fn spawn_children<C: QueueConnection>(
    args: &BenchArgs,
    url: &str,
    queue_name: &str,
    queue: &Queue<C>,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<PhaseReport>> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let per = args.workers.div_ceil(args.processes);
    let children = (0..args.processes)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "bench",
                    "--child",
                    "--database-url",
                    url,
                    "--queue",
                    queue_name,
                ])
                .args([
                    "--workers",
                    &per.to_string(),
                    "--batch",
                    &args.batch.to_string(),
                ])
                .args(mode_flags(args))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("cannot start a bench child process")
        })
        .collect::<Result<Vec<_>>>()?;
    let waiter = thread::spawn(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output())
            .collect::<Vec<_>>()
    });
    while !waiter.is_finished() {
        if let Ok(stats) = queue.stats(Some(queue_name)) {
            progress.set_position(args.jobs as u64 + stats.total.succeeded as u64);
        }
        thread::sleep(Duration::from_millis(200));
    }
    let outputs = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("child waiter panicked"))?;
    outputs
        .into_iter()
        .map(|out| {
            let out = out.context("waiting for a bench child")?;
            if !out.status.success() {
                bail!("a bench child process failed with {}", out.status);
            }
            serde_json::from_slice(&out.stdout)
                .context("a bench child printed an unreadable report")
        })
        .collect()
}

/// The flags that give a child the parent's mode.
fn mode_flags(args: &BenchArgs) -> Vec<&'static str> {
    match mode(args) {
        "tasks" => vec!["--async"],
        "worker" => vec!["--runtime"],
        "async-worker" => vec!["--runtime", "--async"],
        _ => vec![],
    }
}

fn summarize(
    args: &BenchArgs,
    url: &str,
    phases: &[PhaseReport],
    enqueue_secs: f64,
    audit: jobdb::queue::Audit,
    backend: &'static str,
    backend_version: String,
) -> BenchReport {
    let start = phases
        .iter()
        .map(|p| p.start_unix_ms)
        .fold(f64::INFINITY, f64::min);
    let end = phases.iter().map(|p| p.end_unix_ms).fold(0.0, f64::max);
    let completed: u64 = phases.iter().map(|p| p.completed).sum();
    let mut lat: Vec<u64> = phases
        .iter()
        .flat_map(|p| p.claim_latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: usize| quantile_ms(&lat, p * 10);
    let per_process = phases
        .iter()
        .map(|p| {
            let mut own = p.claim_latencies_us.clone();
            own.sort_unstable();
            ProcessFigures {
                completed: p.completed,
                claim_p99_ms: quantile_ms(&own, 990),
                claim_p999_ms: quantile_ms(&own, 999),
                claim_max_ms: quantile_ms(&own, 1000),
            }
        })
        .collect();
    BenchReport {
        jobs: args.jobs,
        finished: args.finished,
        workers: args.workers,
        processes: args.processes,
        batch: args.batch,
        jobs_per_sec: completed as f64 / ((end - start) / 1000.0).max(1e-9),
        enqueue_per_sec: args.jobs as f64 / enqueue_secs.max(1e-9),
        claim_p50_ms: pct(50),
        claim_p99_ms: pct(99),
        claim_p999_ms: quantile_ms(&lat, 999),
        claim_max_ms: lat.last().map_or(0.0, |&us| us as f64 / 1000.0),
        per_process,
        busy_retries: phases.iter().map(|p| p.busy_retries).sum(),
        busy_exhausted: phases.iter().map(|p| p.busy_exhausted).sum(),
        commits: phases.iter().map(|p| p.commits).sum(),
        wal_syncs: phases.iter().map(|p| p.wal_syncs).sum(),
        sync_wait_p99_ms: phases
            .iter()
            .map(|p| p.sync_wait_p99_ms)
            .fold(0.0, f64::max),
        errors: phases.iter().map(|p| p.errors).sum(),
        lost: audit.not_succeeded + (args.jobs as i64 + args.finished as i64 - audit.jobs),
        duplicated: audit.duplicated,
        peak_rss_mib: phases
            .iter()
            .map(|p| p.peak_rss_kib)
            .max()
            .unwrap_or(0)
            .max(peak_rss_kib()) as f64
            / 1024.0,
        sqlite_version: (backend == "sqlite").then(|| backend_version.clone()),
        backend,
        backend_version,
        database: redacted(url),
        app_writes: None,
        synchronous: None,
        mode: mode(args),
    }
}

fn print_table(r: &BenchReport) {
    println!(
        "jobdb bench: lifecycle (claim → heartbeat → complete), {} backend, version {}",
        r.backend, r.backend_version
    );
    println!(
        "  jobs {}  workers {}  processes {}  batch {}  synchronous {}",
        r.jobs,
        r.workers,
        r.processes,
        r.batch,
        r.synchronous.as_deref().unwrap_or(match r.backend {
            "mysql" => "(the server's innodb_flush_log_at_trx_commit)",
            _ => "(the server's synchronous_commit)",
        })
    );
    println!(
        "  worker phase     {:>10.0} jobs/s  ({})",
        r.jobs_per_sec, r.mode
    );
    println!("  enqueue          {:>10.0} jobs/s", r.enqueue_per_sec);
    if r.mode.ends_with("worker") {
        println!("  claim latency    not measured per claim with --runtime");
    } else {
        println!(
            "  claim latency    p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            r.claim_p50_ms, r.claim_p99_ms, r.claim_p999_ms, r.claim_max_ms
        );
    }
    if r.per_process.len() > 1 {
        for (i, p) in r.per_process.iter().enumerate() {
            println!(
                "    process {i}: {} jobs  claim p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
                p.completed, p.claim_p99_ms, p.claim_p999_ms, p.claim_max_ms
            );
        }
    }
    // Each job is 3 operations (claim, heartbeat, complete); a batch of K is 3 per K jobs.
    let ops = (r.jobs * 3) as f64 / f64::from(r.batch);
    println!(
        "  commits {}  ({:.2} operations per commit)",
        r.commits,
        ops / r.commits.max(1) as f64
    );
    if r.wal_syncs > 0 {
        println!(
            "  WAL syncs {} for durable acknowledgements  (wait after commit p99 {:.2} ms)",
            r.wal_syncs, r.sync_wait_p99_ms
        );
    }
    println!(
        "  busy retries {}  busy exhausted {}  errors surfaced {}",
        r.busy_retries, r.busy_exhausted, r.errors
    );
    println!(
        "  verified in SQL: lost {}  duplicated {}",
        r.lost, r.duplicated
    );
    if let Some(a) = &r.app_writes {
        println!(
            "  app writes       {} writes  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            a.writes, a.p50_ms, a.p99_ms, a.max_ms
        );
    }
    println!("  peak RSS {:.1} MiB", r.peak_rss_mib);
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Peak resident set size of this process (VmHWM), 0 where /proc is not available.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The URL without its password, for the report.
fn redacted(url: &str) -> String {
    jobdb::pool::redact(url)
}
