//! Reads on PostgreSQL (jobs, results, counts, the audit) and the benchmark's history insert.

use chrono::NaiveDateTime;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};

use super::{utc, JOB_COLUMNS};
use crate::driver::rows::{AuditRow, Count};
use crate::driver::stmt::{bind, cached};
use crate::driver::{parse_state, ReadDriver};
use crate::error::Result;
use crate::models::JobState;
use crate::models::{JobRow, ResultRow};
use crate::queue::Audit;

impl ReadDriver for PgConnection {
    /// One job row, `None` if no such id.
    fn find_job(&mut self, job_id: i64) -> Result<Option<JobRow>> {
        Ok(
            diesel::sql_query(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
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
        Ok(diesel::sql_query(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id < $1 AND id >= $6 \
               AND ($2::text IS NULL OR queue = $2) \
               AND ($3::text IS NULL OR state = $3) \
               AND ($4::text IS NULL OR unique_key = $4) \
             ORDER BY id DESC LIMIT $5"
        ))
        .bind::<BigInt, _>(before)
        .bind::<Nullable<Text>, _>(filter.queue.as_deref())
        .bind::<Nullable<Text>, _>(filter.state.map(|s| s.as_str()))
        .bind::<Nullable<Text>, _>(filter.unique_key.as_deref())
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(from)
        .load(self)?)
    }

    fn max_job_id(&mut self) -> Result<Option<i64>> {
        use crate::schema_postgres::jobs;
        Ok(jobs::table.select(diesel::dsl::max(jobs::id)).first(self)?)
    }

    /// Whether a job with this id exists.
    fn job_exists(&mut self, job_id: i64) -> Result<bool> {
        let r: Count = cached(
            "SELECT count(*) AS n FROM jobs WHERE id = ?",
            (bind::<BigInt, _>(job_id),),
        )
        .get_result(self)?;
        Ok(r.n > 0)
    }

    /// All results rows of a job, by attempt.
    fn results_of(&mut self, job_id: i64) -> Result<Vec<ResultRow>> {
        Ok(diesel::sql_query(
            "SELECT id, job_id, attempt, outcome, output::text AS output, error, \
                    (created_at AT TIME ZONE 'UTC') AS created_at, duration_ms, worker_id \
             FROM results WHERE job_id = $1 ORDER BY attempt, id",
        )
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
            "SELECT queue, state, count(*) AS n FROM jobs \
             WHERE $1::text IS NULL OR queue = $1 GROUP BY queue, state",
        )
        .bind::<Nullable<Text>, _>(queue)
        .load(self)?;
        rows.into_iter()
            .map(|r| Ok((r.queue, parse_state(None, &r.state)?, r.n)))
            .collect()
    }

    /// Queued jobs of `queue`, due or not (served by the claim index).
    fn queued_count(&mut self, queue: &str) -> Result<i64> {
        let r: Count = cached(
            "SELECT count(*) AS n FROM jobs WHERE queue = ? AND state = 'queued'",
            (bind::<Text, _>(queue),),
        )
        .get_result(self)?;
        Ok(r.n)
    }

    fn pending_count(&mut self, queue: &str, now: NaiveDateTime) -> Result<i64> {
        let r: Count = cached(
            "SELECT count(*) AS n FROM jobs WHERE queue = ? AND state = 'queued' \
             AND (run_at <= ? OR attempts > attempt_base)",
            (bind::<Text, _>(queue), bind::<Timestamptz, _>(utc(now))),
        )
        .get_result(self)?;
        Ok(r.n)
    }

    /// Whether any job of `queue` is running.
    fn any_running(&mut self, queue: &str) -> Result<bool> {
        let r: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM (SELECT 1 FROM jobs WHERE queue = $1 AND state = 'running' \
             LIMIT 1) x",
        )
        .bind::<Text, _>(queue)
        .get_result(self)?;
        Ok(r.n > 0)
    }

    /// `SHOW server_version`.
    fn version(&mut self) -> Result<String> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            server_version: String,
        }
        let r: Row = diesel::sql_query("SHOW server_version").get_result(self)?;
        Ok(r.server_version)
    }

    /// Exactly-once audit of one queue: (jobs, jobs not succeeded, jobs with more than one
    /// succeeded results row).
    fn audit(&mut self, queue: &str) -> Result<Audit> {
        let r: AuditRow = diesel::sql_query(
            "SELECT count(*) AS jobs, \
                    count(*) FILTER (WHERE state <> 'succeeded') AS not_succeeded, \
                    count(*) FILTER (WHERE (SELECT count(*) FROM results r WHERE r.job_id = j.id \
                                            AND r.outcome = 'succeeded') > 1) AS duplicated \
             FROM jobs j WHERE queue = $1",
        )
        .bind::<Text, _>(queue)
        .get_result(self)?;
        Ok(r.into())
    }

    /// Inserts `n` already-succeeded jobs on `queue` in one statement (benchmark history).
    fn insert_finished(&mut self, queue: &str, n: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(diesel::sql_query(
            "INSERT INTO jobs (queue, state, priority, payload, attempts, max_attempts, run_at, \
                               created_at, updated_at) \
             SELECT $2, 'succeeded', 0, '{\"history\":true}'::jsonb, 1, 5, $3, $3, $3 \
             FROM generate_series(1, $1)",
        )
        .bind::<BigInt, _>(n)
        .bind::<Text, _>(queue)
        .bind::<Timestamptz, _>(utc(now))
        .execute(self)?)
    }
}
