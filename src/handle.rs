//! [`Queue`]: the repository over a pool. Each call checks out a connection and runs one of
//! the `queue` functions as a whole transaction, re-run on busy by the retry loop, so callers
//! never see "database is locked": they get the result, or [`Error::Busy`] past the deadline.

#[cfg(feature = "tokio")]
mod async_queue;
mod manage;

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sqlite::SqliteConnection;
use serde::Serialize;

use crate::db::{Db, Pool};
use crate::driver::QueueConnection;
use crate::error::Result;
use crate::metrics::MetricsSnapshot;
use crate::models::{Job, JobResult, JobState, Lease, NewJob};
use crate::pool::Config;
use crate::queue::{self, Stats, ENQUEUE_CHUNK};
use crate::retry::RetrySnapshot;

#[cfg(feature = "tokio")]
pub use async_queue::AsyncQueue;

/// The queue over a [`Db`]: enqueue, claim, heartbeat, complete, fail, release, reap, and the
/// operator features, each one whole transaction re-run on busy (group-committed with the
/// process's other writes on SQLite). Cheap to clone; every clone shares the handle. Generic
/// over the backend like sqlx's `Pool<DB>`: `Queue` (SQLite, the default),
/// `Queue<PgConnection>` (feature `postgres`); [`crate::open_any`] picks one by the URL at
/// run time.
pub struct Queue<C: QueueConnection = SqliteConnection> {
    db: Db<C>,
}

/// A queue on SQLite.
pub type SqliteQueue = Queue<SqliteConnection>;
/// A queue on MySQL or MariaDB.
#[cfg(feature = "mysql")]
pub type MysqlQueue = Queue<diesel::mysql::MysqlConnection>;
/// A queue on PostgreSQL.
#[cfg(feature = "postgres")]
pub type PgQueue = Queue<diesel::pg::PgConnection>;

impl<C: QueueConnection> Clone for Queue<C> {
    fn clone(&self) -> Self {
        Queue {
            db: self.db.clone(),
        }
    }
}

impl<C: QueueConnection> std::fmt::Debug for Queue<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("db", &self.db).finish()
    }
}

impl<C: QueueConnection> Queue<C> {
    /// Opens the database at `url` (see [`Db::open`]) and, if `config.run_migrations`,
    /// applies pending migrations.
    pub fn open(url: &str, config: Config) -> Result<Queue<C>> {
        Ok(Queue {
            db: Db::open(url, config)?,
        })
    }

    /// Wraps a pool the caller built (see [`Db::from_pool`]). Each handle (and its clones)
    /// has one writer connection: open one `Queue` per database per process and clone it.
    pub fn from_pool(pool: Pool<C>, config: Config) -> Result<Queue<C>> {
        Ok(Queue {
            db: Db::from_pool(pool, config)?,
        })
    }

    /// A queue on an open persistence handle (it shares the handle's writer and pool with
    /// the app's own transactions).
    pub fn on(db: Db<C>) -> Queue<C> {
        Queue { db }
    }

    /// The persistence handle under this queue.
    pub fn db(&self) -> &Db<C> {
        &self.db
    }

    /// Which backend this queue is on: `"sqlite"`, `"postgres"` or `"mysql"`.
    pub fn backend(&self) -> &'static str {
        C::NAME
    }

    /// Applies pending embedded migrations; returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<String>> {
        self.db.migrate()
    }

    /// The pool, for the caller's own queries.
    pub fn pool(&self) -> &Pool<C> {
        self.db.pool()
    }

    /// The shared state of the handle underneath.
    fn inner(&self) -> &crate::db::Inner<C> {
        &self.db.inner
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        self.db.config()
    }

    /// Transactions, busy retries and busy give-ups so far, over every clone of this handle.
    pub fn retry_stats(&self) -> RetrySnapshot {
        self.db.retry_stats()
    }

    /// Runs `op`, a whole write transaction (every `jobdb::queue` function is one), alone
    /// on the writer, re-running it whole while the database is busy (see
    /// [`Db::transaction`]). `op` must not call this `Queue` itself.
    pub fn run<T>(&self, name: &'static str, op: impl FnMut(&mut C) -> Result<T>) -> Result<T> {
        self.db.transaction(name, op)
    }

    /// Counters and latency histograms of this handle's work (see [`crate::metrics`]).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.db.metrics()
    }

    /// Enqueues one job; returns its id (with a unique key that a live job already has, that
    /// job's id: see [`Queue::enqueue_unique`]).
    pub fn enqueue(&self, job: &NewJob) -> Result<i64> {
        self.enqueue_unique(job).map(|e| e.id)
    }

    /// Enqueues many jobs, [`ENQUEUE_CHUNK`] per transaction; returns their ids in order. All
    /// jobs are validated first, so bad input writes nothing. Each chunk commits on its own:
    /// if a later chunk fails, the ids of the earlier, committed ones are not returned, so use
    /// [`Queue::enqueue_batch`] when the whole set must be all-or-nothing.
    pub fn enqueue_many(&self, jobs: &[NewJob]) -> Result<Vec<i64>> {
        let queue_name = jobs.first().map_or("", |j| j.queue());
        let span = crate::telemetry::span(
            crate::telemetry::Op::Create("enqueue_many"),
            queue_name,
            None,
        );
        let _entered = span.enter();
        self.woke({
            let e = self.inner();
            validate_all(jobs, e.config.max_payload_bytes)?;
            let mut ids = Vec::with_capacity(jobs.len());
            for chunk in jobs.chunks(ENQUEUE_CHUNK) {
                let chunk = chunk.to_vec();
                ids.extend(e.write("enqueue_many", move |c| queue::insert_validated(c, &chunk))?);
            }
            Ok(ids)
        })
    }

    /// Enqueues all `jobs` in ONE transaction: all or nothing (for files of jobs where a
    /// partial enqueue would be wrong). Holds the write lock for the whole insert.
    pub fn enqueue_batch(&self, jobs: &[NewJob]) -> Result<Vec<i64>> {
        self.woke({
            let e = self.inner();
            validate_all(jobs, e.config.max_payload_bytes)?;
            e.run("enqueue_batch", |c| queue::insert_all_validated(c, jobs))
        })
    }

    /// Claims up to `limit` due jobs of `queue`, leased to `worker_id` for `lease`.
    pub fn claim(
        &self,
        queue_name: &str,
        limit: u32,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Vec<Job>> {
        let span = crate::telemetry::span(crate::telemetry::Op::Receive, queue_name, None);
        let _entered = span.enter();
        let e = self.inner();
        let started = std::time::Instant::now();
        let (queue_name, worker_id) = (queue_name.to_owned(), worker_id.to_owned());
        let claimed = e.write("claim", move |c| {
            queue::claim(c, &queue_name, limit, &worker_id, lease)
        });
        e.metrics.claim_latency.record(started.elapsed());
        claimed
    }

    /// Extends a lease; [`Error::LeaseLost`](crate::Error::LeaseLost) if it is no longer ours.
    pub fn heartbeat(&self, lease: Lease, lease_for: Duration) -> Result<DateTime<Utc>> {
        let e = self.inner();
        e.write("heartbeat", move |c| queue::heartbeat(c, lease, lease_for))
    }

    /// Records success with `output`; fenced by the lease.
    pub fn complete(
        &self,
        lease: Lease,
        output: &impl Serialize,
        duration: Duration,
    ) -> Result<()> {
        self.complete_json(lease, &crate::models::to_json("output", output)?, duration)
    }

    /// Records success with output already serialized as JSON text.
    pub fn complete_json(&self, lease: Lease, output_json: &str, duration: Duration) -> Result<()> {
        let span = crate::telemetry::span(
            crate::telemetry::Op::Settle("complete"),
            "",
            Some(lease.job_id),
        );
        let _entered = span.enter();
        let e = self.inner();
        let output_json = output_json.to_owned();
        let done = e.write("complete", move |c| {
            queue::complete_json(c, lease, &output_json, duration)
        });
        e.metrics.outcomes.completion(&done);
        done
    }

    /// Completes many jobs in one transaction; one result per item (see
    /// [`queue::complete_many`]).
    pub fn complete_many(&self, items: Vec<queue::Completion>) -> Result<Vec<Result<()>>> {
        let e = self.inner();
        let done = e.write("complete_many", move |c| queue::complete_many(c, &items))?;
        done.iter().for_each(|r| e.metrics.outcomes.completion(r));
        Ok(done)
    }

    /// Extends many leases in one transaction; one result per lease.
    pub fn heartbeat_many(
        &self,
        leases: &[Lease],
        lease_for: Duration,
    ) -> Result<Vec<Result<DateTime<Utc>>>> {
        let e = self.inner();
        let leases = leases.to_vec();
        e.write("heartbeat_many", move |c| {
            queue::heartbeat_many(c, &leases, lease_for)
        })
    }

    /// Stores `value` as the progress of the job held by `lease` (fenced, as a heartbeat is;
    /// see [`queue::set_progress`]). One write each call: a handler under [`crate::Worker`]
    /// uses [`crate::JobContext::set_progress`] instead, which the worker rate-limits. Like a
    /// heartbeat, it is not synced before it returns under [`crate::Synchronous::Durable`]: a
    /// power cut may leave an earlier value.
    pub fn set_progress(&self, lease: Lease, value: &impl Serialize) -> Result<()> {
        let items = [(lease, queue::encode_progress(value)?)];
        let e = self.inner();
        e.write("set_progress", move |c| queue::set_progress_many(c, &items))?
            .pop()
            .unwrap_or(Err(crate::Error::Internal {
                what: "set_progress",
                reason: "set_progress_many returned no result for one item".into(),
            }))
    }

    /// Stores many jobs' progress in one transaction; one result per item (see
    /// [`queue::set_progress_many`]).
    pub fn set_progress_many(&self, items: Vec<(Lease, String)>) -> Result<Vec<Result<()>>> {
        let e = self.inner();
        e.write("set_progress_many", move |c| {
            queue::set_progress_many(c, &items)
        })
    }

    /// Records a failed attempt; the job is retried with backoff or ends `dead`.
    pub fn fail(&self, lease: Lease, error: &str, duration: Duration) -> Result<JobState> {
        let span =
            crate::telemetry::span(crate::telemetry::Op::Settle("fail"), "", Some(lease.job_id));
        let _entered = span.enter();
        let e = self.inner();
        let backoff = e.config.job_backoff;
        let error = error.to_owned();
        let failed = e.write("fail", move |c| {
            queue::fail(c, lease, &error, duration, &backoff)
        });
        e.metrics.outcomes.failure(&failed);
        failed
    }

    /// Gives a running job back to the queue (shutdown).
    pub fn release(&self, lease: Lease) -> Result<()> {
        self.woke({
            let e = self.inner();
            e.write("release", move |c| queue::release(c, lease))
        })
    }

    /// Requeues jobs whose lease expired; returns how many.
    pub fn reap(&self) -> Result<usize> {
        let e = self.inner();
        // Find expired leases on a reader (a scan), then take the write lock only for them.
        let ids = e.read("expired_leases", queue::expired_leases)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let reaped = e.write("reap", move |c| queue::reap_listed(c, &ids))?;
        e.metrics
            .outcomes
            .expired
            .fetch_add(reaped as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(reaped)
    }

    /// Counts per queue and state.
    pub fn stats(&self, queue_name: Option<&str>) -> Result<Stats> {
        let e = self.inner();
        e.read("stats", |c| queue::stats(c, queue_name))
    }

    /// One job by id.
    pub fn get_job(&self, job_id: i64) -> Result<Job> {
        let e = self.inner();
        e.read("get_job", |c| queue::get_job(c, job_id))
    }

    /// One page of the jobs `filter` matches, newest first, below `before` (see
    /// [`queue::list_jobs`]: keyset pagination).
    pub fn list_jobs(
        &self,
        filter: &queue::JobFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<queue::JobPage> {
        let e = self.inner();
        e.read("list_jobs", |c| queue::list_jobs(c, filter, before, limit))
    }

    /// All finished attempts of a job.
    pub fn get_results(&self, job_id: i64) -> Result<Vec<JobResult>> {
        let e = self.inner();
        e.read("get_results", |c| queue::get_results(c, job_id))
    }

    /// Queued jobs of `queue`, due or scheduled (cheap: served by the claim index).
    pub fn queued(&self, queue_name: &str) -> Result<i64> {
        let e = self.inner();
        e.read("queued", |c| queue::queued_count(c, queue_name))
    }

    /// Whether `queue` has work an exit-when-empty worker waits for (see
    /// [`queue::has_pending_work`]; a table scan: use sparingly).
    pub fn has_pending_work(&self, queue_name: &str) -> Result<bool> {
        let e = self.inner();
        e.read("has_pending_work", |c| {
            queue::has_pending_work(c, queue_name)
        })
    }

    /// Whether any job of `queue` is running, in any process (a table scan: use sparingly).
    pub fn any_running(&self, queue_name: &str) -> Result<bool> {
        let e = self.inner();
        e.read("any_running", |c| queue::any_running(c, queue_name))
    }

    /// Checks exactly-once completion of a queue in SQL (see [`queue::audit`]).
    pub fn audit(&self, queue_name: &str) -> Result<queue::Audit> {
        let e = self.inner();
        e.read("audit", |c| queue::audit(c, queue_name))
    }

    /// Inserts `n` already-succeeded jobs on `queue` (benchmark history).
    pub fn insert_finished(&self, queue_name: &str, n: u64) -> Result<usize> {
        let e = self.inner();
        e.run("insert_finished", |c| {
            queue::insert_finished(c, queue_name, n)
        })
    }

    /// The SQLite library version, or the PostgreSQL server version.
    pub fn backend_version(&self) -> Result<String> {
        let e = self.inner();
        e.read("version", |c| c.version())
    }

    /// The work signal: read it before looking for work, and pass it to
    /// [`Queue::wait_for_work`] when none was found.
    pub fn work_signal(&self) -> u64 {
        C::listen(&self.db.inner);
        self.db.inner.wakeup.seen()
    }

    /// Waits until work may have arrived since `seen` (an enqueue through any clone of this
    /// queue in this process, or on PostgreSQL in any process) or `timeout` passes; returns
    /// whether something arrived. Idle workers wait here instead of sleeping.
    pub fn wait_for_work(&self, seen: u64, timeout: Duration) -> bool {
        let e = self.inner();
        e.wakeup.wait(seen, timeout)
    }

    /// Wakes this process's idle workers now (shutdown: so they notice at once).
    pub(crate) fn wake_idle_workers(&self) {
        {
            let e = self.inner();
            e.wakeup.notify()
        };
    }

    /// Wakes this process's idle workers once `r` (an enqueue, retry, resume or release)
    /// succeeded.
    fn woke<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_ok() {
            {
                let e = self.inner();
                e.wakeup.notify()
            };
        }
        r
    }
}

/// Checks every job against the handle's payload limit before anything is written.
fn validate_all(jobs: &[NewJob], max_payload_bytes: usize) -> Result<()> {
    jobs.iter().try_for_each(|j| j.validate(max_payload_bytes))
}
