//! Everything an operator's overview shows, from ONE scan of `jobs`: per queue, the counts by
//! state, the oldest due job's wait, what finished in the last minute, and the jobs that
//! succeeded in each minute of the last hour; plus which queues are paused.
//!
//! Why one scan: at a million jobs a scan is the cost (no index leads with `queue` or
//! `state`, by design: an index on a column that changes with every claim costs the writer
//! about 20%, measured), so `jobdb serve` takes one [`Overview`] in the background and serves
//! its pages, its API and `/metrics` from it, instead of three scans per request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::driver::{AsQueueConnection, ManageDriver};
use crate::error::{Error, Result};
use crate::manage::QueueActivity;
use crate::models::JobState;
use crate::queue::StateCounts;
use crate::timestamp::{before, now};

/// One queue's part of an [`Overview`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueOverview {
    /// Jobs by state.
    pub counts: StateCounts,
    /// Oldest due wait, the last minute's outcomes, paused or not.
    #[serde(flatten)]
    pub activity: QueueActivity,
    /// Jobs that succeeded in each of the last 60 minutes, oldest first.
    pub succeeded_per_minute: Vec<i64>,
}

/// A snapshot of every queue, as of [`Overview::as_of`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    /// When the scan started: nothing later is in it.
    pub as_of: DateTime<Utc>,
    /// How long the scan took (what a fresh overview costs on this database).
    #[serde(serialize_with = "seconds")]
    pub took: Duration,
    /// Every queue with jobs, and every paused one.
    pub queues: BTreeMap<String, QueueOverview>,
    /// All queues' counts together.
    pub total: StateCounts,
    /// The size of SQLite's `-wal` file when the overview was taken (`None`: PostgreSQL, or
    /// taken on a bare connection, which does not know its file).
    pub wal_bytes: Option<u64>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Takes an [`Overview`]: one scan of `jobs` (and a look at `paused_queues`). Run it on a
/// reader; it writes nothing.
pub fn overview<A: AsQueueConnection>(conn: &mut A) -> Result<Overview> {
    let conn = conn.queue_connection();
    let started = Instant::now();
    let as_of = now();
    let hour_ago = before("since", as_of, Duration::from_secs(3600))?;
    let minute_ago = before("since", as_of, Duration::from_secs(60))?;
    let paused = conn.paused_queues()?;
    let mut queues: BTreeMap<String, QueueOverview> = BTreeMap::new();
    let mut total = StateCounts::default();
    for row in conn.overview_rows(hour_ago, as_of, minute_ago)? {
        let state = JobState::parse(&row.state).ok_or_else(|| Error::CorruptRow {
            table: "jobs",
            reason: format!(
                "a job of queue {:?} has unknown state {:?}",
                row.queue, row.state
            ),
        })?;
        let q = queues.entry(row.queue).or_insert_with(|| QueueOverview {
            succeeded_per_minute: vec![0; 60],
            ..QueueOverview::default()
        });
        q.counts.add(state, row.n);
        total.add(state, row.n);
        if let Some(s) = row.oldest_due_s {
            // Clock skew between writers can make a due time look slightly ahead.
            let s = s.max(0.0);
            let oldest = &mut q.activity.oldest_due_age_s;
            *oldest = Some(oldest.map_or(s, |o| o.max(s)));
        }
        match state {
            JobState::Succeeded => q.activity.succeeded_last_minute += row.recent,
            JobState::Dead => q.activity.dead_last_minute += row.recent,
            _ => {}
        }
        if let Some(slot) = row
            .minute
            .and_then(|m| usize::try_from(m).ok())
            .and_then(|m| q.succeeded_per_minute.get_mut(m))
        {
            *slot += row.n;
        }
    }
    for name in paused {
        queues
            .entry(name)
            .or_insert_with(|| QueueOverview {
                succeeded_per_minute: vec![0; 60],
                ..QueueOverview::default()
            })
            .activity
            .paused = true;
    }
    for q in queues.values_mut() {
        q.activity.throughput_per_sec = q.activity.succeeded_last_minute as f64 / 60.0;
    }
    Ok(Overview {
        as_of: as_of.and_utc(),
        took: started.elapsed(),
        queues,
        total,
        wal_bytes: None,
    })
}
