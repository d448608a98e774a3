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

const RESULT_COLUMNS: &str = "id, job_id, attempt, outcome, output::text AS output, error, \
    (created_at AT TIME ZONE 'UTC') AS created_at, duration_ms, worker_id";

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

fn job_json(text: &str) -> Result<serde_json::Value> {
    json("jobs", text)
}

fn result_json(text: &str) -> Result<serde_json::Value> {
    json("results", text)
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

    crate::driver::copy_rows::copy_inserts!(schema_postgres, job_json, result_json);

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
