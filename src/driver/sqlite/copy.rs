//! Whole tables for `jobdb copy`, on SQLite: keyset reads inside one deferred (snapshot)
//! transaction, inserts with their ids.

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::sqlite::SqliteConnection;

use crate::driver::CopyDriver;
use crate::error::Result;
use crate::models::{JobRow, PausedRow, ResultRow, ScheduleRow};
use crate::schema::{jobs, paused_queues, results, schedules};

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// JSON columns are text on SQLite: bound as they are.
fn as_text(text: &str) -> Result<&str> {
    Ok(text)
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

    crate::driver::copy_rows::copy_inserts!(schema, as_text, as_text);

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
