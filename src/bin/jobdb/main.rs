//! `jobdb`: the command-line job runner over a jobdb database.
//!
//! Every command that touches the database applies pending migrations first, so a fresh file
//! works with any command. Results go to stdout, logs (`RUST_LOG`) and errors to stderr.
//! Exit codes: 0 ok, 2 bad usage or input, 3 no such job, 75 database busy past the retry
//! deadline, 124 `wait` timed out, 4 `copy` refused (nothing written), 1 anything else (including a job in the wrong state for the
//! command, and `wait` on a job that ended dead or cancelled).

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use jobdb::{Config, NewJob, Queue, QueueConnection, WithQueue, Worker, WorkerConfig};

#[cfg(feature = "archive")]
mod archive;
mod bench;
#[cfg(feature = "tokio")]
mod bench_async;
mod bench_runtime;
mod copy;
mod dashboard;
mod inspect;
mod latency;
mod ops;
mod serve;
mod snapshot;

use inspect::{doctor, print_job};

#[derive(Parser)]
#[command(
    name = "jobdb",
    version,
    about = "A SQLite-backed job queue that never says \"database is locked\""
)]
struct Cli {
    /// Database: a path, sqlite://path, or a file: URI. Default: $DATABASE_URL (also read from
    /// .env), else ./jobdb.sqlite3
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "jobdb.sqlite3"
    )]
    database_url: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations (every other command also does this first)
    Migrate,
    /// Enqueue one job (prints its id), or every line of an NDJSON file (prints the count)
    Enqueue(EnqueueArgs),
    /// Run a shell command for each job: payload on stdin, stdout is the output
    Work(WorkArgs),
    /// Count jobs per state, per queue: oldest due job's wait, jobs finished in the last
    /// minute, paused queues
    Stats {
        /// Only this queue
        #[arg(long)]
        queue: Option<String>,
        /// Print one JSON object: {"queued":n,"running":n,"succeeded":n,"dead":n,"cancelled":n,
        /// "queues":{NAME:{counts…, "oldest_due_age_s", "succeeded_last_minute",
        /// "dead_last_minute", "throughput_per_sec", "paused"}}, "metrics":{…this process…}}
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a queued job never runs; a running job is told at its next heartbeat and
    /// ends cancelled (its result is not recorded as success)
    Cancel {
        /// The job id
        id: i64,
    },
    /// Put a dead or cancelled job back to queued, with fresh attempts
    Retry {
        /// The job id
        id: i64,
    },
    /// Delete finished jobs (and their results) older than a duration, in short
    /// transactions; prints how many
    Prune(ops::PruneArgs),
    /// Stop claiming from a queue (running jobs finish)
    Pause {
        /// Queue name
        queue: String,
    },
    /// Claim from a paused queue again
    Resume {
        /// Queue name
        queue: String,
    },
    /// Enqueue a job at every tick of an interval or cron schedule, exactly once per tick
    /// however many schedulers run; until SIGINT/SIGTERM or --for
    Schedule(ops::ScheduleArgs),
    /// Wait for a job to finish and print it (exit 0 succeeded, 1 dead or cancelled, 124
    /// timed out)
    Wait {
        /// The job id
        id: i64,
        /// Give up after this long (500ms, 30s, 5m, 2h, 7d)
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        timeout: Duration,
        /// Print the job as JSON (as `show --json`)
        #[arg(long)]
        json: bool,
    },
    /// Show one job and its results
    Show {
        /// The job id
        id: i64,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Requeue running jobs whose lease expired (prints how many)
    Reap,
    /// Check a database and say what is wrong (changes nothing; exit 1 when something is)
    Doctor {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput: many workers on one database (see README)
    Bench(bench::BenchArgs),
    /// Write finished jobs with their attempts to a Parquet file, then delete them
    #[cfg(feature = "archive")]
    Archive(archive::ArchiveArgs),
    /// Serve the admin HTTP API (JSON) and /metrics (Prometheus) until SIGINT/SIGTERM
    Serve(serve::ServeArgs),
    /// Copy every table to another database (e.g. SQLite to PostgreSQL), verified; all or
    /// nothing
    Copy(copy::CopyArgs),
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["payload", "file"]))]
struct EnqueueArgs {
    /// The job's payload, as JSON
    payload: Option<String>,
    /// NDJSON file, one payload per line ('-' reads stdin). Every line is checked first (a bad
    /// one enqueues nothing), then the jobs go in transactions of 1000, so other writers are
    /// not held up by a big file
    #[arg(long)]
    file: Option<PathBuf>,
    /// With --file: all lines in ONE transaction, all or nothing even if the database fails
    /// midway; holds the write lock for the whole file (and the file in memory)
    #[arg(long, requires = "file")]
    atomic: bool,
    /// Queue name
    #[arg(long, default_value = "default")]
    queue: String,
    /// Lower runs first
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Run no earlier than this long from now (500ms, 30s, 5m, 2h, 7d)
    #[arg(long, value_parser = parse_duration, conflicts_with = "run_at")]
    delay: Option<Duration>,
    /// Run no earlier than this moment (RFC 3339, e.g. 2026-01-02T03:04:05Z)
    #[arg(long)]
    run_at: Option<DateTime<Utc>>,
    /// Attempts before the job is dead
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
    max_attempts: i32,
    /// Time limit of each attempt (500ms, 30s, 5m): past it the attempt fails as timed out
    /// and is retried with the backoff
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// At most one live (queued or running) job per queue with this key: a duplicate prints
    /// the existing job's id and enqueues nothing. With --file, only for a file of one job
    /// (one key for many lines would drop all but one: refused, exit 2)
    #[arg(long)]
    unique_key: Option<String>,
}

#[derive(Args)]
struct WorkArgs {
    /// Queue to work on
    #[arg(long, default_value = "default")]
    queue: String,
    /// Jobs run at once (threads, 1 to 1024)
    #[arg(long, default_value_t = 1, value_parser = parse_concurrency)]
    concurrency: usize,
    /// Lease length; a job whose worker stops heartbeating is retried after this
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    lease: Duration,
    /// On SIGINT/SIGTERM, how long running jobs may finish before they are released
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    grace: Duration,
    /// Exit once nothing of the queue is running and nothing queued is due or waiting out a
    /// retry backoff. Jobs delayed by --delay/--run-at and the jobs of a paused queue do not
    /// keep it running (use --exit-when-idle to wait for those)
    #[arg(long)]
    exit_when_empty: bool,
    /// Exit once nothing could be claimed for this long (500ms, 30s, 5m) and no job of this
    /// worker runs
    #[arg(long, value_parser = parse_duration)]
    exit_when_idle: Option<Duration>,
    /// Exit after this many jobs (claimed, run and recorded)
    #[arg(long)]
    max_jobs: Option<u64>,
    /// Time limit of each attempt of jobs enqueued without --timeout (the command's process
    /// group is killed, the attempt fails as timed out)
    #[arg(long, value_parser = parse_duration)]
    job_timeout: Option<Duration>,
    /// Shell command run with `sh -c` for each job, in a process group of its own (the whole
    /// group is killed when the attempt ends, is cancelled or is abandoned)
    #[arg(long, value_parser = parse_command)]
    exec: String,
    /// Most bytes of a command's stdout kept as the job's output; past it the command is
    /// killed and the attempt fails
    #[arg(long, default_value_t = jobdb::exec::ShellOptions::default().max_stdout_bytes)]
    max_output: usize,
    /// Also serve /metrics (Prometheus text format) on this address while working: this
    /// process's counters and histograms, and the queues' gauges
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Every scrape of --metrics-listen must send `Authorization: Bearer TOKEN`; needed for
    /// any address but loopback (the metrics name every queue and its counts)
    #[arg(long, env = "JOBDB_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// While working, delete succeeded jobs older than this (checked every 5 minutes)
    #[arg(long, value_parser = parse_duration)]
    keep_succeeded: Option<Duration>,
    /// While working, delete dead jobs older than this
    #[arg(long, value_parser = parse_duration)]
    keep_dead: Option<Duration>,
    /// While working, delete cancelled jobs older than this
    #[arg(long, value_parser = parse_duration)]
    keep_cancelled: Option<Duration>,
}

/// A mistake in what the user gave us (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    // DATABASE_URL may come from .env: load it before clap reads the environment.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("jobdb: error: cannot read .env: {e}");
            return ExitCode::from(2);
        }
    }
    let matches = match <Cli as clap::CommandFactory>::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `jobdb` alone: the usage, with every command.
            eprint!("{}", e.render());
            return ExitCode::from(2);
        }
        Err(e) => {
            // One line: clap's first names the problem, the indented ones after it list what
            // is missing (kept, on the same line), the rest points to --help.
            let text = e.render().to_string();
            let mut lines = text.lines();
            let first = lines.next().unwrap_or("invalid arguments");
            let listed: Vec<&str> = lines
                .take_while(|l| l.starts_with("  "))
                .map(str::trim)
                .collect();
            if listed.is_empty() {
                eprintln!("jobdb: {first}");
            } else {
                eprintln!("jobdb: {first} {}", listed.join(", "));
            }
            return ExitCode::from(2);
        }
    };
    // `jobdb bench` uses a temporary file unless the URL was typed on its command line.
    let url_given = matches!(
        matches
            .subcommand()
            .and_then(|(_, sub)| sub.value_source("database_url"))
            .or_else(|| matches.value_source("database_url")),
        Some(clap::parser::ValueSource::CommandLine)
    );
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli, url_given) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("jobdb: error: {}", one_line(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The error and its causes on one line. A cause whose text its parent's message already
/// includes (our errors name their source in their message) is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    match err.downcast_ref::<jobdb::Error>() {
        Some(e) if e.is_busy() => 75,
        Some(e) if e.is_not_found() => 3,
        Some(e) if e.is_timeout() => 124,
        // The target is not empty, jobs run, or the verification failed: nothing was written.
        Some(e) if e.is_copy_refused() => 4,
        // A bug in jobdb, never the user's input: EX_SOFTWARE, not "bad usage".
        Some(e) if e.is_internal() => 70,
        Some(e) if e.is_invalid_input() || matches!(e, jobdb::Error::WalUnavailable { .. }) => 2,
        _ => 1,
    }
}

fn run(cli: Cli, url_given: bool) -> Result<()> {
    let url = cli.database_url.as_str();
    match cli.command {
        Command::Doctor { json } => doctor(url, json),
        Command::Bench(args) => bench::run(&args, url_given.then_some(url)),
        Command::Copy(args) => copy::run(&args, url),
        Command::Migrate => {
            let mut config = Config::from_env()?;
            config.run_migrations = false;
            jobdb::open_any(url, config, Migrate)?
        }
        // Read and check the input before touching the database: bad input changes nothing.
        Command::Enqueue(args) => {
            let config = Config::from_env()?;
            let input = read_enqueue(args, config.max_payload_bytes)?;
            jobdb::open_any(url, config, input)?
        }
        Command::Work(args) => {
            let mut config = Config::from_env()?;
            // Each handler thread plus the heartbeat thread may hold a connection at once.
            config.pool_size = config.pool_size.max(args.concurrency as u32 + 2);
            jobdb::open_any(url, config, args)?
        }
        Command::Serve(args) => {
            let mut config = Config::from_env()?;
            // A dashboard beside workers leaves the WAL to them: no checkpoint thread (and
            // no TRUNCATE holding their writers back) of its own, unless asked for; its own
            // rare writes checkpoint as SQLite does by default, at commit.
            if !jobdb::pool::is_postgres_url(url)
                && !jobdb::pool::is_mysql_url(url)
                && std::env::var_os("JOBDB_CHECKPOINT_EVERY_MS").is_none()
            {
                config.sqlite.checkpoint_every = None;
            }
            jobdb::open_any(url, config, Command::Serve(args))?
        }
        other => jobdb::open_any(url, Config::from_env()?, other)?,
    }
}

/// `jobdb migrate`.
struct Migrate;

impl WithQueue for Migrate {
    type Output = Result<()>;
    fn with<C: QueueConnection>(self, queue: Queue<C>) -> Result<()> {
        let applied = queue.migrate()?;
        if applied.is_empty() {
            println!("database is up to date");
        }
        for version in applied {
            println!("applied {version}");
        }
        Ok(())
    }
}

/// The commands that need nothing but the queue.
impl WithQueue for Command {
    type Output = Result<()>;
    fn with<C: QueueConnection>(self, queue: Queue<C>) -> Result<()> {
        match self {
            Command::Stats { queue: only, json } => ops::stats(&queue, only, json)?,
            Command::Cancel { id } => ops::cancel(&queue, id)?,
            Command::Retry { id } => {
                queue.retry(id)?;
                println!("job {id} queued");
            }
            Command::Prune(args) => ops::prune(&queue, args)?,
            Command::Serve(args) => serve::run(queue, args)?,
            #[cfg(feature = "archive")]
            Command::Archive(args) => archive::run(&queue, args)?,
            Command::Pause { queue: name } => {
                let changed = queue.pause(&name)?;
                println!("{}", if changed { "paused" } else { "already paused" });
            }
            Command::Resume { queue: name } => {
                let changed = queue.resume(&name)?;
                println!("{}", if changed { "resumed" } else { "was not paused" });
            }
            Command::Schedule(args) => ops::schedule(&queue, args)?,
            Command::Wait { id, timeout, json } => {
                let job = queue.wait_for(id, timeout)?;
                print_job(&queue, id, json)?;
                if job.state != jobdb::JobState::Succeeded {
                    return Err(anyhow::anyhow!("job {id} ended {}", job.state));
                }
            }
            Command::Show { id, json } => print_job(&queue, id, json)?,
            Command::Reap => println!("{}", queue.reap()?),
            Command::Migrate
            | Command::Enqueue(_)
            | Command::Work(_)
            | Command::Doctor { .. }
            | Command::Bench(_)
            | Command::Copy(_) => {
                unreachable!("dispatched in run() before a queue is opened")
            }
        }
        Ok(())
    }
}

/// Builds the job for one payload line (queue, priority, attempts, delay, key, timeout).
type BuildJob = Box<dyn Fn(&str) -> jobdb::Result<NewJob>>;

/// What `jobdb enqueue` enqueues, read and checked before the database is opened.
enum EnqueueInput {
    /// One job from the command line.
    One(NewJob),
    /// A file's jobs, enqueued all or nothing (`--atomic`).
    File(Vec<NewJob>),
    /// A file's checked lines, spooled, enqueued in transactions of [`jobdb::queue::ENQUEUE_CHUNK`].
    Chunked {
        spool: BufReader<std::fs::File>,
        count: usize,
        build: BuildJob,
    },
}

impl WithQueue for EnqueueInput {
    type Output = Result<()>;
    fn with<C: QueueConnection>(self, queue: Queue<C>) -> Result<()> {
        match self {
            EnqueueInput::One(job) => {
                let done = queue.enqueue_unique(&job)?;
                if !done.inserted {
                    tracing::info!(
                        id = done.id,
                        "a live job has this unique key; nothing enqueued"
                    );
                }
                println!("{}", done.id);
            }
            EnqueueInput::File(jobs) => println!("{}", queue.enqueue_batch(&jobs)?.len()),
            EnqueueInput::Chunked {
                spool,
                count,
                build,
            } => {
                let mut done = 0usize;
                let mut chunk = Vec::with_capacity(jobdb::queue::ENQUEUE_CHUNK);
                let mut lines = spool.lines();
                loop {
                    chunk.clear();
                    for line in lines.by_ref().take(jobdb::queue::ENQUEUE_CHUNK) {
                        chunk.push(build(&line?)?);
                    }
                    if chunk.is_empty() {
                        break;
                    }
                    // Each chunk is its own transaction: other writers get the lock between.
                    let n = queue.enqueue_many(&chunk).map_err(|e| {
                        anyhow::Error::new(e).context(format!(
                            "{done} of {count} jobs were enqueued before this error"
                        ))
                    })?;
                    done += n.len();
                }
                println!("{done}");
            }
        }
        Ok(())
    }
}

fn read_enqueue(args: EnqueueArgs, max_payload_bytes: usize) -> Result<EnqueueInput> {
    let run_at = match (args.delay, args.run_at) {
        (Some(delay), _) => Some(jobdb::timestamp::from_now("delay", delay)?),
        (None, at) => at,
    };
    // The job for one payload, owning what it needs (it outlives `args` when the file's
    // lines are enqueued later from the spool).
    let build = {
        let (queue, priority, max_attempts) =
            (args.queue.clone(), args.priority, args.max_attempts);
        let (unique_key, timeout) = (args.unique_key.clone(), args.timeout);
        move |json: &str| -> jobdb::Result<NewJob> {
            let mut job = NewJob::from_json(queue.as_str(), json)?
                .priority(priority)
                .max_attempts(max_attempts);
            if let Some(at) = run_at {
                job = job.run_at(at);
            }
            if let Some(key) = &unique_key {
                job = job.unique_key(key.as_str());
            }
            if let Some(t) = timeout {
                job = job.timeout(t);
            }
            Ok(job)
        }
    };
    if let Some(payload) = &args.payload {
        return Ok(EnqueueInput::One(build(payload)?));
    }
    let Some(path) = &args.file else {
        return Err(UsageError("give a PAYLOAD_JSON or --file".into()).into());
    };
    // Read and validate every line before touching the database: all or nothing.
    let bad =
        |what: String| UsageError(format!("{}: {what}; nothing was enqueued", path.display()));
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| bad(format!("cannot read it: {e}")))?)
    };
    let mut reader = BufReader::new(reader);
    // Checked lines: kept in memory for --atomic, else spooled to an anonymous temporary file
    // and enqueued from it in chunks once all of them passed.
    let mut atomic_jobs = Vec::new();
    let mut spool = if args.atomic {
        None
    } else {
        Some(std::io::BufWriter::new(tempfile::tempfile().map_err(
            |e| anyhow::anyhow!("cannot create a temporary file for the checked lines: {e}"),
        )?))
    };
    let mut count = 0usize;
    let mut buf = Vec::new();
    for n in 1.. {
        // One line at a time, never more than the payload limit (and its newline): a line
        // past it is refused as soon as the limit is read, not after reading all of it.
        buf.clear();
        let read = (&mut reader)
            .take(max_payload_bytes as u64 + 2)
            .read_until(b'\n', &mut buf)
            .map_err(|e| bad(format!("line {n}: cannot read it: {e}")))?;
        if read == 0 {
            break;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > max_payload_bytes {
            return Err(bad(format!(
                "line {n}: longer than the payload limit of {max_payload_bytes} bytes \
                 (JOBDB_MAX_PAYLOAD_BYTES)"
            ))
            .into());
        }
        let line =
            std::str::from_utf8(line).map_err(|e| bad(format!("line {n}: not UTF-8 ({e})")))?;
        // A byte-order mark before the first line is an editor's, not JSON.
        let line = if n == 1 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        let job = build(line)
            .and_then(|job| job.validate(max_payload_bytes).map(|()| job))
            .map_err(|e| bad(format!("line {n}: {e}")))?;
        count += 1;
        match &mut spool {
            Some(spool) => writeln!(spool, "{line}")
                .map_err(|e| anyhow::anyhow!("cannot spool the checked lines: {e}"))?,
            None => atomic_jobs.push(job),
        }
    }
    if args.unique_key.is_some() && count > 1 {
        // One key for every line admits one live job: the other lines would be dropped.
        return Err(UsageError(format!(
            "{}: --unique-key gives all {} lines the same key, so at most one could be \
             enqueued; give each job its own key (one enqueue per line) or drop --unique-key; \
             nothing was enqueued",
            path.display(),
            count
        ))
        .into());
    }
    let Some(spool) = spool else {
        return Ok(EnqueueInput::File(atomic_jobs));
    };
    let mut spool = spool
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot spool the checked lines: {e}"))?;
    spool.seek(std::io::SeekFrom::Start(0))?;
    Ok(EnqueueInput::Chunked {
        spool: BufReader::new(spool),
        count,
        build: Box::new(build),
    })
}

/// `jobdb work`.
impl WithQueue for WorkArgs {
    type Output = Result<()>;
    fn with<C: QueueConnection>(self, queue: Queue<C>) -> Result<()> {
        work(queue, self)
    }
}

fn work<C: QueueConnection>(queue: Queue<C>, args: WorkArgs) -> Result<()> {
    let mut config = WorkerConfig::new(args.queue).lease(args.lease);
    config.concurrency = args.concurrency;
    config.grace = args.grace;
    config.exit_when_empty = args.exit_when_empty;
    config.exit_when_idle = args.exit_when_idle;
    config.max_jobs = args.max_jobs;
    config.job_timeout = args.job_timeout;
    config.handle_signals = true;
    if args.keep_succeeded.is_some() || args.keep_dead.is_some() || args.keep_cancelled.is_some() {
        config.retention = Some(jobdb::Retention {
            succeeded: args.keep_succeeded,
            dead: args.keep_dead,
            cancelled: args.keep_cancelled,
            ..jobdb::Retention::default()
        });
    }
    // Started before the worker, so a bad address fails before any job is claimed.
    let _metrics = args
        .metrics_listen
        .map(|addr| serve::metrics_only(queue.clone(), addr, args.metrics_token.clone()))
        .transpose()?;
    let command = args.exec;
    let shell = jobdb::exec::ShellOptions {
        max_stdout_bytes: args.max_output,
        ..jobdb::exec::ShellOptions::default()
    };
    let worker = Worker::new(queue, config, move |ctx| {
        jobdb::exec::run_shell_with(&command, ctx, &shell)
    });
    let report = worker.run()?;
    tracing::info!(?report, "worker stopped");
    eprintln!(
        "jobdb work: {} succeeded, {} failed, {} cancelled, {} lease lost, {} released, {} reaped",
        report.succeeded,
        report.failed,
        report.cancelled,
        report.lease_lost,
        report.released,
        report.reaped
    );
    Ok(())
}

/// `--concurrency`: 1 to [`jobdb::worker::MAX_CONCURRENCY`], checked before anything is
/// sized by it (the pool, the threads).
fn parse_concurrency(s: &str) -> std::result::Result<usize, String> {
    let max = jobdb::worker::MAX_CONCURRENCY;
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a whole number from 1 to {max}")),
    }
}

/// A command for `--exec`: not empty (an empty `sh -c ''` would make every job "succeed").
fn parse_command(s: &str) -> std::result::Result<String, String> {
    if s.trim().is_empty() {
        return Err("the command is empty; give what to run for each job".into());
    }
    Ok(s.to_owned())
}

/// `500ms`, `30s`, `5m`, `2h`, `7d`.
pub(crate) fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 5m, 2h or 7d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: unit must be one of ms, s, m, h, d")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::{exit_code, parse_duration};
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        /// Any text: a duration or an error message, never a panic.
        #[test]
        fn any_text_is_a_duration_or_an_error(s in ".{0,24}") {
            let _ = parse_duration(&s);
        }

        /// Every number with every unit means that many units, or is "too long".
        #[test]
        fn numbers_with_units_mean_what_they_say(n in any::<u64>(), unit in 0usize..5) {
            let (suffix, ms) = [("ms", 1u64), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)][unit];
            match parse_duration(&format!("{n}{suffix}")) {
                Ok(d) => prop_assert_eq!(d, Duration::from_millis(n * ms)),
                Err(e) => {
                    prop_assert!(n.checked_mul(ms).is_none(), "{e}");
                    prop_assert!(e.contains("too long"), "{e}");
                }
            }
        }
    }

    /// A bug in jobdb is never "bad usage": exit 70 (EX_SOFTWARE), not 2. Before, internal
    /// invariant failures were labelled `InvalidArgument` and exited 2.
    #[test]
    fn internal_errors_exit_70_and_bad_input_exits_2() {
        let internal = jobdb::Error::Internal {
            what: "group commit",
            reason: "operation finished without a result".into(),
        };
        assert!(!internal.is_invalid_input());
        assert_eq!(exit_code(&anyhow::Error::new(internal)), 70);
        let bad = jobdb::Error::InvalidArgument {
            field: "queue",
            reason: "empty".into(),
        };
        assert_eq!(exit_code(&anyhow::Error::new(bad)), 2);
        let conflict = jobdb::Error::UniqueConflict {
            job_id: 1,
            operation: "retried",
        };
        assert_eq!(exit_code(&anyhow::Error::new(conflict)), 1);
    }
}
