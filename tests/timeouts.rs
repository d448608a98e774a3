//! Job timeouts: per job (`NewJob::timeout`, `enqueue --timeout`) and per worker
//! (`WorkerConfig::job_timeout`, `work --job-timeout`). An attempt past its limit fails
//! "timed out after …" and is retried with the backoff; `--exec` kills the command's group;
//! a handler that ignores the limit is failed by the heartbeat thread and its late result is
//! fenced off. (41b6fc7 had no timeouts: a handler that never ended was heartbeated for ever.)

use std::thread;
use std::time::{Duration, Instant};

use jobdb::{HandlerError, JobState, NewJob, Outcome, Worker, WorkerConfig};

use crate::backends::{Backend, TestConn};
use crate::cli::{enqueue_id, jobdb, ok_stdout, show};
use crate::common::TestDb;

crate::on_both_backends!(an_attempt_past_its_timeout_fails_as_timed_out_and_is_retried);

fn an_attempt_past_its_timeout_fails_as_timed_out_and_is_retried<C: TestConn>(b: &Backend<C>) {
    let q = b.queue_with(|c| c.job_backoff.base = Duration::from_millis(20));
    let slow = q
        .enqueue(
            &NewJob::new("t", &1)
                .unwrap()
                .max_attempts(2)
                .timeout(Duration::from_millis(300)),
        )
        .unwrap();
    // No timeout of its own: the worker's default (none) applies, so it succeeds.
    let quick = q.enqueue(&NewJob::new("t", &2).unwrap()).unwrap();
    let mut config = WorkerConfig::new("t");
    config.exit_when_empty = true;
    let worker = Worker::new(q.clone(), config, |job| {
        if job.payload::<i32>()? == 1 {
            // A well-behaved long handler: it stops when told to.
            while !job.should_abandon() {
                thread::sleep(Duration::from_millis(5));
            }
            assert!(job.is_timed_out());
        }
        Ok::<_, HandlerError>("done")
    });
    let report = worker.run().unwrap();
    assert_eq!((report.succeeded, report.failed), (1, 2), "{report:?}");
    assert_eq!(q.get_job(quick).unwrap().state, JobState::Succeeded);
    let job = q.get_job(slow).unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.timeout, Some(Duration::from_millis(300)));
    let results = q.get_results(slow).unwrap();
    assert_eq!(results.len(), 2, "retried once with the backoff");
    for r in results {
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.error.as_deref(), Some("timed out after 300ms"));
        assert!(r.duration_ms >= 300, "{r:?}");
    }
}

/// A handler that never looks at `should_abandon`: the heartbeat thread fails the attempt as
/// timed out (a few seconds past the limit), and the handler's late success is refused.
#[test]
fn a_handler_ignoring_its_timeout_is_failed_and_its_late_result_fenced_off() {
    let db = TestDb::new();
    let q = db.queue();
    let id = q
        .enqueue(
            &NewJob::new("ignore", &1)
                .unwrap()
                .max_attempts(1)
                .timeout(Duration::from_millis(200)),
        )
        .unwrap();
    let mut config = WorkerConfig::new("ignore").lease(Duration::from_secs(1));
    config.exit_when_empty = true;
    // The handler is deaf to should_abandon: it returns only when the watcher, having seen the
    // attempt failed, lets it (or after a minute, which the assertion below catches), so
    // "failed while the handler ran" is an order of events, not a race with a sleep.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let watcher = {
        let q = q.clone();
        thread::spawn(move || {
            let started = Instant::now();
            // One read per look: two reads could see `queued`, then `running`, and stop.
            while matches!(
                q.get_job(id).unwrap().state,
                JobState::Running | JobState::Queued
            ) {
                // A quiet run fails it a few seconds past the limit; a minute is over 10x.
                assert!(started.elapsed() < Duration::from_secs(60));
                thread::sleep(Duration::from_millis(20));
            }
            release.send(()).unwrap();
        })
    };
    let worker = Worker::new(q.clone(), config, move |_job| {
        let told = released
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(60))
            .is_ok();
        Ok::<_, HandlerError>(if told { "late" } else { "never told" })
    });
    let report = worker.run().unwrap();
    watcher.join().unwrap();
    assert_eq!(
        report.succeeded, 0,
        "the late result is fenced off: {report:?}"
    );
    let job = q.get_job(id).unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.last_error.as_deref(), Some("timed out after 200ms"));
    assert_eq!(q.get_results(id).unwrap().len(), 1);
}

#[test]
fn timeouts_through_the_binary_kill_the_command_group() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let own: i64 =
        ok_stdout(jobdb(&db).args(["enqueue", "--timeout", "500ms", "--max-attempts", "1", "{}"]))
            .trim()
            .parse()
            .unwrap();
    let by_default = enqueue_id(&db, &["--max-attempts", "1", "{}"]);
    let command = format!(
        "echo $$ >> {p}; sleep 1000 & echo $! >> {p}; wait",
        p = pids.display()
    );
    let started = Instant::now();
    ok_stdout(jobdb(&db).args([
        "work",
        "--exit-when-empty",
        "--job-timeout",
        "300ms",
        "--exec",
        &command,
    ]));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    for (id, limit) in [(own, "500ms"), (by_default, "300ms")] {
        let job = show(&db, id);
        assert_eq!(job["state"], "dead", "{job}");
        assert_eq!(
            job["last_error"],
            format!("timed out after {limit}"),
            "{job}"
        );
    }
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        let pid: libc::pid_t = pid.trim().parse().unwrap();
        // SAFETY: signal 0 only probes.
        assert!(
            unsafe { libc::kill(pid, 0) } != 0,
            "process {pid} outlived its timeout"
        );
    }
}
