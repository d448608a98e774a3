//! PostgreSQL SQL for the operator features (the counterpart of `backend::sqlite::manage`).

use chrono::NaiveDateTime;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};

use super::{utc, Id};
use crate::driver::{json_array, state_names, ManageDriver};
use crate::error::Result;
use crate::models::{JobState, Lease, NewJob};

impl ManageDriver for PgConnection {
    /// Inserts a job that has a unique key: `ON CONFLICT DO NOTHING` against the partial unique
    /// index over live jobs, then, if nothing was inserted, the live job's id, in the caller's
    /// transaction. Returns `(id, inserted)`.
    ///
    /// Under READ COMMITTED each statement takes a new snapshot, so the live job that made the
    /// INSERT skip can finish (leave `queued`/`running`) before the SELECT runs: then the SELECT
    /// finds nothing and the INSERT is tried again, which now succeeds or meets the next live
    /// job. Each round needs another job to go live and finish in between, so a few rounds end it.
    fn insert_new_unique(&mut self, job: &NewJob, now: NaiveDateTime) -> Result<(i64, bool)> {
        let row = &super::insert_row(job, now)?;
        /// Rounds before giving up: each needs a live job to appear and finish in between.
        const ROUNDS: usize = 16;
        let json = serde_json::to_string(&[row]).map_err(|source| crate::Error::Json {
            what: "job",
            source,
        })?;
        for _ in 0..ROUNDS {
            let inserted: Option<Id> = diesel::sql_query(
                "INSERT INTO jobs (queue, state, priority, payload, attempts, max_attempts, run_at, \
                                   created_at, updated_at, unique_key, timeout_ms) \
                 SELECT r.queue, 'queued', r.priority, r.payload, 0, r.max_attempts, r.run_at, $2, $2, \
                        r.unique_key, r.timeout_ms \
                 FROM jsonb_to_recordset($1::jsonb) AS r(queue text, priority int, payload jsonb, \
                        max_attempts int, run_at timestamptz, unique_key text, timeout_ms bigint) \
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind::<Text, _>(&json)
            .bind::<Timestamptz, _>(utc(now))
            .get_result(self)
            .optional()?;
            if let Some(r) = inserted {
                return Ok((r.id, true));
            }
            let existing: Option<Id> = diesel::sql_query(
                "SELECT id FROM jobs WHERE queue = $1 AND unique_key = $2 \
                 AND unique_key IS NOT NULL AND state IN ('queued', 'running')",
            )
            .bind::<Text, _>(row.queue)
            .bind::<Nullable<Text>, _>(row.unique_key)
            .get_result(self)
            .optional()?;
            if let Some(existing) = existing {
                return Ok((existing.id, false));
            }
        }
        Err(crate::Error::Internal {
            what: "unique enqueue",
            reason: format!(
                "the live job holding the unique key changed {ROUNDS} times between an insert and \
                 its look-up"
            ),
        })
    }

    /// Cancels a queued job. Rows changed (0 or 1).
    fn cancel_queued(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(diesel::sql_query(
            "UPDATE jobs SET state = 'cancelled', updated_at = $1, cancel_requested_at = $1 \
             WHERE id = $2 AND state = 'queued'",
        )
        .bind::<Timestamptz, _>(utc(now))
        .bind::<BigInt, _>(job_id)
        .execute(self)?)
    }

    /// Flags a running job for cancellation (keeps the first request's time). Rows changed.
    fn request_cancel(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(diesel::sql_query(
            "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, $1), updated_at = $1 \
             WHERE id = $2 AND state = 'running'",
        )
        .bind::<Timestamptz, _>(utc(now))
        .bind::<BigInt, _>(job_id)
        .execute(self)?)
    }

    /// Ends a running attempt whose cancel was requested as `cancelled`, if the lease is still
    /// ours. Rows changed (0 or 1).
    fn finish_cancelled(&mut self, lease: Lease, error: &str, now: NaiveDateTime) -> Result<usize> {
        let Lease { job_id, attempt } = lease;
        Ok(diesel::sql_query(
            "UPDATE jobs SET state = 'cancelled', lease_expires_at = NULL, last_error = $1, \
               updated_at = $2 \
             WHERE id = $3 AND state = 'running' AND attempts = $4 \
               AND cancel_requested_at IS NOT NULL",
        )
        .bind::<Text, _>(error)
        .bind::<Timestamptz, _>(utc(now))
        .bind::<BigInt, _>(job_id)
        .bind::<Integer, _>(attempt)
        .execute(self)?)
    }

    /// Puts a `dead` or `cancelled` job back to `queued`, due now, with fresh attempts. Rows
    /// changed (0 or 1).
    fn requeue_finished(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(diesel::sql_query(
            "UPDATE jobs SET state = 'queued', attempt_base = attempts, run_at = $1, \
               cancel_requested_at = NULL, worker_id = NULL, heartbeat_at = NULL, \
               lease_expires_at = NULL, updated_at = $1 \
             WHERE id = $2 AND state IN ('dead', 'cancelled')",
        )
        .bind::<Timestamptz, _>(utc(now))
        .bind::<BigInt, _>(job_id)
        .execute(self)?)
    }

    /// Up to `limit` ids (ascending, above `after_id`) of finished jobs in one of `states_json`
    /// last changed before `before`.
    fn finished_before(
        &mut self,
        states: &[JobState],
        before: NaiveDateTime,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<i64>> {
        let states_json = json_array("states", &state_names(states))?;
        let states_json = states_json.as_str();
        let rows: Vec<Id> = diesel::sql_query(
            "SELECT id FROM jobs WHERE id > $1 AND updated_at < $2 \
               AND state IN (SELECT jsonb_array_elements_text($3::jsonb)) \
               AND state IN ('succeeded', 'dead', 'cancelled') \
             ORDER BY id LIMIT $4",
        )
        .bind::<BigInt, _>(after_id)
        .bind::<Timestamptz, _>(utc(before))
        .bind::<Text, _>(states_json)
        .bind::<BigInt, _>(limit)
        .load(self)?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Deletes the listed jobs that are still finished in one of `states_json` and older than
    /// `before`; their results go with them. Returns jobs deleted.
    fn delete_finished(
        &mut self,
        ids: &[i64],
        states: &[JobState],
        before: NaiveDateTime,
    ) -> Result<usize> {
        let ids_json = json_array("job ids", ids)?;
        let ids_json = ids_json.as_str();
        let states_json = json_array("states", &state_names(states))?;
        let states_json = states_json.as_str();
        Ok(diesel::sql_query(
            "DELETE FROM jobs \
             WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text($1::jsonb)) \
               AND updated_at < $2 \
               AND state IN (SELECT jsonb_array_elements_text($3::jsonb)) \
               AND state IN ('succeeded', 'dead', 'cancelled')",
        )
        .bind::<Text, _>(ids_json)
        .bind::<Timestamptz, _>(utc(before))
        .bind::<Text, _>(states_json)
        .execute(self)?)
    }

    /// Pauses a queue (idempotent). Returns whether it was running before.
    fn pause_queue(&mut self, queue: &str, now: NaiveDateTime) -> Result<bool> {
        Ok(diesel::sql_query(
            "INSERT INTO paused_queues (queue, paused_at) VALUES ($1, $2) \
             ON CONFLICT (queue) DO NOTHING",
        )
        .bind::<Text, _>(queue)
        .bind::<Timestamptz, _>(utc(now))
        .execute(self)?
            == 1)
    }

    /// Resumes a queue (idempotent). Returns whether it was paused.
    fn resume_queue(&mut self, queue: &str) -> Result<bool> {
        Ok(
            diesel::sql_query("DELETE FROM paused_queues WHERE queue = $1")
                .bind::<Text, _>(queue)
                .execute(self)?
                == 1,
        )
    }

    /// Names of paused queues.
    fn paused_queues(&mut self) -> Result<Vec<String>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            queue: String,
        }
        let rows: Vec<Row> =
            diesel::sql_query("SELECT queue FROM paused_queues ORDER BY queue").load(self)?;
        Ok(rows.into_iter().map(|r| r.queue).collect())
    }

    /// Compare-and-set of a schedule's last tick: records `tick` only if it is later than the
    /// stored one (or the schedule is new). Returns whether this call advanced it.
    fn advance_schedule(
        &mut self,
        name: &str,
        tick: NaiveDateTime,
        now: NaiveDateTime,
    ) -> Result<bool> {
        Ok(diesel::sql_query(
            "INSERT INTO schedules (name, last_tick, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick, \
               updated_at = excluded.updated_at \
             WHERE excluded.last_tick > schedules.last_tick",
        )
        .bind::<Text, _>(name)
        .bind::<Timestamptz, _>(utc(tick))
        .bind::<Timestamptz, _>(utc(now))
        .execute(self)?
            == 1)
    }

    /// The overview's one scan, the same rows as SQLite's.
    fn overview_rows(
        &mut self,
        hour_ago: NaiveDateTime,
        now: NaiveDateTime,
        minute_ago: NaiveDateTime,
    ) -> Result<Vec<crate::driver::OverviewRow>> {
        Ok(diesel::sql_query(
            "SELECT queue, state, \
               CASE WHEN state = 'succeeded' AND updated_at >= $1 \
                    THEN floor(extract(epoch FROM updated_at - $1) / 60)::bigint END AS minute, \
               count(*) AS n, \
               extract(epoch FROM $2 - min(run_at) FILTER (WHERE state = 'queued' AND run_at <= $2)) \
                 ::float8 AS oldest_due_s, \
               count(*) FILTER (WHERE updated_at >= $3) AS recent \
             FROM jobs GROUP BY queue, state, minute",
        )
        .bind::<Timestamptz, _>(utc(hour_ago))
        .bind::<Timestamptz, _>(utc(now))
        .bind::<Timestamptz, _>(utc(minute_ago))
        .load(self)?)
    }

    /// Per-queue activity, the same rows as SQLite's `queue_activity`.
    fn queue_activity(
        &mut self,
        queue: Option<&str>,
        now: NaiveDateTime,
        since: NaiveDateTime,
    ) -> Result<Vec<crate::driver::ActivityRow>> {
        Ok(diesel::sql_query(
            "SELECT queue, \
               extract(epoch FROM $1 - min(run_at) FILTER (WHERE state = 'queued' AND run_at <= $1)) \
                 ::float8 AS oldest_due_s, \
               count(*) FILTER (WHERE state = 'succeeded' AND updated_at >= $2) AS succeeded, \
               count(*) FILTER (WHERE state = 'dead' AND updated_at >= $2) AS dead \
             FROM jobs WHERE $3::text IS NULL OR queue = $3 GROUP BY queue",
        )
        .bind::<Timestamptz, _>(utc(now))
        .bind::<Timestamptz, _>(utc(since))
        .bind::<Nullable<Text>, _>(queue)
        .load(self)?)
    }
}
