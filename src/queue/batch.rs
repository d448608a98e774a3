//! Batched lease operations: many completions or heartbeats in ONE transaction with
//! set-based statements, each item fenced on its own.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::driver::{AsQueueConnection, QueueConnection, SucceededRow};
use crate::driver::{BatchDriver, JobDriver};
use chrono::{DateTime, Utc};

use super::{after, lost_or_missing, millis, now, settle_unapplied};
use crate::error::{Error, Result};
use crate::models::Lease;

/// One completion for [`complete_many`].
#[derive(Debug, Clone)]
pub struct Completion {
    /// The lease the job was claimed under.
    pub lease: Lease,
    /// The output as JSON text.
    pub output_json: String,
    /// How long the handler ran.
    pub duration: Duration,
}

/// Completes many jobs in ONE transaction with set-based statements: each is fenced on its
/// own, so a lost lease fails only its own item ([`Error::LeaseLost`] in its slot) and the
/// rest commit. Returns one result per item, in order.
pub fn complete_many<A: AsQueueConnection>(
    conn: &mut A,
    items: &[Completion],
) -> Result<Vec<Result<()>>> {
    let conn = conn.queue_connection();
    let leases: Vec<Lease> = items.iter().map(|it| it.lease).collect();
    let now = now();
    conn.write_transaction(|c| {
        // Keyed by lease: a released attempt passed beside the live one of the same job is
        // not "done" because the job id matched.
        let done: HashSet<Lease> = c.succeed_set(&leases, now)?.into_iter().collect();
        // One results row per applied lease, even if the caller listed it twice.
        let mut recorded = HashSet::new();
        let rows: Vec<SucceededRow<'_>> = items
            .iter()
            .filter(|it| done.contains(&it.lease) && recorded.insert(it.lease))
            .map(|it| SucceededRow {
                lease: it.lease,
                output_json: &it.output_json,
                duration_ms: millis(it.duration),
            })
            .collect();
        c.insert_succeeded_results(&rows, now)?;
        let durations: HashMap<Lease, Duration> =
            items.iter().map(|it| (it.lease, it.duration)).collect();
        let mut answered = HashSet::new();
        per_item(
            c,
            &leases,
            // A lease listed twice is applied once: its first slot is Ok, a repeat is told
            // the lease is no longer running at that attempt, as a second `complete` is.
            |l| (done.contains(&l) && answered.insert(l)).then_some(Ok(())),
            |c, l| {
                let d = durations.get(&l).copied().unwrap_or_default();
                settle_unapplied(c, l, now, d)
            },
        )
    })
}

/// Extends many leases in ONE statement; one result per lease, in order (a lost lease fails
/// only its own slot).
pub fn heartbeat_many<A: AsQueueConnection>(
    conn: &mut A,
    leases: &[Lease],
    lease_for: Duration,
) -> Result<Vec<Result<DateTime<Utc>>>> {
    let conn = conn.queue_connection();
    let now = now();
    let until = after(now, lease_for)?;
    conn.write_transaction(|c| {
        let extended: HashMap<Lease, bool> =
            c.heartbeat_set(leases, now, until)?.into_iter().collect();
        per_item(
            c,
            leases,
            |l| {
                extended.get(&l).map(|&cancel| {
                    if cancel {
                        Err(Error::Cancelled { job_id: l.job_id })
                    } else {
                        Ok(until.and_utc())
                    }
                })
            },
            lost_or_missing,
        )
    })
}

/// One result per lease: `applied(lease)` for those the set statement applied to, else the
/// error `settle` finds (lease lost, not found, cancelled) in that item's slot. A query error
/// of `settle` is the whole transaction's error, not one item's.
pub(super) fn per_item<T, C: QueueConnection>(
    conn: &mut C,
    leases: &[Lease],
    mut applied: impl FnMut(Lease) -> Option<Result<T>>,
    settle: impl Fn(&mut C, Lease) -> Result<Error>,
) -> Result<Vec<Result<T>>> {
    leases
        .iter()
        .map(|&lease| match applied(lease) {
            Some(r) => Ok(r),
            None => settle(conn, lease).map(Err),
        })
        .collect()
}
