//! `jobdb archive`: finished jobs with their attempts to a Parquet file, then out of the
//! database (feature `archive`). The articles this project started from suggest keeping the
//! active data in SQLite and history in a columnar store; this is that move.
//!
//! The file is flat, **one row per attempt** (a job that never ran, e.g. cancelled while
//! queued, is one row with empty attempt columns), each row carrying its job's columns. Why
//! not nested (a list of attempts per job): every tool that reads Parquet (DuckDB, pyarrow,
//! Spark, pandas) filters and aggregates flat columns directly, while nested lists need
//! unnesting first, and Parquet's dictionary and run-length encodings store the repeated job
//! columns for almost nothing. JSON columns (payload, output) are text.
//!
//! Crash safety, in order:
//! 1. the candidates (finished in the chosen states, last changed before the cut-off) are
//!    read in one snapshot and written to `FILE.partial`, which is synced, renamed to
//!    `FILE` and its directory synced: `FILE` is either complete or absent;
//! 2. only then are exactly those jobs deleted, a few hundred per short transaction (as
//!    `prune` does), each re-checking that the job is still finished and unchanged since the
//!    cut-off, so a job retried meanwhile stays (and is not lost: its new attempts are not in
//!    the file).
//!
//! A rerun with the same `FILE` after a crash between the two finds the file, reads its job
//! ids and its cut-off (stored in the file's metadata) and finishes step 2, writing nothing:
//! no job is archived twice.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::TimestampMicrosecondArray;
use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::NaiveDateTime;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::db::Db;
use crate::driver::QueueConnection;
use crate::error::{Error, Result};
use crate::models::{JobRow, JobState, ResultRow};

/// What to archive.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// Jobs last changed more than this long ago.
    pub older_than: Duration,
    /// Which finished states (default: succeeded, dead and cancelled).
    pub states: Vec<JobState>,
    /// Jobs per read and per delete transaction.
    pub batch: usize,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            older_than: Duration::from_secs(30 * 24 * 3600),
            states: vec![JobState::Succeeded, JobState::Dead, JobState::Cancelled],
            batch: 500,
        }
    }
}

/// What [`archive`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// The Parquet file.
    pub file: PathBuf,
    /// Jobs in the file.
    pub jobs: u64,
    /// Rows in the file (one per attempt; one for a job that never ran).
    pub rows: u64,
    /// Jobs deleted from the database by this run.
    pub deleted: u64,
    /// Jobs of the file still in the database: changed since the cut-off (a retry), so kept.
    pub kept: u64,
    /// The file was there already (a run that stopped before it deleted): this run only
    /// deleted.
    pub resumed: bool,
    /// Wall time.
    pub seconds: f64,
}

const META_CUTOFF: &str = "jobdb.cutoff";
const META_STATES: &str = "jobdb.states";
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f";

/// Archives `db`'s finished jobs to `to` and deletes them (see the module docs). `to` must
/// end in `.parquet`; if it exists, it is taken as an earlier run's file and only its
/// deletions are finished. Nothing to archive writes no file.
pub fn archive<C: QueueConnection>(
    db: &Db<C>,
    to: &Path,
    options: &ArchiveOptions,
) -> Result<ArchiveReport> {
    let started = Instant::now();
    if to.extension().and_then(|e| e.to_str()) != Some("parquet") {
        return Err(Error::InvalidArgument {
            field: "to",
            reason: format!("{} must end in .parquet", to.display()),
        });
    }
    if options.batch == 0 {
        return Err(Error::InvalidArgument {
            field: "batch",
            reason: "must be at least 1".into(),
        });
    }
    let (ids, rows, cutoff, states, resumed) = if to.exists() {
        let (ids, rows, cutoff, states) = read_back(to)?;
        (ids, rows, cutoff, states, true)
    } else {
        crate::manage::check_prune_states(&options.states)?;
        let cutoff = crate::manage::prune_cutoff(options.older_than)?;
        let (ids, rows) = write_file(db, to, &options.states, cutoff, options.batch)?;
        (ids, rows, cutoff, options.states.clone(), false)
    };
    let mut deleted = 0u64;
    for chunk in ids.chunks(options.batch) {
        deleted += db.transaction("archive_delete", |c| {
            c.delete_finished(chunk, &states, cutoff)
        })? as u64;
    }
    let remaining = db.read("archive_left", |c| {
        ids.chunks(options.batch)
            .map(|chunk| c.jobs_with_ids(chunk).map(|found| found.len() as u64))
            .sum::<Result<u64>>()
    })?;
    Ok(ArchiveReport {
        file: to.to_owned(),
        jobs: ids.len() as u64,
        rows,
        deleted,
        kept: remaining,
        resumed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes the candidates to `to` (through `to.partial`, synced and renamed); their ids and
/// the rows written. No candidates: no file.
fn write_file<C: QueueConnection>(
    db: &Db<C>,
    to: &Path,
    states: &[JobState],
    cutoff: NaiveDateTime,
    batch: usize,
) -> Result<(Vec<i64>, u64)> {
    let partial = to.with_extension("parquet.partial");
    let mut conn = db.pool().get()?;
    let (ids, rows) = conn.read_snapshot(|c| {
        let mut writer: Option<ArrowWriter<File>> = None;
        let (mut ids, mut rows) = (Vec::new(), 0u64);
        let mut after = 0;
        loop {
            let found = c.finished_before(states, cutoff, after, batch as i64)?;
            let Some(&last) = found.last() else { break };
            after = last;
            let jobs = c.jobs_with_ids(&found)?;
            let results = c.results_of_jobs(&found)?;
            let batch = record_batch(&jobs, &results)?;
            if writer.is_none() {
                let file = File::create(&partial).map_err(|source| Error::Io {
                    what: "cannot create the archive's .partial file",
                    source,
                })?;
                writer = Some(
                    ArrowWriter::try_new(file, schema(), Some(properties(states, cutoff)))
                        .map_err(|e| archive_error(&partial, "start", e))?,
                );
            }
            if let Some(w) = writer.as_mut() {
                w.write(&batch)
                    .map_err(|e| archive_error(&partial, "write", e))?;
            }
            rows += batch.num_rows() as u64;
            ids.extend(jobs.iter().map(|j| j.id));
        }
        if let Some(w) = writer {
            let file = w
                .into_inner()
                .map_err(|e| archive_error(&partial, "finish", e))?;
            file.sync_all().map_err(|source| Error::Io {
                what: "cannot sync the archive file",
                source,
            })?;
        }
        Ok((ids, rows))
    })?;
    if ids.is_empty() {
        return Ok((ids, 0));
    }
    std::fs::rename(&partial, to).map_err(|source| Error::Io {
        what: "cannot rename the archive's .partial file into place",
        source,
    })?;
    // The rename is durable once the directory is synced.
    let dir = to
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            what: "cannot sync the archive's directory",
            source,
        })?;
    Ok((ids, rows))
}

fn archive_error(
    file: &Path,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Archive {
        what: format!("cannot {what} {}", file.display()),
        source: Box::new(e),
    }
}

fn properties(states: &[JobState], cutoff: NaiveDateTime) -> WriterProperties {
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![
            KeyValue::new(META_CUTOFF.into(), cutoff.format(TIME_FORMAT).to_string()),
            KeyValue::new(META_STATES.into(), states.join(",")),
        ]))
        .build()
}

/// The file's columns: the job's, then the attempt's (empty for a job that never ran).
pub fn schema() -> Arc<Schema> {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("job_id", DataType::Int64, false),
        Field::new("queue", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("priority", DataType::Int32, false),
        Field::new("payload", DataType::Utf8, false),
        Field::new("attempts", DataType::Int32, false),
        Field::new("max_attempts", DataType::Int32, false),
        Field::new("attempt_base", DataType::Int32, false),
        Field::new("run_at", ts(), false),
        Field::new("created_at", ts(), false),
        Field::new("updated_at", ts(), false),
        Field::new("worker_id", DataType::Utf8, true),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("unique_key", DataType::Utf8, true),
        Field::new("cancel_requested_at", ts(), true),
        Field::new("timeout_ms", DataType::Int64, true),
        Field::new("progress", DataType::Utf8, true),
        Field::new("attempt", DataType::Int32, true),
        Field::new("outcome", DataType::Utf8, true),
        Field::new("output", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("finished_at", ts(), true),
        Field::new("duration_ms", DataType::Int64, true),
        Field::new("attempt_worker_id", DataType::Utf8, true),
    ]))
}

/// A row of the file: a job and one of its attempts (none for a job that never ran).
type Attempt<'a> = (&'a JobRow, Option<&'a ResultRow>);

/// One row per attempt (results sorted by job, as `results_of_jobs` returns them).
fn record_batch(jobs: &[JobRow], results: &[ResultRow]) -> Result<RecordBatch> {
    let mut rows: Vec<Attempt<'_>> = Vec::with_capacity(results.len());
    let mut attempts = results.iter().peekable();
    for job in jobs {
        let mut any = false;
        while let Some(r) = attempts.next_if(|r| r.job_id == job.id) {
            rows.push((job, Some(r)));
            any = true;
        }
        if !any {
            rows.push((job, None));
        }
    }
    let micros = |t: NaiveDateTime| t.and_utc().timestamp_micros();
    let ts = |v: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let text = |f: &dyn Fn(&Attempt<'_>) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let int32 = |f: &dyn Fn(&Attempt<'_>) -> Option<i32>| -> ArrayRef {
        Arc::new(Int32Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let int64 = |f: &dyn Fn(&Attempt<'_>) -> Option<i64>| -> ArrayRef {
        Arc::new(Int64Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        int64(&|(j, _)| Some(j.id)),
        text(&|(j, _)| Some(j.queue.clone())),
        text(&|(j, _)| Some(j.state.clone())),
        int32(&|(j, _)| Some(j.priority)),
        text(&|(j, _)| Some(j.payload.clone())),
        int32(&|(j, _)| Some(j.attempts)),
        int32(&|(j, _)| Some(j.max_attempts)),
        int32(&|(j, _)| Some(j.attempt_base)),
        ts(rows.iter().map(|(j, _)| Some(micros(j.run_at))).collect()),
        ts(rows
            .iter()
            .map(|(j, _)| Some(micros(j.created_at)))
            .collect()),
        ts(rows
            .iter()
            .map(|(j, _)| Some(micros(j.updated_at)))
            .collect()),
        text(&|(j, _)| j.worker_id.clone()),
        text(&|(j, _)| j.last_error.clone()),
        text(&|(j, _)| j.unique_key.clone()),
        ts(rows
            .iter()
            .map(|(j, _)| j.cancel_requested_at.map(micros))
            .collect()),
        int64(&|(j, _)| j.timeout_ms),
        text(&|(j, _)| j.progress.clone()),
        int32(&|(_, r)| r.map(|r| r.attempt)),
        text(&|(_, r)| r.map(|r| r.outcome.clone())),
        text(&|(_, r)| r.and_then(|r| r.output.clone())),
        text(&|(_, r)| r.and_then(|r| r.error.clone())),
        ts(rows
            .iter()
            .map(|(_, r)| r.map(|r| micros(r.created_at)))
            .collect()),
        int64(&|(_, r)| r.map(|r| r.duration_ms)),
        text(&|(_, r)| r.and_then(|r| r.worker_id.clone())),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| Error::Archive {
        what: "cannot build a batch of rows".into(),
        source: Box::new(e),
    })
}

/// An existing archive's job ids (each once), rows, cut-off and states.
fn read_back(file: &Path) -> Result<(Vec<i64>, u64, NaiveDateTime, Vec<JobState>)> {
    let open = File::open(file).map_err(|source| Error::Io {
        what: "cannot open the existing archive file",
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(open)
        .map_err(|e| archive_error(file, "read", e))?;
    let meta = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned();
    let value = |key: &str| {
        meta.iter()
            .flatten()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
    };
    let not_ours = || Error::InvalidArgument {
        field: "to",
        reason: format!(
            "{} exists but is not a jobdb archive (no {META_CUTOFF} in its metadata): choose \
             another file",
            file.display()
        ),
    };
    let cutoff = value(META_CUTOFF)
        .and_then(|v| NaiveDateTime::parse_from_str(&v, TIME_FORMAT).ok())
        .ok_or_else(not_ours)?;
    let states = value(META_STATES)
        .ok_or_else(not_ours)?
        .split(',')
        .map(|s| JobState::parse(s).ok_or_else(not_ours))
        .collect::<Result<Vec<_>>>()?;
    let reader = builder
        .build()
        .map_err(|e| archive_error(file, "read", e))?;
    let (mut ids, mut rows) = (Vec::new(), 0u64);
    for batch in reader {
        let batch = batch.map_err(|e| archive_error(file, "read", e))?;
        rows += batch.num_rows() as u64;
        let col = batch
            .column_by_name("job_id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(not_ours)?;
        for id in col.iter().flatten() {
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
    }
    Ok((ids, rows, cutoff, states))
}
