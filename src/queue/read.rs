//! Reads: jobs, results, counts, the exactly-once audit, and the benchmark's helpers.

use std::collections::BTreeMap;

use crate::driver::AsQueueConnection;
use crate::driver::{JobDriver, ManageDriver, ReadDriver};
use serde::Serialize;

use super::now;
use crate::error::{Error, Result};
use crate::models::{Job, JobResult, JobState};

/// One job by id ([`Error::NotFound`] if there is none).
pub fn get_job<A: AsQueueConnection>(conn: &mut A, job_id: i64) -> Result<Job> {
    let conn = conn.queue_connection();
    conn.find_job(job_id)?
        .ok_or(Error::NotFound { job_id })
        .and_then(Job::try_from)
}

/// Which jobs [`list_jobs`] shows: every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only jobs with this unique key.
    pub unique_key: Option<String>,
}

/// Most jobs one [`list_jobs`] page returns.
pub const MAX_PAGE: u32 = 500;

/// The ids a filtered page looks at in one statement: a range of the primary key, newest
/// first. Without an index on the filtered columns (on purpose: see the claim index's
/// migration), a filter that matches few jobs would otherwise scan the whole table for one
/// page; in windows, a page's work is bounded however large the table is.
pub const LIST_WINDOW: i64 = 50_000;

/// How long one filtered page keeps scanning further windows for matches before it answers
/// with what it has (and where to go on from).
pub const LIST_BUDGET: std::time::Duration = std::time::Duration::from_millis(30);

/// One page of [`list_jobs`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<Job>,
    /// Where the next page starts (pass it as `before`); `None`: no older job matches. A page
    /// can be shorter than asked and still have a next one: its search reached the time
    /// budget, and the next page goes on below where it stopped.
    pub next_before: Option<i64>,
}

/// One page of the jobs `filter` matches, newest first: those with an id below `before`
/// (`None`: from the newest), at most `limit` (1 to [`MAX_PAGE`]). Keyset pagination: the
/// next page starts at [`JobPage::next_before`], so a page costs the same however deep it is
/// (no OFFSET scan). A filtered page searches the ids in windows of [`LIST_WINDOW`] for at
/// most [`LIST_BUDGET`] (after its first window), so a filter that matches few of a million
/// jobs answers in milliseconds and says where to go on.
pub fn list_jobs<A: AsQueueConnection>(
    conn: &mut A,
    filter: &JobFilter,
    before: Option<i64>,
    limit: u32,
) -> Result<JobPage> {
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::InvalidArgument {
            field: "limit",
            reason: format!("{limit} is not between 1 and {MAX_PAGE}"),
        });
    }
    let conn = conn.queue_connection();
    let filtered = filter != &JobFilter::default();
    // Never above the newest id: a `before` far past it would otherwise be searched window
    // by empty window.
    let Some(max) = conn.max_job_id()? else {
        return Ok(JobPage {
            jobs: Vec::new(),
            next_before: None,
        });
    };
    let newest = max.saturating_add(1);
    let mut top = before.map_or(newest, |b| b.min(newest));
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    loop {
        let from = if filtered {
            top.saturating_sub(LIST_WINDOW).max(0)
        } else {
            0
        };
        let want = i64::from(limit) - rows.len() as i64;
        rows.extend(conn.list_jobs(filter, from, top, want)?);
        if rows.len() == limit as usize {
            let next_before = rows.last().map(|r| r.id);
            return finish(rows, next_before);
        }
        if from <= 0 {
            return finish(rows, None);
        }
        top = from;
        if started.elapsed() >= LIST_BUDGET {
            return finish(rows, Some(top));
        }
    }
}

/// The page of `rows`, which go on below `next_before`.
fn finish(rows: Vec<crate::models::JobRow>, next_before: Option<i64>) -> Result<JobPage> {
    Ok(JobPage {
        jobs: rows.into_iter().map(Job::try_from).collect::<Result<_>>()?,
        next_before,
    })
}

/// All finished attempts of a job, oldest first ([`Error::NotFound`] if there is no job).
pub fn get_results<A: AsQueueConnection>(conn: &mut A, job_id: i64) -> Result<Vec<JobResult>> {
    let conn = conn.queue_connection();
    if !conn.job_exists(job_id)? {
        return Err(Error::NotFound { job_id });
    }
    conn.results_of(job_id)?
        .into_iter()
        .map(JobResult::try_from)
        .collect()
}

/// `EXPLAIN QUERY PLAN` of the claim statement: shows it is served by `jobs_claim_idx`
/// without a sort, whatever the number of finished jobs.
pub fn explain_claim<A: AsQueueConnection>(conn: &mut A) -> Result<String> {
    let conn = conn.queue_connection();
    conn.explain_claim()
}

/// Result of [`audit`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Jobs on the queue.
    pub jobs: i64,
    /// Jobs not in state `succeeded` (lost, if every job should have run).
    pub not_succeeded: i64,
    /// Jobs with more than one succeeded results row (completed twice).
    pub duplicated: i64,
}

/// Checks exactly-once completion of a queue in SQL, independently of what workers reported.
pub fn audit<A: AsQueueConnection>(conn: &mut A, queue: &str) -> Result<Audit> {
    let conn = conn.queue_connection();
    conn.audit(queue)
}

/// Queued jobs of `queue`, due or scheduled.
pub fn queued_count<A: AsQueueConnection>(conn: &mut A, queue: &str) -> Result<i64> {
    let conn = conn.queue_connection();
    conn.queued_count(queue)
}

/// Whether `queue` has work a worker that exits when the queue is empty should wait for: a
/// job running anywhere, or one queued that is due now or waiting out a retry backoff. Jobs
/// delayed by their enqueuer, and everything of a paused queue but its running jobs, are not
/// waited for (that could be for ever); see [`crate::WorkerConfig::exit_when_empty`].
pub fn has_pending_work<A: AsQueueConnection>(conn: &mut A, queue: &str) -> Result<bool> {
    let conn = conn.queue_connection();
    let paused = conn.paused_queues()?.iter().any(|q| q == queue);
    if !paused && conn.pending_count(queue, now())? > 0 {
        return Ok(true);
    }
    conn.any_running(queue)
}

/// Whether any job of `queue` is running.
pub fn any_running<A: AsQueueConnection>(conn: &mut A, queue: &str) -> Result<bool> {
    let conn = conn.queue_connection();
    conn.any_running(queue)
}

/// Inserts `n` jobs that already succeeded (history) on `queue`, in one transaction: for
/// benchmarks that measure the claim with a large table.
pub fn insert_finished<A: AsQueueConnection>(conn: &mut A, queue: &str, n: u64) -> Result<usize> {
    let conn = conn.queue_connection();
    let n = i64::try_from(n).map_err(|_| Error::InvalidArgument {
        field: "finished",
        reason: format!("{n} is too large"),
    })?;
    let now = now();
    conn.write_transaction(|c| c.insert_finished(queue, n, now))
}

/// The version of the SQLite library, or of the PostgreSQL server, in use.
pub fn backend_version<A: AsQueueConnection>(conn: &mut A) -> Result<String> {
    let conn = conn.queue_connection();
    conn.version()
}

/// Job counts per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// `queued` jobs (due or scheduled).
    pub queued: i64,
    /// `running` jobs.
    pub running: i64,
    /// `succeeded` jobs.
    pub succeeded: i64,
    /// `dead` jobs.
    pub dead: i64,
    /// `cancelled` jobs.
    pub cancelled: i64,
}

impl StateCounts {
    pub(crate) fn add(&mut self, state: JobState, n: i64) {
        match state {
            JobState::Queued => self.queued += n,
            JobState::Running => self.running += n,
            JobState::Succeeded => self.succeeded += n,
            JobState::Dead => self.dead += n,
            JobState::Cancelled => self.cancelled += n,
        }
    }

    /// All jobs counted.
    pub fn total(&self) -> i64 {
        self.queued + self.running + self.succeeded + self.dead + self.cancelled
    }
}

/// Counts per queue and state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Sum over the queues counted.
    pub total: StateCounts,
    /// Per queue name.
    pub queues: BTreeMap<String, StateCounts>,
}

/// Counts jobs per queue and state (every queue, or only `queue`).
pub fn stats<A: AsQueueConnection>(conn: &mut A, queue: Option<&str>) -> Result<Stats> {
    let conn = conn.queue_connection();
    let mut stats = Stats::default();
    for (q, state, n) in conn.count_by_queue_state(queue)? {
        stats.total.add(state, n);
        stats.queues.entry(q).or_default().add(state, n);
    }
    Ok(stats)
}
