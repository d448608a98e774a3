//! Moving a queue to another database: [`copy`] copies jobs, results, schedules and paused
//! queues from one backend to another (SQLite → PostgreSQL first; any pair the build has),
//! keeping ids, attempts and attempt bases, leases, unique keys and timestamps, and moves the
//! target's id sequences past the copied ids.
//!
//! Why it cannot leave a half copy that looks complete: the whole copy is ONE transaction on
//! the target, and it commits only after the verification (counts, and a checksum per table
//! over every copied row read back from the target) passed inside that same transaction. A
//! copy that is killed, loses its connection or fails verification rolls back and leaves the
//! target as it was, so a rerun starts over cleanly. The source is read inside one snapshot
//! (SQLite: a deferred read transaction; PostgreSQL: REPEATABLE READ, READ ONLY), so the copy
//! is of one consistent moment even while the source's workers run; pausing them first (the
//! documented procedure) makes that moment the last one.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

use serde::Serialize;

use crate::db::Db;
use crate::driver::QueueConnection;
use crate::error::{Error, Result};
use crate::models::{JobRow, ResultRow};

/// How [`copy`] treats what it finds.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Copy into a target that already holds rows: a copied row whose id exists there must
    /// be identical (it is left alone, and the verification compares it); schedules keep the
    /// later last tick; paused queues stay paused. Without it, a non-empty target is refused.
    pub merge: bool,
    /// Copy jobs that are running on the source, with their leases (their workers' results
    /// go to the source, so on the target such a job runs again once its lease expires).
    /// Without it, running jobs refuse the copy: pause the queues and let them finish first.
    pub allow_running: bool,
    /// Rows per read and per insert statement.
    pub batch: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            merge: false,
            allow_running: false,
            batch: 1000,
        }
    }
}

/// One table's share of a copy.
#[derive(Debug, Clone, Serialize)]
pub struct TableCopy {
    /// The table.
    pub table: &'static str,
    /// Rows copied from the source.
    pub rows: u64,
    /// The checksum of those rows (the same on the source and, read back, on the target).
    /// Computed within one run: compare it only with the same run's figures.
    pub checksum: u64,
}

/// What a finished [`copy`] did; it exists only if the verification passed and the target
/// committed.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// `jobs`, `results`, `schedules`, `paused_queues`, in that order.
    pub tables: Vec<TableCopy>,
    /// Wall time of the copy, verification included.
    pub seconds: f64,
    /// Rows of all tables per second.
    pub rows_per_sec: f64,
    /// The source backend ("sqlite", "postgres").
    pub from: &'static str,
    /// The target backend.
    pub to: &'static str,
}

/// Where a running [`copy`] is, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct CopyProgress {
    /// The table being copied or verified.
    pub table: &'static str,
    /// Rows done so far.
    pub done: u64,
    /// Rows in the table.
    pub total: u64,
    /// Whether this is the verification pass.
    pub verifying: bool,
}

/// Jobs running on `db` now (a precondition of [`copy`] without `allow_running`).
pub fn running_jobs<C: QueueConnection>(db: &Db<C>) -> Result<i64> {
    db.read("running_jobs", |c| c.running_count())
}

/// Copies `from`'s tables into `to` in one transaction there, verifies them and commits (see
/// the module docs). [`Error::CopyRefused`] when the target holds rows (without `merge`),
/// jobs run on the source (without `allow_running`) or the verification finds a difference;
/// the target is unchanged then.
pub fn copy<A: QueueConnection, B: QueueConnection>(
    from: &Db<A>,
    to: &Db<B>,
    options: &CopyOptions,
    mut progress: impl FnMut(CopyProgress),
) -> Result<CopyReport> {
    if options.batch == 0 {
        return Err(Error::InvalidArgument {
            field: "batch",
            reason: "must be at least 1".into(),
        });
    }
    let started = Instant::now();
    let mut src = from.pool().get()?;
    let mut dst = to.pool().get()?;
    let tables = src.read_snapshot(|s| {
        let running = s.running_count()?;
        if running > 0 && !options.allow_running {
            return Err(Error::CopyRefused {
                reason: format!(
                    "{running} jobs are running on the source: pause the queues and let them \
                     finish (jobdb copy --wait waits), or copy them with their leases \
                     (--allow-running)"
                ),
            });
        }
        let counts = s.row_counts()?;
        dst.write_transaction(|d| {
            let there = d.row_counts()?;
            if !options.merge && there != [0; 4] {
                return Err(Error::CopyRefused {
                    reason: format!(
                        "the target is not empty ({} jobs, {} results, {} schedules, {} paused \
                         queues): copy into an empty database, or merge (--merge)",
                        there[0], there[1], there[2], there[3]
                    ),
                });
            }
            let mut tables = Vec::with_capacity(4);
            let jobs = Rows {
                name: "jobs",
                total: counts[0],
                batch: options.batch,
            };
            let copied = jobs.copy(
                s,
                d,
                |s, after, n| s.jobs_after(after, n),
                |d, rows| d.insert_job_rows(rows),
                job_digest,
                &mut progress,
            )?;
            let results = Rows {
                name: "results",
                total: counts[1],
                batch: options.batch,
            };
            let copied_results = results.copy(
                s,
                d,
                |s, after, n| s.results_after(after, n),
                |d, rows| d.insert_result_rows(rows),
                result_digest,
                &mut progress,
            )?;
            let schedules = s.schedule_rows()?;
            d.upsert_schedule_rows(&schedules)?;
            let paused = s.paused_rows()?;
            d.upsert_paused_rows(&paused)?;
            d.advance_id_sequences()?;

            // Read everything back from the target, inside the transaction, before COMMIT.
            jobs.verify(
                s,
                d,
                &copied,
                |s, ids| s.jobs_with_ids(ids),
                |d, ids| d.jobs_with_ids(ids),
                job_digest,
                job_columns,
                &mut progress,
            )?;
            results.verify(
                s,
                d,
                &copied_results,
                |s, ids| s.results_with_ids(ids),
                |d, ids| d.results_with_ids(ids),
                result_digest,
                result_columns,
                &mut progress,
            )?;
            let schedules_there = d.schedule_rows()?;
            for want in &schedules {
                let ok = schedules_there.iter().any(|got| {
                    got.name == want.name
                        && if options.merge {
                            got.last_tick >= want.last_tick
                        } else {
                            got == want
                        }
                });
                if !ok {
                    return Err(mismatch("schedules", &format!("schedule {:?}", want.name)));
                }
            }
            let paused_there = d.paused_rows()?;
            for want in &paused {
                if !paused_there.iter().any(|got| got.queue == want.queue) {
                    return Err(mismatch(
                        "paused_queues",
                        &format!("queue {:?}", want.queue),
                    ));
                }
            }
            if !options.merge {
                let after = d.row_counts()?;
                if after != counts {
                    return Err(mismatch(
                        "all",
                        &format!("row counts {after:?} on the target, {counts:?} on the source"),
                    ));
                }
            }
            tables.push(copied.report);
            tables.push(copied_results.report);
            tables.push(TableCopy {
                table: "schedules",
                rows: schedules.len() as u64,
                checksum: digest_all(
                    schedules
                        .iter()
                        .map(|r| (&r.name, r.last_tick, r.updated_at)),
                ),
            });
            tables.push(TableCopy {
                table: "paused_queues",
                rows: paused.len() as u64,
                checksum: digest_all(paused.iter().map(|r| (&r.queue, r.paused_at))),
            });
            Ok(tables)
        })
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let rows: u64 = tables.iter().map(|t| t.rows).sum();
    Ok(CopyReport {
        tables,
        seconds,
        rows_per_sec: rows as f64 / seconds.max(1e-9),
        from: A::NAME,
        to: B::NAME,
    })
}

/// A value as an error message shows it: at most 80 characters.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_owned(),
    }
}

/// A verification failure: nothing is committed.
fn mismatch(table: &str, what: &str) -> Error {
    Error::CopyRefused {
        reason: format!(
            "verification failed on {table}: {what} differs on the target after the copy; \
             nothing was committed"
        ),
    }
}

/// One keyset-copied table.
struct Rows {
    name: &'static str,
    total: i64,
    batch: usize,
}

/// What copying a table produced: its report, and the ids and row digests to verify.
struct Copied {
    report: TableCopy,
    ids: Vec<i64>,
    /// Each row's digest as read from the source, in the order of `ids`.
    digests: Vec<u64>,
}

impl Rows {
    /// Copies the table batch by batch in id order; hashes each row as read from the source.
    fn copy<S, D, R>(
        &self,
        src: &mut S,
        dst: &mut D,
        read: impl Fn(&mut S, i64, i64) -> Result<Vec<R>>,
        write: impl Fn(&mut D, &[R]) -> Result<()>,
        digest: impl Fn(&R) -> (i64, u64),
        progress: &mut impl FnMut(CopyProgress),
    ) -> Result<Copied> {
        let mut ids = Vec::with_capacity(usize::try_from(self.total).unwrap_or(0));
        let mut digests = Vec::with_capacity(ids.capacity());
        let mut sum = DefaultHasher::new();
        let mut after = i64::MIN;
        loop {
            let rows = read(src, after, self.batch as i64)?;
            let Some(last) = rows.last() else { break };
            after = digest(last).0;
            write(dst, &rows)?;
            for r in &rows {
                let (id, d) = digest(r);
                ids.push(id);
                digests.push(d);
                sum.write_u64(d);
            }
            progress(self.progress(ids.len(), false));
        }
        Ok(Copied {
            report: TableCopy {
                table: self.name,
                rows: ids.len() as u64,
                checksum: sum.finish(),
            },
            ids,
            digests,
        })
    }

    /// Reads the copied ids back from the target and compares each row with its source
    /// row's digest, then the checksum. A row that differs is named by its id and its first
    /// differing column, with both values (the source row is read again for that).
    #[allow(clippy::too_many_arguments)]
    fn verify<S, D, R>(
        &self,
        src: &mut S,
        dst: &mut D,
        copied: &Copied,
        read_src: impl Fn(&mut S, &[i64]) -> Result<Vec<R>>,
        read: impl Fn(&mut D, &[i64]) -> Result<Vec<R>>,
        digest: impl Fn(&R) -> (i64, u64),
        columns: impl Fn(&R) -> Vec<(&'static str, String)>,
        progress: &mut impl FnMut(CopyProgress),
    ) -> Result<()> {
        let mut sum = DefaultHasher::new();
        let mut done = 0;
        for (chunk, want) in copied
            .ids
            .chunks(self.batch)
            .zip(copied.digests.chunks(self.batch))
        {
            let rows = read(dst, chunk)?;
            let got: std::collections::HashMap<i64, (u64, &R)> = rows
                .iter()
                .map(|r| {
                    let (id, d) = digest(r);
                    (id, (d, r))
                })
                .collect();
            for (id, want) in chunk.iter().zip(want) {
                match got.get(id) {
                    None => {
                        return Err(Error::CopyRefused {
                            reason: format!(
                                "verification failed on {}: row id {id} is missing on the \
                                 target after the copy; nothing was committed",
                                self.name
                            ),
                        })
                    }
                    Some((d, _)) if d == want => {}
                    Some((_, there)) => {
                        let source = read_src(src, &[*id])?;
                        let column = source
                            .first()
                            .and_then(|here| {
                                columns(here)
                                    .into_iter()
                                    .zip(columns(there))
                                    .find(|(a, b)| a != b)
                            })
                            .map(|((name, a), (_, b))| {
                                format!(
                                    "column {name} ({} on the source, {} on the target)",
                                    shorten(&a),
                                    shorten(&b)
                                )
                            })
                            .unwrap_or_else(|| "a column".to_owned());
                        return Err(mismatch(self.name, &format!("row id {id}: {column}")));
                    }
                }
                sum.write_u64(*want);
            }
            done += chunk.len();
            progress(self.progress(done, true));
        }
        if sum.finish() != copied.report.checksum {
            return Err(mismatch(self.name, "the checksum of the copied rows"));
        }
        Ok(())
    }

    fn progress(&self, done: usize, verifying: bool) -> CopyProgress {
        CopyProgress {
            table: self.name,
            done: done as u64,
            total: u64::try_from(self.total).unwrap_or(0),
            verifying,
        }
    }
}

/// JSON text in one canonical form (keys sorted, no spaces), so the same value digests the
/// same whether SQLite kept the text as written or PostgreSQL's JSONB normalized it. Text
/// that is not JSON digests as itself.
fn canonical_json(text: &str) -> std::borrow::Cow<'_, str> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => std::borrow::Cow::Owned(v.to_string()),
        Err(_) => std::borrow::Cow::Borrowed(text),
    }
}

fn job_digest(r: &JobRow) -> (i64, u64) {
    let mut h = DefaultHasher::new();
    (r.id, &r.queue, &r.state, r.priority).hash(&mut h);
    canonical_json(&r.payload).hash(&mut h);
    (
        r.attempts,
        r.max_attempts,
        r.run_at,
        r.created_at,
        r.updated_at,
    )
        .hash(&mut h);
    (
        &r.worker_id,
        r.heartbeat_at,
        r.lease_expires_at,
        &r.last_error,
    )
        .hash(&mut h);
    (
        &r.unique_key,
        r.cancel_requested_at,
        r.attempt_base,
        r.timeout_ms,
    )
        .hash(&mut h);
    r.progress.as_deref().map(canonical_json).hash(&mut h);
    (r.id, h.finish())
}

/// A job row's columns as [`job_digest`] sees them (JSON in its canonical form), to name the
/// one that differs.
fn job_columns(r: &JobRow) -> Vec<(&'static str, String)> {
    let json = |t: &Option<String>| format!("{:?}", t.as_deref().map(canonical_json));
    vec![
        ("queue", format!("{:?}", r.queue)),
        ("state", r.state.clone()),
        ("priority", r.priority.to_string()),
        ("payload", canonical_json(&r.payload).into_owned()),
        ("attempts", r.attempts.to_string()),
        ("max_attempts", r.max_attempts.to_string()),
        ("run_at", r.run_at.to_string()),
        ("created_at", r.created_at.to_string()),
        ("updated_at", r.updated_at.to_string()),
        ("worker_id", format!("{:?}", r.worker_id)),
        ("heartbeat_at", format!("{:?}", r.heartbeat_at)),
        ("lease_expires_at", format!("{:?}", r.lease_expires_at)),
        ("last_error", format!("{:?}", r.last_error)),
        ("unique_key", format!("{:?}", r.unique_key)),
        (
            "cancel_requested_at",
            format!("{:?}", r.cancel_requested_at),
        ),
        ("attempt_base", r.attempt_base.to_string()),
        ("timeout_ms", format!("{:?}", r.timeout_ms)),
        ("progress", json(&r.progress)),
    ]
}

/// A result row's columns as [`result_digest`] sees them.
fn result_columns(r: &ResultRow) -> Vec<(&'static str, String)> {
    vec![
        ("job_id", r.job_id.to_string()),
        ("attempt", r.attempt.to_string()),
        ("outcome", r.outcome.clone()),
        (
            "output",
            format!("{:?}", r.output.as_deref().map(canonical_json)),
        ),
        ("error", format!("{:?}", r.error)),
        ("created_at", r.created_at.to_string()),
        ("duration_ms", r.duration_ms.to_string()),
        ("worker_id", format!("{:?}", r.worker_id)),
    ]
}

fn result_digest(r: &ResultRow) -> (i64, u64) {
    let mut h = DefaultHasher::new();
    (r.id, r.job_id, r.attempt, &r.outcome).hash(&mut h);
    r.output.as_deref().map(canonical_json).hash(&mut h);
    (&r.error, r.created_at, r.duration_ms, &r.worker_id).hash(&mut h);
    (r.id, h.finish())
}

fn digest_all<T: Hash>(rows: impl Iterator<Item = T>) -> u64 {
    let mut h = DefaultHasher::new();
    rows.for_each(|r| r.hash(&mut h));
    h.finish()
}
