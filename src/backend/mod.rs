//! Backend SQL. Each backend module offers the same small set of functions; the queue logic in
//! `queue.rs` and `manage.rs` calls them through [`QueueConnection`], implemented for
//! `SqliteConnection` and (feature `postgres`) `PgConnection`, and decides what to call and
//! when. Nothing above this module writes SQL.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};

use crate::error::Result;
use crate::models::{JobRow, Lease, NewJob, NewResultRow, ResultRow};

/// One queue's row of per-queue activity (`stats`).
#[derive(Debug, QueryableByName)]
pub struct ActivityRow {
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

/// A database connection the queue logic can run on: one method per backend statement (or
/// pair of statements), the same set for every backend. Each method is one round trip of SQL
/// and nothing else; transactions, fencing and state transitions are decided by the callers.
/// Sets of leases or ids are passed as JSON arrays (`[[id, attempt], …]`, `[id, …]`).
#[allow(missing_docs)] // each method is documented on the backend functions it calls
pub trait QueueConnection: Connection + diesel::r2d2::R2D2Connection + Send + 'static {
    /// Whether the queue's writes go through one writer connection, group-committed (SQLite:
    /// one writer at a time anyway), or run in parallel on pooled connections (PostgreSQL).
    const GROUP_COMMIT: bool;
    /// Runs `f` as one write transaction (a savepoint inside an open one).
    fn write_transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>;
    /// Whether a transaction is open (or left in error).
    fn in_transaction(&mut self) -> bool;
    /// Runs `f`, whose writes are ONE statement (reads may follow it), atomically: on SQLite
    /// as a write transaction (`BEGIN IMMEDIATE`, so busy handling stays whole-transaction);
    /// on PostgreSQL, outside a transaction, as that statement alone (it commits by itself,
    /// saving the BEGIN and COMMIT round trips), inside one as a savepoint.
    fn single_statement<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>;
    /// Marks a job succeeded if the lease is still ours and no cancel was requested, and
    /// records its `succeeded` results row (`row`): rows changed, 0 or 1. One statement on
    /// PostgreSQL; two, inside the caller's transaction, on SQLite.
    fn succeed_with_result(&mut self, row: &NewResultRow<'_>) -> Result<usize>;
    /// Inserts validated jobs without unique keys; ids in the order given.
    fn insert_new(&mut self, jobs: &[NewJob], now: NaiveDateTime) -> Result<Vec<i64>>;
    /// Inserts one validated job that has a unique key: `(id, inserted)`.
    fn insert_new_unique(&mut self, job: &NewJob, now: NaiveDateTime) -> Result<(i64, bool)>;
    fn explain_claim(&mut self) -> Result<String>;
    fn claim(
        &mut self,
        queue: &str,
        limit: u32,
        worker_id: &str,
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Vec<JobRow>>;
    fn heartbeat(
        &mut self,
        job_id: i64,
        attempt: i32,
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Option<bool>>;
    /// Extends those of `leases` still held; `(lease, cancel requested)` for each.
    fn heartbeat_set(
        &mut self,
        leases: &[Lease],
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Vec<(Lease, bool)>>;
    /// Marks succeeded those of `leases` still held (and not cancelled); the leases marked.
    fn succeed_set(&mut self, leases: &[Lease], now: NaiveDateTime) -> Result<Vec<Lease>>;
    fn insert_succeeded_results(&mut self, rows_json: &str, now: NaiveDateTime) -> Result<usize>;
    fn mark_succeeded(&mut self, job_id: i64, attempt: i32, now: NaiveDateTime) -> Result<usize>;
    fn mark_failed(
        &mut self,
        job_id: i64,
        attempt: i32,
        error: &str,
        now: NaiveDateTime,
        retry_at: NaiveDateTime,
    ) -> Result<Option<String>>;
    fn release(&mut self, job_id: i64, attempt: i32, now: NaiveDateTime) -> Result<usize>;
    /// `attempts - attempt_base` of a job while the lease holds (the attempts that count
    /// against `max_attempts`, this one included); `None` if it does not hold.
    fn attempts_used(&mut self, job_id: i64, attempt: i32) -> Result<Option<i32>>;
    fn insert_result(&mut self, row: &NewResultRow<'_>) -> Result<()>;
    fn expired_leases(&mut self, now: NaiveDateTime) -> Result<Vec<i64>>;
    fn reap_ids(&mut self, ids_json: &str, error: &str, now: NaiveDateTime) -> Result<usize>;
    fn find_job(&mut self, job_id: i64) -> Result<Option<JobRow>>;
    fn job_exists(&mut self, job_id: i64) -> Result<bool>;
    fn results_of(&mut self, job_id: i64) -> Result<Vec<ResultRow>>;
    fn count_by_queue_state(&mut self, queue: Option<&str>) -> Result<Vec<(String, String, i64)>>;
    fn queued_count(&mut self, queue: &str) -> Result<i64>;
    fn any_running(&mut self, queue: &str) -> Result<bool>;
    /// The database server or library version.
    fn version(&mut self) -> Result<String>;
    fn audit(&mut self, queue: &str) -> Result<(i64, i64, i64)>;
    fn insert_finished(&mut self, queue: &str, n: i64, now: NaiveDateTime) -> Result<usize>;
    fn cancel_queued(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize>;
    fn request_cancel(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize>;
    fn finish_cancelled(
        &mut self,
        job_id: i64,
        attempt: i32,
        error: &str,
        now: NaiveDateTime,
    ) -> Result<usize>;
    fn requeue_finished(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize>;
    fn finished_before(
        &mut self,
        states_json: &str,
        before: NaiveDateTime,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<i64>>;
    fn delete_finished(
        &mut self,
        ids_json: &str,
        states_json: &str,
        before: NaiveDateTime,
    ) -> Result<usize>;
    fn pause_queue(&mut self, queue: &str, now: NaiveDateTime) -> Result<bool>;
    fn resume_queue(&mut self, queue: &str) -> Result<bool>;
    fn paused_queues(&mut self) -> Result<Vec<String>>;
    fn advance_schedule(
        &mut self,
        name: &str,
        tick: NaiveDateTime,
        now: NaiveDateTime,
    ) -> Result<bool>;
    fn queue_activity(
        &mut self,
        queue: Option<&str>,
        now: NaiveDateTime,
        since: NaiveDateTime,
    ) -> Result<Vec<ActivityRow>>;
    /// Tells other processes' idle workers that jobs were enqueued, when this transaction
    /// commits (PostgreSQL `NOTIFY`). Nothing on SQLite, which has no such channel.
    fn notify_enqueued(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Implements the methods of [`QueueConnection`] whose backend functions have the same
/// signature in every backend module, by calling the function of the same name in scope.
macro_rules! delegate_queue_connection {
    () => {
        fn write_transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
            write_transaction(self, f)
        }
        fn in_transaction(&mut self) -> bool {
            $crate::backend::in_transaction(self)
        }
        fn explain_claim(&mut self) -> Result<String> {
            explain_claim(self)
        }
        fn claim(
            &mut self,
            queue: &str,
            limit: u32,
            worker_id: &str,
            now: NaiveDateTime,
            lease_expires_at: NaiveDateTime,
        ) -> Result<Vec<JobRow>> {
            claim(self, queue, limit, worker_id, now, lease_expires_at)
        }
        fn heartbeat(
            &mut self,
            job_id: i64,
            attempt: i32,
            now: NaiveDateTime,
            lease_expires_at: NaiveDateTime,
        ) -> Result<Option<bool>> {
            heartbeat(self, job_id, attempt, now, lease_expires_at)
        }
        fn heartbeat_set(
            &mut self,
            leases: &[$crate::models::Lease],
            now: NaiveDateTime,
            lease_expires_at: NaiveDateTime,
        ) -> Result<Vec<($crate::models::Lease, bool)>> {
            heartbeat_set(self, leases, now, lease_expires_at)
        }
        fn succeed_set(
            &mut self,
            leases: &[$crate::models::Lease],
            now: NaiveDateTime,
        ) -> Result<Vec<$crate::models::Lease>> {
            succeed_set(self, leases, now)
        }
        fn insert_succeeded_results(
            &mut self,
            rows_json: &str,
            now: NaiveDateTime,
        ) -> Result<usize> {
            insert_succeeded_results(self, rows_json, now)
        }
        fn mark_succeeded(
            &mut self,
            job_id: i64,
            attempt: i32,
            now: NaiveDateTime,
        ) -> Result<usize> {
            mark_succeeded(self, job_id, attempt, now)
        }
        fn mark_failed(
            &mut self,
            job_id: i64,
            attempt: i32,
            error: &str,
            now: NaiveDateTime,
            retry_at: NaiveDateTime,
        ) -> Result<Option<String>> {
            mark_failed(self, job_id, attempt, error, now, retry_at)
        }
        fn release(&mut self, job_id: i64, attempt: i32, now: NaiveDateTime) -> Result<usize> {
            release(self, job_id, attempt, now)
        }
        fn attempts_used(&mut self, job_id: i64, attempt: i32) -> Result<Option<i32>> {
            attempts_used(self, job_id, attempt)
        }
        fn insert_result(&mut self, row: &NewResultRow<'_>) -> Result<()> {
            insert_result(self, row)
        }
        fn expired_leases(&mut self, now: NaiveDateTime) -> Result<Vec<i64>> {
            expired_leases(self, now)
        }
        fn reap_ids(&mut self, ids_json: &str, error: &str, now: NaiveDateTime) -> Result<usize> {
            reap_ids(self, ids_json, error, now)
        }
        fn find_job(&mut self, job_id: i64) -> Result<Option<JobRow>> {
            find_job(self, job_id)
        }
        fn job_exists(&mut self, job_id: i64) -> Result<bool> {
            job_exists(self, job_id)
        }
        fn results_of(&mut self, job_id: i64) -> Result<Vec<ResultRow>> {
            results_of(self, job_id)
        }
        fn count_by_queue_state(
            &mut self,
            queue: Option<&str>,
        ) -> Result<Vec<(String, String, i64)>> {
            count_by_queue_state(self, queue)
        }
        fn queued_count(&mut self, queue: &str) -> Result<i64> {
            queued_count(self, queue)
        }
        fn any_running(&mut self, queue: &str) -> Result<bool> {
            any_running(self, queue)
        }
        fn audit(&mut self, queue: &str) -> Result<(i64, i64, i64)> {
            audit(self, queue)
        }
        fn insert_finished(&mut self, queue: &str, n: i64, now: NaiveDateTime) -> Result<usize> {
            insert_finished(self, queue, n, now)
        }
        fn cancel_queued(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
            cancel_queued(self, job_id, now)
        }
        fn request_cancel(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
            request_cancel(self, job_id, now)
        }
        fn finish_cancelled(
            &mut self,
            job_id: i64,
            attempt: i32,
            error: &str,
            now: NaiveDateTime,
        ) -> Result<usize> {
            finish_cancelled(self, job_id, attempt, error, now)
        }
        fn requeue_finished(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
            requeue_finished(self, job_id, now)
        }
        fn finished_before(
            &mut self,
            states_json: &str,
            before: NaiveDateTime,
            after_id: i64,
            limit: i64,
        ) -> Result<Vec<i64>> {
            finished_before(self, states_json, before, after_id, limit)
        }
        fn delete_finished(
            &mut self,
            ids_json: &str,
            states_json: &str,
            before: NaiveDateTime,
        ) -> Result<usize> {
            delete_finished(self, ids_json, states_json, before)
        }
        fn pause_queue(&mut self, queue: &str, now: NaiveDateTime) -> Result<bool> {
            pause_queue(self, queue, now)
        }
        fn resume_queue(&mut self, queue: &str) -> Result<bool> {
            resume_queue(self, queue)
        }
        fn paused_queues(&mut self) -> Result<Vec<String>> {
            paused_queues(self)
        }
        fn advance_schedule(
            &mut self,
            name: &str,
            tick: NaiveDateTime,
            now: NaiveDateTime,
        ) -> Result<bool> {
            advance_schedule(self, name, tick, now)
        }
        fn queue_activity(
            &mut self,
            queue: Option<&str>,
            now: NaiveDateTime,
            since: NaiveDateTime,
        ) -> Result<Vec<$crate::backend::ActivityRow>> {
            queue_activity(self, queue, now, since)
        }
    };
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

#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;
pub mod stmt;
