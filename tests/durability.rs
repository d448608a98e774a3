//! Durable acknowledgements (SQLite's default `Synchronous::Durable`): an enqueue, a result,
//! a cancel or an app write is answered only after an `fdatasync` of the WAL that started
//! after its commit; claims and heartbeats are not waited for (the lease recovers them). The
//! power cut itself is tests/power_loss.rs (LazyFS).

use std::time::Duration;

use diesel::connection::SimpleConnection;
use jobdb::pragmas::{read_integer_pragma, IntegerPragma};
use jobdb::{NewJob, Synchronous};

use crate::common::TestDb;

fn syncs(q: &jobdb::Queue) -> u64 {
    q.metrics().wal.syncs
}

#[test]
fn durable_operations_wait_for_a_wal_sync_and_lease_operations_do_not() {
    let db = TestDb::new();
    let q = db.queue();
    let s0 = syncs(&q);
    let id = q.enqueue(&NewJob::new("d", &1).unwrap()).unwrap();
    let s1 = syncs(&q);
    assert!(s1 > s0, "an enqueue was answered without a WAL sync");

    let job = q
        .claim("d", 1, "w", Duration::from_secs(30))
        .unwrap()
        .pop()
        .expect("claimed");
    assert_eq!(job.id, id);
    q.heartbeat(job.lease(), Duration::from_secs(30)).unwrap();
    assert_eq!(syncs(&q), s1, "a claim or heartbeat waited for a sync");

    q.complete(job.lease(), &"ok", Duration::ZERO).unwrap();
    let s2 = syncs(&q);
    assert!(s2 > s1, "a completion was answered without a WAL sync");

    q.db()
        .write(|c| {
            c.batch_execute("CREATE TABLE IF NOT EXISTS app (x INTEGER)")?;
            Ok::<_, jobdb::Error>(())
        })
        .unwrap();
    assert!(
        syncs(&q) > s2,
        "the app's own write was answered without a sync"
    );
    assert!(q.metrics().sync_wait.count >= 3);
}

#[test]
fn one_sync_covers_many_concurrent_commits() {
    let db = TestDb::new();
    let q = db.queue();
    let s0 = syncs(&q);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    q.enqueue(&NewJob::new("many", &(t * 100 + i)).unwrap())
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = syncs(&q) - s0;
    eprintln!("400 enqueues from 8 threads: {n} WAL syncs");
    // Each enqueue waits for a sync, but one sync covers every commit before it: with 8
    // threads committing while one syncs, fewer syncs than enqueues (loosely bounded).
    assert!((1..400).contains(&n), "{n} syncs for 400 enqueues");
    assert_eq!(q.stats(Some("many")).unwrap().total.queued, 400);
}

/// The writer's own `synchronous`, read on the writer connection.
fn writer_synchronous(q: &jobdb::Queue) -> i64 {
    q.run("read_synchronous", |c| {
        read_integer_pragma(c, IntegerPragma::Synchronous)
    })
    .unwrap()
}

#[test]
fn the_writer_commits_at_normal_only_where_a_syncer_makes_durable_commits_durable() {
    let db = TestDb::new();
    let q = db.queue();
    q.enqueue(&NewJob::new("d", &1).unwrap()).unwrap();
    assert_eq!(
        writer_synchronous(&q),
        1,
        "durable: the writer runs at NORMAL"
    );
    drop(q);

    let q = db.queue_with(|c| c.sqlite.pragmas.synchronous = Synchronous::Full);
    q.enqueue(&NewJob::new("d", &2).unwrap()).unwrap();
    assert_eq!(writer_synchronous(&q), 2, "full: FULL everywhere");
    assert_eq!(syncs(&q), 0, "full: SQLite syncs each commit itself");
    drop(q);

    let q = db.queue_with(|c| c.sqlite.pragmas.synchronous = Synchronous::Normal);
    q.enqueue(&NewJob::new("d", &3).unwrap()).unwrap();
    assert_eq!(writer_synchronous(&q), 1);
    assert_eq!(
        syncs(&q),
        0,
        "normal: nothing waits for the disk (the opt-out)"
    );
}

#[test]
fn synchronous_parses_durable_normal_and_full() {
    assert_eq!(
        "durable".parse::<Synchronous>().unwrap(),
        Synchronous::Durable
    );
    assert_eq!(
        "NORMAL".parse::<Synchronous>().unwrap(),
        Synchronous::Normal
    );
    assert_eq!("2".parse::<Synchronous>().unwrap(), Synchronous::Full);
    assert!("off".parse::<Synchronous>().unwrap_err().is_invalid_input());
    assert_eq!(Synchronous::default(), Synchronous::Durable);
}

#[test]
fn doctor_says_what_the_durability_setting_risks() {
    use crate::cli::{jobdb, ok_stdout};
    let db = TestDb::new();
    db.queue();
    let find = |out: &str| -> String {
        let d: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        d["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str().unwrap().starts_with("durability"))
            .map(|c| c["actual"].as_str().unwrap().to_owned())
            .expect("a durability check")
    };
    let durable = find(&ok_stdout(jobdb(&db).args(["doctor", "--json"])));
    assert!(durable.starts_with("durable:"), "{durable}");
    let normal = find(&ok_stdout(
        jobdb(&db)
            .env("JOBDB_SYNCHRONOUS", "normal")
            .args(["doctor", "--json"]),
    ));
    assert!(normal.contains("a power loss can undo"), "{normal}");
}

#[test]
fn doctor_on_postgres_reports_whether_a_commit_is_durable_there() {
    let Some(url) = crate::backends::postgres_server_url() else {
        assert!(
            std::env::var("JOBDB_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "JOBDB_REQUIRE_POSTGRES=1 and no PostgreSQL server"
        );
        eprintln!("SKIPPED: no PostgreSQL server");
        return;
    };
    let out = crate::cli::ok_stdout(
        std::process::Command::new(env!("CARGO_BIN_EXE_jobdb")).args([
            "--database-url",
            &url,
            "doctor",
            "--json",
        ]),
    );
    let d: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let names: Vec<&str> = d["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fsync", "synchronous_commit"], "{d}");
}
