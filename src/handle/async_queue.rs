//! [`AsyncQueue`]: the queue's calls for async code (feature `tokio`), the twins of
//! [`Queue`]'s, awaited instead of blocked on. Writes join the same group commit as the sync
//! calls of every clone of the queue (their results arrive through a oneshot channel); reads
//! run on tokio's blocking pool. See [`crate::db`]'s async notes for how long each may wait.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::Instrument;

use super::{validate_all, Queue};
use crate::db::async_calls::blocking;
use crate::db::Db;
use crate::driver::QueueConnection;
use crate::error::{Error, Result};
use crate::manage::{self, CancelOutcome};
use crate::models::{Job, JobResult, JobState, Lease, NewJob};
use crate::pool::Config;
use crate::queue::{self, Enqueued, Stats, ENQUEUE_CHUNK};
use crate::telemetry;

/// The queue for async code: every call of [`Queue`] that touches the database, as a future
/// that never blocks a runtime thread. Cheap to clone; shares the handle (writer, pool,
/// metrics, wake-ups) with the [`Queue`] it came from, so sync and async callers of one
/// process group-commit together. Calls without a twin here run through
/// [`AsyncQueue::blocking`].
///
/// ```no_run
/// # async fn demo() -> jobdb::Result<()> {
/// use jobdb::{AsyncQueue, Config, NewJob};
/// let queue: AsyncQueue = AsyncQueue::open("jobs.sqlite3", Config::default()).await?;
/// let id = queue.enqueue(&NewJob::new("emails", &"a@b.c")?).await?;
/// let job = queue.wait_for(id, std::time::Duration::from_secs(60)).await?;
/// # let _ = job; Ok(()) }
/// ```
pub struct AsyncQueue<C: QueueConnection = diesel::SqliteConnection> {
    queue: Queue<C>,
}

impl<C: QueueConnection> Clone for AsyncQueue<C> {
    fn clone(&self) -> Self {
        AsyncQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<C: QueueConnection> std::fmt::Debug for AsyncQueue<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncQueue")
            .field("queue", &self.queue)
            .finish()
    }
}

impl<C: QueueConnection> From<Queue<C>> for AsyncQueue<C> {
    fn from(queue: Queue<C>) -> Self {
        AsyncQueue { queue }
    }
}

impl<C: QueueConnection> Queue<C> {
    /// This queue's async twin (the same handle).
    pub fn to_async(&self) -> AsyncQueue<C> {
        AsyncQueue::from(self.clone())
    }
}

impl<C: QueueConnection> AsyncQueue<C> {
    /// [`Queue::open`] on the blocking pool (opening connects and may migrate).
    pub async fn open(url: &str, config: Config) -> Result<AsyncQueue<C>> {
        let url = url.to_owned();
        Ok(AsyncQueue::from(
            blocking(move || Queue::open(&url, config)).await??,
        ))
    }

    /// The sync queue on the same handle (for calls made from a blocking context).
    pub fn sync(&self) -> &Queue<C> {
        &self.queue
    }

    /// The persistence handle under this queue (its async calls: [`Db::write_async`], …).
    pub fn db(&self) -> &Db<C> {
        self.queue.db()
    }

    /// Runs any sync call of the queue on the blocking pool: for the calls without a twin
    /// here (`prune`, `pause`, schedules, …).
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Queue<C>) -> T + Send + 'static,
    ) -> Result<T> {
        let queue = self.queue.clone();
        blocking(move || f(&queue)).await
    }

    fn inner(&self) -> &std::sync::Arc<crate::db::Inner<C>> {
        &self.queue.db().inner
    }

    /// Wakes this process's idle workers once `r` succeeded (see [`Queue`]'s enqueues).
    fn woke<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_ok() {
            self.inner().wakeup.notify();
        }
        r
    }

    /// [`Queue::enqueue`].
    pub async fn enqueue(&self, job: &NewJob) -> Result<i64> {
        self.enqueue_unique(job).await.map(|e| e.id)
    }

    /// [`Queue::enqueue_unique`].
    pub async fn enqueue_unique(&self, job: &NewJob) -> Result<Enqueued> {
        let e = self.inner();
        job.validate(e.config.max_payload_bytes)?;
        let job = job.clone();
        let span = telemetry::span(telemetry::Op::Create("enqueue"), job.queue(), None);
        let done = e
            .write_async("enqueue", move |c| {
                queue::insert_reporting(c, std::slice::from_ref(&job))
            })
            .instrument(span)
            .await;
        let first = done.and_then(|d| {
            d.into_iter().next().ok_or_else(|| Error::CorruptRow {
                table: "jobs",
                reason: "enqueue returned no id".into(),
            })
        });
        self.woke(first)
    }

    /// [`Queue::enqueue_many`]: [`ENQUEUE_CHUNK`] per transaction, all validated first.
    pub async fn enqueue_many(&self, jobs: &[NewJob]) -> Result<Vec<i64>> {
        let e = self.inner();
        validate_all(jobs, e.config.max_payload_bytes)?;
        let mut ids = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let chunk = chunk.to_vec();
            let done = e
                .write_async("enqueue_many", move |c| queue::insert_validated(c, &chunk))
                .await;
            ids.extend(self.woke(done)?);
        }
        Ok(ids)
    }

    /// [`Queue::enqueue_batch`]: all or nothing, in one transaction (on the blocking pool).
    pub async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<i64>> {
        self.blocking(move |q| q.enqueue_batch(&jobs)).await?
    }

    /// [`Queue::claim`].
    pub async fn claim(
        &self,
        queue_name: &str,
        limit: u32,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Vec<Job>> {
        let e = self.inner();
        let started = Instant::now();
        let (queue_name, worker_id) = (queue_name.to_owned(), worker_id.to_owned());
        let span = telemetry::span(telemetry::Op::Receive, &queue_name, None);
        let claimed = e
            .write_async("claim", move |c| {
                queue::claim(c, &queue_name, limit, &worker_id, lease)
            })
            .instrument(span)
            .await;
        e.metrics.claim_latency.record(started.elapsed());
        claimed
    }

    /// [`Queue::heartbeat`].
    pub async fn heartbeat(&self, lease: Lease, lease_for: Duration) -> Result<DateTime<Utc>> {
        let write = move |c: &mut C| queue::heartbeat(c, lease, lease_for);
        self.inner().write_async("heartbeat", write).await
    }

    /// [`Queue::heartbeat_many`].
    pub async fn heartbeat_many(
        &self,
        leases: Vec<Lease>,
        lease_for: Duration,
    ) -> Result<Vec<Result<DateTime<Utc>>>> {
        let write = move |c: &mut C| queue::heartbeat_many(c, &leases, lease_for);
        self.inner().write_async("heartbeat_many", write).await
    }

    /// [`Queue::set_progress_many`].
    pub async fn set_progress_many(&self, items: Vec<(Lease, String)>) -> Result<Vec<Result<()>>> {
        let write = move |c: &mut C| queue::set_progress_many(c, &items);
        self.inner().write_async("set_progress_many", write).await
    }

    /// [`Queue::complete`].
    pub async fn complete(
        &self,
        lease: Lease,
        output: &impl Serialize,
        duration: Duration,
    ) -> Result<()> {
        let json = crate::models::to_json("output", output)?;
        self.complete_json(lease, json, duration).await
    }

    /// [`Queue::complete_json`].
    pub async fn complete_json(
        &self,
        lease: Lease,
        output_json: String,
        duration: Duration,
    ) -> Result<()> {
        let write = move |c: &mut C| queue::complete_json(c, lease, &output_json, duration);
        let span = telemetry::span(telemetry::Op::Settle("complete"), "", Some(lease.job_id));
        let done = self
            .inner()
            .write_async("complete", write)
            .instrument(span)
            .await;
        self.inner().metrics.outcomes.completion(&done);
        done
    }

    /// [`Queue::complete_many`].
    pub async fn complete_many(&self, items: Vec<queue::Completion>) -> Result<Vec<Result<()>>> {
        let write = move |c: &mut C| queue::complete_many(c, &items);
        let done = self.inner().write_async("complete_many", write).await?;
        let outcomes = &self.inner().metrics.outcomes;
        done.iter().for_each(|r| outcomes.completion(r));
        Ok(done)
    }

    /// [`Queue::fail`].
    pub async fn fail(&self, lease: Lease, error: &str, duration: Duration) -> Result<JobState> {
        let backoff = self.inner().config.job_backoff;
        let error = error.to_owned();
        let write = move |c: &mut C| queue::fail(c, lease, &error, duration, &backoff);
        let span = telemetry::span(telemetry::Op::Settle("fail"), "", Some(lease.job_id));
        let failed = self
            .inner()
            .write_async("fail", write)
            .instrument(span)
            .await;
        self.inner().metrics.outcomes.failure(&failed);
        failed
    }

    /// [`Queue::release`].
    pub async fn release(&self, lease: Lease) -> Result<()> {
        let write = move |c: &mut C| queue::release(c, lease);
        let done = self.inner().write_async("release", write).await;
        self.woke(done)
    }

    /// [`Queue::reap`]: expired leases found on a reader, requeued in one write.
    pub async fn reap(&self) -> Result<usize> {
        let e = self.inner();
        let ids = e
            .read_async("expired_leases", queue::expired_leases)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let reaped = e
            .write_async("reap", move |c| queue::reap_listed(c, &ids))
            .await?;
        e.metrics
            .outcomes
            .expired
            .fetch_add(reaped as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(reaped)
    }

    /// [`Queue::cancel`].
    pub async fn cancel(&self, job_id: i64) -> Result<CancelOutcome> {
        let write = move |c: &mut C| manage::cancel(c, job_id);
        self.inner().write_async("cancel", write).await
    }

    /// [`Queue::retry`].
    pub async fn retry(&self, job_id: i64) -> Result<()> {
        let write = move |c: &mut C| manage::retry(c, job_id);
        let done = self.inner().write_async("retry", write).await;
        self.woke(done)
    }

    /// [`Queue::stats`].
    pub async fn stats(&self, queue_name: Option<&str>) -> Result<Stats> {
        let q = queue_name.map(str::to_owned);
        let read = move |c: &mut C| queue::stats(c, q.as_deref());
        self.inner().read_async("stats", read).await
    }

    /// [`Queue::get_job`].
    pub async fn get_job(&self, job_id: i64) -> Result<Job> {
        let read = move |c: &mut C| queue::get_job(c, job_id);
        self.inner().read_async("get_job", read).await
    }

    /// [`Queue::get_results`].
    pub async fn get_results(&self, job_id: i64) -> Result<Vec<JobResult>> {
        let read = move |c: &mut C| queue::get_results(c, job_id);
        self.inner().read_async("get_results", read).await
    }

    /// [`Queue::queued`].
    pub async fn queued(&self, queue_name: &str) -> Result<i64> {
        let q = queue_name.to_owned();
        let read = move |c: &mut C| queue::queued_count(c, &q);
        self.inner().read_async("queued", read).await
    }

    /// [`Queue::has_pending_work`].
    pub async fn has_pending_work(&self, queue_name: &str) -> Result<bool> {
        let q = queue_name.to_owned();
        let read = move |c: &mut C| queue::has_pending_work(c, &q);
        self.inner().read_async("has_pending_work", read).await
    }

    /// [`Queue::wait_for`]: polls with a backoff of 5 ms doubling to 200 ms, sleeping on the
    /// runtime's timer.
    pub async fn wait_for(&self, job_id: i64, timeout: Duration) -> Result<Job> {
        let mut wait = super::manage::WaitFor::new(job_id, timeout);
        loop {
            match wait.next(self.get_job(job_id).await?)? {
                Ok(job) => return Ok(job),
                Err(pause) => tokio::time::sleep(pause).await,
            }
        }
    }

    /// [`Queue::work_signal`]. The first call starts the wake-up listener, which connects:
    /// that runs on the blocking pool.
    pub async fn work_signal(&self) -> Result<u64> {
        if !self.inner().listener.is_completed() {
            self.blocking(|q| q.work_signal()).await
        } else {
            Ok(self.queue.work_signal())
        }
    }

    /// [`Queue::wait_for_work`], on the runtime's timer.
    pub async fn wait_for_work(&self, seen: u64, timeout: Duration) -> bool {
        self.inner().wait_for_work_async(seen, timeout).await
    }
}
