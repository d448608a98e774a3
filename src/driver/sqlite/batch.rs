//! Set-based statements: one statement for many leases or jobs, passed as a JSON array and
//! read back with `json_each`, each row fenced on its own.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamp};
use diesel::sqlite::SqliteConnection;

use crate::driver::stmt::{bind, cached};
use crate::driver::{json_array, BatchDriver, SucceededRow};
use crate::driver::{leases_json, leases_with_json, LeaseRow};
use crate::error::Result;
use crate::models::Lease;

impl BatchDriver for SqliteConnection {
    /// Extends many leases in one statement; returns `(lease, cancel requested)` for each lease
    /// that was still ours (the others are not touched). Keyed by lease, not job id: a stale lease
    /// passed beside the live lease of the same job must not be told it was extended.
    fn heartbeat_set(
        &mut self,
        leases: &[Lease],
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Vec<(Lease, bool)>> {
        let rows: Vec<LeaseRow> = cached(
            "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
             FROM (SELECT value ->> 0 AS lid, value ->> 1 AS latt FROM json_each(?)) AS l \
             WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
             RETURNING jobs.id AS id, jobs.attempts AS attempts, \
                       jobs.cancel_requested_at IS NOT NULL AS cancel",
            (
                bind::<Timestamp, _>(now),
                bind::<Timestamp, _>(lease_expires_at),
                bind::<Timestamp, _>(now),
                bind::<Text, _>(leases_json(leases)?),
            ),
        )
        .load(self)?;
        Ok(rows.iter().map(|r| (r.lease(), r.cancel != 0)).collect())
    }

    /// Stores progress on many running jobs in one statement, each only while its lease holds.
    /// `value -> 2` is the element's JSON text (`->>` would unquote a bare string).
    fn progress_set(&mut self, items: &[(Lease, &str)], now: NaiveDateTime) -> Result<Vec<Lease>> {
        let rows: Vec<LeaseRow> = cached(
            "UPDATE jobs SET progress = l.p, updated_at = ? \
             FROM (SELECT value ->> 0 AS lid, value ->> 1 AS latt, value -> 2 AS p \
                   FROM json_each(?)) AS l \
             WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
             RETURNING jobs.id AS id, jobs.attempts AS attempts, 0 AS cancel",
            (
                bind::<Timestamp, _>(now),
                bind::<Text, _>(leases_with_json(items)?),
            ),
        )
        .load(self)?;
        Ok(rows.iter().map(LeaseRow::lease).collect())
    }

    /// Marks many jobs succeeded in one statement, each only if its lease is still ours and no
    /// cancel was requested; returns the leases that were marked.
    fn succeed_set(&mut self, leases: &[Lease], now: NaiveDateTime) -> Result<Vec<Lease>> {
        let rows: Vec<LeaseRow> = cached(
            "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = ?, \
               last_error = NULL \
             FROM (SELECT value ->> 0 AS lid, value ->> 1 AS latt FROM json_each(?)) AS l \
             WHERE jobs.id = l.lid AND jobs.attempts = l.latt AND jobs.state = 'running' \
               AND jobs.cancel_requested_at IS NULL \
             RETURNING jobs.id AS id, jobs.attempts AS attempts, 0 AS cancel",
            (
                bind::<Timestamp, _>(now),
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
             SELECT value ->> 0, value ->> 1, 'succeeded', value ->> 2, NULL, ?, value ->> 3, \
                    (SELECT worker_id FROM jobs WHERE id = value ->> 0) \
             FROM json_each(?)",
            (bind::<Timestamp, _>(now), bind::<Text, _>(rows_json)),
        )
        .execute(self)?)
    }

    /// Reaps the listed jobs (a JSON array of ids) whose lease is still expired: records a failed
    /// attempt for each, then requeues it (or marks it dead when out of attempts, or cancelled when
    /// a cancel was requested). Both statements
    /// re-check the predicate inside the write transaction, so a stale id list is harmless.
    /// Returns the number of jobs reaped.
    fn reap_ids(&mut self, ids: &[i64], error: &str, now: NaiveDateTime) -> Result<usize> {
        let ids_json = json_array("job ids", ids)?;
        let ids_json = ids_json.as_str();
        cached(
            "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, \
                                  worker_id) \
             SELECT id, attempts, 'failed', NULL, ?, ?, 0, worker_id FROM jobs \
             WHERE id IN (SELECT value FROM json_each(?)) \
               AND state = 'running' AND lease_expires_at < ?",
            (
                bind::<Text, _>(error),
                bind::<Timestamp, _>(now),
                bind::<Text, _>(ids_json),
                bind::<Timestamp, _>(now),
            ),
        )
        .execute(self)?;
        Ok(cached(
            "UPDATE jobs SET \
               state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                            WHEN attempts - attempt_base >= max_attempts THEN 'dead' ELSE 'queued' END, \
               run_at = ?, last_error = ?, lease_expires_at = NULL, updated_at = ? \
             WHERE id IN (SELECT value FROM json_each(?)) \
               AND state = 'running' AND lease_expires_at < ?",
            (
                bind::<Timestamp, _>(now),
                bind::<Text, _>(error),
                bind::<Timestamp, _>(now),
                bind::<Text, _>(ids_json),
                bind::<Timestamp, _>(now),
            ),
        )
        .execute(self)?)
    }
}
