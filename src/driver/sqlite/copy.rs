//! Whole tables for `jobdb copy`, on SQLite: keyset reads inside one deferred (snapshot)
//! transaction, inserts with their ids.

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::sqlite::SqliteConnection;

use crate::driver::CopyDriver;
use crate::error::Result;
use crate::models::{JobRow, PausedRow, ResultRow, ScheduleRow};
use crate::schema::{jobs, paused_queues, results, schedules};

use crate::schema::jobs::dsl as jobs_dsl;
use crate::schema::results::dsl as results_dsl;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl CopyDriver for SqliteConnection {
    /// A deferred transaction: its first read fixes the snapshot (WAL), and no write lock is
    /// taken, so the source's workers keep going meanwhile.
    fn read_snapshot<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.transaction(f)
    }

    fn jobs_after(&mut self, after: i64, limit: i64) -> Result<Vec<JobRow>> {
        Ok(jobs::table
            .filter(jobs::id.gt(after))
            .order(jobs::id)
            .limit(limit)
            .select(JobRow::as_select())
            .load(self)?)
    }

    fn jobs_with_ids(&mut self, ids: &[i64]) -> Result<Vec<JobRow>> {
        Ok(jobs::table
            .filter(jobs::id.eq_any(ids))
            .order(jobs::id)
            .select(JobRow::as_select())
            .load(self)?)
    }

    fn results_after(&mut self, after: i64, limit: i64) -> Result<Vec<ResultRow>> {
        Ok(results::table
            .filter(results::id.gt(after))
            .order(results::id)
            .limit(limit)
            .select(ResultRow::as_select())
            .load(self)?)
    }

    fn results_with_ids(&mut self, ids: &[i64]) -> Result<Vec<ResultRow>> {
        Ok(results::table
            .filter(results::id.eq_any(ids))
            .order(results::id)
            .select(ResultRow::as_select())
            .load(self)?)
    }

    fn results_of_jobs(&mut self, job_ids: &[i64]) -> Result<Vec<ResultRow>> {
        Ok(results::table
            .filter(results::job_id.eq_any(job_ids))
            .order((results::job_id, results::attempt, results::id))
            .select(ResultRow::as_select())
            .load(self)?)
    }

    fn schedule_rows(&mut self) -> Result<Vec<ScheduleRow>> {
        Ok(
            diesel::sql_query("SELECT name, last_tick, updated_at FROM schedules ORDER BY name")
                .load(self)?,
        )
    }

    fn paused_rows(&mut self) -> Result<Vec<PausedRow>> {
        Ok(
            diesel::sql_query("SELECT queue, paused_at FROM paused_queues ORDER BY queue")
                .load(self)?,
        )
    }

    fn insert_job_rows(&mut self, rows: &[JobRow]) -> Result<()> {
        use jobs_dsl::*;
        let jobs_table = jobs_dsl::jobs;
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    (
                        id.eq(r.id),
                        queue.eq(&r.queue),
                        state.eq(&r.state),
                        priority.eq(r.priority),
                        payload.eq(&r.payload),
                        attempts.eq(r.attempts),
                        max_attempts.eq(r.max_attempts),
                        run_at.eq(r.run_at),
                        created_at.eq(r.created_at),
                    ),
                    (
                        updated_at.eq(r.updated_at),
                        worker_id.eq(&r.worker_id),
                        heartbeat_at.eq(r.heartbeat_at),
                        lease_expires_at.eq(r.lease_expires_at),
                        last_error.eq(&r.last_error),
                        unique_key.eq(&r.unique_key),
                        cancel_requested_at.eq(r.cancel_requested_at),
                        attempt_base.eq(r.attempt_base),
                        timeout_ms.eq(r.timeout_ms),
                    ),
                )
            })
            .collect();
        diesel::insert_into(jobs_table)
            .values(values)
            .on_conflict(id)
            .do_nothing()
            .execute(self)?;
        Ok(())
    }

    fn insert_result_rows(&mut self, rows: &[ResultRow]) -> Result<()> {
        use results_dsl::*;
        let results_table = results_dsl::results;
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    id.eq(r.id),
                    job_id.eq(r.job_id),
                    attempt.eq(r.attempt),
                    outcome.eq(&r.outcome),
                    output.eq(&r.output),
                    error.eq(&r.error),
                    created_at.eq(r.created_at),
                    duration_ms.eq(r.duration_ms),
                )
            })
            .collect();
        diesel::insert_into(results_table)
            .values(values)
            .on_conflict(id)
            .do_nothing()
            .execute(self)?;
        Ok(())
    }

    fn upsert_schedule_rows(&mut self, rows: &[ScheduleRow]) -> Result<()> {
        for r in rows {
            // Fixed-width text timestamps: MAX() is the later instant.
            diesel::sql_query(
                "INSERT INTO schedules (name, last_tick, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET \
                   last_tick = MAX(last_tick, excluded.last_tick), \
                   updated_at = MAX(updated_at, excluded.updated_at)",
            )
            .bind::<diesel::sql_types::Text, _>(&r.name)
            .bind::<diesel::sql_types::Timestamp, _>(r.last_tick)
            .bind::<diesel::sql_types::Timestamp, _>(r.updated_at)
            .execute(self)?;
        }
        Ok(())
    }

    fn upsert_paused_rows(&mut self, rows: &[PausedRow]) -> Result<()> {
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    paused_queues::queue.eq(&r.queue),
                    paused_queues::paused_at.eq(r.paused_at),
                )
            })
            .collect();
        diesel::insert_into(paused_queues::table)
            .values(values)
            .on_conflict(paused_queues::queue)
            .do_nothing()
            .execute(self)?;
        Ok(())
    }

    fn row_counts(&mut self) -> Result<[i64; 4]> {
        Ok([
            jobs::table.count().get_result(self)?,
            results::table.count().get_result(self)?,
            schedules::table.count().get_result(self)?,
            paused_queues::table.count().get_result(self)?,
        ])
    }

    fn running_count(&mut self) -> Result<i64> {
        let r: N = diesel::sql_query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'running'")
            .get_result(self)?;
        Ok(r.n)
    }
}
