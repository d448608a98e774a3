//! Crash chaos: worker processes and batch enqueuers are SIGKILLed at random moments (also in
//! the middle of a transaction), restarted, and in the end the queue is reaped and drained.
//! Then, in SQL: every enqueued job succeeded exactly once with its payload as output, every
//! NDJSON batch is all there or not at all, and `PRAGMA integrity_check` is ok.
//!
//! CI runs a short version. The long one:
//! `JOBDB_CHAOS_CYCLES=20 JOBDB_CHAOS_BATCH=250 cargo test --release chaos -- --nocapture`
//! (20 cycles over 4 worker processes, 5,000 jobs).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};

use crate::common::TestDb;

const WORKERS: usize = 4;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn jobdb(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobdb"));
    cmd.arg("--database-url")
        .arg(db.url())
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn worker(db: &TestDb) -> Child {
    jobdb(db)
        .args([
            "work",
            "--concurrency",
            "2",
            "--lease",
            "1s",
            "--exec",
            "cat",
        ])
        .spawn()
        .unwrap()
}

#[derive(QueryableByName, Debug)]
struct Check {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    jobs: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    good: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    partial_batches: i64,
}

#[test]
fn random_sigkills_lose_nothing_and_complete_nothing_twice() {
    let cycles = env_usize("JOBDB_CHAOS_CYCLES", 10);
    let batch = env_usize("JOBDB_CHAOS_BATCH", 120);
    let db = TestDb::new();
    let _ = db.queue(); // migrated before the storm
    let mut rng = fastrand::Rng::with_seed(env_usize("JOBDB_CHAOS_SEED", 7) as u64);

    let mut workers: Vec<Child> = (0..WORKERS).map(|_| worker(&db)).collect();
    let mut kills = 0;
    for cycle in 0..cycles {
        // A batch enqueue (one transaction), killed half of the time after 0–20 ms.
        let file = db.path.with_file_name(format!("batch{cycle}.ndjson"));
        let mut f = std::fs::File::create(&file).unwrap();
        for i in 0..batch {
            writeln!(f, r#"{{"batch":{cycle},"i":{i}}}"#).unwrap();
        }
        // `--atomic`: one transaction, so a kill leaves the batch all there or not at all.
        let mut enqueuer = jobdb(&db)
            .args(["enqueue", "--atomic", "--file"])
            .arg(&file)
            .spawn()
            .unwrap();
        if rng.bool() {
            thread::sleep(Duration::from_millis(rng.u64(0..20)));
            let _ = enqueuer.kill();
            kills += 1;
        }
        let _ = enqueuer.wait();

        // Kill a random worker at a random moment and start a fresh one in its place.
        thread::sleep(Duration::from_millis(rng.u64(50..300)));
        let victim = rng.usize(0..WORKERS);
        workers[victim].kill().unwrap();
        workers[victim].wait().unwrap();
        kills += 1;
        workers[victim] = worker(&db);
    }
    for w in &mut workers {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    // After the lease, reap what the killed workers held, then drain.
    thread::sleep(Duration::from_millis(1100));
    assert!(jobdb(&db).arg("reap").status().unwrap().success());
    let drainers: Vec<Child> = (0..2)
        .map(|_| {
            jobdb(&db)
                .args([
                    "work",
                    "--concurrency",
                    "4",
                    "--lease",
                    "1s",
                    "--exit-when-empty",
                    "--exec",
                    "cat",
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for d in drainers {
        assert!(d.wait_with_output().unwrap().status.success());
    }

    let mut conn = SqliteConnection::establish(&db.url()).unwrap();
    let c: Check = diesel::sql_query(
        "SELECT count(*) AS jobs, \
           coalesce(sum(j.state = 'succeeded' AND \
             (SELECT count(*) FROM results r WHERE r.job_id = j.id AND r.outcome = 'succeeded') = 1 AND \
             (SELECT json(r.output) FROM results r WHERE r.job_id = j.id AND r.outcome = 'succeeded') = json(j.payload)), 0) AS good, \
           (SELECT count(*) FROM (SELECT payload ->> 'batch' AS b, count(*) AS n FROM jobs GROUP BY b) \
              WHERE n <> ?) AS partial_batches \
         FROM jobs j",
    )
    .bind::<diesel::sql_types::BigInt, _>(batch as i64)
    .get_result(&mut conn)
    .unwrap();
    eprintln!(
        "chaos: {cycles} cycles, {kills} SIGKILLs, {} jobs enqueued in whole batches, {c:?}",
        c.jobs
    );
    assert!(c.jobs > 0, "some batches committed");
    assert_eq!(
        c.good, c.jobs,
        "every job succeeded exactly once with its payload as output"
    );
    assert_eq!(c.partial_batches, 0, "a batch is all there or not at all");

    crate::common::assert_integrity_ok(&db);
}
