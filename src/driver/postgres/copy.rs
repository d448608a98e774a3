//! Whole tables for `jobdb copy`, on PostgreSQL: keyset reads inside one REPEATABLE READ,
//! READ ONLY transaction (one snapshot), inserts with their ids, then the id sequences moved
//! past them.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};

use super::JOB_COLUMNS;
use crate::driver::CopyDriver;
use crate::error::{Error, Result};
use crate::models::{JobRow, PausedRow, ResultRow, ScheduleRow};
use crate::schema_postgres::paused_queues;

const RESULT_COLUMNS: &str = "id, job_id, attempt, outcome, output::text AS output, error, \
    (created_at AT TIME ZONE 'UTC') AS created_at, duration_ms";

use crate::schema_postgres::jobs::dsl as jobs_dsl;
use crate::schema_postgres::results::dsl as results_dsl;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// JSON text as JSONB's value (rejected, as data, if it is not JSON).
fn json(table: &'static str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| Error::CorruptRow {
        table,
        reason: format!("a JSON column holds text that is not JSON: {e}"),
    })
}

impl CopyDriver for PgConnection {
    fn read_snapshot<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.build_transaction()
            .repeatable_read()
            .read_only()
            .run(f)
    }

    fn jobs_after(&mut self, after: i64, limit: i64) -> Result<Vec<JobRow>> {
        Ok(diesel::sql_query(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(limit)
        .load(self)?)
    }

    fn jobs_with_ids(&mut self, ids: &[i64]) -> Result<Vec<JobRow>> {
        Ok(diesel::sql_query(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1) ORDER BY id"
        ))
        .bind::<Array<BigInt>, _>(ids)
        .load(self)?)
    }

    fn results_after(&mut self, after: i64, limit: i64) -> Result<Vec<ResultRow>> {
        Ok(diesel::sql_query(format!(
            "SELECT {RESULT_COLUMNS} FROM results WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(limit)
        .load(self)?)
    }

    fn results_with_ids(&mut self, ids: &[i64]) -> Result<Vec<ResultRow>> {
        Ok(diesel::sql_query(format!(
            "SELECT {RESULT_COLUMNS} FROM results WHERE id = ANY($1) ORDER BY id"
        ))
        .bind::<Array<BigInt>, _>(ids)
        .load(self)?)
    }

    fn results_of_jobs(&mut self, job_ids: &[i64]) -> Result<Vec<ResultRow>> {
        Ok(diesel::sql_query(format!(
            "SELECT {RESULT_COLUMNS} FROM results WHERE job_id = ANY($1) \
             ORDER BY job_id, attempt, id"
        ))
        .bind::<Array<BigInt>, _>(job_ids)
        .load(self)?)
    }

    fn schedule_rows(&mut self) -> Result<Vec<ScheduleRow>> {
        Ok(diesel::sql_query(
            "SELECT name, (last_tick AT TIME ZONE 'UTC') AS last_tick, \
                    (updated_at AT TIME ZONE 'UTC') AS updated_at FROM schedules ORDER BY name",
        )
        .load(self)?)
    }

    fn paused_rows(&mut self) -> Result<Vec<PausedRow>> {
        Ok(diesel::sql_query(
            "SELECT queue, (paused_at AT TIME ZONE 'UTC') AS paused_at FROM paused_queues \
             ORDER BY queue",
        )
        .load(self)?)
    }

    fn insert_job_rows(&mut self, rows: &[JobRow]) -> Result<()> {
        use jobs_dsl::*;
        let jobs_table = jobs_dsl::jobs;
        let values = rows
            .iter()
            .map(|r| {
                Ok((
                    (
                        id.eq(r.id),
                        queue.eq(&r.queue),
                        state.eq(&r.state),
                        priority.eq(r.priority),
                        payload.eq(json("jobs", &r.payload)?),
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
                ))
            })
            .collect::<Result<Vec<_>>>()?;
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
        let values = rows
            .iter()
            .map(|r| {
                Ok((
                    id.eq(r.id),
                    job_id.eq(r.job_id),
                    attempt.eq(r.attempt),
                    outcome.eq(&r.outcome),
                    output.eq(r
                        .output
                        .as_deref()
                        .map(|o| json("results", o))
                        .transpose()?),
                    error.eq(&r.error),
                    created_at.eq(r.created_at),
                    duration_ms.eq(r.duration_ms),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        diesel::insert_into(results_table)
            .values(values)
            .on_conflict(id)
            .do_nothing()
            .execute(self)?;
        Ok(())
    }

    fn upsert_schedule_rows(&mut self, rows: &[ScheduleRow]) -> Result<()> {
        for r in rows {
            diesel::sql_query(
                "INSERT INTO schedules (name, last_tick, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET \
                   last_tick = GREATEST(schedules.last_tick, excluded.last_tick), \
                   updated_at = GREATEST(schedules.updated_at, excluded.updated_at)",
            )
            .bind::<Text, _>(&r.name)
            .bind::<Timestamptz, _>(super::utc(r.last_tick))
            .bind::<Timestamptz, _>(super::utc(r.updated_at))
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
        let count = |c: &mut Self, table: &str| -> Result<i64> {
            let r: N =
                diesel::sql_query(format!("SELECT count(*) AS n FROM {table}")).get_result(c)?;
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
        let r: N = diesel::sql_query("SELECT count(*) AS n FROM jobs WHERE state = 'running'")
            .get_result(self)?;
        Ok(r.n)
    }

    /// `setval` to the larger of the table's highest id and the sequence's last value: ids
    /// never go back, even over a table emptied since.
    fn advance_id_sequences(&mut self) -> Result<()> {
        for table in ["jobs", "results"] {
            diesel::sql_query(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST( \
                   COALESCE((SELECT max(id) FROM {table}), 1), \
                   COALESCE(pg_sequence_last_value(pg_get_serial_sequence('{table}', 'id')::regclass), 1))) \
                 AS n"
            ))
            .get_result::<N>(self)?;
        }
        Ok(())
    }
}
