//! The operator commands: stats, cancel, prune, schedule.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use jobdb::{
    CancelOutcome, JobState, NewJob, PruneBatch, Queue, QueueConnection, Schedule, Scheduler,
};

use crate::{parse_duration, UsageError};

#[derive(Args)]
pub struct PruneArgs {
    /// Delete jobs finished (last changed) longer ago than this (500ms, 30s, 5m, 2h, 7d)
    #[arg(long, value_parser = parse_duration)]
    older_than: Duration,
    /// Only jobs in this state (repeatable): succeeded, dead or cancelled. Default: all three
    #[arg(long = "state", value_parser = parse_finished_state)]
    states: Vec<JobState>,
    /// Jobs deleted per write transaction
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Print a JSON report: {"deleted":n,"transactions":n,"max_lock_hold_ms":x}
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("when").required(true).args(["every", "cron"]))]
pub struct ScheduleArgs {
    /// The schedule's name: ticks are counted per name, across all processes
    name: String,
    /// Queue the jobs go to
    #[arg(long, default_value = "default")]
    queue: String,
    /// Fixed interval, at multiples since the Unix epoch (at least 1s)
    #[arg(long, value_parser = parse_duration)]
    every: Option<Duration>,
    /// Cron expression, UTC, as crontab(5) reads it: "min hour day month weekday" (0 and 7 =
    /// Sunday, names, ranges, steps, @daily…); 6 or 7 fields (seconds first) are Quartz's
    /// dialect, where weekday 1 is Sunday
    #[arg(long)]
    cron: Option<String>,
    /// Each job's payload, as JSON
    #[arg(default_value = "{}")]
    payload: String,
    /// Stop after this long (default: until SIGINT/SIGTERM)
    #[arg(long = "for", value_parser = parse_duration)]
    run_for: Option<Duration>,
    /// Attempts before a job is dead
    #[arg(long, default_value_t = 5)]
    max_attempts: i32,
}

pub(crate) fn parse_finished_state(s: &str) -> std::result::Result<JobState, String> {
    match JobState::parse(s) {
        Some(st) if jobdb::manage::PRUNABLE.contains(&st) => Ok(st),
        _ => Err(format!("{s:?}: give succeeded, dead or cancelled")),
    }
}

pub fn stats<C: QueueConnection>(queue: &Queue<C>, only: Option<String>, json: bool) -> Result<()> {
    let stats = queue.stats(only.as_deref())?;
    let activity = queue.activity(only.as_deref())?;
    if json {
        let mut out = serde_json::to_value(stats.total)?;
        let mut queues = serde_json::Map::new();
        for name in stats.queues.keys().chain(activity.keys()) {
            let mut q = serde_json::to_value(stats.queues.get(name).copied().unwrap_or_default())?;
            let a = serde_json::to_value(activity.get(name).cloned().unwrap_or_default())?;
            if let (Some(q), serde_json::Value::Object(a)) = (q.as_object_mut(), a) {
                q.extend(a);
            }
            queues.insert(name.clone(), q);
        }
        out["queues"] = serde_json::Value::Object(queues);
        // This process's own work: the reads above (and the migration check at open).
        out["metrics"] = serde_json::to_value(queue.metrics())?;
        println!("{out}");
        return Ok(());
    }
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>9} {:>10} {:>12} {:>10}",
        "queue", "queued", "running", "succeeded", "dead", "cancelled", "oldest due", "done/min"
    );
    let names: std::collections::BTreeSet<&String> =
        stats.queues.keys().chain(activity.keys()).collect();
    for name in names {
        let c = stats.queues.get(name).copied().unwrap_or_default();
        let a = activity.get(name).cloned().unwrap_or_default();
        let oldest = a
            .oldest_due_age_s
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"));
        // Queue names are anyone's input: control characters (a terminal's escape
        // sequences) are printed escaped, never sent to the terminal raw.
        let name = printable(name);
        let label = if a.paused {
            format!("{name} (paused)")
        } else {
            name
        };
        println!(
            "{label:<24} {:>9} {:>9} {:>10} {:>9} {:>10} {:>12} {:>10}",
            c.queued, c.running, c.succeeded, c.dead, c.cancelled, oldest, a.succeeded_last_minute
        );
    }
    let t = stats.total;
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>9} {:>10}",
        "TOTAL", t.queued, t.running, t.succeeded, t.dead, t.cancelled
    );
    Ok(())
}

pub fn cancel<C: QueueConnection>(queue: &Queue<C>, id: i64) -> Result<()> {
    match queue.cancel(id)? {
        CancelOutcome::Cancelled => println!("job {id} cancelled"),
        CancelOutcome::Requested => {
            println!(
                "job {id} is running: cancel requested, its worker stops it at the next heartbeat"
            )
        }
    }
    Ok(())
}

pub fn prune<C: QueueConnection>(queue: &Queue<C>, args: PruneArgs) -> Result<()> {
    if args.batch == 0 {
        return Err(UsageError("--batch must be at least 1".into()).into());
    }
    let states = if args.states.is_empty() {
        jobdb::manage::PRUNABLE.to_vec()
    } else {
        args.states
    };
    let batch = PruneBatch {
        jobs_per_transaction: args.batch,
        ..PruneBatch::default()
    };
    let report = queue.prune(args.older_than, &states, batch)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.deleted);
    }
    Ok(())
}

pub fn schedule<C: QueueConnection>(queue: &Queue<C>, args: ScheduleArgs) -> Result<()> {
    let job =
        NewJob::from_json(args.queue.as_str(), &args.payload)?.max_attempts(args.max_attempts);
    let schedule = match (args.every, &args.cron) {
        (Some(every), _) => Schedule::interval(args.name, every, job)?,
        (None, Some(expr)) => Schedule::cron(args.name, expr, job)?,
        (None, None) => return Err(UsageError("give --every or --cron".into()).into()),
    };
    let scheduler = Scheduler::new(queue.clone(), vec![schedule]);
    let stop = scheduler.shutdown_handle();
    stop.stop_on_signals()?;
    let until = match args.run_for {
        Some(d) => Some(jobdb::timestamp::from_now("for", d)?),
        None => None,
    };
    let report = scheduler.run(until);
    eprintln!(
        "jobdb schedule: {} ticks enqueued here, {} by other schedulers, {} failed",
        report.enqueued, report.taken_elsewhere, report.failed
    );
    Ok(())
}

/// `text` with control characters escaped (`\u{1b}`), for a terminal: what a queue name or
/// other stored text holds is shown, never interpreted.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
