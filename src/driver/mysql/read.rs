//! Reads on MySQL / MariaDB (jobs, results, counts, the audit) and the benchmark's history
//! insert.

use chrono::NaiveDateTime;
use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Nullable, Text};

use super::JOB_COLUMNS;
use crate::driver::rows::{AuditRow, AUDIT_BY_SUMS};
use crate::driver::stmt::{bind, cached};
use crate::driver::{parse_state, ReadDriver};
use crate::error::Result;
use crate::models::JobState;
use crate::models::{JobRow, ResultRow};
use crate::queue::Audit;

pub(crate) use crate::driver::rows::Count;

/// The columns of `results` as [`ResultRow`] reads them.
pub(crate) const RESULT_COLUMNS: &str =
    "id, job_id, attempt, outcome, output, error, created_at, duration_ms, worker_id";

impl ReadDriver for MysqlConnection {
    /// One job row, `None` if no such id.
    fn find_job(&mut self, job_id: i64) -> Result<Option<JobRow>> {
        Ok(
            diesel::sql_query(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
                .bind::<BigInt, _>(job_id)
                .get_result(self)
                .optional()?,
        )
    }

    fn list_jobs(
        &mut self,
        filter: &crate::queue::JobFilter,
        from: i64,
        before: i64,
        limit: i64,
    ) -> Result<Vec<JobRow>> {
        let queue = filter.queue.as_deref();
        let state = filter.state.map(|s| s.as_str());
        let key = filter.unique_key.as_deref();
        Ok(diesel::sql_query(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id < ? AND id >= ? \
               AND (? IS NULL OR queue = ?) \
               AND (? IS NULL OR state = ?) \
               AND (? IS NULL OR unique_key = ?) \
             ORDER BY id DESC LIMIT ?"
        ))
        .bind::<BigInt, _>(before)
        .bind::<BigInt, _>(from)
        .bind::<Nullable<Text>, _>(queue)
        .bind::<Nullable<Text>, _>(queue)
        .bind::<Nullable<Text>, _>(state)
        .bind::<Nullable<Text>, _>(state)
        .bind::<Nullable<Text>, _>(key)
        .bind::<Nullable<Text>, _>(key)
        .bind::<BigInt, _>(limit)
        .load(self)?)
    }

    fn max_job_id(&mut self) -> Result<Option<i64>> {
        use crate::schema_mysql::jobs;
        Ok(jobs::table.select(diesel::dsl::max(jobs::id)).first(self)?)
    }

    /// Whether a job with this id exists.
    fn job_exists(&mut self, job_id: i64) -> Result<bool> {
        let r: Count = cached(
            "SELECT COUNT(*) AS n FROM jobs WHERE id = ?",
            (bind::<BigInt, _>(job_id),),
        )
        .get_result(self)?;
        Ok(r.n > 0)
    }

    /// All results rows of a job, by attempt.
    fn results_of(&mut self, job_id: i64) -> Result<Vec<ResultRow>> {
        Ok(diesel::sql_query(format!(
            "SELECT {RESULT_COLUMNS} FROM results WHERE job_id = ? ORDER BY attempt, id"
        ))
        .bind::<BigInt, _>(job_id)
        .load(self)?)
    }

    /// `(queue, state, count)` for every queue (or one).
    fn count_by_queue_state(
        &mut self,
        queue: Option<&str>,
    ) -> Result<Vec<(String, JobState, i64)>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            queue: String,
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT queue, state, COUNT(*) AS n FROM jobs \
             WHERE ? IS NULL OR queue = ? GROUP BY queue, state",
        )
        .bind::<Nullable<Text>, _>(queue)
        .bind::<Nullable<Text>, _>(queue)
        .load(self)?;
        rows.into_iter()
            .map(|r| Ok((r.queue, parse_state(None, &r.state)?, r.n)))
            .collect()
    }

    /// Queued jobs of `queue`, due or not (served by the claim index).
    fn queued_count(&mut self, queue: &str) -> Result<i64> {
        let r: Count = cached(
            "SELECT COUNT(*) AS n FROM jobs WHERE queue = ? AND state = 'queued'",
            (bind::<Text, _>(queue),),
        )
        .get_result(self)?;
        Ok(r.n)
    }

    fn pending_count(&mut self, queue: &str, now: NaiveDateTime) -> Result<i64> {
        let r: Count = cached(
            "SELECT COUNT(*) AS n FROM jobs WHERE queue = ? AND state = 'queued' \
             AND (run_at <= ? OR attempts > attempt_base)",
            (bind::<Text, _>(queue), bind::<Datetime, _>(now)),
        )
        .get_result(self)?;
        Ok(r.n)
    }

    /// Whether any job of `queue` is running.
    fn any_running(&mut self, queue: &str) -> Result<bool> {
        let r: Count = cached(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM jobs WHERE queue = ? AND state = 'running' \
             LIMIT 1) x",
            (bind::<Text, _>(queue),),
        )
        .get_result(self)?;
        Ok(r.n > 0)
    }

    /// `VERSION()`: the server's, e.g. `10.11.19-MariaDB-0+deb12u1` or `8.0.40`.
    fn version(&mut self) -> Result<String> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            v: String,
        }
        let r: Row = diesel::sql_query("SELECT VERSION() AS v").get_result(self)?;
        Ok(r.v)
    }

    /// Exactly-once audit of one queue: (jobs, jobs not succeeded, jobs with more than one
    /// succeeded results row).
    fn audit(&mut self, queue: &str) -> Result<Audit> {
        let r: AuditRow = cached(AUDIT_BY_SUMS, (bind::<Text, _>(queue),)).get_result(self)?;
        Ok(r.into())
    }

    /// Inserts `n` already-succeeded jobs on `queue` (benchmark history), up to a million
    /// per statement: a recursive CTE of 1,000 numbers (MySQL's default recursion limit)
    /// crossed with itself.
    fn insert_finished(&mut self, queue: &str, n: i64, now: NaiveDateTime) -> Result<usize> {
        const PER_STATEMENT: i64 = 1_000_000;
        let mut done = 0usize;
        let mut left = n;
        while left > 0 {
            let part = left.min(PER_STATEMENT);
            done += diesel::sql_query(
                "INSERT INTO jobs (queue, state, priority, payload, attempts, max_attempts, \
                                   run_at, created_at, updated_at) \
                 WITH RECURSIVE s (k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM s WHERE k < 999) \
                 SELECT ?, 'succeeded', 0, '{\"history\":true}', 1, 5, ?, ?, ? \
                 FROM s a CROSS JOIN s b WHERE a.k * 1000 + b.k < ?",
            )
            .bind::<Text, _>(queue)
            .bind::<Datetime, _>(now)
            .bind::<Datetime, _>(now)
            .bind::<Datetime, _>(now)
            .bind::<BigInt, _>(part)
            .execute(self)?;
            left -= part;
        }
        Ok(done)
    }
}
