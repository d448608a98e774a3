//! Progress of a running attempt: a small JSON value stored on the job, fenced by the lease.
//!
//! The worker runtimes write it for their handlers, at most once per
//! [`crate::WorkerConfig::progress_every`] per job and all due jobs in one statement, so a
//! handler may report as often as it likes without adding writes; these functions are the
//! same write for callers that run their own claim loop.

use std::collections::HashSet;

use serde::Serialize;

use super::batch::per_item;
use super::{lost_or_missing, now};
use crate::driver::{AsQueueConnection, BatchDriver, JobDriver};
use crate::error::{Error, Result};
use crate::models::{to_json, Lease};

/// The largest progress value stored, as JSON text. Progress is a status line for people and
/// a resume point for the next attempt (`{"done": 120, "of": 500}`), not a channel for data:
/// the job's output is.
pub const MAX_PROGRESS_BYTES: usize = 4096;

/// `value` as the JSON text stored, or [`Error::InvalidArgument`] when it is larger than
/// [`MAX_PROGRESS_BYTES`] or holds text a backend cannot store (a NUL, a lone surrogate: the
/// rules payloads and outputs obey), or [`Error::Json`] when it cannot be serialized. Checked
/// before anything is written, by every path that stores progress.
pub fn encode_progress(value: &impl Serialize) -> Result<String> {
    let json = to_json("progress", value)?;
    check_progress(&json)?;
    Ok(json)
}

/// The size limit and the text rules of payloads, for progress JSON text.
fn check_progress(json: &str) -> Result<()> {
    crate::models::check_json("progress", json)?;
    if json.len() > MAX_PROGRESS_BYTES {
        return Err(Error::InvalidArgument {
            field: "progress",
            reason: format!(
                "{} bytes of JSON is more than {MAX_PROGRESS_BYTES}: progress is a small \
                 status value; put data in the job's output",
                json.len()
            ),
        });
    }
    Ok(())
}

/// Stores `value` as the progress of the job held by `lease`, in one short transaction (a
/// savepoint inside the caller's). Fenced as a heartbeat is: [`Error::LeaseLost`] when the
/// job was reclaimed or has left `running`, [`Error::NotFound`] when it does not exist, and
/// then nothing is written.
pub fn set_progress<A: AsQueueConnection>(
    conn: &mut A,
    lease: Lease,
    value: &impl Serialize,
) -> Result<()> {
    let json = encode_progress(value)?;
    let mut each = set_progress_many(conn, &[(lease, json)])?;
    each.pop().unwrap_or(Err(Error::Internal {
        what: "set_progress",
        reason: "set_progress_many returned no result for one item".into(),
    }))
}

/// Stores many jobs' progress (JSON text from [`encode_progress`]) in ONE transaction with one
/// statement; each item is fenced on its own, so a lost lease fails only its own slot. A
/// lease listed twice keeps its last value. One result per item, in order.
pub fn set_progress_many<A: AsQueueConnection>(
    conn: &mut A,
    items: &[(Lease, String)],
) -> Result<Vec<Result<()>>> {
    for (_, json) in items {
        check_progress(json)?;
    }
    // The last value of each lease: one row per job in the statement.
    let mut seen = HashSet::new();
    let mut last: Vec<(Lease, &str)> = items
        .iter()
        .rev()
        .filter(|(l, _)| seen.insert(*l))
        .map(|(l, j)| (*l, j.as_str()))
        .collect();
    last.reverse();
    let leases: Vec<Lease> = items.iter().map(|(l, _)| *l).collect();
    let conn = conn.queue_connection();
    let now = now();
    conn.write_transaction(|c| {
        let stored: HashSet<Lease> = c.progress_set(&last, now)?.into_iter().collect();
        per_item(
            c,
            &leases,
            |l| stored.contains(&l).then_some(Ok(())),
            lost_or_missing,
        )
    })
}
