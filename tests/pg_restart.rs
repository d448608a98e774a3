//! A PostgreSQL restart in the middle of a run: workers reconnect through the pool and carry
//! on; no job is lost or completed twice. It restarts the machine's server, so it is
//! `#[ignore]`d in the ordinary run (other tests use the server meanwhile) and `.ci/run` runs
//! it on its own: `cargo test --test main -- --ignored postgres_restart`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::backends::PgTestDb;

#[test]
#[ignore = "restarts the PostgreSQL server; run alone (see .ci/run)"]
fn postgres_restart_mid_run_loses_and_duplicates_nothing() {
    let Some(db) = PgTestDb::new("postgres_restart") else {
        return;
    };
    let queue = jobdb::PgQueue::open(&db.url, jobdb::Config::default()).unwrap();
    let jobs: Vec<jobdb::NewJob> = (0..3000)
        .map(|n| jobdb::NewJob::new("restart", &serde_json::json!({ "n": n })).unwrap())
        .collect();
    queue.enqueue_many(&jobs).unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_jobdb"))
                .args(["--database-url", &db.url, "work", "--queue", "restart"])
                .args(["--concurrency", "4", "--lease", "3s", "--exit-when-empty"])
                .args(["--exec", "sleep 0.01; cat"])
                .env_remove("DATABASE_URL")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Restart once some work is done and plenty is left.
    let started = Instant::now();
    while queue.stats(Some("restart")).unwrap().total.succeeded < 300 {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let restarted = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect"])
        .arg(&version)
        .args(["main", "restart"])
        .status()
        .unwrap();
    assert!(restarted.success(), "pg_ctlcluster restart failed");
    for w in workers {
        let out = w.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "worker failed: {stderr}");
    }
    // A fresh handle: the old one's pooled connections died with the server.
    let queue = jobdb::PgQueue::open(&db.url, jobdb::Config::default()).unwrap();
    let audit = queue.audit("restart").unwrap();
    assert_eq!(
        (audit.jobs, audit.not_succeeded, audit.duplicated),
        (3000, 0, 0),
        "every job succeeded exactly once across the restart"
    );
}
