//! How `jobdb work` stops on its own: `--exit-when-empty` never waits for ever (delayed jobs
//! and paused queues do not hold it), `--exit-when-idle DUR` outlasts a producer that pauses
//! between jobs, `--max-jobs N` runs exactly N.

use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{jobdb, ok_stdout, stats};
use crate::common::TestDb;

/// Runs `jobdb work ARGS --exec cat` to its own exit, within `limit`.
fn work_until_it_exits(db: &TestDb, args: &[&str], limit: Duration) -> Duration {
    let started = Instant::now();
    let mut child = jobdb(db)
        .arg("work")
        .args(args)
        .args(["--exec", "cat"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "jobdb work {args:?} failed: {status}");
            return started.elapsed();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("jobdb work {args:?} did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// 41b6fc7's `--exit-when-empty` never exited while the only queued jobs were delayed or sat
/// in a paused queue.
#[test]
fn exit_when_empty_does_not_wait_for_delayed_jobs_or_a_paused_queue() {
    let db = TestDb::new();
    ok_stdout(jobdb(&db).args(["enqueue", "--delay", "1h", "{}"]));
    ok_stdout(jobdb(&db).args(["enqueue", "{\"now\":true}"]));
    work_until_it_exits(&db, &["--exit-when-empty"], Duration::from_secs(20));
    let s = stats(&db);
    assert_eq!(
        (s["succeeded"].as_i64(), s["queued"].as_i64()),
        (Some(1), Some(1)),
        "{s}"
    );

    ok_stdout(jobdb(&db).args(["pause", "held"]));
    for _ in 0..2 {
        ok_stdout(jobdb(&db).args(["enqueue", "--queue", "held", "{}"]));
    }
    work_until_it_exits(
        &db,
        &["--queue", "held", "--exit-when-empty"],
        Duration::from_secs(20),
    );
    let s = stats(&db);
    assert_eq!(s["queues"]["held"]["queued"], 2, "{s}");
}

#[test]
fn max_jobs_runs_exactly_that_many_even_with_several_threads() {
    let db = TestDb::new();
    for i in 0..10 {
        ok_stdout(jobdb(&db).args(["enqueue", &format!("{{\"i\":{i}}}")]));
    }
    work_until_it_exits(
        &db,
        &["--concurrency", "3", "--max-jobs", "4"],
        Duration::from_secs(20),
    );
    let s = stats(&db);
    assert_eq!(
        (
            s["succeeded"].as_i64(),
            s["queued"].as_i64(),
            s["running"].as_i64()
        ),
        (Some(4), Some(6), Some(0)),
        "{s}"
    );
}

/// A producer that enqueues a job every 200 ms: `--exit-when-empty` may stop between two of
/// them, `--exit-when-idle 1500ms` outlasts the pauses and drains everything, then stops.
#[test]
fn exit_when_idle_outlasts_a_pausing_producer_then_stops() {
    let db = TestDb::new();
    drop(db.queue());
    let url = db.url();
    let producer = thread::spawn(move || {
        for i in 0..8 {
            thread::sleep(Duration::from_millis(200));
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobdb"))
                .args(["--database-url", &url, "enqueue", &format!("{{\"i\":{i}}}")])
                .env_remove("DATABASE_URL")
                .output()
                .unwrap();
            assert!(out.status.success());
        }
    });
    let took = work_until_it_exits(
        &db,
        &["--exit-when-idle", "1500ms"],
        Duration::from_secs(30),
    );
    producer.join().unwrap();
    let s = stats(&db);
    assert_eq!(
        (s["succeeded"].as_i64(), s["queued"].as_i64()),
        (Some(8), Some(0)),
        "{s}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "it waited the idle limit: {took:?}"
    );
}
