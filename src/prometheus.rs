//! `/metrics` in the Prometheus text format (version 0.0.4): the queue's state read from the
//! database and the handle's own counters and histograms. `jobdb serve` serves it; an app can
//! serve [`render`] from its own HTTP server.
//!
//! Names follow Prometheus conventions: the `jobdb_` prefix, base units (seconds, bytes),
//! `_total` for counters. The queue gauges are read from the database, so they are the same
//! whichever process serves them; the counters and histograms are this process's handle's
//! (every process serves its own, as Prometheus expects).

use std::fmt::Write as _;

use crate::driver::QueueConnection;
use crate::error::Result;
use crate::handle::Queue;
use crate::metrics::Histogram;
use crate::models::JobState;
use crate::overview::Overview;

/// The metrics text for `queue`: one scan of `jobs` for the gauges (run on a reader).
pub fn render<C: QueueConnection>(queue: &Queue<C>) -> Result<String> {
    Ok(render_overview(queue, &queue.overview()?))
}

/// The metrics text with the queue gauges from `overview`, an [`Overview`] taken earlier
/// (`jobdb serve` takes one in the background and serves every scrape from it, so a scrape
/// never scans a large table); the counters and histograms are `queue`'s handle's, now.
/// `jobdb_overview_age_seconds` says how old the gauges are.
pub fn render_overview<C: QueueConnection>(queue: &Queue<C>, overview: &Overview) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        "jobdb_jobs",
        "gauge",
        "Jobs in the database, by queue and state.",
    );
    let mut lines = String::new();
    for (q, o) in &overview.queues {
        let counts = &o.counts;
        for state in JobState::ALL {
            let n = match state {
                JobState::Queued => counts.queued,
                JobState::Running => counts.running,
                JobState::Succeeded => counts.succeeded,
                JobState::Dead => counts.dead,
                JobState::Cancelled => counts.cancelled,
            };
            let _ = writeln!(
                lines,
                "jobdb_jobs{{queue=\"{}\",state=\"{state}\"}} {n}",
                label(q)
            );
        }
    }
    out.push_str(&lines);
    let gauges: [Gauge; 3] = [
        (
            "jobdb_oldest_due_wait_seconds",
            "How long the oldest due job of the queue has waited to be claimed (0: none due).",
            |a| a.oldest_due_age_s.unwrap_or(0.0),
        ),
        ("jobdb_queue_paused", "1 if the queue is paused.", |a| {
            f64::from(u8::from(a.paused))
        }),
        (
            "jobdb_succeeded_last_minute",
            "Jobs of the queue that succeeded in the last 60 seconds.",
            |a| a.succeeded_last_minute as f64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (q, o) in &overview.queues {
            let _ = writeln!(
                out,
                "{name}{{queue=\"{}\"}} {}",
                label(q),
                value(&o.activity)
            );
        }
    }
    let age = (chrono::Utc::now() - overview.as_of)
        .to_std()
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP jobdb_overview_age_seconds How old the queue gauges above are (the scan they \
         come from started this long ago).\n# TYPE jobdb_overview_age_seconds gauge\n\
         jobdb_overview_age_seconds {}\n\
         # HELP jobdb_overview_scan_seconds How long the scan of jobs behind the gauges took.\n\
         # TYPE jobdb_overview_scan_seconds gauge\njobdb_overview_scan_seconds {}",
        age.as_secs_f64(),
        overview.took.as_secs_f64()
    );
    let inner = &queue.db().inner;
    let retries = inner.stats.snapshot();
    let m = &inner.metrics;
    let counters: [(&str, &str, u64); 7] = [
        (
            "jobdb_transactions_total",
            "Write transactions run by this process's handle.",
            retries.transactions,
        ),
        (
            "jobdb_busy_retries_total",
            "Write transactions re-run because the database was busy.",
            retries.busy_retries,
        ),
        (
            "jobdb_busy_give_ups_total",
            "Operations that gave up busy past the retry deadline (Error::Busy).",
            retries.busy_exhausted,
        ),
        (
            "jobdb_slow_transactions_total",
            "Write transactions that held the write lock past the slow threshold.",
            load(&m.slow_transactions),
        ),
        (
            "jobdb_wal_checkpoints_total",
            "WAL checkpoints run by this process (SQLite).",
            load(&m.checkpoints),
        ),
        (
            "jobdb_wal_truncates_total",
            "Resets of an oversize WAL by this process (SQLite; RESTART checkpoints).",
            load(&m.wal_truncates),
        ),
        (
            "jobdb_wal_syncs_total",
            "fdatasyncs of the WAL for durable acknowledgements (SQLite).",
            load(&m.wal_syncs),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP jobdb_attempts_finished_total Attempts this process's handle recorded, by \
         outcome (succeeded, retried, dead, cancelled; refused: the lease was lost; expired: \
         others' leases it reaped).\n# TYPE jobdb_attempts_finished_total counter"
    );
    for (outcome, n) in m.outcomes.counts() {
        let _ = writeln!(
            out,
            "jobdb_attempts_finished_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP jobdb_wal_bytes Size of the WAL file at the last check (SQLite).\n\
         # TYPE jobdb_wal_bytes gauge\njobdb_wal_bytes {}",
        overview.wal_bytes.unwrap_or_else(|| load(&m.wal_bytes))
    );
    for (name, help, h) in [
        (
            "jobdb_claim_duration_seconds",
            "Claim calls, from call to answer.",
            &m.claim_latency,
        ),
        (
            "jobdb_write_lock_hold_seconds",
            "How long write transactions held the write lock.",
            &m.lock_hold,
        ),
        (
            "jobdb_write_lock_wait_seconds",
            "How long write transactions waited for the write lock.",
            &m.lock_wait,
        ),
        (
            "jobdb_wal_sync_wait_seconds",
            "How long durable operations waited for their WAL sync after commit.",
            &m.sync_wait,
        ),
    ] {
        histogram(&mut out, name, help, h);
    }
    statement_histograms(&mut out);
    out
}

/// Every SQLite statement of the process's guarded connections (jobdb's pool, and the app's
/// where [`crate::sqlite::protect_process`] was called), by kind: one family, a series per kind.
fn statement_histograms(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP jobdb_sqlite_slow_statements_total SQLite statements logged as slow.\n\
         # TYPE jobdb_sqlite_slow_statements_total counter\n\
         jobdb_sqlite_slow_statements_total {}\n\
         # HELP jobdb_sqlite_refused_upgrades_total Writes of DEFERRED transactions that \
         SQLite refused at once (read first, then another connection wrote).\n\
         # TYPE jobdb_sqlite_refused_upgrades_total counter\n\
         jobdb_sqlite_refused_upgrades_total {}\n\
         # HELP jobdb_sqlite_commit_syncs_total WAL syncs jobdb's pool connections ran after \
         their own commits, outside the write lock.\n\
         # TYPE jobdb_sqlite_commit_syncs_total counter\n\
         jobdb_sqlite_commit_syncs_total {}",
        crate::sqlite::slow_statements(),
        crate::sqlite::refused_upgrades(),
        crate::sqlite::commit_syncs()
    );
    let name = "jobdb_sqlite_statement_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long SQLite statements took, by kind (every guarded connection of \
         the process).\n# TYPE {name} histogram"
    );
    for kind in crate::sqlite::StatementKind::ALL {
        let label = format!("kind=\"{}\"", kind.label());
        series(out, name, &label, crate::sqlite::statement_histogram(kind));
    }
}

/// A per-queue gauge: its name, its help, and its value from the queue's activity.
type Gauge = (&'static str, &'static str, fn(&crate::QueueActivity) -> f64);

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

/// A histogram family of one series: its help and type, then [`series`].
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    series(out, name, "", h);
}

/// One series of a histogram family, with `labels` (`kind="select"`, or none): the buckets up
/// to the first that holds everything, `+Inf`, sum, count.
fn series(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (buckets, sum, count) = h.cumulative();
    let (with, only) = if labels.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{labels},"), format!("{{{labels}}}"))
    };
    for (le, n) in buckets
        .iter()
        .take_while(|(_, n)| *n < count)
        .chain(buckets.iter().find(|(_, n)| *n == count))
    {
        let _ = writeln!(out, "{name}_bucket{{{with}le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{with}le=\"+Inf\"}} {count}\n{name}_sum{only} {sum}\n{name}_count{only} {count}"
    );
}

/// A label value escaped as the text format requires (backslash, quote, newline): queue
/// names are user input.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
