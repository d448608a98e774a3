//! The operator side of [`Queue`]: unique enqueue, cancel, retry, prune, pause and resume,
//! periodic ticks, waiting for a job, and per-queue activity.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Queue;
use crate::driver::QueueConnection;
use crate::error::{Error, Result};
use crate::manage::{self, CancelOutcome, PruneBatch, PruneReport, QueueActivity, Retention};
use crate::models::{Job, JobState, NewJob};
use crate::queue::{self, Enqueued};
use crate::schedule::Schedule;

impl<C: QueueConnection> Queue<C> {
    /// Enqueues one job and says whether it was inserted: with a unique key, a live job of
    /// the same queue and key is returned instead (`inserted: false`). Race-free: the unique
    /// index decides inside the insert.
    pub fn enqueue_unique(&self, job: &NewJob) -> Result<Enqueued> {
        let span =
            crate::telemetry::span(crate::telemetry::Op::Create("enqueue"), job.queue(), None);
        let _entered = span.enter();
        self.woke({
            let e = self.inner();
            job.validate(e.config.max_payload_bytes)?;
            let job = job.clone();
            let done = e.write("enqueue", move |c| {
                queue::insert_reporting(c, std::slice::from_ref(&job))
            })?;
            done.into_iter().next().ok_or_else(|| Error::CorruptRow {
                table: "jobs",
                reason: "enqueue returned no id".into(),
            })
        })
    }

    /// Cancels a job (see [`manage::cancel`]).
    pub fn cancel(&self, job_id: i64) -> Result<CancelOutcome> {
        let e = self.inner();
        e.write("cancel", move |c| manage::cancel(c, job_id))
    }

    /// Puts a dead or cancelled job back to queued with fresh attempts (see [`manage::retry`]).
    pub fn retry(&self, job_id: i64) -> Result<()> {
        self.woke({
            let e = self.inner();
            e.write("retry", move |c| manage::retry(c, job_id))
        })
    }

    /// Deletes jobs in `states` (finished ones only) last changed more than `older_than` ago,
    /// with their results, `batch.jobs_per_transaction` per write transaction. Candidates are
    /// found on a reader (a scan, outside the write lock); each transaction deletes by id and
    /// re-checks the condition, so it holds the write lock for a few milliseconds and the
    /// queue's workers keep going in between.
    pub fn prune(
        &self,
        older_than: Duration,
        states: &[JobState],
        batch: PruneBatch,
    ) -> Result<PruneReport> {
        let e = self.inner();
        manage::prune_with(
            older_than,
            states,
            batch,
            |scan| e.read("prune_scan", |c| scan.run(c)),
            // Alone on the writer (not group-committed), so the time measured is this
            // transaction's own hold on the write lock.
            |delete| e.run("prune", |c| delete.run(c)),
        )
    }

    /// Prunes each state of `retention` that has a limit; returns jobs deleted.
    pub fn apply_retention(&self, retention: &Retention) -> Result<u64> {
        let mut deleted = 0;
        for (state, keep) in retention.limits() {
            deleted += self.prune(keep, &[state], retention.batch)?.deleted;
        }
        Ok(deleted)
    }

    /// Pauses `queue`: nothing is claimed from it until [`Queue::resume`]. Returns false if it
    /// was already paused.
    pub fn pause(&self, queue_name: &str) -> Result<bool> {
        let e = self.inner();
        let q = queue_name.to_owned();
        e.write("pause", move |c| manage::pause(c, &q))
    }

    /// Resumes a paused queue. Returns false if it was not paused.
    pub fn resume(&self, queue_name: &str) -> Result<bool> {
        self.woke({
            let e = self.inner();
            let q = queue_name.to_owned();
            e.write("resume", move |c| manage::resume(c, &q))
        })
    }

    /// Names of the paused queues.
    pub fn paused(&self) -> Result<Vec<String>> {
        let e = self.inner();
        e.read("paused", manage::paused)
    }

    /// Enqueues `schedule`'s job for `tick` unless some scheduler already did: a
    /// compare-and-set on the schedule's last tick and the insert, in one transaction.
    /// Returns the new job's id, or `None` when the tick was already taken.
    pub fn enqueue_tick(&self, schedule: &Schedule, tick: DateTime<Utc>) -> Result<Option<i64>> {
        self.woke({
            let e = self.inner();
            let max_payload = e.config.max_payload_bytes;
            let schedule = schedule.clone();
            e.write("enqueue_tick", move |c| {
                manage::enqueue_tick_validated(c, &schedule, tick, max_payload)
            })
        })
    }

    /// Waits until the job is finished (succeeded, dead or cancelled) and returns it; polls
    /// with a backoff of 5 ms doubling to 200 ms. [`Error::Timeout`] after `timeout`, with
    /// the job unaffected; [`Error::NotFound`] for an unknown id.
    pub fn wait_for(&self, job_id: i64, timeout: Duration) -> Result<Job> {
        let mut wait = WaitFor::new(job_id, timeout);
        loop {
            match wait.next(self.get_job(job_id)?)? {
                Ok(job) => return Ok(job),
                Err(pause) => std::thread::sleep(pause),
            }
        }
    }

    /// Everything an overview shows, from one scan on a reader (see [`crate::overview`]).
    pub fn overview(&self) -> Result<crate::overview::Overview> {
        let e = self.inner();
        let mut overview = e.read("overview", crate::overview::overview)?;
        // The WAL's size from the file itself: a process without a checkpoint thread (a
        // dashboard) has no other measure of it. A WAL not there is an empty one.
        overview.wal_bytes = e.file.as_ref().map(|f| {
            let mut wal = f.clone().into_os_string();
            wal.push("-wal");
            std::fs::metadata(wal).map_or(0, |m| m.len())
        });
        Ok(overview)
    }

    /// Per-queue activity: the oldest due job's wait, jobs finished in the last minute,
    /// paused or not (see [`manage::activity`]).
    pub fn activity(
        &self,
        queue_name: Option<&str>,
    ) -> Result<std::collections::BTreeMap<String, QueueActivity>> {
        let e = self.inner();
        e.read("activity", |c| manage::activity(c, queue_name))
    }
}

/// The polling of [`Queue::wait_for`] (and its async twin): a backoff of 5 ms doubling to
/// 200 ms, and [`Error::Timeout`] once `timeout` has passed.
pub(crate) struct WaitFor {
    job_id: i64,
    timeout: Duration,
    started: Instant,
    pause: Duration,
}

impl WaitFor {
    pub(crate) fn new(job_id: i64, timeout: Duration) -> WaitFor {
        WaitFor {
            job_id,
            timeout,
            started: Instant::now(),
            pause: Duration::from_millis(5),
        }
    }

    /// After reading `job`: the finished job (`Ok(Ok)`), the pause before the next read
    /// (`Ok(Err)`), or the timeout.
    pub(crate) fn next(&mut self, job: Job) -> Result<std::result::Result<Job, Duration>> {
        if job.state.is_finished() {
            return Ok(Ok(job));
        }
        let waited = self.started.elapsed();
        if waited >= self.timeout {
            return Err(Error::Timeout {
                job_id: self.job_id,
                state: job.state,
                waited,
            });
        }
        let pause = self.pause.min(self.timeout - waited);
        self.pause = (self.pause * 2).min(Duration::from_millis(200));
        Ok(Err(pause))
    }
}
