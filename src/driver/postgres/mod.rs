//! PostgreSQL SQL, and nothing else: the same functions as `backend::sqlite`, with the same
//! names, arguments and results, so the queue logic can sit on either.
//!
//! Differences that matter:
//! - The claim is one statement: a CTE picks due jobs `ORDER BY priority, run_at, id LIMIT n
//!   FOR UPDATE SKIP LOCKED` and the UPDATE marks them running. Concurrent claimers skip each
//!   other's locked rows instead of waiting on them, so no two get the same job and none
//!   queues behind another.
//! - Write transactions are plain `BEGIN` (READ COMMITTED): every write is a single fenced
//!   UPDATE/INSERT whose WHERE PostgreSQL re-checks against the newest row version, so no
//!   stronger isolation is needed and serialization failures cannot happen.
//! - Columns are TIMESTAMPTZ and JSONB; rows are read back as UTC `timestamp` and `text`
//!   (`AT TIME ZONE 'UTC'`, `::text`) into the same row types as SQLite's, and timestamps are
//!   bound as instants (`Timestamptz`), so the session's TimeZone setting never matters.
//! - Sets of leases or ids travel as one JSONB array (`jsonb_array_elements`), as SQLite's
//!   travel through `json_each`.

use std::sync::OnceLock;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};

use crate::driver::stmt::{bind, cached};
use crate::driver::{parse_state, ClaimParams, FailParams, JobDriver};
use crate::error::{Error, Result};
use crate::models::JobState;
use crate::models::{JobRow, Lease, NewJob, NewResultRow};

mod batch;
mod copy;
mod manage;
mod read;

/// The columns of `jobs` as [`JobRow`] reads them.
pub(crate) const JOB_COLUMNS: &str = "id, queue, state, priority, payload::text AS payload, \
    attempts, max_attempts, (run_at AT TIME ZONE 'UTC') AS run_at, \
    (created_at AT TIME ZONE 'UTC') AS created_at, (updated_at AT TIME ZONE 'UTC') AS updated_at, \
    worker_id, (heartbeat_at AT TIME ZONE 'UTC') AS heartbeat_at, \
    (lease_expires_at AT TIME ZONE 'UTC') AS lease_expires_at, last_error, unique_key, \
    (cancel_requested_at AT TIME ZONE 'UTC') AS cancel_requested_at, attempt_base, timeout_ms, \
    progress::text AS progress";

/// A UTC timestamp as an instant, for binding to TIMESTAMPTZ.
pub(crate) fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

#[derive(QueryableByName)]
pub(crate) struct Id {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
}

/// A job to insert, as one element of the JSONB array [`insert_jobs`] takes.
#[derive(Debug, serde::Serialize)]
#[allow(missing_docs)] // the columns are documented in the migration
pub struct InsertJob<'a> {
    pub queue: &'a str,
    pub priority: i32,
    /// The payload, embedded as JSON (not as a string).
    pub payload: Box<serde_json::value::RawValue>,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<&'a str>,
    pub timeout_ms: Option<i64>,
}

/// A validated job's row.
pub(crate) fn insert_row(j: &NewJob, now: NaiveDateTime) -> Result<InsertJob<'_>> {
    let payload =
        serde_json::value::RawValue::from_string(j.payload.clone()).map_err(|source| {
            Error::Json {
                what: "payload",
                source,
            }
        })?;
    Ok(InsertJob {
        queue: &j.queue,
        priority: j.priority,
        payload,
        max_attempts: j.max_attempts,
        run_at: j.run_at.unwrap_or_else(|| utc(now)),
        unique_key: j.unique_key.as_deref(),
        timeout_ms: j.timeout_ms(),
    })
}

/// The channel enqueues `NOTIFY` and idle workers' listeners `LISTEN` on, as a literal for
/// `concat!`.
macro_rules! enqueued_channel {
    () => {
        "jobdb_enqueued"
    };
}

/// `NOTIFY` on it, as one fixed statement.
const NOTIFY_ENQUEUED: &str = concat!("NOTIFY ", enqueued_channel!());
/// `LISTEN` on it.
pub const LISTEN_ENQUEUED: &str = concat!("LISTEN ", enqueued_channel!());

/// Inserts the rows in one statement and returns their ids in the order given (the sequence
/// numbers rows in the order of `ord`; we sort, as RETURNING's order is unspecified).
pub fn insert_jobs(
    conn: &mut PgConnection,
    rows: &[InsertJob<'_>],
    now: NaiveDateTime,
) -> Result<Vec<i64>> {
    let json = serde_json::to_string(rows).map_err(|source| Error::Json {
        what: "jobs",
        source,
    })?;
    let mut ids: Vec<i64> = diesel::sql_query(
        "INSERT INTO jobs (queue, state, priority, payload, attempts, max_attempts, run_at, \
                           created_at, updated_at, unique_key, timeout_ms) \
         SELECT r.queue, 'queued', r.priority, r.payload, 0, r.max_attempts, r.run_at, $2, $2, \
                r.unique_key, r.timeout_ms \
         FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (queue text, priority int, \
                payload jsonb, max_attempts int, run_at timestamptz, unique_key text, \
                timeout_ms bigint)) \
              WITH ORDINALITY AS r(queue, priority, payload, max_attempts, run_at, unique_key, \
                                   timeout_ms, ord) \
         ORDER BY r.ord RETURNING id",
    )
    .bind::<Text, _>(json)
    .bind::<Timestamptz, _>(utc(now))
    .load::<Id>(conn)?
    .into_iter()
    .map(|r| r.id)
    .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The claim statement, built once (it embeds the column list).
fn claim_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH picked AS ( \
           SELECT id FROM jobs \
           WHERE queue = ? AND state = 'queued' AND run_at <= ? \
             AND NOT EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue = ?) \
           ORDER BY priority, run_at, id LIMIT ? \
           FOR UPDATE SKIP LOCKED) \
         UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, \
           heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
         WHERE id IN (SELECT id FROM picked) \
         RETURNING {JOB_COLUMNS}"
        )
    })
}

#[derive(QueryableByName)]
struct Cancel {
    #[diesel(sql_type = Integer)]
    cancel: i32,
}

impl JobDriver for PgConnection {
    const GROUP_COMMIT: bool = false;
    const NAME: &'static str = "postgres";

    /// Runs `f` as one write transaction (a savepoint inside the caller's transaction).
    fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut PgConnection) -> Result<T>,
    ) -> Result<T> {
        self.transaction(f)
    }

    /// Whether a transaction is open (or left in error).
    fn in_transaction(&mut self) -> bool {
        crate::driver::in_transaction(self)
    }

    /// `lc_messages = 'C'` where the role may, as the pool's customizer sets it.
    fn prepare_session(&mut self) -> Result<()> {
        crate::pool::english_messages(self);
        Ok(())
    }

    /// Outside a transaction the statement alone (it commits by itself, saving the BEGIN and
    /// COMMIT round trips); inside one, a savepoint.
    fn atomic_write<T>(&mut self, f: impl FnOnce(&mut PgConnection) -> Result<T>) -> Result<T> {
        if crate::driver::in_transaction(self) {
            self.write_transaction(f)
        } else {
            f(self)
        }
    }

    /// Inserts validated jobs without unique keys; ids in the order given.
    fn insert_new(&mut self, jobs: &[NewJob], now: NaiveDateTime) -> Result<Vec<i64>> {
        let rows = jobs
            .iter()
            .map(|j| insert_row(j, now))
            .collect::<Result<Vec<_>>>()?;
        insert_jobs(self, &rows, now)
    }

    /// `NOTIFY`, delivered when the transaction commits.
    fn notify_enqueued(&mut self) -> Result<()> {
        diesel::sql_query(NOTIFY_ENQUEUED).execute(self)?;
        Ok(())
    }

    /// The claim: one statement takes up to `limit` due jobs of `queue` in (priority, run_at, id)
    /// order, skipping rows other claimers hold, and marks them running with a new attempt (the
    /// fencing token) and lease.
    fn claim(&mut self, p: &ClaimParams<'_>) -> Result<Vec<JobRow>> {
        let ClaimParams {
            queue,
            limit,
            worker_id,
            now,
            lease_expires_at,
        } = *p;
        let now = utc(now);
        let mut rows: Vec<JobRow> = cached(
            claim_sql(),
            (
                bind::<Text, _>(queue),
                bind::<Timestamptz, _>(now),
                bind::<Text, _>(queue),
                bind::<BigInt, _>(i64::from(limit)),
                bind::<Text, _>(worker_id),
                bind::<Timestamptz, _>(now),
                bind::<Timestamptz, _>(utc(lease_expires_at)),
                bind::<Timestamptz, _>(now),
            ),
        )
        .load(self)?;
        rows.sort_by_key(|r| (r.priority, r.run_at, r.id));
        Ok(rows)
    }

    /// `EXPLAIN` of the claim's SELECT, one line per plan node.
    fn explain_claim(&mut self) -> Result<String> {
        #[derive(QueryableByName)]
        struct Line {
            #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let lines: Vec<Line> = diesel::sql_query(
            "EXPLAIN SELECT id FROM jobs WHERE queue = 'default' AND state = 'queued' \
             AND run_at <= now() ORDER BY priority, run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .load(self)?;
        Ok(lines
            .into_iter()
            .map(|l| l.line)
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Extends a lease if it is still ours: `None` if it was not, else whether a cancel was
    /// requested (the lease is extended either way).
    fn heartbeat(
        &mut self,
        lease: Lease,
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Option<bool>> {
        let Lease { job_id, attempt } = lease;
        let now = utc(now);
        let row: Option<Cancel> = cached(
            "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, updated_at = ? \
             WHERE id = ? AND state = 'running' AND attempts = ? \
             RETURNING (cancel_requested_at IS NOT NULL)::int AS cancel",
            (
                bind::<Timestamptz, _>(now),
                bind::<Timestamptz, _>(utc(lease_expires_at)),
                bind::<Timestamptz, _>(now),
                bind::<BigInt, _>(job_id),
                bind::<Integer, _>(attempt),
            ),
        )
        .get_result(self)
        .optional()?;
        Ok(row.map(|r| r.cancel != 0))
    }

    /// Marks a failed attempt if the lease is still ours: `cancelled` if a cancel was requested,
    /// else back to `queued` at `retry_at` while attempts remain, else `dead`. Returns the new
    /// state, or `None` if the lease was not ours.
    fn mark_failed(&mut self, p: &FailParams<'_>) -> Result<Option<JobState>> {
        let FailParams {
            lease: Lease { job_id, attempt },
            error,
            now,
            retry_at,
        } = *p;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            state: String,
        }
        let row: Option<Row> = diesel::sql_query(
            "UPDATE jobs SET \
               state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                            WHEN attempts - attempt_base >= max_attempts THEN 'dead' \
                            ELSE 'queued' END, \
               run_at = CASE WHEN cancel_requested_at IS NOT NULL \
                               OR attempts - attempt_base >= max_attempts THEN run_at ELSE $1 END, \
               last_error = $2, lease_expires_at = NULL, updated_at = $3 \
             WHERE id = $4 AND state = 'running' AND attempts = $5 RETURNING state",
        )
        .bind::<Timestamptz, _>(utc(retry_at))
        .bind::<Text, _>(error)
        .bind::<Timestamptz, _>(utc(now))
        .bind::<BigInt, _>(job_id)
        .bind::<Integer, _>(attempt)
        .get_result(self)
        .optional()?;
        row.map(|r| parse_state(Some(job_id), &r.state)).transpose()
    }

    /// Puts a running job back to `queued` (shutdown) if the lease is still ours; `cancelled`
    /// instead when a cancel was requested. `attempt_base` moves up by one, so the released
    /// attempt does not count against `max_attempts`.
    fn release(&mut self, lease: Lease, now: NaiveDateTime) -> Result<usize> {
        let Lease { job_id, attempt } = lease;
        Ok(diesel::sql_query(
            "UPDATE jobs SET \
               state = CASE WHEN cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END, \
               attempt_base = attempt_base + 1, \
               run_at = $1, lease_expires_at = NULL, updated_at = $1 \
             WHERE id = $2 AND state = 'running' AND attempts = $3",
        )
        .bind::<Timestamptz, _>(utc(now))
        .bind::<BigInt, _>(job_id)
        .bind::<Integer, _>(attempt)
        .execute(self)?)
    }

    /// `attempts - attempt_base` while the lease holds, else `None`.
    fn attempts_used(&mut self, lease: Lease) -> Result<Option<i32>> {
        let Lease { job_id, attempt } = lease;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Integer)]
            used: i32,
        }
        let row: Option<Row> = cached(
            "SELECT attempts - attempt_base AS used FROM jobs \
             WHERE id = ? AND state = 'running' AND attempts = ?",
            (bind::<BigInt, _>(job_id), bind::<Integer, _>(attempt)),
        )
        .get_result(self)
        .optional()?;
        Ok(row.map(|r| r.used))
    }

    /// Marks a job succeeded (if the lease is still ours and no cancel was requested) and inserts
    /// its results row, in ONE statement. Rows changed (0 or 1).
    fn succeed_with_result(&mut self, row: &NewResultRow<'_>) -> Result<usize> {
        let now = utc(row.created_at);
        Ok(cached(
            "WITH done AS ( \
               UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = ?, \
                 last_error = NULL \
               WHERE id = ? AND state = 'running' AND attempts = ? AND cancel_requested_at IS NULL \
               RETURNING id, attempts, worker_id) \
             INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, \
                                  worker_id) \
             SELECT id, attempts, ?, ?::jsonb, ?, ?, ?, worker_id FROM done",
            (
                bind::<Timestamptz, _>(now),
                bind::<BigInt, _>(row.job_id),
                bind::<Integer, _>(row.attempt),
                bind::<Text, _>(row.outcome),
                bind::<Nullable<Text>, _>(row.output),
                bind::<Nullable<Text>, _>(row.error),
                bind::<Timestamptz, _>(now),
                bind::<BigInt, _>(row.duration_ms),
            ),
        )
        .execute(self)?)
    }

    /// Inserts one results row (the output is JSON text; it becomes JSONB).
    fn insert_result(&mut self, row: &NewResultRow<'_>) -> Result<()> {
        cached(
            "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, \
                                  worker_id) \
             VALUES (?, ?, ?, ?::jsonb, ?, ?, ?, (SELECT worker_id FROM jobs WHERE id = ?))",
            (
                bind::<BigInt, _>(row.job_id),
                bind::<Integer, _>(row.attempt),
                bind::<Text, _>(row.outcome),
                bind::<Nullable<Text>, _>(row.output),
                bind::<Nullable<Text>, _>(row.error),
                bind::<Timestamptz, _>(utc(row.created_at)),
                bind::<BigInt, _>(row.duration_ms),
                bind::<BigInt, _>(row.job_id),
            ),
        )
        .execute(self)?;
        Ok(())
    }

    /// Ids of running jobs whose lease expired.
    fn expired_leases(&mut self, now: NaiveDateTime) -> Result<Vec<i64>> {
        let rows: Vec<Id> = diesel::sql_query(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < $1",
        )
        .bind::<Timestamptz, _>(utc(now))
        .load(self)?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }
}
