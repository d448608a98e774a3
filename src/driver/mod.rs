//! The drivers: one per backend, each a set of statements and nothing else. The queue logic in
//! `queue.rs` and `manage.rs` decides what to call, in which transaction and with which
//! timestamps; a driver runs its backend's SQL for it, with typed parameters (leases, ids,
//! states) and typed results, and encodes whatever its SQL needs (the JSON arrays that carry
//! sets of leases or ids into one statement) itself.
//!
//! As River's driver executors are, each is split by concern into crate-private traits that
//! are implemented where their SQL lives (`sqlite/*.rs`, `postgres/*.rs`): the job lifecycle
//! ([`JobDriver`]), set-based statements ([`BatchDriver`]), operator features
//! ([`ManageDriver`]) and reads ([`ReadDriver`]). [`QueueConnection`], the public bound of the
//! connection-level API, is sealed by them: code outside the crate can neither implement it
//! nor call a driver method (so nothing can bypass the fencing in `queue.rs`).

pub(crate) mod copy_rows;
pub(crate) mod rows;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};

use crate::error::Result;
use crate::models::{
    JobRow, JobState, Lease, NewJob, NewResultRow, PausedRow, ResultRow, ScheduleRow,
};
use crate::queue::Audit;

/// A database connection the connection-level API ([`crate::queue`], [`crate::manage`]) runs
/// on: `SqliteConnection` and (feature `postgres`) `PgConnection`. Sealed: its methods are the
/// crate's drivers, not public API.
#[allow(private_bounds)] // the point: the driver traits are crate-private
pub trait QueueConnection:
    JobDriver + BatchDriver + ManageDriver + ReadDriver + CopyDriver + crate::db::DbBackend
{
}

impl<C> QueueConnection for C where
    C: JobDriver + BatchDriver + ManageDriver + ReadDriver + CopyDriver + crate::db::DbBackend
{
}

/// Anything the connection-level API ([`crate::queue`], [`crate::manage`]) runs on: a
/// connection (`&mut SqliteConnection`, `&mut PgConnection`, as a Diesel transaction hands it
/// to you) or one checked out of an r2d2 pool (`&mut pooled`, no `&mut *` needed).
pub trait AsQueueConnection {
    /// The connection underneath.
    type Conn: QueueConnection;
    /// Borrows it.
    fn queue_connection(&mut self) -> &mut Self::Conn;
}

impl<C: QueueConnection> AsQueueConnection for C {
    type Conn = C;
    fn queue_connection(&mut self) -> &mut C {
        self
    }
}

impl<C: QueueConnection> AsQueueConnection
    for r2d2::PooledConnection<diesel::r2d2::ConnectionManager<C>>
{
    type Conn = C;
    fn queue_connection(&mut self) -> &mut C {
        self
    }
}

/// What a claim statement needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimParams<'a> {
    pub queue: &'a str,
    pub limit: u32,
    pub worker_id: &'a str,
    pub now: NaiveDateTime,
    pub lease_expires_at: NaiveDateTime,
}

/// What recording a failed attempt needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailParams<'a> {
    pub lease: Lease,
    pub error: &'a str,
    pub now: NaiveDateTime,
    /// When the job runs again if attempts remain.
    pub retry_at: NaiveDateTime,
}

/// One succeeded results row of a batched completion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SucceededRow<'a> {
    pub lease: Lease,
    /// The output, JSON text.
    pub output_json: &'a str,
    pub duration_ms: i64,
}

/// One queue's row of per-queue activity (`stats`).
#[derive(Debug, QueryableByName)]
pub(crate) struct ActivityRow {
    /// The queue.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// Seconds the oldest due queued job has waited (`None`: nothing due).
    #[diesel(sql_type = Nullable<Double>)]
    pub oldest_due_s: Option<f64>,
    /// Jobs succeeded since `since`.
    #[diesel(sql_type = BigInt)]
    pub succeeded: i64,
    /// Jobs that went dead since `since`.
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
}

/// The job lifecycle: transactions, enqueue, claim, heartbeat, completion, failure, release,
/// reaping. Each method is one round trip of SQL (or two inside the caller's transaction,
/// where a backend needs two); fencing and state transitions are decided by the callers.
pub(crate) trait JobDriver: Connection + Send + 'static {
    /// Whether the handle group-commits this backend's writes on one writer connection
    /// (SQLite: one writer at a time anyway) or runs them in parallel on pooled connections
    /// (PostgreSQL).
    const GROUP_COMMIT: bool;
    /// `"sqlite"`, `"postgres"` or `"mysql"`.
    const NAME: &'static str;
    /// Runs `f` as one write transaction (a savepoint inside an open one).
    fn write_transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>;
    /// Whether a transaction is open (or left in error).
    fn in_transaction(&mut self) -> bool;
    /// Applies the session settings the pool's customizer applies to each new connection
    /// (MySQL's isolation level, PostgreSQL's message language), to one the handle opened
    /// itself to replace a connection the server dropped. Nothing on SQLite, whose writer
    /// and pool settings are applied where those connections are made.
    fn prepare_session(&mut self) -> Result<()> {
        Ok(())
    }
    /// Whether the next commits on this connection wait for the disk (SQLite's `synchronous`
    /// FULL or NORMAL; see [`crate::Synchronous::Durable`]). Called outside a transaction.
    /// Servers decide durability themselves: a no-op there.
    fn set_commit_sync(&mut self, _full: bool) -> Result<()> {
        Ok(())
    }
    /// Gives the connection back the commit durability the pool set up on it, undoing
    /// [`Self::set_commit_sync`], before a handle's writer hands it back to the pool (where an
    /// app may write on it). A no-op on servers.
    fn restore_commit_sync(&mut self) -> Result<()> {
        Ok(())
    }
    /// Runs `f`, whose writes are ONE statement (reads may follow it), atomically: on SQLite
    /// as a write transaction (`BEGIN IMMEDIATE`, so busy handling stays whole-transaction);
    /// on PostgreSQL, outside a transaction, as that statement alone (it commits by itself,
    /// saving the BEGIN and COMMIT round trips), inside one as a savepoint.
    fn atomic_write<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>;
    /// Inserts validated jobs without unique keys; ids in the order given.
    fn insert_new(&mut self, jobs: &[NewJob], now: NaiveDateTime) -> Result<Vec<i64>>;
    /// `EXPLAIN` of the claim statement, one line per plan step.
    fn explain_claim(&mut self) -> Result<String>;
    /// Takes up to `limit` due jobs in (priority, run_at, id) order, marks them running with a
    /// new attempt (the fencing token) and lease; in that order.
    fn claim(&mut self, p: &ClaimParams<'_>) -> Result<Vec<JobRow>>;
    /// Extends a lease still held: `None` if it is not, else whether a cancel was requested.
    fn heartbeat(
        &mut self,
        lease: Lease,
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Option<bool>>;
    /// Marks a job succeeded if the lease holds and no cancel was requested, and records its
    /// `succeeded` results row: rows changed, 0 or 1.
    fn succeed_with_result(&mut self, row: &NewResultRow<'_>) -> Result<usize>;
    /// `attempts - attempt_base` while the lease holds (the attempts that count against
    /// `max_attempts`, this one included); `None` if it does not hold.
    fn attempts_used(&mut self, lease: Lease) -> Result<Option<i32>>;
    /// Ends a failed attempt if the lease holds: `cancelled` if a cancel was requested, else
    /// `queued` at `retry_at` while attempts remain, else `dead`. The new state, or `None`.
    fn mark_failed(&mut self, p: &FailParams<'_>) -> Result<Option<JobState>>;
    /// Puts a running job back to `queued` (shutdown) if the lease holds, giving its attempt
    /// back; `cancelled` instead when a cancel was requested. Rows changed.
    fn release(&mut self, lease: Lease, now: NaiveDateTime) -> Result<usize>;
    /// Inserts one results row.
    fn insert_result(&mut self, row: &NewResultRow<'_>) -> Result<()>;
    /// Ids of running jobs whose lease expired.
    fn expired_leases(&mut self, now: NaiveDateTime) -> Result<Vec<i64>>;
    /// Tells other processes' idle workers that jobs were enqueued, when this transaction
    /// commits (PostgreSQL `NOTIFY`). Nothing on SQLite, which has no such channel.
    fn notify_enqueued(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Set-based statements: one statement for many leases or jobs, each row fenced on its own.
pub(crate) trait BatchDriver: JobDriver {
    /// Extends those of `leases` still held; `(lease, cancel requested)` for each.
    fn heartbeat_set(
        &mut self,
        leases: &[Lease],
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Vec<(Lease, bool)>>;
    /// Marks succeeded those of `leases` still held (and not cancelled); the leases marked.
    fn succeed_set(&mut self, leases: &[Lease], now: NaiveDateTime) -> Result<Vec<Lease>>;
    /// Inserts the succeeded results rows of a batch; rows inserted.
    fn insert_succeeded_results(
        &mut self,
        rows: &[SucceededRow<'_>],
        now: NaiveDateTime,
    ) -> Result<usize>;
    /// Stores each lease's progress (JSON text) on its job while the lease holds; the leases
    /// it was stored for.
    fn progress_set(&mut self, items: &[(Lease, &str)], now: NaiveDateTime) -> Result<Vec<Lease>>;
    /// Reaps those of `ids` whose lease is still expired (re-checked, so a stale list is
    /// harmless): a failed results row each, the job requeued, dead or cancelled. How many.
    fn reap_ids(&mut self, ids: &[i64], error: &str, now: NaiveDateTime) -> Result<usize>;
}

/// Operator features: unique enqueue, cancel, retry, prune, pause, schedules, activity.
pub(crate) trait ManageDriver: JobDriver {
    /// Inserts one validated job that has a unique key: `(id, inserted)`, the live job's id
    /// when one holds the key.
    fn insert_new_unique(&mut self, job: &NewJob, now: NaiveDateTime) -> Result<(i64, bool)>;
    /// Cancels a queued job. Rows changed.
    fn cancel_queued(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize>;
    /// Flags a running job for cancellation (keeps the first request's time). Rows changed.
    fn request_cancel(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize>;
    /// Ends a running attempt whose cancel was requested as `cancelled`, if the lease holds.
    fn finish_cancelled(&mut self, lease: Lease, error: &str, now: NaiveDateTime) -> Result<usize>;
    /// Puts a `dead` or `cancelled` job back to `queued` with fresh attempts. Rows changed.
    fn requeue_finished(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize>;
    /// Up to `limit` ids above `after_id` of jobs finished in one of `states` before `before`.
    fn finished_before(
        &mut self,
        states: &[JobState],
        before: NaiveDateTime,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<i64>>;
    /// Deletes those of `ids` still finished in one of `states` before `before`, with their
    /// results. Jobs deleted.
    fn delete_finished(
        &mut self,
        ids: &[i64],
        states: &[JobState],
        before: NaiveDateTime,
    ) -> Result<usize>;
    /// Pauses a queue; whether it was running before.
    fn pause_queue(&mut self, queue: &str, now: NaiveDateTime) -> Result<bool>;
    /// Resumes a queue; whether it was paused.
    fn resume_queue(&mut self, queue: &str) -> Result<bool>;
    /// Names of the paused queues.
    fn paused_queues(&mut self) -> Result<Vec<String>>;
    /// Compare-and-set of a schedule's last tick; whether this call advanced it.
    fn advance_schedule(
        &mut self,
        name: &str,
        tick: NaiveDateTime,
        now: NaiveDateTime,
    ) -> Result<bool>;
    /// Everything the overview shows, in one scan: a row per queue, state and (for jobs that
    /// succeeded since `hour_ago`) minute of the hour.
    fn overview_rows(
        &mut self,
        hour_ago: NaiveDateTime,
        now: NaiveDateTime,
        minute_ago: NaiveDateTime,
    ) -> Result<Vec<OverviewRow>>;
    /// Per-queue activity rows (one scan).
    fn queue_activity(
        &mut self,
        queue: Option<&str>,
        now: NaiveDateTime,
        since: NaiveDateTime,
    ) -> Result<Vec<ActivityRow>>;
}

/// A row of `ManageDriver::overview_rows`: the jobs of one queue in one state (and, for
/// those that succeeded in the last hour, one minute of it).
#[derive(Debug, QueryableByName)]
pub(crate) struct OverviewRow {
    #[diesel(sql_type = Text)]
    pub queue: String,
    #[diesel(sql_type = Text)]
    pub state: String,
    /// Whole minutes after the start of the hour (`None`: not a job that succeeded in it).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub minute: Option<i64>,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
    /// Seconds the oldest due queued job of the group has waited (`None`: none due).
    #[diesel(sql_type = Nullable<Double>)]
    pub oldest_due_s: Option<f64>,
    /// Jobs of the group updated in the last minute.
    #[diesel(sql_type = BigInt)]
    pub recent: i64,
}

/// Whole tables, row by row with their ids, for `jobdb copy` (see `crate::copy`): reads by
/// keyset (id order, never OFFSET) inside one snapshot of the source, inserts inside one
/// transaction of the target.
pub(crate) trait CopyDriver: JobDriver {
    /// Runs `f` in one read-only snapshot (every read sees the same database).
    fn read_snapshot<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>;
    /// Up to `limit` jobs with an id above `after`, by id.
    fn jobs_after(&mut self, after: i64, limit: i64) -> Result<Vec<JobRow>>;
    /// The jobs with these ids, by id.
    fn jobs_with_ids(&mut self, ids: &[i64]) -> Result<Vec<JobRow>>;
    /// Up to `limit` results rows with an id above `after`, by id.
    fn results_after(&mut self, after: i64, limit: i64) -> Result<Vec<ResultRow>>;
    /// The results rows with these ids, by id.
    fn results_with_ids(&mut self, ids: &[i64]) -> Result<Vec<ResultRow>>;
    /// The results rows of these jobs, by job and attempt (for `jobdb archive`).
    #[cfg_attr(not(feature = "archive"), allow(dead_code))]
    fn results_of_jobs(&mut self, job_ids: &[i64]) -> Result<Vec<ResultRow>>;
    /// Every schedule, by name.
    fn schedule_rows(&mut self) -> Result<Vec<ScheduleRow>>;
    /// Every paused queue, by name.
    fn paused_rows(&mut self) -> Result<Vec<PausedRow>>;
    /// Inserts jobs with their ids; a row whose id exists is left as it is (the verification
    /// then compares it).
    fn insert_job_rows(&mut self, rows: &[JobRow]) -> Result<()>;
    /// Inserts results rows with their ids, as [`CopyDriver::insert_job_rows`].
    fn insert_result_rows(&mut self, rows: &[ResultRow]) -> Result<()>;
    /// Inserts schedules; one that exists keeps the later of the two last ticks (so no tick
    /// is enqueued twice).
    fn upsert_schedule_rows(&mut self, rows: &[ScheduleRow]) -> Result<()>;
    /// Inserts paused queues (one paused already stays so).
    fn upsert_paused_rows(&mut self, rows: &[PausedRow]) -> Result<()>;
    /// Rows of jobs, results, schedules and paused_queues.
    fn row_counts(&mut self) -> Result<[i64; 4]>;
    /// Jobs running now, in any queue.
    fn running_count(&mut self) -> Result<i64>;
    /// Moves the id sequences past the ids now in the tables (never backwards), so new rows
    /// get fresh ids. SQLite's AUTOINCREMENT and rowids follow inserted ids by themselves.
    fn advance_id_sequences(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Reads, the exactly-once audit and the benchmark's history insert.
pub(crate) trait ReadDriver: JobDriver {
    /// One job row, `None` if no such id.
    fn find_job(&mut self, job_id: i64) -> Result<Option<JobRow>>;
    /// Whether a job with this id exists.
    fn job_exists(&mut self, job_id: i64) -> Result<bool>;
    /// All results rows of a job, by attempt.
    fn results_of(&mut self, job_id: i64) -> Result<Vec<ResultRow>>;
    /// Jobs matching `filter` with an id in `from..before`, newest first, at most `limit`.
    fn list_jobs(
        &mut self,
        filter: &crate::queue::JobFilter,
        from: i64,
        before: i64,
        limit: i64,
    ) -> Result<Vec<JobRow>>;
    /// The highest job id (`None`: no jobs), from the primary key's last entry.
    fn max_job_id(&mut self) -> Result<Option<i64>>;
    /// `(queue, state, count)` for every queue (or one).
    fn count_by_queue_state(&mut self, queue: Option<&str>)
        -> Result<Vec<(String, JobState, i64)>>;
    /// Queued jobs of `queue`, due or not.
    fn queued_count(&mut self, queue: &str) -> Result<i64>;
    /// Queued jobs of `queue` that a worker should wait for: due at `now`, or waiting out a
    /// retry backoff (a failed attempt counts: `attempts > attempt_base`). Jobs delayed by
    /// their enqueuer are not counted.
    fn pending_count(&mut self, queue: &str, now: NaiveDateTime) -> Result<i64>;
    /// Whether any job of `queue` is running.
    fn any_running(&mut self, queue: &str) -> Result<bool>;
    /// The SQLite library or PostgreSQL server version.
    fn version(&mut self) -> Result<String>;
    /// Exactly-once audit of one queue.
    fn audit(&mut self, queue: &str) -> Result<Audit>;
    /// Inserts `n` already-succeeded jobs on `queue` (benchmark history).
    fn insert_finished(&mut self, queue: &str, n: i64, now: NaiveDateTime) -> Result<usize>;
}

/// The state text of a row, parsed; an unknown one is [`crate::Error::CorruptRow`].
pub(crate) fn parse_state(job_id: Option<i64>, state: &str) -> Result<JobState> {
    JobState::parse(state).ok_or_else(|| crate::Error::CorruptRow {
        table: "jobs",
        reason: match job_id {
            Some(id) => format!("job {id} has unknown state {state:?}"),
            None => format!("unknown state {state:?}"),
        },
    })
}

/// A set of ids or state names as one JSON array bind (`json_each` / `jsonb_array_elements`).
pub(crate) fn json_array<T: serde::Serialize>(what: &'static str, items: &[T]) -> Result<String> {
    serde_json::to_string(items).map_err(|source| crate::Error::Json { what, source })
}

/// State names of `states`, for [`json_array`].
pub(crate) fn state_names(states: &[JobState]) -> Vec<&'static str> {
    states.iter().map(|s| s.as_str()).collect()
}

/// A set of leases as the JSON array `[[id, attempt], …]` the set-based statements read (with
/// `json_each` on SQLite, `jsonb_array_elements` on PostgreSQL): one bind for any number.
pub(crate) fn leases_json(leases: &[Lease]) -> Result<String> {
    let pairs: Vec<(i64, i32)> = leases.iter().map(|l| (l.job_id, l.attempt)).collect();
    serde_json::to_string(&pairs).map_err(|source| crate::Error::Json {
        what: "leases",
        source,
    })
}

/// Leases with a JSON value each, as the array `[[id, attempt, value], …]` the progress
/// statement reads. Each value is JSON text the caller produced with serde_json (so it is
/// embedded as it is, not quoted).
pub(crate) fn leases_with_json(items: &[(Lease, &str)]) -> Result<String> {
    let triples: Vec<(i64, i32, &serde_json::value::RawValue)> = items
        .iter()
        .map(|(l, json)| {
            let raw: &serde_json::value::RawValue =
                serde_json::from_str(json).map_err(|source| crate::Error::Json {
                    what: "progress",
                    source,
                })?;
            Ok((l.job_id, l.attempt, raw))
        })
        .collect::<Result<_>>()?;
    serde_json::to_string(&triples).map_err(|source| crate::Error::Json {
        what: "progress",
        source,
    })
}

/// A row of a set-based statement that returns leases (`RETURNING id, attempts`) and whether
/// a cancel was requested.
#[derive(QueryableByName)]
pub(crate) struct LeaseRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub cancel: i32,
}

impl LeaseRow {
    pub(crate) fn lease(&self) -> Lease {
        Lease {
            job_id: self.id,
            attempt: self.attempts,
        }
    }
}

/// Whether a transaction is open on `conn` (or left in error, needing a rollback). Both
/// backends use Diesel's ANSI transaction manager.
pub fn in_transaction<C>(conn: &mut C) -> bool
where
    C: Connection<TransactionManager = diesel::connection::AnsiTransactionManager>,
{
    use diesel::connection::{TransactionManager, TransactionManagerStatus};
    match diesel::connection::AnsiTransactionManager::transaction_manager_status_mut(conn) {
        TransactionManagerStatus::Valid(status) => status.transaction_depth().is_some(),
        // An in-error status means a transaction is open and must be rolled back.
        TransactionManagerStatus::InError => true,
    }
}

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod sqlite;
pub(crate) mod stmt;
