//! [`Queue`]: the repository over a pool. Each call checks out a connection and runs one of
//! the `queue` functions as a whole transaction, re-run on busy by the retry loop, so callers
//! never see "database is locked": they get the result, or [`Error::Busy`] past the deadline.

mod engine;
mod manage;

use engine::Engine;

pub use manage::PruneReport;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sqlite::SqliteConnection;
use serde::Serialize;

use crate::checkpoint;
use crate::driver::{JobDriver, ReadDriver};
#[cfg(feature = "postgres")]
use crate::error::Error;
use crate::error::Result;
use crate::metrics::MetricsSnapshot;
use crate::models::{Job, JobResult, JobState, Lease, NewJob};
use crate::pool::{build_pool, run_migrations, Config, SqlitePool};
use crate::queue::{self, Stats, ENQUEUE_CHUNK};
use crate::retry::RetrySnapshot;

/// A cheap-to-clone handle to a queue database: a connection pool, the process's writer
/// connection, the configuration, and the retry counters shared by every clone. The same API
/// on SQLite (a path or `sqlite://…`) and, with the `postgres` feature, PostgreSQL
/// (`postgres://…`).
#[derive(Clone)]
pub struct Queue {
    store: Store,
}

/// The backend behind a [`Queue`]: one [`Engine`] per connection type.
#[derive(Clone)]
enum Store {
    Sqlite(Arc<Engine<SqliteConnection>>),
    #[cfg(feature = "postgres")]
    Postgres(Arc<Engine<diesel::pg::PgConnection>>),
}

/// Runs `$body` with `$e` bound to the queue's engine, whichever backend it is. The body is
/// compiled once per backend, so its closures get that backend's connection type.
macro_rules! with_engine {
    ($self:expr, $e:ident => $body:expr) => {
        match &$self.store {
            Store::Sqlite($e) => $body,
            #[cfg(feature = "postgres")]
            Store::Postgres($e) => $body,
        }
    };
}
pub(crate) use with_engine;

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        with_engine!(self, e => f
            .debug_struct("Queue")
            .field("backend", &self.backend())
            .field("config", &e.config)
            .field("retry_stats", &e.stats.snapshot())
            .finish_non_exhaustive())
    }
}

impl Queue {
    /// Opens the database at `url`: a SQLite path, `sqlite://path` or `file:` URI, or (feature
    /// `postgres`) a `postgres://` URL. Builds the pool and, if `config.run_migrations`,
    /// applies pending migrations.
    pub fn open(url: &str, config: Config) -> Result<Queue> {
        #[cfg(feature = "postgres")]
        if crate::pool::is_postgres_url(url) {
            let pool = crate::pool::build_postgres_pool(url, &config)?;
            let mut engine = Engine::new(pool, config);
            engine.listen_url = Some(url.to_owned());
            return Queue::from_postgres_engine(engine);
        }
        let pool = build_pool(url, &config)?;
        let queue = Queue::from_pool(pool, config);
        if queue.config().run_migrations {
            queue.migrate()?;
        }
        Ok(queue)
    }

    /// Wraps a SQLite pool built by [`build_pool`] (or by the caller, with the same
    /// customizer). Each handle (and its clones) has one writer connection: open one `Queue`
    /// per database per process and clone it.
    pub fn from_pool(pool: SqlitePool, config: Config) -> Queue {
        let checkpoints = config.checkpoint_every.map(|every| checkpoint::Policy {
            every,
            truncate_above: config.wal_truncate_above,
            truncate_wait: config.wal_truncate_wait,
            busy_timeout: config.pragmas.busy_timeout,
        });
        let engine = Arc::new(Engine::new(pool, config));
        if let Some(policy) = checkpoints {
            checkpoint::start(Arc::downgrade(&engine), policy);
        }
        Queue {
            store: Store::Sqlite(engine),
        }
    }

    /// Wraps a PostgreSQL pool built by [`crate::pool::build_postgres_pool`] and, if
    /// `config.run_migrations`, applies pending migrations.
    /// Workers of a queue built this way poll (the pool does not reveal its URL to LISTEN
    /// on); [`Queue::open`] also wakes them by LISTEN/NOTIFY.
    #[cfg(feature = "postgres")]
    pub fn from_postgres_pool(pool: crate::pool::PgPool, config: Config) -> Result<Queue> {
        Queue::from_postgres_engine(Engine::new(pool, config))
    }

    #[cfg(feature = "postgres")]
    fn from_postgres_engine(engine: Engine<diesel::pg::PgConnection>) -> Result<Queue> {
        let queue = Queue {
            store: Store::Postgres(Arc::new(engine)),
        };
        if queue.config().run_migrations {
            queue.migrate()?;
        }
        Ok(queue)
    }

    /// Which backend this queue is on: `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        fn name<C: crate::QueueConnection>(_: &Engine<C>) -> &'static str {
            C::NAME
        }
        with_engine!(self, e => name(e))
    }

    /// Applies pending embedded migrations; returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<String>> {
        match &self.store {
            Store::Sqlite(e) => {
                let mut conn = e.pool.get()?;
                run_migrations(&mut conn, &e.config.retry, &e.stats)
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(e) => {
                let mut conn = e.pool.get()?;
                crate::pool::run_postgres_migrations(&mut conn)
            }
        }
    }

    /// The SQLite pool, for the caller's own queries (`None` on PostgreSQL).
    pub fn pool(&self) -> Option<&SqlitePool> {
        match &self.store {
            Store::Sqlite(e) => Some(&e.pool),
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, for the caller's own queries (`None` on SQLite).
    #[cfg(feature = "postgres")]
    pub fn postgres_pool(&self) -> Option<&crate::pool::PgPool> {
        match &self.store {
            Store::Sqlite(_) => None,
            Store::Postgres(e) => Some(&e.pool),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        with_engine!(self, e => &e.config)
    }

    /// Transactions, busy retries and busy give-ups so far, over every clone of this handle.
    pub fn retry_stats(&self) -> RetrySnapshot {
        with_engine!(self, e => e.stats.snapshot())
    }

    /// Runs `op`, a whole write transaction (every `queue` function is one), on the writer
    /// connection of a SQLite queue, re-running it whole while the database is busy. `op`
    /// must not call this `Queue` itself (the writer is not re-entrant). On PostgreSQL:
    /// [`Queue::run_postgres`].
    pub fn run<T>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        match &self.store {
            Store::Sqlite(e) => e.run(name, op),
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => Err(Error::Unsupported {
                what: "Queue::run on a PostgreSQL queue (use Queue::run_postgres)",
            }),
        }
    }

    /// [`Queue::run`] for a PostgreSQL queue.
    #[cfg(feature = "postgres")]
    pub fn run_postgres<T>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut diesel::pg::PgConnection) -> Result<T>,
    ) -> Result<T> {
        match &self.store {
            Store::Postgres(e) => e.run(name, op),
            Store::Sqlite(_) => Err(Error::Unsupported {
                what: "Queue::run_postgres on a SQLite queue (use Queue::run)",
            }),
        }
    }

    /// Counters and latency histograms of this handle's work (see [`crate::metrics`]).
    pub fn metrics(&self) -> MetricsSnapshot {
        with_engine!(self, e => e.metrics.snapshot(e.stats.snapshot()))
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
        self.woke(with_engine!(self, e => {
            e.validate_all(jobs)?;
            let mut ids = Vec::with_capacity(jobs.len());
            for chunk in jobs.chunks(ENQUEUE_CHUNK) {
                let chunk = chunk.to_vec();
                ids.extend(e.write("enqueue_many", move |c| queue::insert_validated(c, &chunk))?);
            }
            Ok(ids)
        }))
    }

    /// Enqueues all `jobs` in ONE transaction: all or nothing (for files of jobs where a
    /// partial enqueue would be wrong). Holds the write lock for the whole insert.
    pub fn enqueue_batch(&self, jobs: &[NewJob]) -> Result<Vec<i64>> {
        self.woke(with_engine!(self, e => {
            e.validate_all(jobs)?;
            e.run("enqueue_batch", |c| {
                c.write_transaction(|c| {
                    let mut ids = Vec::with_capacity(jobs.len());
                    for chunk in jobs.chunks(ENQUEUE_CHUNK) {
                        ids.extend(queue::insert_validated(c, chunk)?);
                    }
                    Ok(ids)
                })
            })
        }))
    }

    /// Claims up to `limit` due jobs of `queue`, leased to `worker_id` for `lease`.
    pub fn claim(
        &self,
        queue_name: &str,
        limit: u32,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Vec<Job>> {
        with_engine!(self, e => {
            let started = std::time::Instant::now();
            let (queue_name, worker_id) = (queue_name.to_owned(), worker_id.to_owned());
            let claimed = e.write("claim", move |c| {
                queue::claim(c, &queue_name, limit, &worker_id, lease)
            });
            e.metrics.claim_latency.record(started.elapsed());
            claimed
        })
    }

    /// Extends a lease; [`Error::LeaseLost`] if it is no longer ours.
    pub fn heartbeat(&self, lease: Lease, lease_for: Duration) -> Result<DateTime<Utc>> {
        with_engine!(self, e => {
            e.write("heartbeat", move |c| queue::heartbeat(c, lease, lease_for))
        })
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
        with_engine!(self, e => {
            let output_json = output_json.to_owned();
            e.write("complete", move |c| {
                queue::complete_json(c, lease, &output_json, duration)
            })
        })
    }

    /// Completes many jobs in one transaction; one result per item (see
    /// [`queue::complete_many`]).
    pub fn complete_many(&self, items: Vec<queue::Completion>) -> Result<Vec<Result<()>>> {
        with_engine!(self, e => {
            e.write("complete_many", move |c| queue::complete_many(c, &items))
        })
    }

    /// Extends many leases in one transaction; one result per lease.
    pub fn heartbeat_many(
        &self,
        leases: &[Lease],
        lease_for: Duration,
    ) -> Result<Vec<Result<DateTime<Utc>>>> {
        with_engine!(self, e => {
            let leases = leases.to_vec();
            e.write("heartbeat_many", move |c| {
                queue::heartbeat_many(c, &leases, lease_for)
            })
        })
    }

    /// Records a failed attempt; the job is retried with backoff or ends `dead`.
    pub fn fail(&self, lease: Lease, error: &str, duration: Duration) -> Result<JobState> {
        with_engine!(self, e => {
            let backoff = e.config.job_backoff;
            let error = error.to_owned();
            e.write("fail", move |c| {
                queue::fail(c, lease, &error, duration, &backoff)
            })
        })
    }

    /// Gives a running job back to the queue (shutdown).
    pub fn release(&self, lease: Lease) -> Result<()> {
        self.woke(with_engine!(self, e => {
            e.write("release", move |c| queue::release(c, lease))
        }))
    }

    /// Requeues jobs whose lease expired; returns how many.
    pub fn reap(&self) -> Result<usize> {
        with_engine!(self, e => {
            // Find expired leases on a reader (a scan), then take the write lock only for them.
            let ids = e.read("expired_leases", queue::expired_leases)?;
            if ids.is_empty() {
                return Ok(0);
            }
            e.write("reap", move |c| queue::reap_listed(c, &ids))
        })
    }

    /// Counts per queue and state.
    pub fn stats(&self, queue_name: Option<&str>) -> Result<Stats> {
        with_engine!(self, e => {
            e.read("stats", |c| queue::stats(c, queue_name))
        })
    }

    /// One job by id.
    pub fn get_job(&self, job_id: i64) -> Result<Job> {
        with_engine!(self, e => {
            e.read("get_job", |c| queue::get_job(c, job_id))
        })
    }

    /// All finished attempts of a job.
    pub fn get_results(&self, job_id: i64) -> Result<Vec<JobResult>> {
        with_engine!(self, e => {
            e.read("get_results", |c| queue::get_results(c, job_id))
        })
    }

    /// Queued jobs of `queue`, due or scheduled (cheap: served by the claim index).
    pub fn queued(&self, queue_name: &str) -> Result<i64> {
        with_engine!(self, e => {
            e.read("queued", |c| queue::queued_count(c, queue_name))
        })
    }

    /// Whether any job of `queue` is running, in any process (a table scan: use sparingly).
    pub fn any_running(&self, queue_name: &str) -> Result<bool> {
        with_engine!(self, e => {
            e.read("any_running", |c| queue::any_running(c, queue_name))
        })
    }

    /// Checks exactly-once completion of a queue in SQL (see [`queue::audit`]).
    pub fn audit(&self, queue_name: &str) -> Result<queue::Audit> {
        with_engine!(self, e => e.read("audit", |c| queue::audit(c, queue_name)))
    }

    /// Inserts `n` already-succeeded jobs on `queue` (benchmark history).
    pub fn insert_finished(&self, queue_name: &str, n: u64) -> Result<usize> {
        with_engine!(self, e => e.run("insert_finished", |c| queue::insert_finished(c, queue_name, n)))
    }

    /// The SQLite library version, or the PostgreSQL server version.
    pub fn backend_version(&self) -> Result<String> {
        with_engine!(self, e => e.read("version", |c| c.version()))
    }

    /// The work signal: read it before looking for work, and pass it to
    /// [`Queue::wait_for_work`] when none was found.
    pub fn work_signal(&self) -> u64 {
        with_engine!(self, e => {
            #[cfg(feature = "postgres")]
            if let Some(url) = &e.listen_url {
                e.listener.call_once(|| {
                    crate::wakeup::start_postgres_listener(url.clone(), Arc::downgrade(&e.wakeup))
                });
            }
            e.wakeup.seen()
        })
    }

    /// Waits until work may have arrived since `seen` (an enqueue through any clone of this
    /// queue in this process, or on PostgreSQL in any process) or `timeout` passes; returns
    /// whether something arrived. Idle workers wait here instead of sleeping.
    pub fn wait_for_work(&self, seen: u64, timeout: Duration) -> bool {
        with_engine!(self, e => e.wakeup.wait(seen, timeout))
    }

    /// Wakes this process's idle workers now (shutdown: so they notice at once).
    pub(crate) fn wake_idle_workers(&self) {
        with_engine!(self, e => e.wakeup.notify());
    }

    /// Wakes this process's idle workers once `r` (an enqueue, retry, resume or release)
    /// succeeded.
    fn woke<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_ok() {
            with_engine!(self, e => e.wakeup.notify());
        }
        r
    }
}
