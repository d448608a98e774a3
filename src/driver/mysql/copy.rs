//! Whole tables for `jobdb copy`, on MySQL / MariaDB: keyset reads inside one REPEATABLE
//! READ, READ ONLY transaction (one consistent snapshot), inserts with their ids. InnoDB moves
//! each AUTO_INCREMENT counter past an id inserted explicitly, so no sequence needs moving.

use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Text};

use super::read::{Count, RESULT_COLUMNS};
use super::{id_list, JOB_COLUMNS};
use crate::driver::CopyDriver;
use crate::error::Result;
use crate::models::{JobRow, PausedRow, ResultRow, ScheduleRow};

/// Rows per multi-row INSERT of a copy (about 20 binds each).
const COPY_CHUNK: usize = 1_000;

impl CopyDriver for MysqlConnection {
    fn read_snapshot<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        use diesel::connection::SimpleConnection;
        // Applies to the next transaction only; its first read fixes the snapshot.
        self.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        self.transaction(f)
    }

    fn jobs_after(&mut self, after: i64, limit: i64) -> Result<Vec<JobRow>> {
        Ok(diesel::sql_query(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id > ? ORDER BY id LIMIT ?"
        ))
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(limit)
        .load(self)?)
    }

    fn jobs_with_ids(&mut self, ids: &[i64]) -> Result<Vec<JobRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(diesel::sql_query(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id IN {} ORDER BY id",
            id_list(ids)
        ))
        .load(self)?)
    }

    fn results_after(&mut self, after: i64, limit: i64) -> Result<Vec<ResultRow>> {
        Ok(diesel::sql_query(format!(
            "SELECT {RESULT_COLUMNS} FROM results WHERE id > ? ORDER BY id LIMIT ?"
        ))
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(limit)
        .load(self)?)
    }

    fn results_with_ids(&mut self, ids: &[i64]) -> Result<Vec<ResultRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(diesel::sql_query(format!(
            "SELECT {RESULT_COLUMNS} FROM results WHERE id IN {} ORDER BY id",
            id_list(ids)
        ))
        .load(self)?)
    }

    fn results_of_jobs(&mut self, job_ids: &[i64]) -> Result<Vec<ResultRow>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(diesel::sql_query(format!(
            "SELECT {RESULT_COLUMNS} FROM results WHERE job_id IN {} ORDER BY job_id, attempt, id",
            id_list(job_ids)
        ))
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

    /// Inserts jobs with their ids; a row whose id exists is left as it is (`ON DUPLICATE
    /// KEY UPDATE id = id`, which changes nothing; the copy's verification compares rows).
    fn insert_job_rows(&mut self, rows: &[JobRow]) -> Result<()> {
        use crate::schema_mysql::jobs::dsl::*;
        for part in rows.chunks(COPY_CHUNK) {
            let values: Vec<_> = part
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
                            progress.eq(&r.progress),
                        ),
                    )
                })
                .collect();
            diesel::insert_into(jobs)
                .values(values)
                .on_conflict(diesel::dsl::DuplicatedKeys)
                .do_update()
                .set(id.eq(id))
                .execute(self)?;
        }
        Ok(())
    }

    fn insert_result_rows(&mut self, rows: &[ResultRow]) -> Result<()> {
        use crate::schema_mysql::results::dsl::*;
        for part in rows.chunks(COPY_CHUNK) {
            let values: Vec<_> = part
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
                        worker_id.eq(&r.worker_id),
                    )
                })
                .collect();
            diesel::insert_into(results)
                .values(values)
                .on_conflict(diesel::dsl::DuplicatedKeys)
                .do_update()
                .set(id.eq(id))
                .execute(self)?;
        }
        Ok(())
    }

    fn upsert_schedule_rows(&mut self, rows: &[ScheduleRow]) -> Result<()> {
        for r in rows {
            // `updated_at` first: MySQL's SET reads earlier assignments.
            diesel::sql_query(
                "INSERT INTO schedules (name, last_tick, updated_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE \
                   updated_at = GREATEST(updated_at, VALUES(updated_at)), \
                   last_tick = GREATEST(last_tick, VALUES(last_tick))",
            )
            .bind::<Text, _>(&r.name)
            .bind::<Datetime, _>(r.last_tick)
            .bind::<Datetime, _>(r.updated_at)
            .execute(self)?;
        }
        Ok(())
    }

    fn upsert_paused_rows(&mut self, rows: &[PausedRow]) -> Result<()> {
        for r in rows {
            diesel::sql_query(
                "INSERT INTO paused_queues (queue, paused_at) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE queue = queue",
            )
            .bind::<Text, _>(&r.queue)
            .bind::<Datetime, _>(r.paused_at)
            .execute(self)?;
        }
        Ok(())
    }

    fn row_counts(&mut self) -> Result<[i64; 4]> {
        let count = |c: &mut Self, table: &str| -> Result<i64> {
            let r: Count =
                diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}")).get_result(c)?;
            Ok(r.n)
        };
        Ok([
            count(self, "jobs")?,
            count(self, "results")?,
            count(self, "schedules")?,
            count(self, "paused_queues")?,
        ])
    }

    fn running_count(&mut self) -> Result<i64> {
        let r: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'running'")
            .get_result(self)?;
        Ok(r.n)
    }
}
