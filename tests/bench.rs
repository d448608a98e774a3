//! `jobdb bench` as CI's smoke run: small, checking only that the work is verified (nothing
//! lost, duplicated or failed) and that the report has its figures. Timing targets live in
//! the benchmark itself, not here.

use serde_json::Value;

use crate::cli::{jobdb, ok_stdout};
use crate::common::TestDb;

fn report(db: &TestDb, args: &[&str]) -> Value {
    let out = ok_stdout(jobdb(db).arg("bench").args(args).arg("--json"));
    serde_json::from_str(out.trim()).expect("one JSON report")
}

#[test]
fn a_small_multi_process_run_loses_and_duplicates_nothing() {
    let db = TestDb::new();
    let r = report(
        &db,
        &["--jobs", "600", "--workers", "4", "--processes", "2"],
    );
    eprintln!("bench smoke: {r}");
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicated"], 0);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["jobs"], 600);
    assert!(r["jobs_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_latency_run_measures_every_job_in_another_process() {
    let db = TestDb::new();
    let r = report(&db, &["--latency", "20"]);
    eprintln!("latency smoke: {r}");
    assert_eq!(r["jobs"], 20);
    let (p50, max) = (
        r["pickup_p50_ms"].as_f64().unwrap(),
        r["pickup_max_ms"].as_f64().unwrap(),
    );
    assert!(p50 <= max, "{r}");
    // Loose: with the watcher a pickup takes milliseconds; polling alone would be up to
    // 200 ms. Only a gross failure (no wake-up at all) passes a second.
    assert!(max < 1000.0, "{r}");
}

/// `--async` (the loop as tokio tasks) and `--runtime [--async]` (the worker runtimes), in
/// one process and across two: verified like the default run.
#[test]
fn the_async_and_runtime_modes_lose_and_duplicate_nothing() {
    for (mode, args) in [
        ("tasks", &["--async"][..]),
        ("worker", &["--runtime"][..]),
        ("async-worker", &["--runtime", "--async"][..]),
        (
            "async-worker",
            &["--runtime", "--async", "--processes", "2"][..],
        ),
    ] {
        let db = TestDb::new();
        let mut all = vec!["--jobs", "400", "--workers", "4"];
        all.extend_from_slice(args);
        let r = report(&db, &all);
        eprintln!("bench {args:?}: {} jobs/s", r["jobs_per_sec"]);
        assert_eq!(r["mode"], mode, "{r}");
        assert_eq!(
            (&r["lost"], &r["duplicated"], &r["errors"]),
            (&0.into(), &0.into(), &0.into()),
            "{r}"
        );
        assert!(r["jobs_per_sec"].as_f64().unwrap() > 0.0);
    }
}
