//! Set-based statements on PostgreSQL: one statement for many leases or jobs, passed as one
//! JSONB array and read back with `jsonb_array_elements`, each row fenced on its own.

use std::sync::OnceLock;

use chrono::NaiveDateTime;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz};

use super::utc;
use crate::driver::stmt::{bind, cached};
use crate::driver::{json_array, BatchDriver, SucceededRow};
use crate::driver::{leases_json, leases_with_json, LeaseRow};
use crate::error::Result;
use crate::models::Lease;

/// The leases of a `[[id, attempt], …]` JSONB array, as a derived table `l(lid, latt)`.
const LEASES: &str = "(SELECT (e->>0)::bigint AS lid, (e->>1)::int AS latt \
                       FROM jsonb_array_elements(?::jsonb) e) AS l";

impl BatchDriver for PgConnection {
    /// Extends many leases in one statement; returns `(lease, cancel requested)` for each lease
    /// that was still ours (keyed by lease, as on SQLite).
    fn heartbeat_set(
        &mut self,
        leases: &[Lease],
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Vec<(Lease, bool)>> {
        let now = utc(now);
        static SQL: OnceLock<String> = OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
                 FROM {LEASES} \
                 WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
                 RETURNING jobs.id AS id, jobs.attempts AS attempts, \
                           (jobs.cancel_requested_at IS NOT NULL)::int AS cancel"
            )
        });
        let rows: Vec<LeaseRow> = cached(
            sql.as_str(),
            (
                bind::<Timestamptz, _>(now),
                bind::<Timestamptz, _>(utc(lease_expires_at)),
                bind::<Timestamptz, _>(now),
                bind::<Text, _>(leases_json(leases)?),
            ),
        )
        .load(self)?;
        Ok(rows.iter().map(|r| (r.lease(), r.cancel != 0)).collect())
    }

    /// Stores progress on many running jobs in one statement, each only while its lease holds.
    fn progress_set(&mut self, items: &[(Lease, &str)], now: NaiveDateTime) -> Result<Vec<Lease>> {
        let rows: Vec<LeaseRow> = cached(
            "UPDATE jobs SET progress = l.p, updated_at = ? \
             FROM (SELECT (e->>0)::bigint AS lid, (e->>1)::int AS latt, e->2 AS p \
                   FROM jsonb_array_elements(?::jsonb) e) AS l \
             WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
             RETURNING jobs.id AS id, jobs.attempts AS attempts, 0 AS cancel",
            (
                bind::<Timestamptz, _>(utc(now)),
                bind::<Text, _>(leases_with_json(items)?),
            ),
        )
        .load(self)?;
        Ok(rows.iter().map(LeaseRow::lease).collect())
    }

    /// Marks many jobs succeeded in one statement, each only if its lease is still ours and no
    /// cancel was requested; returns the leases marked.
    fn succeed_set(&mut self, leases: &[Lease], now: NaiveDateTime) -> Result<Vec<Lease>> {
        static SQL: OnceLock<String> = OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = ?, \
                   last_error = NULL \
                 FROM {LEASES} \
                 WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
                   AND jobs.cancel_requested_at IS NULL \
                 RETURNING jobs.id AS id, jobs.attempts AS attempts, 0 AS cancel"
            )
        });
        let rows: Vec<LeaseRow> = cached(
            sql.as_str(),
            (
                bind::<Timestamptz, _>(utc(now)),
                bind::<Text, _>(leases_json(leases)?),
            ),
        )
        .load(self)?;
        Ok(rows.iter().map(LeaseRow::lease).collect())
    }

    /// Inserts many succeeded results rows in one statement. `rows_json` is
    /// `[[job_id, attempt, output_json_text, duration_ms], …]`.
    fn insert_succeeded_results(
        &mut self,
        rows: &[SucceededRow<'_>],
        now: NaiveDateTime,
    ) -> Result<usize> {
        // `[[job_id, attempt, output_json_text, duration_ms], …]`
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.lease.job_id,
                    r.lease.attempt,
                    r.output_json,
                    r.duration_ms,
                )
            })
            .collect();
        let rows_json = json_array("results", &rows)?;
        let rows_json = rows_json.as_str();
        Ok(cached(
            "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, \
                                  worker_id) \
             SELECT (e->>0)::bigint, (e->>1)::int, 'succeeded', (e->>2)::jsonb, NULL, ?, \
                    (e->>3)::bigint, (SELECT worker_id FROM jobs WHERE id = (e->>0)::bigint) \
             FROM jsonb_array_elements(?::jsonb) e",
            (bind::<Timestamptz, _>(utc(now)), bind::<Text, _>(rows_json)),
        )
        .execute(self)?)
    }

    /// Reaps the listed jobs (a JSON array of ids) whose lease is still expired: requeued, dead
    /// when out of attempts, or cancelled when requested, each with a failed results row. Returns
    /// the number reaped.
    ///
    /// ONE statement: the fenced UPDATE feeds the INSERT. Two statements (INSERT, then UPDATE)
    /// let a heartbeat commit in between under READ COMMITTED: the INSERT saw the old, expired
    /// lease and wrote a failed row, the UPDATE saw the new one and skipped the job, leaving it
    /// `running` with a stray result that broke its owner's completion and every later reap.
    /// Here the UPDATE takes each row lock and re-checks the predicate on the newest version, and
    /// only the rows it changed get a result.
    fn reap_ids(&mut self, ids: &[i64], error: &str, now: NaiveDateTime) -> Result<usize> {
        let ids_json = json_array("job ids", ids)?;
        let ids_json = ids_json.as_str();
        Ok(diesel::sql_query(
            "WITH reaped AS ( \
               UPDATE jobs SET \
                 state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                              WHEN attempts - attempt_base >= max_attempts THEN 'dead' \
                              ELSE 'queued' END, \
                 run_at = $3, last_error = $2, lease_expires_at = NULL, updated_at = $3 \
               WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text($1::jsonb)) \
                 AND state = 'running' AND lease_expires_at < $3 \
               RETURNING id, attempts, worker_id) \
             INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, \
                                  worker_id) \
             SELECT id, attempts, 'failed', NULL, $2, $3, 0, worker_id FROM reaped",
        )
        .bind::<Text, _>(ids_json)
        .bind::<Text, _>(error)
        .bind::<Timestamptz, _>(utc(now))
        .execute(self)?)
    }
}
