//! Set-based statements on MySQL / MariaDB: the leases travel as one JSON array read by
//! `JSON_TABLE`; the rows still held are locked with one fenced `SELECT … FOR UPDATE` (in id
//! order), then changed by id, so what is returned is exactly what was changed. Each runs in
//! a transaction of its own (a savepoint inside the caller's).

use chrono::NaiveDateTime;
use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use diesel::sql_types::{Datetime, Text};

use super::{id_list, Id};
use crate::driver::stmt::{bind, cached, cached_with_ids, MAX_CACHED_IDS};
use crate::driver::{json_array, BatchDriver, SucceededRow};
use crate::driver::{leases_json, LeaseRow};
use crate::error::Result;
use crate::models::Lease;

/// Locks the jobs of `leases` (a `[[id, attempt], …]` array) that are running at that
/// attempt (and, with `uncancelled`, have no cancel requested); `(lease, cancel requested)`
/// of each, in id order.
fn lock_held(
    conn: &mut MysqlConnection,
    leases: &[Lease],
    uncancelled: bool,
) -> Result<Vec<LeaseRow>> {
    let sql = match uncancelled {
        false => {
            "SELECT j.id AS id, j.attempts AS attempts, \
                    (j.cancel_requested_at IS NOT NULL) AS cancel \
             FROM jobs j JOIN JSON_TABLE(?, '$[*]' COLUMNS (lid BIGINT PATH '$[0]', \
                                                            latt INT PATH '$[1]')) l \
               ON j.id = l.lid AND j.attempts = l.latt \
             WHERE j.state = 'running' ORDER BY j.id FOR UPDATE"
        }
        true => {
            "SELECT j.id AS id, j.attempts AS attempts, 0 AS cancel \
             FROM jobs j JOIN JSON_TABLE(?, '$[*]' COLUMNS (lid BIGINT PATH '$[0]', \
                                                            latt INT PATH '$[1]')) l \
               ON j.id = l.lid AND j.attempts = l.latt \
             WHERE j.state = 'running' AND j.cancel_requested_at IS NULL ORDER BY j.id FOR UPDATE"
        }
    };
    Ok(cached(sql, (bind::<Text, _>(leases_json(leases)?),)).load(conn)?)
}

impl BatchDriver for MysqlConnection {
    /// Extends many leases: `(lease, cancel requested)` for each lease that was still ours.
    fn heartbeat_set(
        &mut self,
        leases: &[Lease],
        now: NaiveDateTime,
        lease_expires_at: NaiveDateTime,
    ) -> Result<Vec<(Lease, bool)>> {
        self.transaction(|conn| {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let held = lock_held(conn, leases, false)?;
            if held.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<i64> = held.iter().map(|r| r.id).collect();
            const SQL: &str = "UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, \
                               updated_at = ? WHERE id";
            if ids.len() <= MAX_CACHED_IDS {
                let binds = (
                    bind::<Datetime, _>(now),
                    bind::<Datetime, _>(lease_expires_at),
                    bind::<Datetime, _>(now),
                );
                cached_with_ids(SQL, binds, &ids, "").execute(conn)?;
            } else {
                diesel::sql_query(format!("{SQL} IN {}", id_list(&ids)))
                    .bind::<Datetime, _>(now)
                    .bind::<Datetime, _>(lease_expires_at)
                    .bind::<Datetime, _>(now)
                    .execute(conn)?;
            }
            Ok(held.iter().map(|r| (r.lease(), r.cancel != 0)).collect())
        })
    }

    /// Stores progress on many running jobs, each only while its lease holds: one fenced
    /// UPDATE per job, the last value of a lease listed twice winning. (Not one JSON_TABLE
    /// statement: MariaDB's JSON parser refuses documents nested deeper than 32 levels, and a
    /// progress value may be nested up to jobdb's 128. Progress is written at most once a
    /// second per job, so the sets are small.)
    fn progress_set(&mut self, items: &[(Lease, &str)], now: NaiveDateTime) -> Result<Vec<Lease>> {
        self.transaction(|conn| {
            let mut stored: Vec<Lease> = Vec::with_capacity(items.len());
            for (i, (lease, value)) in items.iter().enumerate() {
                if items[i + 1..].iter().any(|(later, _)| later == lease) {
                    continue;
                }
                let changed = cached(
                    "UPDATE jobs SET progress = ?, updated_at = ? \
                     WHERE id = ? AND state = 'running' AND attempts = ?",
                    (
                        bind::<Text, _>(*value),
                        bind::<Datetime, _>(now),
                        bind::<diesel::sql_types::BigInt, _>(lease.job_id),
                        bind::<diesel::sql_types::Integer, _>(lease.attempt),
                    ),
                )
                .execute(conn)?;
                if changed == 1 {
                    stored.push(*lease);
                }
            }
            Ok(stored)
        })
    }

    /// Marks many jobs succeeded, each only if its lease is still ours and no cancel was
    /// requested; returns the leases marked.
    fn succeed_set(&mut self, leases: &[Lease], now: NaiveDateTime) -> Result<Vec<Lease>> {
        self.transaction(|conn| {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let held = lock_held(conn, leases, true)?;
            if held.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<i64> = held.iter().map(|r| r.id).collect();
            const SQL: &str = "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, \
                               updated_at = ?, last_error = NULL WHERE id";
            if ids.len() <= MAX_CACHED_IDS {
                cached_with_ids(SQL, (bind::<Datetime, _>(now),), &ids, "").execute(conn)?;
            } else {
                diesel::sql_query(format!("{SQL} IN {}", id_list(&ids)))
                    .bind::<Datetime, _>(now)
                    .execute(conn)?;
            }
            Ok(held.iter().map(LeaseRow::lease).collect())
        })
    }

    /// Inserts many succeeded results rows in one statement, each with its job's lease holder
    /// as the attempt's worker.
    fn insert_succeeded_results(
        &mut self,
        rows: &[SucceededRow<'_>],
        now: NaiveDateTime,
    ) -> Result<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
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
        Ok(cached(
            "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, \
                                  worker_id) \
             SELECT l.jid, l.att, 'succeeded', l.o, NULL, ?, l.dur, j.worker_id \
             FROM JSON_TABLE(?, '$[*]' COLUMNS (jid BIGINT PATH '$[0]', att INT PATH '$[1]', \
                                                o LONGTEXT PATH '$[2]', dur BIGINT PATH '$[3]')) l \
             JOIN jobs j ON j.id = l.jid",
            (
                bind::<Datetime, _>(now),
                bind::<Text, _>(json_array("results", &rows)?),
            ),
        )
        .execute(self)?)
    }

    /// Reaps the listed jobs whose lease is still expired: each locked and re-checked, given a
    /// failed results row, and requeued, dead when out of attempts, or cancelled when
    /// requested. Returns the number reaped.
    ///
    /// The lock comes first: a heartbeat that commits between a check and the change would
    /// otherwise leave a running job with a stray failed row (the race PostgreSQL's driver
    /// closes with one statement). Here the locked rows are exactly the ones changed.
    fn reap_ids(&mut self, ids: &[i64], error: &str, now: NaiveDateTime) -> Result<usize> {
        self.transaction(|conn| {
            if ids.is_empty() {
                return Ok(0);
            }
            let expired: Vec<Id> = diesel::sql_query(format!(
                "SELECT id FROM jobs WHERE id IN {} AND state = 'running' AND lease_expires_at < ? \
                 ORDER BY id FOR UPDATE",
                id_list(ids)
            ))
            .bind::<Datetime, _>(now)
            .load(conn)?;
            if expired.is_empty() {
                return Ok(0);
            }
            let locked = id_list(&expired.iter().map(|r| r.id).collect::<Vec<_>>());
            diesel::sql_query(format!(
                "INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, \
                                      worker_id) \
                 SELECT id, attempts, 'failed', NULL, ?, ?, 0, worker_id FROM jobs WHERE id IN {locked}"
            ))
            .bind::<Text, _>(error)
            .bind::<Datetime, _>(now)
            .execute(conn)?;
            Ok(diesel::sql_query(format!(
                "UPDATE jobs SET \
                   state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                                WHEN attempts - attempt_base >= max_attempts THEN 'dead' \
                                ELSE 'queued' END, \
                   run_at = ?, last_error = ?, lease_expires_at = NULL, updated_at = ? \
                 WHERE id IN {locked}"
            ))
            .bind::<Datetime, _>(now)
            .bind::<Text, _>(error)
            .bind::<Datetime, _>(now)
            .execute(conn)?)
        })
    }
}
