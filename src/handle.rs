//! [`Queue`]: the repository over a pool. Each call checks out a connection and runs one of
//! the `queue` functions as a whole transaction, re-run on busy by the retry loop, so callers
//! never see "database is locked": they get the result, or [`Error::Busy`] past the deadline.

mod manage;

pub use manage::PruneReport;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sqlite::SqliteConnection;
use serde::Serialize;

use crate::backend::sqlite::CheckpointOutcome;
use crate::checkpoint::{self, CheckpointTarget};
use crate::combine::{Combiner, WriteCtx};
use crate::error::Result;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::models::{Job, JobResult, JobState, Lease, NewJob};
use crate::pool::{build_pool, run_migrations, Config, SqlitePool};
use crate::queue::{self, Stats, ENQUEUE_CHUNK};
use crate::retry::{retry_busy, RetrySnapshot, RetryStats};

/// A cheap-to-clone handle to a queue database: a connection pool, the process's writer
/// connection, the configuration, and the retry counters shared by every clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    config: Config,
    stats: RetryStats,
    metrics: Metrics,
    /// Every write transaction of this handle runs on ONE writer connection, group-committed.
    ///
    /// Why one writer: SQLite lets one transaction write at a time anyway, and in WAL mode a
    /// connection that did not make the previous commit finds the WAL changed and throws its
    /// whole page cache away, so N connections taking turns each start every transaction
    /// cold. One connection keeps its page cache and prepared statements warm; threads queue
    /// in-process instead of polling the file lock through SQLite's busy handler (which sleeps
    /// 1, 2, 5 … 100 ms per wait and lets unlucky threads starve for seconds); and operations
    /// that queue up while one commits are committed together (see `combine.rs`). Other
    /// processes still meet at the file lock (busy_timeout and the retry loop). Reads use the
    /// rest of the pool and never wait for the writer (WAL).
    writer: Combiner,
}

impl CheckpointTarget for Inner {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn on_writer(
        &self,
        f: &mut dyn FnMut(&mut SqliteConnection) -> Result<CheckpointOutcome>,
    ) -> Result<CheckpointOutcome> {
        self.writer.direct(&self.ctx(), "wal_truncate", f)
    }
}

impl Inner {
    fn ctx(&self) -> WriteCtx<'_> {
        WriteCtx {
            pool: &self.pool,
            policy: &self.config.retry,
            stats: &self.stats,
            metrics: &self.metrics,
            slow: self.config.slow_transaction,
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("config", &self.inner.config)
            .field("retry_stats", &self.inner.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Opens the database at `url` (a path, `sqlite://path` or a `file:` URI), builds the pool
    /// and, if `config.run_migrations`, applies pending migrations.
    pub fn open(url: &str, config: Config) -> Result<Queue> {
        let pool = build_pool(url, &config)?;
        let queue = Queue::from_pool(pool, config);
        if queue.inner.config.run_migrations {
            queue.migrate()?;
        }
        Ok(queue)
    }

    /// Wraps a pool built by [`build_pool`] (or by the caller, with the same customizer).
    /// Each handle (and its clones) has one writer connection: open one `Queue` per database
    /// per process and clone it.
    pub fn from_pool(pool: SqlitePool, config: Config) -> Queue {
        let checkpoints = config.checkpoint_every.map(|every| checkpoint::Policy {
            every,
            truncate_above: config.wal_truncate_above,
            truncate_wait: config.wal_truncate_wait,
            busy_timeout: config.pragmas.busy_timeout,
        });
        let queue = Queue {
            inner: Arc::new(Inner {
                pool,
                config,
                stats: RetryStats::default(),
                metrics: Metrics::default(),
                writer: Combiner::new(),
            }),
        };
        if let Some(policy) = checkpoints {
            checkpoint::start(Arc::downgrade(&queue.inner), policy);
        }
        queue
    }

    /// Applies pending embedded migrations; returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<String>> {
        let mut conn = self.inner.pool.get()?;
        run_migrations(&mut conn, &self.inner.config.retry, &self.inner.stats)
    }

    /// The pool, for the caller's own queries.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Transactions, busy retries and busy give-ups so far, over every clone of this handle.
    pub fn retry_stats(&self) -> RetrySnapshot {
        self.inner.stats.snapshot()
    }

    /// Runs `op`, a whole write transaction (every `queue` function is one), on the writer
    /// connection, re-running it whole while the database is busy. `op` must not call this
    /// `Queue` itself (the writer is not re-entrant).
    pub fn run<T>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        self.inner.writer.direct(&self.ctx(), name, op)
    }

    fn ctx(&self) -> WriteCtx<'_> {
        self.inner.ctx()
    }

    /// Counters and latency histograms of this handle's work (see [`crate::metrics`]).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot(self.inner.stats.snapshot())
    }

    /// Runs a write operation as part of a group commit (see `combine.rs`).
    fn write<T: Send + 'static>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut SqliteConnection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.inner.writer.submit(&self.ctx(), name, op)
    }

    /// Runs a read on a pooled connection (not the writer).
    fn read<T>(
        &self,
        name: &'static str,
        mut op: impl FnMut(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.inner.pool.get()?;
        retry_busy(&self.inner.config.retry, &self.inner.stats, name, || {
            op(&mut conn)
        })
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
        self.validate_all(jobs)?;
        let mut ids = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let chunk = chunk.to_vec();
            ids.extend(self.write("enqueue_many", move |c| queue::insert_validated(c, &chunk))?);
        }
        Ok(ids)
    }

    /// Enqueues all `jobs` in ONE transaction: all or nothing (for files of jobs where a
    /// partial enqueue would be wrong). Holds the write lock for the whole insert.
    pub fn enqueue_batch(&self, jobs: &[NewJob]) -> Result<Vec<i64>> {
        self.validate_all(jobs)?;
        self.run("enqueue_batch", |c| {
            crate::backend::sqlite::write_transaction(c, |c| {
                let mut ids = Vec::with_capacity(jobs.len());
                for chunk in jobs.chunks(ENQUEUE_CHUNK) {
                    ids.extend(queue::insert_validated(c, chunk)?);
                }
                Ok(ids)
            })
        })
    }

    fn validate_all(&self, jobs: &[NewJob]) -> Result<()> {
        jobs.iter()
            .try_for_each(|j| j.validate(self.inner.config.max_payload_bytes))
    }

    /// Claims up to `limit` due jobs of `queue`, leased to `worker_id` for `lease`.
    pub fn claim(
        &self,
        queue_name: &str,
        limit: u32,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Vec<Job>> {
        let started = std::time::Instant::now();
        let (queue_name, worker_id) = (queue_name.to_owned(), worker_id.to_owned());
        let claimed = self.write("claim", move |c| {
            queue::claim(c, &queue_name, limit, &worker_id, lease)
        });
        self.inner.metrics.claim_latency.record(started.elapsed());
        claimed
    }

    /// Extends a lease; [`Error::LeaseLost`] if it is no longer ours.
    pub fn heartbeat(&self, lease: Lease, lease_for: Duration) -> Result<DateTime<Utc>> {
        self.write("heartbeat", move |c| queue::heartbeat(c, lease, lease_for))
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
        let output_json = output_json.to_owned();
        self.write("complete", move |c| {
            queue::complete_json(c, lease, &output_json, duration)
        })
    }

    /// Completes many jobs in one transaction; one result per item (see
    /// [`queue::complete_many`]).
    pub fn complete_many(&self, items: Vec<queue::Completion>) -> Result<Vec<Result<()>>> {
        self.write("complete_many", move |c| queue::complete_many(c, &items))
    }

    /// Extends many leases in one transaction; one result per lease.
    pub fn heartbeat_many(
        &self,
        leases: &[Lease],
        lease_for: Duration,
    ) -> Result<Vec<Result<DateTime<Utc>>>> {
        let leases = leases.to_vec();
        self.write("heartbeat_many", move |c| {
            queue::heartbeat_many(c, &leases, lease_for)
        })
    }

    /// Records a failed attempt; the job is retried with backoff or ends `dead`.
    pub fn fail(&self, lease: Lease, error: &str, duration: Duration) -> Result<JobState> {
        let backoff = self.inner.config.job_backoff;
        let error = error.to_owned();
        self.write("fail", move |c| {
            queue::fail(c, lease, &error, duration, &backoff)
        })
    }

    /// Gives a running job back to the queue (shutdown).
    pub fn release(&self, lease: Lease) -> Result<()> {
        self.write("release", move |c| queue::release(c, lease))
    }

    /// Requeues jobs whose lease expired; returns how many.
    pub fn reap(&self) -> Result<usize> {
        // Find expired leases on a reader (a scan), then take the write lock only for them.
        let ids = self.read("expired_leases", queue::expired_leases)?;
        if ids.is_empty() {
            return Ok(0);
        }
        self.write("reap", move |c| queue::reap_listed(c, &ids))
    }

    /// Counts per queue and state.
    pub fn stats(&self, queue_name: Option<&str>) -> Result<Stats> {
        self.read("stats", |c| queue::stats(c, queue_name))
    }

    /// One job by id.
    pub fn get_job(&self, job_id: i64) -> Result<Job> {
        self.read("get_job", |c| queue::get_job(c, job_id))
    }

    /// All finished attempts of a job.
    pub fn get_results(&self, job_id: i64) -> Result<Vec<JobResult>> {
        self.read("get_results", |c| queue::get_results(c, job_id))
    }

    /// Queued jobs of `queue`, due or scheduled (cheap: served by the claim index).
    pub fn queued(&self, queue_name: &str) -> Result<i64> {
        self.read("queued", |c| queue::queued_count(c, queue_name))
    }

    /// Whether any job of `queue` is running, in any process (a table scan: use sparingly).
    pub fn any_running(&self, queue_name: &str) -> Result<bool> {
        self.read("any_running", |c| queue::any_running(c, queue_name))
    }
}
