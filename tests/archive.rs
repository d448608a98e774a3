//! `jobdb archive` (feature `archive`): 100,000 finished jobs with their attempts to Parquet,
//! read back by the same crates (and by pyarrow when it is installed; CI requires it) job by
//! job and attempt by attempt; gone from the database afterwards, live jobs untouched; a
//! SIGKILL between writing and deleting, or while writing, then a rerun, archives each job
//! exactly once.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow_array::{Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::SqliteConnection;
use jobdb::archive::ArchiveOptions;
use jobdb::models::{JobRow, ResultRow};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::backends::loud;
use crate::common::TestDb;

const FINISHED: i64 = 100_000;

/// Finished jobs (ids 1..=n) in the three finished states with 0 to 3 attempts each, an hour
/// old; and 100 live ones after them (queued, running) that must stay.
fn source(n: i64) -> TestDb {
    let db = TestDb::new();
    drop(db.queue());
    let mut conn = SqliteConnection::establish(&db.url()).unwrap();
    conn.batch_execute(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n} + 100),
         t(i, at) AS (SELECT i, strftime('%Y-%m-%d %H:%M:%f', 'now', '-3600 seconds') || printf('%03d', i % 1000) FROM n)
         INSERT INTO jobs (id, queue, state, priority, payload, attempts, max_attempts, run_at,
           created_at, updated_at, worker_id, last_error, unique_key, cancel_requested_at,
           attempt_base, timeout_ms, progress)
         SELECT i, 'q' || (i % 4),
           CASE WHEN i > {n} THEN (CASE i % 2 WHEN 0 THEN 'queued' ELSE 'running' END)
                ELSE (CASE i % 3 WHEN 0 THEN 'succeeded' WHEN 1 THEN 'dead' ELSE 'cancelled' END) END,
           i % 5, '{{\"i\": ' || i || ', \"s\": \"<script>x</script> é\"}}',
           i % 4, 3, at, at, at,
           CASE WHEN i % 4 > 0 THEN 'w' || (i % 8) END,
           CASE WHEN i % 3 = 1 THEN 'failed: ' || i END,
           CASE WHEN i % 7 = 0 THEN 'k' || i END,
           CASE WHEN i % 3 = 2 AND i % 4 > 0 THEN at END,
           0, CASE WHEN i % 2 = 0 THEN 5000 END,
           CASE WHEN i % 5 = 1 THEN '{{\"done\": ' || (i % 10) || '}}' END
         FROM t;
         WITH RECURSIVE a(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM a WHERE k < 3)
         INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms)
           SELECT id, k, CASE WHEN state = 'succeeded' AND k = attempts THEN 'succeeded' ELSE 'failed' END,
                  CASE WHEN state = 'succeeded' AND k = attempts THEN '{{\"ok\": ' || id || '}}' END,
                  CASE WHEN NOT (state = 'succeeded' AND k = attempts) THEN 'attempt ' || k || ' failed' END,
                  updated_at, id % 100
           FROM jobs JOIN a ON k <= attempts WHERE id <= {n};"
    ))
    .unwrap();
    db
}

fn tables(db: &TestDb) -> (Vec<JobRow>, Vec<ResultRow>) {
    use jobdb::schema::{jobs, results};
    let mut c = SqliteConnection::establish(&db.url()).unwrap();
    (
        jobs::table
            .order(jobs::id)
            .select(JobRow::as_select())
            .load(&mut c)
            .unwrap(),
        results::table
            .order((results::job_id, results::attempt))
            .select(ResultRow::as_select())
            .load(&mut c)
            .unwrap(),
    )
}

/// One archived row: the job's columns that matter here and the attempt's.
#[derive(Debug, PartialEq)]
struct Row {
    job_id: i64,
    state: String,
    payload: String,
    attempts: i32,
    updated_at_us: i64,
    unique_key: Option<String>,
    progress: Option<String>,
    attempt: Option<i32>,
    outcome: Option<String>,
    output: Option<String>,
    error: Option<String>,
    duration_ms: Option<i64>,
}

fn read_parquet(file: &Path) -> Vec<Row> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(file).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        let i64s = |name: &str| {
            col(name)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        let i32s = |name: &str| {
            col(name)
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap()
                .clone()
        };
        let texts = |name: &str| {
            col(name)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let (ids, state, payload, attempts) = (
            i64s("job_id"),
            texts("state"),
            texts("payload"),
            i32s("attempts"),
        );
        let updated = col("updated_at");
        let updated = updated
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let progress = texts("progress");
        let (key, attempt, outcome, output, error, duration) = (
            texts("unique_key"),
            i32s("attempt"),
            texts("outcome"),
            texts("output"),
            texts("error"),
            i64s("duration_ms"),
        );
        let opt = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
        for i in 0..b.num_rows() {
            rows.push(Row {
                job_id: ids.value(i),
                state: state.value(i).to_owned(),
                payload: payload.value(i).to_owned(),
                attempts: attempts.value(i),
                updated_at_us: updated.value(i),
                unique_key: opt(&key, i),
                progress: opt(&progress, i),
                attempt: (!attempt.is_null(i)).then(|| attempt.value(i)),
                outcome: opt(&outcome, i),
                output: opt(&output, i),
                error: opt(&error, i),
                duration_ms: (!duration.is_null(i)).then(|| duration.value(i)),
            });
        }
    }
    rows
}

/// What the file must hold: one row per attempt of each finished job, one for a job that
/// never ran.
fn expected(jobs: &[JobRow], results: &[ResultRow]) -> Vec<Row> {
    let mut by_job: BTreeMap<i64, Vec<&ResultRow>> = BTreeMap::new();
    results
        .iter()
        .for_each(|r| by_job.entry(r.job_id).or_default().push(r));
    let mut rows = Vec::new();
    for j in jobs.iter().filter(|j| j.id <= FINISHED) {
        let row = |r: Option<&ResultRow>| Row {
            job_id: j.id,
            state: j.state.clone(),
            payload: j.payload.clone(),
            attempts: j.attempts,
            updated_at_us: j.updated_at.and_utc().timestamp_micros(),
            unique_key: j.unique_key.clone(),
            progress: j.progress.clone(),
            attempt: r.map(|r| r.attempt),
            outcome: r.map(|r| r.outcome.clone()),
            output: r.and_then(|r| r.output.clone()),
            error: r.and_then(|r| r.error.clone()),
            duration_ms: r.map(|r| r.duration_ms),
        };
        match by_job.get(&j.id) {
            Some(attempts) => rows.extend(attempts.iter().map(|r| row(Some(r)))),
            None => rows.push(row(None)),
        }
    }
    rows
}

/// pyarrow's view of the file, when pyarrow is installed: (rows, distinct jobs, sum of ids).
fn pyarrow_counts(file: &Path) -> Option<(i64, i64, i64)> {
    let script = "import sys, pyarrow.parquet as pq, pyarrow.compute as pc\n\
                  t = pq.read_table(sys.argv[1])\n\
                  ids = t.column('job_id')\n\
                  print(t.num_rows, len(pc.unique(ids)), pc.sum(pc.unique(ids)).as_py())";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(file)
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(out) = out else {
        if std::env::var("JOBDB_REQUIRE_PYARROW").as_deref() == Ok("1") {
            panic!("JOBDB_REQUIRE_PYARROW=1 but python3 cannot import pyarrow");
        }
        loud!("SKIPPED the pyarrow read-back: python3 with pyarrow is not installed");
        return None;
    };
    let text = String::from_utf8(out.stdout).unwrap();
    let n: Vec<i64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    Some((n[0], n[1], n[2]))
}

fn options() -> ArchiveOptions {
    ArchiveOptions {
        older_than: Duration::from_secs(600),
        ..ArchiveOptions::default()
    }
}

#[test]
fn a_hundred_thousand_finished_jobs_are_archived_with_every_attempt_and_deleted() {
    let db = source(FINISHED);
    let (jobs, results) = tables(&db);
    let queue = db.queue();
    let file = db.path.with_file_name("history.parquet");
    let started = Instant::now();
    let report = jobdb::archive::archive(queue.db(), &file, &options()).unwrap();
    loud!(
        "archive: {} jobs, {} rows in {:.2} s (debug build), {} bytes",
        report.jobs,
        report.rows,
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&file).unwrap().len()
    );
    assert_eq!(
        (report.jobs, report.deleted, report.kept, report.resumed),
        (FINISHED as u64, FINISHED as u64, 0, false)
    );
    let want = expected(&jobs, &results);
    assert_eq!(report.rows, want.len() as u64);
    let got = read_parquet(&file);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    if let Some((rows, distinct, sum)) = pyarrow_counts(&file) {
        loud!("pyarrow read {rows} rows of {distinct} jobs");
        assert_eq!(
            (rows, distinct, sum),
            (want.len() as i64, FINISHED, FINISHED * (FINISHED + 1) / 2)
        );
    }
    // Gone from the database; the live jobs stay, and nothing is left to archive.
    let (after, after_results) = tables(&db);
    assert_eq!(after.len(), 100);
    assert!(after
        .iter()
        .all(|j| j.id > FINISHED && (j.state == "queued" || j.state == "running")));
    assert!(after_results.is_empty());
    let again = jobdb::archive::archive(
        queue.db(),
        &db.path.with_file_name("more.parquet"),
        &options(),
    )
    .unwrap();
    assert_eq!(again.jobs, 0);
    assert!(!db.path.with_file_name("more.parquet").exists());
    // Bad input is refused before anything happens.
    let bad = jobdb::archive::archive(queue.db(), &db.path.with_file_name("x.csv"), &options());
    assert!(bad.unwrap_err().is_invalid_input());
}

/// SIGKILL while the file is written (nothing deleted, no file under its name), and between
/// the write and the deletes (the file complete, jobs still there): each rerun leaves every
/// job archived exactly once and the file as the first complete run wrote it.
#[cfg(unix)]
#[test]
fn a_killed_archive_rerun_archives_each_job_exactly_once() {
    use std::os::unix::process::ExitStatusExt;
    let db = source(FINISHED);
    let (jobs, results) = tables(&db);
    let file = db.path.with_file_name("history.parquet");
    let partial = db.path.with_file_name("history.parquet.partial");
    let archive = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobdb"));
        cmd.args([
            "--database-url",
            &db.url(),
            "archive",
            "--older-than",
            "10m",
            "--batch",
            "50",
            "--json",
        ])
        .arg("--to")
        .arg(&file)
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        cmd
    };
    let kill_when = |what: &Path| {
        let mut child = archive().spawn().unwrap();
        let started = Instant::now();
        while !what.exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "archive ended before {what:?} appeared"
            );
            assert!(started.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    };

    // While writing: no file under the final name, nothing deleted.
    kill_when(&partial);
    assert!(!file.exists());
    assert_eq!(tables(&db).0.len() as i64, FINISHED + 100);

    // Between the write and the deletes (or during them).
    kill_when(&file);
    let written = std::fs::read(&file).unwrap();
    let left = tables(&db).0.len() as i64 - 100;
    loud!("killed after the file was in place: {left} archived jobs still in the database");
    assert!(left > 0, "the deletes had all finished before the kill");

    let out = archive().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["resumed"].as_bool(), report["jobs"].as_i64()),
        (Some(true), Some(FINISHED))
    );
    assert_eq!(report["deleted"].as_i64(), Some(left));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        written,
        "the rerun rewrote the file"
    );
    let got = read_parquet(&file);
    assert_eq!(got, expected(&jobs, &results));
    let mut ids: Vec<i64> = got.iter().map(|r| r.job_id).collect();
    ids.dedup();
    assert_eq!(ids.len() as i64, FINISHED, "each job once");
    assert_eq!(tables(&db).0.len(), 100);
}
