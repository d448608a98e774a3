//! SQLite SQL for the operator features: unique enqueue, cancel, retry, prune, pause and
//! periodic schedules, and the per-queue activity numbers of `stats`. SQL only; the logic is
//! in `queue.rs` and `manage.rs`.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
use diesel::sqlite::SqliteConnection;

use crate::driver::stmt::{bind, cached};
use crate::driver::ActivityRow;
use crate::driver::{json_array, state_names, ManageDriver};
use crate::error::Result;
use crate::models::{JobState, Lease, NewJob};
use crate::schema::jobs;

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

impl ManageDriver for SqliteConnection {
    /// Inserts a job that has a unique key: `INSERT … ON CONFLICT DO NOTHING` against the partial
    /// unique index over live jobs, then, if nothing was inserted, the live job's id. Both run in
    /// the caller's write transaction, so the existing job cannot finish in between. Returns
    /// `(id, inserted)`.
    fn insert_new_unique(&mut self, job: &NewJob, now: NaiveDateTime) -> Result<(i64, bool)> {
        let row = &super::insert_row(job, now);
        let inserted: Option<i64> = diesel::insert_into(jobs::table)
            .values(row)
            .on_conflict_do_nothing()
            .returning(jobs::id)
            .get_result(self)
            .optional()?;
        if let Some(id) = inserted {
            return Ok((id, true));
        }
        // `state IN (…)` is written exactly as in the index's WHERE so the index serves it.
        let existing: Id = cached(
            "SELECT id FROM jobs WHERE queue = ? AND unique_key = ? \
             AND unique_key IS NOT NULL AND state IN ('queued', 'running')",
            (
                bind::<Text, _>(row.queue),
                bind::<Nullable<Text>, _>(row.unique_key),
            ),
        )
        .get_result(self)?;
        Ok((existing.id, false))
    }

    /// Cancels a queued job. Rows changed (0 or 1).
    fn cancel_queued(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(cached(
            "UPDATE jobs SET state = 'cancelled', updated_at = ?, cancel_requested_at = ? \
             WHERE id = ? AND state = 'queued'",
            (
                bind::<Timestamp, _>(now),
                bind::<Timestamp, _>(now),
                bind::<BigInt, _>(job_id),
            ),
        )
        .execute(self)?)
    }

    /// Flags a running job for cancellation (keeps the first request's time). Rows changed.
    fn request_cancel(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(cached(
            "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, ?), updated_at = ? \
             WHERE id = ? AND state = 'running'",
            (
                bind::<Timestamp, _>(now),
                bind::<Timestamp, _>(now),
                bind::<BigInt, _>(job_id),
            ),
        )
        .execute(self)?)
    }

    /// Ends a running attempt whose cancel was requested as `cancelled`, if the lease is still
    /// ours. Rows changed (0 or 1).
    fn finish_cancelled(&mut self, lease: Lease, error: &str, now: NaiveDateTime) -> Result<usize> {
        let Lease { job_id, attempt } = lease;
        Ok(cached(
            "UPDATE jobs SET state = 'cancelled', lease_expires_at = NULL, last_error = ?, \
               updated_at = ? \
             WHERE id = ? AND state = 'running' AND attempts = ? \
               AND cancel_requested_at IS NOT NULL",
            (
                bind::<Text, _>(error),
                bind::<Timestamp, _>(now),
                bind::<BigInt, _>(job_id),
                bind::<diesel::sql_types::Integer, _>(attempt),
            ),
        )
        .execute(self)?)
    }

    /// Puts a `dead` or `cancelled` job back to `queued`, due now, with fresh attempts (counted
    /// from the attempts so far, which stay unique fencing tokens). Rows changed (0 or 1).
    fn requeue_finished(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(cached(
            "UPDATE jobs SET state = 'queued', attempt_base = attempts, run_at = ?, \
               cancel_requested_at = NULL, worker_id = NULL, heartbeat_at = NULL, \
               lease_expires_at = NULL, updated_at = ? \
             WHERE id = ? AND state IN ('dead', 'cancelled')",
            (
                bind::<Timestamp, _>(now),
                bind::<Timestamp, _>(now),
                bind::<BigInt, _>(job_id),
            ),
        )
        .execute(self)?)
    }

    /// Up to `limit` ids (ascending, above `after_id`) of jobs in one of `states_json` (a JSON
    /// array of state names) last changed before `before`. A scan, run on a reader.
    fn finished_before(
        &mut self,
        states: &[JobState],
        before: NaiveDateTime,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<i64>> {
        let states_json = json_array("states", &state_names(states))?;
        let states_json = states_json.as_str();
        let rows: Vec<Id> = cached(
            "SELECT id FROM jobs WHERE id > ? AND updated_at < ? \
               AND state IN (SELECT value FROM json_each(?)) \
               AND state IN ('succeeded', 'dead', 'cancelled') \
             ORDER BY id LIMIT ?",
            (
                bind::<BigInt, _>(after_id),
                bind::<Timestamp, _>(before),
                bind::<Text, _>(states_json),
                bind::<BigInt, _>(limit),
            ),
        )
        .load(self)?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Deletes the listed jobs (JSON array of ids) that are still finished in one of
    /// `states_json` and older than `before`; their results go with them (ON DELETE CASCADE).
    /// Returns jobs deleted.
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
        Ok(cached(
            "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND updated_at < ? \
               AND state IN (SELECT value FROM json_each(?)) \
               AND state IN ('succeeded', 'dead', 'cancelled')",
            (
                bind::<Text, _>(ids_json),
                bind::<Timestamp, _>(before),
                bind::<Text, _>(states_json),
            ),
        )
        .execute(self)?)
    }

    /// Pauses a queue (idempotent). Returns whether it was running before.
    fn pause_queue(&mut self, queue: &str, now: NaiveDateTime) -> Result<bool> {
        Ok(cached(
            "INSERT INTO paused_queues (queue, paused_at) VALUES (?, ?) ON CONFLICT (queue) DO NOTHING",
            (bind::<Text, _>(queue), bind::<Timestamp, _>(now)),
        )
        .execute(self)?
            == 1)
    }

    /// Resumes a queue (idempotent). Returns whether it was paused.
    fn resume_queue(&mut self, queue: &str) -> Result<bool> {
        Ok(cached(
            "DELETE FROM paused_queues WHERE queue = ?",
            (bind::<Text, _>(queue),),
        )
        .execute(self)?
            == 1)
    }

    /// Names of paused queues.
    fn paused_queues(&mut self) -> Result<Vec<String>> {
        use crate::schema::paused_queues::dsl;
        Ok(dsl::paused_queues
            .select(dsl::queue)
            .order(dsl::queue)
            .load(self)?)
    }

    /// Compare-and-set of a schedule's last tick: records `tick` only if it is later than the
    /// stored one (or the schedule is new). Returns whether this call advanced it, which is what
    /// makes the tick's job this caller's to enqueue, in the same transaction.
    fn advance_schedule(
        &mut self,
        name: &str,
        tick: NaiveDateTime,
        now: NaiveDateTime,
    ) -> Result<bool> {
        #[derive(QueryableByName)]
        struct Name {
            #[diesel(sql_type = Text)]
            #[allow(dead_code)] // only its presence matters
            name: String,
        }
        let advanced: Option<Name> = cached(
            "INSERT INTO schedules (name, last_tick, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick, \
               updated_at = excluded.updated_at \
             WHERE excluded.last_tick > schedules.last_tick \
             RETURNING name",
            (
                bind::<Text, _>(name),
                bind::<Timestamp, _>(tick),
                bind::<Timestamp, _>(now),
            ),
        )
        .get_result(self)
        .optional()?;
        Ok(advanced.is_some())
    }

    /// The overview's one scan. SQLite sorts for GROUP BY (no index leads with `queue`, by
    /// design: see the claim index's migration), so this is the price of one sort of the
    /// table's groups; `jobdb serve` runs it in the background, not per request.
    fn overview_rows(
        &mut self,
        hour_ago: NaiveDateTime,
        now: NaiveDateTime,
        minute_ago: NaiveDateTime,
    ) -> Result<Vec<crate::driver::OverviewRow>> {
        Ok(diesel::sql_query(
            "SELECT queue, state, \
               CASE WHEN state = 'succeeded' AND updated_at >= ?1 \
                    THEN CAST((julianday(updated_at) - julianday(?1)) * 1440 AS INTEGER) END \
                 AS minute, \
               count(*) AS n, \
               (julianday(?2) - julianday(min(CASE WHEN state = 'queued' AND run_at <= ?2 \
                                               THEN run_at END))) * 86400.0 AS oldest_due_s, \
               coalesce(sum(updated_at >= ?3), 0) AS recent \
             FROM jobs GROUP BY queue, state, minute",
        )
        .bind::<Timestamp, _>(hour_ago)
        .bind::<Timestamp, _>(now)
        .bind::<Timestamp, _>(minute_ago)
        .load(self)?)
    }

    fn queue_activity(
        &mut self,
        queue: Option<&str>,
        now: NaiveDateTime,
        since: NaiveDateTime,
    ) -> Result<Vec<ActivityRow>> {
        let rows: Vec<ActivityRow> = cached(
            "SELECT queue, \
               (julianday(?) - julianday(min(CASE WHEN state = 'queued' AND run_at <= ? \
                                               THEN run_at END))) * 86400.0 AS oldest_due_s, \
               coalesce(sum(state = 'succeeded' AND updated_at >= ?), 0) AS succeeded, \
               coalesce(sum(state = 'dead' AND updated_at >= ?), 0) AS dead \
             FROM jobs WHERE (? IS NULL OR queue = ?) GROUP BY queue",
            (
                bind::<Timestamp, _>(now),
                bind::<Timestamp, _>(now),
                bind::<Timestamp, _>(since),
                bind::<Timestamp, _>(since),
                bind::<Nullable<Text>, _>(queue),
                bind::<Nullable<Text>, _>(queue),
            ),
        )
        .load(self)?;
        Ok(rows)
    }
}
