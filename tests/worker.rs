//! The worker runtime: heartbeats, panics, lost leases, shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use jobdb::{HandlerError, JobState, NewJob, Outcome, Worker, WorkerConfig};

use crate::common::TestDb;

fn config(queue: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(queue).lease(Duration::from_millis(300));
    c.exit_when_empty = true;
    c.concurrency = 2;
    c
}

#[test]
fn heartbeats_keep_a_long_handler_leased() {
    let db = TestDb::new();
    let q = db.queue();
    let id = q.enqueue(&NewJob::new("slow", &1).unwrap()).unwrap();
    // The handler runs for 4 leases; once it runs, a competing claimer polls (and reaps) all
    // along and must get nothing.
    let stop = Arc::new(AtomicBool::new(false));
    // A 1 s lease (heartbeat every 333 ms) leaves room for a loaded CI machine.
    let worker = Worker::new(
        q.clone(),
        config("slow").lease(Duration::from_secs(1)),
        |_job| {
            thread::sleep(Duration::from_millis(3200));
            Ok::<_, HandlerError>("done")
        },
    );
    let runner = thread::spawn(move || worker.run().unwrap());
    while q.get_job(id).unwrap().state != JobState::Running {
        thread::sleep(Duration::from_millis(5));
    }
    let rival = {
        let (q, stop) = (q.clone(), stop.clone());
        thread::spawn(move || {
            let mut stolen = 0;
            while !stop.load(Ordering::SeqCst) {
                q.reap().unwrap();
                stolen += q
                    .claim("slow", 1, "rival", Duration::from_secs(60))
                    .unwrap()
                    .len();
                if stolen > 0 {
                    break; // fail fast; the assertion below reports it
                }
                thread::sleep(Duration::from_millis(20));
            }
            stolen
        })
    };
    let report = runner.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(rival.join().unwrap(), 0, "the lease was never lost");
    assert_eq!(report.succeeded, 1);
    let job = q.get_job(id).unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Succeeded, 1));
}

#[test]
fn a_panicking_handler_fails_that_attempt_and_the_worker_goes_on() {
    let db = TestDb::new();
    let q = db.queue();
    let bad = q
        .enqueue(&NewJob::new("p", &"panic").unwrap().max_attempts(1))
        .unwrap();
    let good = q.enqueue(&NewJob::new("p", &"fine").unwrap()).unwrap();
    let report = Worker::new(q.clone(), config("p"), |job| {
        let what: String = job.payload()?;
        if what == "panic" {
            panic!("handler exploded");
        }
        Ok(what)
    })
    .run()
    .unwrap();
    assert_eq!((report.succeeded, report.failed), (1, 1));
    assert_eq!(q.get_job(bad).unwrap().state, JobState::Dead);
    let r = q.get_results(bad).unwrap();
    assert_eq!(r[0].outcome, Outcome::Failed);
    assert!(
        r[0].error.as_deref().unwrap().contains("handler exploded"),
        "{r:?}"
    );
    assert_eq!(q.get_job(good).unwrap().state, JobState::Succeeded);
}

#[test]
fn a_lease_lost_while_the_handler_runs_abandons_the_result() {
    let db = TestDb::new();
    let q = db.queue();
    let id = q.enqueue(&NewJob::new("lost", &1).unwrap()).unwrap();
    let saw_abandon = Arc::new(AtomicBool::new(false));
    let worker = {
        let saw = saw_abandon.clone();
        let mut c = config("lost");
        c.exit_when_empty = false;
        c.concurrency = 1;
        Worker::new(q.clone(), c, move |ctx| {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if ctx.should_abandon() {
                    saw.store(true, Ordering::SeqCst);
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            Ok::<_, HandlerError>("stale result")
        })
    };
    let shutdown = worker.shutdown_handle();
    let runner = thread::spawn(move || worker.run().unwrap());
    // Wait until it runs, then steal the job: requeue it in one step, as the reaper does for
    // an expired lease (expiring it and reaping separately would race the worker's own
    // heartbeats and reaper), and claim it elsewhere.
    while q.get_job(id).unwrap().state != JobState::Running {
        thread::sleep(Duration::from_millis(10));
    }
    q.run("steal", |c| {
        Ok(c.batch_execute("UPDATE jobs SET state = 'queued', lease_expires_at = NULL")?)
    })
    .unwrap();
    let thief = q
        .claim("lost", 1, "thief", Duration::from_secs(60))
        .unwrap()
        .remove(0);

    let deadline = Instant::now() + Duration::from_secs(3);
    while !saw_abandon.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        saw_abandon.load(Ordering::SeqCst),
        "the heartbeat told the handler"
    );
    shutdown.shutdown();
    let report = runner.join().unwrap();
    assert_eq!(report.lease_lost, 1);
    assert_eq!(report.succeeded, 0);
    // Nothing of the old attempt was recorded as success; the thief still owns the job.
    let results = q.get_results(id).unwrap();
    assert!(
        results.iter().all(|r| r.outcome == Outcome::Failed),
        "{results:?}"
    );
    q.complete(thief.lease(), &"thief's result", Duration::ZERO)
        .unwrap();
}

#[test]
fn the_shutdown_handle_stops_claiming_and_lets_running_handlers_finish() {
    let db = TestDb::new();
    let q = db.queue();
    q.enqueue_many(
        &(0..20)
            .map(|i| NewJob::new("s", &i).unwrap())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let mut c = config("s");
    c.exit_when_empty = false;
    c.grace = Duration::from_secs(5);
    let worker = {
        let started = started.clone();
        Worker::new(q.clone(), c, move |_| {
            started.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(200));
            Ok::<_, HandlerError>(())
        })
    };
    let shutdown = worker.shutdown_handle();
    let runner = thread::spawn(move || worker.run().unwrap());
    while started.load(Ordering::SeqCst) < 2 {
        thread::sleep(Duration::from_millis(5));
    }
    shutdown.shutdown();
    let report = runner.join().unwrap();
    assert_eq!(
        report.succeeded as usize,
        started.load(Ordering::SeqCst),
        "every started job finished"
    );
    assert_eq!(report.released, 0);
    let s = q.stats(Some("s")).unwrap().total;
    assert_eq!(s.running, 0);
    assert_eq!(s.succeeded + s.queued, 20);
    assert!(s.queued > 0, "it stopped claiming");
}

/// Runs `worker` until job `id` is running, then shuts it down and returns its report.
fn shut_down_once_running<H>(q: &jobdb::Queue, id: i64, worker: Worker<H>) -> jobdb::WorkerReport
where
    H: Fn(&jobdb::JobContext) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    let stop = worker.shutdown_handle();
    let running = thread::spawn(move || worker.run());
    let started = Instant::now();
    while q.get_job(id).unwrap().state != JobState::Running {
        assert!(started.elapsed() < Duration::from_secs(10));
        thread::sleep(Duration::from_millis(10));
    }
    stop.shutdown();
    running.join().unwrap().unwrap()
}

/// Found by hostile use: handler threads still running when `run`
/// returned were detached without a word. Now the report counts them (and a warning names
/// them), after their jobs were released.
#[test]
fn handler_threads_left_running_at_shutdown_are_reported() {
    let db = TestDb::new();
    let q = db.queue();
    let id = q.enqueue(&NewJob::new("deaf", &1).unwrap()).unwrap();
    let mut config = WorkerConfig::new("deaf");
    config.grace = Duration::from_millis(100);
    let worker = Worker::new(q.clone(), config, |_job| {
        thread::sleep(Duration::from_secs(8)); // ignores should_abandon
        Ok::<_, HandlerError>(())
    });
    let report = shut_down_once_running(&q, id, worker);
    assert_eq!(report.detached, 1, "{report:?}");
    assert_eq!(report.released, 1, "{report:?}");
    assert_eq!(q.get_job(id).unwrap().state, JobState::Queued);
}

/// A handler that honours `should_abandon` at shutdown: its job is released and counted once,
/// as released, not also as a lost lease (the shutdown summary said "1 lease lost").
#[test]
fn a_job_released_at_shutdown_is_not_counted_as_a_lost_lease() {
    let db = TestDb::new();
    let q = db.queue();
    let id = q.enqueue(&NewJob::new("polite", &1).unwrap()).unwrap();
    let mut config = WorkerConfig::new("polite");
    config.grace = Duration::from_millis(100);
    let worker = Worker::new(q.clone(), config, |job| {
        while !job.should_abandon() {
            thread::sleep(Duration::from_millis(5));
        }
        Ok::<_, HandlerError>(())
    });
    let report = shut_down_once_running(&q, id, worker);
    assert_eq!(
        (report.released, report.lease_lost, report.detached),
        (1, 0, 0),
        "{report:?}"
    );
    assert_eq!(q.get_job(id).unwrap().state, JobState::Queued);
}

/// A reap period the worker's clock arithmetic cannot add (`Duration::MAX`) made the heartbeat
/// thread panic, and the panic was dropped: the worker ran on without heartbeats. Now such a
/// period is bad input before anything starts (and a heartbeat thread that dies stops the
/// worker, its panic returned as an internal error).
#[test]
fn a_reap_period_that_cannot_work_is_refused_before_anything_starts() {
    let db = TestDb::new();
    let q = db.queue();
    q.enqueue(&NewJob::new("r", &1).unwrap()).unwrap();
    for every in [Duration::ZERO, Duration::MAX] {
        let mut c = config("r");
        c.reap_every = every;
        let worker = Worker::new(q.clone(), c, |_job| Ok::<_, HandlerError>(()));
        let err = worker.run().unwrap_err();
        assert!(err.is_invalid_input(), "{every:?}: {err:?}");
    }
    assert_eq!(q.stats(None).unwrap().total.queued, 1, "nothing ran");
}

/// `max_jobs = N` with a live producer that enqueues the next job only once the last one
/// finished: every thread keeps finding the queue empty, so threads take and give back claim
/// slots all along. The worker must run all N and only then stop. c92a778 let a thread that
/// found every slot taken quit without giving its count back, so with 8 threads the worker
/// stopped after fewer than N and left the rest queued.
#[test]
fn max_jobs_with_a_live_producer_runs_exactly_that_many() {
    const N: u64 = 6;
    let db = TestDb::new();
    let q = db.queue();
    let mut config = WorkerConfig::new("live").lease(Duration::from_secs(30));
    config.concurrency = 8;
    config.max_jobs = Some(N);
    config.poll_min = Duration::from_millis(1);
    config.poll_max = Duration::from_millis(5);
    let worker = Worker::new(q.clone(), config, |_job| Ok::<_, HandlerError>("done"));
    let runner = thread::spawn(move || worker.run().unwrap());
    let mut extra = None;
    for i in 0..N {
        let id = q.enqueue(&NewJob::new("live", &i).unwrap()).unwrap();
        if i == N - 1 {
            // One more beside the last: the worker, with slots free on its other threads,
            // must still stop at N and leave it.
            extra = Some(q.enqueue(&NewJob::new("live", &N).unwrap()).unwrap());
        }
        // Bounded only so a broken worker fails the test instead of hanging it; a quiet run
        // finishes each job in milliseconds.
        let deadline = Instant::now() + Duration::from_secs(60);
        while q.get_job(id).unwrap().state != JobState::Succeeded {
            // Read again once the worker has stopped: it may have finished this job between
            // the read above and now.
            if runner.is_finished() {
                let job = q.get_job(id).unwrap();
                assert_eq!(
                    job.state,
                    JobState::Succeeded,
                    "the worker stopped after {i} of {N} jobs with job {id} not run"
                );
                break;
            }
            assert!(Instant::now() < deadline, "job {id} never ran");
            thread::sleep(Duration::from_millis(2));
        }
    }
    let report = runner.join().unwrap();
    assert_eq!(report.succeeded, N);
    let s = q.stats(Some("live")).unwrap().total;
    assert_eq!((s.succeeded, s.queued), (N as i64, 1), "{s:?}");
    let _ = extra;
}
