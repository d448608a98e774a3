//! Many writers on one file: every job claimed once, completed once, one results row each, and
//! no error ever reaches the caller. Threads in one process, then separate OS processes.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use diesel::{QueryableByName, RunQueryDsl};
use jobdb::{NewJob, Queue};

use crate::common::TestDb;

const LEASE: Duration = Duration::from_secs(60);

/// Each worker enqueues `per_worker` jobs in chunks while the others already claim, then all
/// drain the queue: claim → heartbeat → complete. Returns the ids this worker completed.
/// Panics on any error: none may surface.
fn enqueue_and_drain(
    queue: &Queue,
    worker: &str,
    per_worker: usize,
    enqueued: &AtomicUsize,
    total: usize,
) -> Vec<i64> {
    for chunk in (0..per_worker).collect::<Vec<_>>().chunks(250) {
        let jobs: Vec<NewJob> = chunk
            .iter()
            .map(|i| NewJob::new("load", &serde_json::json!({"w": worker, "i": i})).unwrap())
            .collect();
        queue.enqueue_many(&jobs).expect("enqueue");
        enqueued.fetch_add(jobs.len(), Ordering::SeqCst);
    }
    let mut done = Vec::new();
    loop {
        let all_enqueued = enqueued.load(Ordering::SeqCst) >= total;
        let claimed = queue.claim("load", 1, worker, LEASE).expect("claim");
        let Some(job) = claimed.into_iter().next() else {
            if all_enqueued {
                return done;
            }
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        queue.heartbeat(job.lease(), LEASE).expect("heartbeat");
        queue
            .complete(
                job.lease(),
                &serde_json::json!({"ok": job.id}),
                Duration::ZERO,
            )
            .expect("complete");
        done.push(job.id);
    }
}

#[derive(QueryableByName)]
struct Check {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    jobs: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    succeeded: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    results: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    jobs_without_exactly_one_result: i64,
}

/// Verification in SQL, independent of what the workers reported.
fn check(queue: &Queue) -> Check {
    let mut conn = queue.pool().get().unwrap();
    diesel::sql_query(
        "SELECT (SELECT count(*) FROM jobs) AS jobs, \
                (SELECT count(*) FROM jobs WHERE state = 'succeeded') AS succeeded, \
                (SELECT count(*) FROM results WHERE outcome = 'succeeded') AS results, \
                (SELECT count(*) FROM jobs j WHERE (SELECT count(*) FROM results r \
                   WHERE r.job_id = j.id AND r.outcome = 'succeeded') <> 1) \
                  AS jobs_without_exactly_one_result",
    )
    .get_result(&mut conn)
    .unwrap()
}

fn assert_each_once(ids: &[i64], total: usize) {
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), total, "completions reported");
    assert_eq!(unique.len(), total, "no job completed twice");
}

#[test]
fn sixteen_threads_two_thousand_jobs_each_exactly_once() {
    const THREADS: usize = 16;
    const PER_THREAD: usize = 2_000;
    const TOTAL: usize = THREADS * PER_THREAD;
    let db = TestDb::new();
    let queue = db.queue_with(|c| c.pool_size = THREADS as u32);
    let enqueued = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Mutex::new(Vec::new()));

    thread::scope(|s| {
        for t in 0..THREADS {
            let (queue, enqueued, done) = (queue.clone(), enqueued.clone(), done.clone());
            s.spawn(move || {
                let ids = enqueue_and_drain(&queue, &format!("t{t}"), PER_THREAD, &enqueued, TOTAL);
                done.lock().unwrap().extend(ids);
            });
        }
    });

    assert_each_once(&done.lock().unwrap(), TOTAL);
    let c = check(&queue);
    assert_eq!(
        (c.jobs, c.succeeded, c.results),
        (TOTAL as i64, TOTAL as i64, TOTAL as i64)
    );
    assert_eq!(c.jobs_without_exactly_one_result, 0);
    let stats = queue.retry_stats();
    assert_eq!(stats.busy_exhausted, 0);
    eprintln!("16 threads: {stats:?}");
}

const CHILD_ENV: &str = "JOBDB_TEST_CHILD_DB";
const PROCESSES: usize = 4;
const CHILD_THREADS: usize = 4;
const PER_CHILD_THREAD: usize = 500;

/// The body of one child process (a no-op when run as an ordinary test).
#[test]
fn child_process_worker() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let queue = Queue::open(&url, jobdb::Config::default()).expect("child opens the queue");
    let enqueued = Arc::new(AtomicUsize::new(0));
    let total_here = CHILD_THREADS * PER_CHILD_THREAD;
    let pid = std::process::id();
    let ids: Vec<i64> = thread::scope(|s| {
        let handles: Vec<_> = (0..CHILD_THREADS)
            .map(|t| {
                let (queue, enqueued) = (queue.clone(), enqueued.clone());
                s.spawn(move || {
                    enqueue_and_drain(
                        &queue,
                        &format!("p{pid}t{t}"),
                        PER_CHILD_THREAD,
                        &enqueued,
                        total_here,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    println!("CLAIMED {}", list.join(","));
    println!("BUSY_EXHAUSTED {}", queue.retry_stats().busy_exhausted);
}

#[test]
fn four_processes_on_one_file_exactly_once() {
    let db = TestDb::new();
    // The children migrate concurrently: the migration lock makes that safe.
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "concurrency::child_process_worker",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, db.url())
                .output_async()
        })
        .collect();
    let mut all = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(!stderr.contains("database is locked") && !stdout.contains("database is locked"));
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("CLAIMED ").map(|(_, ids)| ids))
            .unwrap_or_else(|| panic!("no CLAIMED line:\n{stdout}\n{stderr}"));
        all.extend(
            line.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<i64>().unwrap()),
        );
        assert!(stdout.contains("BUSY_EXHAUSTED 0"), "{stdout}");
    }
    // Children drain only until their own enqueues are done; anything left is finished here.
    let queue = db.queue();
    all.extend(enqueue_and_drain(
        &queue,
        "parent",
        0,
        &AtomicUsize::new(0),
        0,
    ));
    let total = PROCESSES * CHILD_THREADS * PER_CHILD_THREAD;
    assert_each_once(&all, total);
    let c = check(&queue);
    assert_eq!(
        (c.jobs, c.succeeded, c.results),
        (total as i64, total as i64, total as i64)
    );
    assert_eq!(c.jobs_without_exactly_one_result, 0);
}

/// `Command::spawn` with piped output, so several children run at once.
trait SpawnPiped {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnPiped for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}
