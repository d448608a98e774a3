//! MySQL / MariaDB SQL for the operator features (the counterpart of the other drivers'
//! `manage.rs`).

use chrono::NaiveDateTime;
use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Integer, Nullable, Text};

use super::{id_list, state_list, Id};
use crate::driver::stmt::{bind, cached};
use crate::driver::ManageDriver;
use crate::error::{Error, Result};
use crate::models::{JobState, Lease, NewJob};

/// Whether `r` failed on a unique index (ER_DUP_ENTRY); the failed statement alone is undone
/// and the transaction goes on, as MySQL does.
fn duplicate<T>(r: &Result<T>) -> bool {
    matches!(r, Err(e) if e.is_unique_violation())
}

impl ManageDriver for MysqlConnection {
    /// Inserts a job that has a unique key, in the caller's transaction: `(id, inserted)`.
    ///
    /// No check-then-insert: the INSERT meets the unique index on `live_unique_key` (the
    /// key's hash while a job is live). A concurrent uncommitted insert of the same key makes
    /// it wait for that transaction's end; a duplicate fails the statement alone (ER_DUP_ENTRY)
    /// and the live job's id is read. That job may finish between the two statements (READ
    /// COMMITTED reads the newest commit): then the INSERT is tried again, as on PostgreSQL.
    fn insert_new_unique(&mut self, job: &NewJob, now: NaiveDateTime) -> Result<(i64, bool)> {
        /// Rounds before giving up: each needs a live job to appear and finish in between.
        const ROUNDS: usize = 16;
        for _ in 0..ROUNDS {
            let inserted = super::insert_jobs(self, std::slice::from_ref(job), now);
            if !duplicate(&inserted) {
                let ids = inserted?;
                return match ids.first() {
                    Some(id) => Ok((*id, true)),
                    None => Err(Error::Internal {
                        what: "unique enqueue",
                        reason: "an INSERT of one job returned no id".into(),
                    }),
                };
            }
            let existing: Option<Id> = cached(
                "SELECT id FROM jobs WHERE queue = ? AND unique_key = ? \
                 AND state IN ('queued', 'running')",
                (
                    bind::<Text, _>(&job.queue),
                    bind::<Nullable<Text>, _>(job.unique_key.as_deref()),
                ),
            )
            .get_result(self)
            .optional()?;
            if let Some(existing) = existing {
                return Ok((existing.id, false));
            }
        }
        Err(Error::Internal {
            what: "unique enqueue",
            reason: format!(
                "the live job holding the unique key changed {ROUNDS} times between an insert and \
                 its look-up"
            ),
        })
    }

    /// Cancels a queued job. Rows changed (0 or 1).
    fn cancel_queued(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(cached(
            "UPDATE jobs SET state = 'cancelled', updated_at = ?, cancel_requested_at = ? \
             WHERE id = ? AND state = 'queued'",
            (
                bind::<Datetime, _>(now),
                bind::<Datetime, _>(now),
                bind::<BigInt, _>(job_id),
            ),
        )
        .execute(self)?)
    }

    /// Flags a running job for cancellation (keeps the first request's time). Rows changed.
    fn request_cancel(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(cached(
            "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ?), \
               updated_at = ? WHERE id = ? AND state = 'running'",
            (
                bind::<Datetime, _>(now),
                bind::<Datetime, _>(now),
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
                bind::<Datetime, _>(now),
                bind::<BigInt, _>(job_id),
                bind::<Integer, _>(attempt),
            ),
        )
        .execute(self)?)
    }

    /// Puts a `dead` or `cancelled` job back to `queued`, due now, with fresh attempts. Rows
    /// changed (0 or 1). (`attempt_base = attempts` reads the unchanged `attempts`.)
    fn requeue_finished(&mut self, job_id: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(cached(
            "UPDATE jobs SET state = 'queued', attempt_base = attempts, run_at = ?, \
               cancel_requested_at = NULL, worker_id = NULL, heartbeat_at = NULL, \
               lease_expires_at = NULL, updated_at = ? \
             WHERE id = ? AND state IN ('dead', 'cancelled')",
            (
                bind::<Datetime, _>(now),
                bind::<Datetime, _>(now),
                bind::<BigInt, _>(job_id),
            ),
        )
        .execute(self)?)
    }

    /// Up to `limit` ids (ascending, above `after_id`) of finished jobs in one of `states`
    /// last changed before `before`.
    fn finished_before(
        &mut self,
        states: &[JobState],
        before: NaiveDateTime,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<i64>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Id> = diesel::sql_query(format!(
            "SELECT id FROM jobs WHERE id > ? AND updated_at < ? AND state IN {} \
               AND state IN ('succeeded', 'dead', 'cancelled') \
             ORDER BY id LIMIT ?",
            state_list(states)
        ))
        .bind::<BigInt, _>(after_id)
        .bind::<Datetime, _>(before)
        .bind::<BigInt, _>(limit)
        .load(self)?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Deletes the listed jobs that are still finished in one of `states` and older than
    /// `before`; their results go with them (the foreign key cascades). Jobs deleted.
    fn delete_finished(
        &mut self,
        ids: &[i64],
        states: &[JobState],
        before: NaiveDateTime,
    ) -> Result<usize> {
        if ids.is_empty() || states.is_empty() {
            return Ok(0);
        }
        Ok(diesel::sql_query(format!(
            "DELETE FROM jobs WHERE id IN {} AND updated_at < ? AND state IN {} \
               AND state IN ('succeeded', 'dead', 'cancelled')",
            id_list(ids),
            state_list(states)
        ))
        .bind::<Datetime, _>(before)
        .execute(self)?)
    }

    /// Pauses a queue (idempotent). Returns whether it was running before. (MySQL's affected
    /// rows cannot tell `ON DUPLICATE KEY` "unchanged" from "inserted" under
    /// CLIENT_FOUND_ROWS, so a duplicate is told by its error.)
    fn pause_queue(&mut self, queue: &str, now: NaiveDateTime) -> Result<bool> {
        let inserted: Result<usize> = cached(
            "INSERT INTO paused_queues (queue, paused_at) VALUES (?, ?)",
            (bind::<Text, _>(queue), bind::<Datetime, _>(now)),
        )
        .execute(self)
        .map_err(Error::from);
        if duplicate(&inserted) {
            return Ok(false);
        }
        Ok(inserted? == 1)
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
    ///
    /// A fenced UPDATE; if no row changed, an INSERT for a new schedule; if the schedule
    /// exists (a duplicate: its tick is not earlier, or another process inserted it since the
    /// UPDATE), the UPDATE once more against the stored tick.
    fn advance_schedule(
        &mut self,
        name: &str,
        tick: NaiveDateTime,
        now: NaiveDateTime,
    ) -> Result<bool> {
        let update = |c: &mut Self| -> Result<bool> {
            Ok(cached(
                "UPDATE schedules SET last_tick = ?, updated_at = ? \
                 WHERE name = ? AND last_tick < ?",
                (
                    bind::<Datetime, _>(tick),
                    bind::<Datetime, _>(now),
                    bind::<Text, _>(name),
                    bind::<Datetime, _>(tick),
                ),
            )
            .execute(c)?
                == 1)
        };
        if update(self)? {
            return Ok(true);
        }
        let inserted: Result<usize> = cached(
            "INSERT INTO schedules (name, last_tick, updated_at) VALUES (?, ?, ?)",
            (
                bind::<Text, _>(name),
                bind::<Datetime, _>(tick),
                bind::<Datetime, _>(now),
            ),
        )
        .execute(self)
        .map_err(Error::from);
        if duplicate(&inserted) {
            return update(self);
        }
        Ok(inserted? == 1)
    }

    /// The overview's one scan, the same rows as the other drivers'.
    fn overview_rows(
        &mut self,
        hour_ago: NaiveDateTime,
        now: NaiveDateTime,
        minute_ago: NaiveDateTime,
    ) -> Result<Vec<crate::driver::OverviewRow>> {
        Ok(diesel::sql_query(
            "SELECT queue, state, \
               CASE WHEN state = 'succeeded' AND updated_at >= ? \
                    THEN FLOOR(TIMESTAMPDIFF(MICROSECOND, ?, updated_at) / 60000000) END AS minute, \
               COUNT(*) AS n, \
               TIMESTAMPDIFF(MICROSECOND, \
                 MIN(CASE WHEN state = 'queued' AND run_at <= ? THEN run_at END), ?) / 1e6 \
                 AS oldest_due_s, \
               COALESCE(SUM(updated_at >= ?), 0) AS recent \
             FROM jobs GROUP BY queue, state, minute",
        )
        .bind::<Datetime, _>(hour_ago)
        .bind::<Datetime, _>(hour_ago)
        .bind::<Datetime, _>(now)
        .bind::<Datetime, _>(now)
        .bind::<Datetime, _>(minute_ago)
        .load(self)?)
    }

    /// Per-queue activity, the same rows as the other drivers' `queue_activity`.
    fn queue_activity(
        &mut self,
        queue: Option<&str>,
        now: NaiveDateTime,
        since: NaiveDateTime,
    ) -> Result<Vec<crate::driver::ActivityRow>> {
        Ok(diesel::sql_query(
            "SELECT queue, \
               TIMESTAMPDIFF(MICROSECOND, \
                 MIN(CASE WHEN state = 'queued' AND run_at <= ? THEN run_at END), ?) / 1e6 \
                 AS oldest_due_s, \
               COALESCE(SUM(state = 'succeeded' AND updated_at >= ?), 0) AS succeeded, \
               COALESCE(SUM(state = 'dead' AND updated_at >= ?), 0) AS dead \
             FROM jobs WHERE ? IS NULL OR queue = ? GROUP BY queue",
        )
        .bind::<Datetime, _>(now)
        .bind::<Datetime, _>(now)
        .bind::<Datetime, _>(since)
        .bind::<Datetime, _>(since)
        .bind::<Nullable<Text>, _>(queue)
        .bind::<Nullable<Text>, _>(queue)
        .load(self)?)
    }
}
