//! The app's own transactions on the persistence handle (`Db::write`), beside the queue's:
//! atomic with an enqueue, rolled back together, re-run on busy, and never a lock error while
//! workers run. On both backends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use jobdb::{HandlerError, NewJob, Worker, WorkerConfig};

use crate::backends::{Backend, TestConn};

crate::on_both_backends!(
    a_pooled_connection_is_accepted_wherever_a_connection_is,
    an_app_write_and_its_enqueue_commit_or_roll_back_together,
    app_writes_beside_running_workers_all_commit_and_each_job_runs_once,
);

/// `jobdb::queue::enqueue(&mut pooled, …)`: a connection checked out of the pool works as it
/// is (41b6fc7 wanted `&mut *pooled`), and so does a handler's `?` on a Diesel error.
fn a_pooled_connection_is_accepted_wherever_a_connection_is<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let mut pooled = q.pool().get().unwrap();
    let id = jobdb::queue::enqueue(&mut pooled, &NewJob::new("pooled", &1).unwrap()).unwrap();
    let claimed = jobdb::queue::claim(&mut pooled, "pooled", 1, "w", Duration::from_secs(30));
    let lease = claimed.unwrap()[0].lease();
    jobdb::queue::complete(&mut pooled, lease, &"done", Duration::ZERO).unwrap();
    assert_eq!(
        jobdb::queue::get_job(&mut pooled, id).unwrap().state,
        jobdb::JobState::Succeeded
    );
    assert_eq!(
        jobdb::manage::paused(&mut pooled).unwrap(),
        Vec::<String>::new()
    );
    let from_diesel: HandlerError = diesel::result::Error::NotFound.into();
    assert!(
        from_diesel.message.contains("not found"),
        "{}",
        from_diesel.message
    );
}

fn an_app_write_and_its_enqueue_commit_or_roll_back_together<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    b.exec("CREATE TABLE posts (id INTEGER PRIMARY KEY, published INTEGER NOT NULL)");
    b.exec("INSERT INTO posts (id, published) VALUES (1, 0)");
    let db = q.db().clone();
    let id = db
        .write(|conn| {
            conn.batch_execute("UPDATE posts SET published = 1 WHERE id = 1")?;
            jobdb::queue::enqueue(conn, &NewJob::new("notify", &1)?)
        })
        .unwrap();
    assert_eq!(q.get_job(id).unwrap().queue, "notify");
    let failed = db.write(|conn| {
        conn.batch_execute("UPDATE posts SET published = 2 WHERE id = 1")?;
        jobdb::queue::enqueue(conn, &NewJob::new("notify", &2)?)?;
        // Bad input after both writes: the whole transaction rolls back.
        jobdb::queue::enqueue(conn, &NewJob::new("", &3)?)
    });
    assert!(failed.unwrap_err().is_invalid_input());
    assert_eq!(
        q.stats(None).unwrap().total.total(),
        1,
        "the rolled-back job is gone"
    );
    let published = b
        .conn()
        .query_i64("SELECT CAST(published AS BIGINT) AS n FROM posts");
    assert_eq!(published, 1, "the app's row rolled back with the job");
}

/// 8 app threads, each 50 transactions (update its own row + enqueue), while a worker with 4
/// threads drains the queue: every transaction commits (no busy error reaches the app), one
/// job each, each succeeded once. Prints the app's write latency (not asserted: timings live
/// in `jobdb bench`).
fn app_writes_beside_running_workers_all_commit_and_each_job_runs_once<C: TestConn>(
    b: &Backend<C>,
) {
    let q = b.queue();
    b.exec("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)");
    for t in 0..8 {
        b.exec(&format!("INSERT INTO counters (id, n) VALUES ({t}, 0)"));
    }
    let mut config = WorkerConfig::new("app");
    config.concurrency = 4;
    config.poll_max = Duration::from_millis(20);
    let worker = Worker::new(q.clone(), config, |job| {
        Ok::<_, HandlerError>(job.payload::<serde_json::Value>()?)
    });
    let stop = worker.shutdown_handle();
    let running = thread::spawn(move || worker.run());

    let failures = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (db, failures) = (q.db().clone(), failures.clone());
            thread::spawn(move || {
                let mut latencies = Vec::new();
                for i in 0..50 {
                    let started = Instant::now();
                    let r = db.write(move |conn| {
                        conn.batch_execute(&format!(
                            "UPDATE counters SET n = n + 1 WHERE id = {t}"
                        ))?;
                        jobdb::queue::enqueue(
                            conn,
                            &NewJob::new("app", &serde_json::json!({"t": t, "i": i}))?,
                        )
                    });
                    latencies.push(started.elapsed());
                    if let Err(e) = r {
                        eprintln!("app write failed: {e:?}");
                        failures.store(true, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        !failures.load(Ordering::Relaxed),
        "every app transaction commits"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while q.stats(Some("app")).unwrap().total.succeeded < 400 {
        assert!(Instant::now() < deadline, "the queue did not drain");
        thread::sleep(Duration::from_millis(20));
    }
    stop.shutdown();
    running.join().unwrap().unwrap();
    let audit = q.audit("app").unwrap();
    assert_eq!(
        (audit.jobs, audit.not_succeeded, audit.duplicated),
        (400, 0, 0)
    );
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    crate::backends::loud!(
        "{}: app write latency beside 4 workers ({} build): p50 {:?}, p99 {:?}, max {:?}",
        q.backend(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    // Loose: a write that waited seconds would mean the app sat behind the busy handler.
    assert!(latencies[latencies.len() - 1] < Duration::from_secs(10));
}

/// A file created by someone else (an app's `diesel migration run`, say) is in rollback-journal
/// mode; opening the handle switches it to WAL and verifies it, whoever created it.
#[test]
fn the_handle_turns_on_wal_in_a_file_it_did_not_create() {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Mode {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
    }
    let db = crate::common::TestDb::new();
    let mut c = diesel::SqliteConnection::establish(&db.url()).unwrap();
    c.batch_execute("CREATE TABLE posts (id INTEGER PRIMARY KEY)")
        .unwrap();
    let mode = |c: &mut diesel::SqliteConnection| {
        diesel::sql_query("PRAGMA journal_mode")
            .get_result::<Mode>(c)
            .unwrap()
            .journal_mode
    };
    assert_eq!(mode(&mut c), "delete");
    drop(c);
    let _db: jobdb::Db = jobdb::Db::open(&db.url(), jobdb::Config::default()).unwrap();
    let mut c = diesel::SqliteConnection::establish(&db.url()).unwrap();
    assert_eq!(
        mode(&mut c),
        "wal",
        "WAL is a property of the file: every connection sees it"
    );
}

/// A panic inside the app's write closure (a bug of the app's) fails that write and its
/// group with an internal error and rolls them back; the writer, the combining thread and
/// every later write go on. (Before, the panic unwound through whichever thread was
/// combining, and with the writer threads it would have stopped every later write.)
#[test]
fn a_panicking_app_write_fails_its_group_and_later_writes_go_on() {
    let db = crate::common::TestDb::new();
    let q = db.queue();
    let handle = q.db().clone();
    let alone = handle.write(|_| -> jobdb::Result<()> { panic!("app bug, alone") });
    assert!(alone.unwrap_err().is_internal());
    let (ok, failed) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let q = q.clone();
                s.spawn(move || {
                    let mut counts = (0u32, 0u32);
                    for n in 0..50 {
                        match q.enqueue(&jobdb::NewJob::new("pan", &(t * 100 + n)).unwrap()) {
                            Ok(_) => counts.0 += 1,
                            Err(e) => {
                                assert!(e.is_internal(), "{e}");
                                counts.1 += 1;
                            }
                        }
                    }
                    counts
                })
            })
            .collect();
        for _ in 0..5 {
            let r = handle.write(|_| -> jobdb::Result<()> { panic!("app bug, in a crowd") });
            assert!(r.unwrap_err().is_internal());
        }
        writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    assert_eq!(ok + failed, 400);
    // Exactly the acknowledged enqueues are there: a failed group wrote nothing.
    assert_eq!(q.stats(Some("pan")).unwrap().total.queued, i64::from(ok));
    assert!(q
        .enqueue(&jobdb::NewJob::new("pan", &"after").unwrap())
        .is_ok());
    crate::common::assert_integrity_ok(&db);
}
