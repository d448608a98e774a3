//! Faults a production queue meets: a full disk, a read-only database, a long busy storm from
//! another process, and dependencies with known advisories.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use jobdb::{Config, Error, NewJob};

use crate::common::TestDb;

#[test]
fn a_full_database_is_a_clear_error_rolls_back_and_recovers() {
    let db = TestDb::new();
    let q = db.queue();
    q.enqueue(&NewJob::new("f", &"first").unwrap()).unwrap();
    // Cap the file at its current size on the writer connection, as a full disk would.
    q.run("cap", |c| {
        c.batch_execute("PRAGMA max_page_count = 1; SELECT 1")?;
        Ok(())
    })
    .unwrap();
    let big: Vec<NewJob> = (0..2000)
        .map(|i| NewJob::new("f", &format!("{i:0>500}")).unwrap())
        .collect();
    let err = q.enqueue_batch(&big).unwrap_err();
    assert!(err.is_storage_full(), "{err:?}");
    assert!(!err.is_busy());
    assert!(
        err.to_string().contains("database or disk is full"),
        "{err}"
    );
    assert_eq!(
        q.stats(Some("f")).unwrap().total.queued,
        1,
        "the failed batch left nothing"
    );

    // Space returns: the same queue works again.
    q.run("uncap", |c| {
        c.batch_execute("PRAGMA max_page_count = 1073741823")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(q.enqueue_batch(&big).unwrap().len(), 2000);
    assert_eq!(q.stats(Some("f")).unwrap().total.queued, 2001);
}

#[test]
fn a_read_only_database_is_refused_when_the_pool_is_built() {
    let db = TestDb::new();
    drop(db.queue()); // a valid, migrated file
    let ro = format!("file:{}?mode=ro", db.url());
    let err = jobdb::SqliteQueue::open(&ro, Config::default()).unwrap_err();
    assert!(
        err.to_string().contains("readonly") || err.to_string().contains("read-only"),
        "{err}"
    );
    assert!(matches!(err, Error::InvalidDatabaseUrl { .. }), "{err:?}");
}

#[test]
fn a_busy_storm_shorter_than_the_deadline_is_waited_out_by_another_process() {
    let db = TestDb::new();
    drop(db.queue());
    let mut holder = SqliteConnection::establish(&db.url()).unwrap();
    holder.batch_execute("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .arg("--database-url")
        .arg(db.url())
        .env("JOBDB_BUSY_TIMEOUT_MS", "50")
        .env("JOBDB_RETRY_DEADLINE_MS", "10000")
        .args(["enqueue", r#"{"storm":true}"#])
        .output_after(|| {
            thread::sleep(Duration::from_millis(800));
            holder.batch_execute("COMMIT").unwrap();
        });
    assert!(
        child.status.success(),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "it waited for the lock"
    );
    assert!(!String::from_utf8_lossy(&child.stderr).contains("database is locked"));
    assert_eq!(db.queue().stats(None).unwrap().total.queued, 1);
}

/// Runs the command, calls `meanwhile` while it runs, then waits for its output.
trait OutputAfter {
    fn output_after(&mut self, meanwhile: impl FnOnce()) -> std::process::Output;
}

impl OutputAfter for Command {
    fn output_after(&mut self, meanwhile: impl FnOnce()) -> std::process::Output {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        meanwhile();
        child.wait_with_output().unwrap()
    }
}

#[test]
fn crates_with_known_advisories_stay_out_of_the_lockfile() {
    // RUSTSEC-2025-0012 (backoff, unmaintained) and RUSTSEC-2024-0384 (instant, unmaintained).
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("Cargo.lock is committed");
    for banned in ["backoff", "instant"] {
        assert!(
            !lock.contains(&format!("name = \"{banned}\"")),
            "{banned} is in Cargo.lock"
        );
    }
}
