//! PostgreSQL through the real binary: many worker processes exactly once, and clear errors
//! for an unreachable server, wrong credentials and a missing database.

use crate::backends::{postgres_server_url, PgTestDb};
use crate::worker_processes::jobdb;

#[test]
fn four_worker_processes_on_postgres_run_every_job_exactly_once() {
    if let Some(db) = PgTestDb::new("four_worker_processes_on_postgres") {
        crate::worker_processes::four_by_four::<diesel::PgConnection>(&db.url, || {});
    }
}

/// `jobdb stats` on `url` fails with exit 1 and exactly one line on stderr, returned.
pub(crate) fn one_clear_line(url: &str) -> String {
    let out = jobdb(url).args(["stats"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_postgres_urls_are_one_clear_line_each() {
    let Some(server) = postgres_server_url() else {
        crate::backends::loud!("SKIPPED bad_postgres_urls: no PostgreSQL server configured");
        return;
    };
    // Nothing listens on port 1.
    let err = one_clear_line("postgres://postgres@127.0.0.1:1/postgres");
    assert!(
        err.contains("cannot open database") && err.contains("127.0.0.1"),
        "{err}"
    );
    // A database that does not exist on the real server.
    let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(&server);
    let err = one_clear_line(&format!("{base}/jobdb_no_such_database"));
    assert!(
        err.contains("jobdb_no_such_database") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(err.matches("does not exist").count(), 1, "said once: {err}");
    // A role that does not exist, with a password that must not be echoed.
    let err = one_clear_line("postgres://no_such_role:hunter2@127.0.0.1:5432/postgres");
    assert!(err.contains("no_such_role"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}

/// An idle worker whose poll delay is 10 s picks up a job enqueued by another process within
/// a fraction of that: LISTEN/NOTIFY woke it.
#[test]
fn listen_notify_wakes_an_idle_worker_in_another_process() {
    let Some(db) = PgTestDb::new("listen_notify_wakes_an_idle_worker") else {
        return;
    };
    let queue = jobdb::PgQueue::open(&db.url, jobdb::Config::default()).unwrap();
    let mut config = jobdb::WorkerConfig::new("wake");
    config.poll_min = std::time::Duration::from_secs(10);
    config.poll_max = std::time::Duration::from_secs(10);
    let worker = jobdb::Worker::new(queue.clone(), config, |_ctx| {
        Ok::<_, jobdb::HandlerError>("woke")
    });
    let stop = worker.shutdown_handle();
    let runner = std::thread::spawn(move || worker.run().unwrap());
    // Let it find the queue empty and go idle (and its LISTEN start).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let out = jobdb(&db.url)
        .args(["enqueue", "--queue", "wake", "{}"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let job = queue
        .wait_for(id, std::time::Duration::from_secs(8))
        .unwrap();
    let picked_up = started.elapsed();
    stop.shutdown();
    runner.join().unwrap();
    assert_eq!(job.state, jobdb::JobState::Succeeded);
    assert!(
        picked_up < std::time::Duration::from_secs(3),
        "picked up after {picked_up:?}; polling alone would take up to 10 s"
    );
}
