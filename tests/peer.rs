//! Peer-parity features through the library: unique jobs, cancellation, retry, retention,
//! pause, periodic ticks, waiting for results, per-queue activity.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::connection::SimpleConnection;
use jobdb::{
    CancelOutcome, HandlerError, JobState, NewJob, Outcome, PruneBatch, Worker, WorkerConfig,
};

use crate::common::TestDb;

fn job(queue: &str) -> NewJob {
    NewJob::new(queue, &serde_json::json!({"n": 1})).unwrap()
}
use crate::backends::{Backend, TestConn};

crate::on_both_backends!(
    a_unique_key_admits_one_live_job_and_is_free_again_once_it_finishes,
    hostile_unique_keys_are_stored_verbatim_or_refused,
    a_cancelled_queued_job_never_runs,
    a_cancelled_running_job_tells_its_handler_and_ends_cancelled_without_success,
    complete_after_a_cancel_request_reports_cancelled_and_records_no_success,
    retry_gives_a_dead_job_fresh_attempts_with_new_attempt_numbers,
    a_paused_queue_is_not_claimed_from_and_resumes_cleanly,
    wait_for_returns_the_finished_job_or_times_out_leaving_it_alone,
    activity_shows_the_oldest_due_wait_and_last_minute_throughput,
);

fn a_unique_key_admits_one_live_job_and_is_free_again_once_it_finishes<C: TestConn>(
    b: &Backend<C>,
) {
    let q = b.queue();
    let first = q.enqueue_unique(&job("u").unique_key("k")).unwrap();
    assert!(first.inserted);
    let dup = q.enqueue_unique(&job("u").unique_key("k")).unwrap();
    assert_eq!((dup.id, dup.inserted), (first.id, false));
    // Same key on another queue, and no key at all, are different jobs.
    assert_ne!(q.enqueue(&job("other").unique_key("k")).unwrap(), first.id);
    // In one batch: the duplicate gets the existing id, in order.
    let ids = q
        .enqueue_batch(&[
            job("u"),
            job("u").unique_key("k"),
            job("u").unique_key("k2"),
        ])
        .unwrap();
    assert_eq!(ids[1], first.id);
    assert_eq!(q.stats(Some("u")).unwrap().total.queued, 3);
    // While running the key is still taken; once finished it is free.
    let claimed = q.claim("u", 10, "w", Duration::from_secs(30)).unwrap();
    let running = claimed.iter().find(|j| j.id == first.id).unwrap();
    assert_eq!(running.unique_key.as_deref(), Some("k"));
    assert_eq!(q.enqueue(&job("u").unique_key("k")).unwrap(), first.id);
    q.complete(running.lease(), &"ok", Duration::ZERO).unwrap();
    let again = q.enqueue_unique(&job("u").unique_key("k")).unwrap();
    assert!(again.inserted && again.id != first.id);
}

fn hostile_unique_keys_are_stored_verbatim_or_refused<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    for key in [
        "'; DROP TABLE jobs; --",
        "\"quoted\" \\ `tick`",
        "ünï\u{1F600}",
    ] {
        let id = q.enqueue(&job("h").unique_key(key)).unwrap();
        assert_eq!(q.get_job(id).unwrap().unique_key.as_deref(), Some(key));
    }
    for bad in ["", "nul\0byte", &"x".repeat(1025)] {
        let err = q.enqueue(&job("h").unique_key(bad)).unwrap_err();
        assert!(err.is_invalid_input(), "{err:?}");
    }
    assert_eq!(q.stats(Some("h")).unwrap().total.queued, 3);
}

fn a_cancelled_queued_job_never_runs<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&job("c")).unwrap();
    assert_eq!(q.cancel(id).unwrap(), CancelOutcome::Cancelled);
    assert!(q
        .claim("c", 10, "w", Duration::from_secs(30))
        .unwrap()
        .is_empty());
    assert_eq!(q.get_job(id).unwrap().state, JobState::Cancelled);
    assert!(q.get_results(id).unwrap().is_empty());
    // Cancelling it again, or a finished job, is a typed error; an unknown id is not found.
    assert!(q.cancel(id).unwrap_err().is_wrong_state());
    assert!(q.cancel(987_654).unwrap_err().is_not_found());
}

fn a_cancelled_running_job_tells_its_handler_and_ends_cancelled_without_success<C: TestConn>(
    b: &Backend<C>,
) {
    let q = b.queue();
    let id = q.enqueue(&job("cr")).unwrap();
    let saw_token = Arc::new(AtomicBool::new(false));
    let mut config = WorkerConfig::new("cr").lease(Duration::from_millis(600));
    config.exit_when_empty = true;
    let worker = {
        let saw = saw_token.clone();
        Worker::new(q.clone(), config, move |ctx| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !ctx.is_cancelled() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            saw.store(ctx.is_cancelled(), Ordering::SeqCst);
            // Returns success anyway: it must not be recorded as such.
            Ok::<_, HandlerError>("finished")
        })
    };
    let runner = thread::spawn(move || worker.run().unwrap());
    let started = Instant::now();
    while q.get_job(id).unwrap().state != JobState::Running {
        assert!(started.elapsed() < Duration::from_secs(10));
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(q.cancel(id).unwrap(), CancelOutcome::Requested);
    let report = runner.join().unwrap();
    assert!(
        saw_token.load(Ordering::SeqCst),
        "the handler saw the token"
    );
    assert_eq!((report.cancelled, report.succeeded), (1, 0), "{report:?}");
    let done = q.get_job(id).unwrap();
    assert_eq!(done.state, JobState::Cancelled);
    let results = q.get_results(id).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].outcome, Outcome::Failed);
    assert!(results.iter().all(|r| r.outcome != Outcome::Succeeded));
}

fn complete_after_a_cancel_request_reports_cancelled_and_records_no_success<C: TestConn>(
    b: &Backend<C>,
) {
    let q = b.queue();
    let id = q.enqueue(&job("cc")).unwrap();
    let lease = q.claim("cc", 1, "w", Duration::from_secs(30)).unwrap()[0].lease();
    q.cancel(id).unwrap();
    assert!(q
        .heartbeat(lease, Duration::from_secs(30))
        .unwrap_err()
        .is_cancelled());
    assert!(q
        .complete(lease, &"out", Duration::ZERO)
        .unwrap_err()
        .is_cancelled());
    assert_eq!(q.get_job(id).unwrap().state, JobState::Cancelled);
    assert_eq!(q.get_results(id).unwrap()[0].outcome, Outcome::Failed);
    // Batch completion: the cancelled item fails alone, the other commits.
    let a = q.enqueue(&job("cc")).unwrap();
    let b = q.enqueue(&job("cc")).unwrap();
    let claimed = q.claim("cc", 2, "w", Duration::from_secs(30)).unwrap();
    q.cancel(a).unwrap();
    let each = q
        .complete_many(
            claimed
                .iter()
                .map(|j| jobdb::queue::Completion {
                    lease: j.lease(),
                    output_json: "1".into(),
                    duration: Duration::ZERO,
                })
                .collect(),
        )
        .unwrap();
    let by_id: Vec<(i64, bool)> = claimed
        .iter()
        .map(|j| j.id)
        .zip(each.iter().map(|r| r.is_ok()))
        .collect();
    assert!(
        by_id.contains(&(a, false)) && by_id.contains(&(b, true)),
        "{by_id:?}"
    );
    assert_eq!(q.get_job(a).unwrap().state, JobState::Cancelled);
    assert_eq!(q.get_job(b).unwrap().state, JobState::Succeeded);
}

fn retry_gives_a_dead_job_fresh_attempts_with_new_attempt_numbers<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&job("r").max_attempts(2)).unwrap();
    for _ in 0..2 {
        let lease = q.claim("r", 1, "w", Duration::from_secs(30)).unwrap()[0].lease();
        q.fail(lease, "boom", Duration::ZERO).unwrap();
        q.run("due now", |c| {
            c.batch_execute(
                "UPDATE jobs SET run_at = '2000-01-01 00:00:00' WHERE state = 'queued'",
            )?;
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(q.get_job(id).unwrap().state, JobState::Dead);
    assert!(q.retry(987_654).unwrap_err().is_not_found());
    q.retry(id).unwrap();
    let job = q.get_job(id).unwrap();
    assert_eq!((job.state, job.attempts_left()), (JobState::Queued, 2));
    assert!(
        q.retry(id).unwrap_err().is_wrong_state(),
        "only dead or cancelled jobs"
    );
    let lease = q.claim("r", 1, "w", Duration::from_secs(30)).unwrap()[0].lease();
    assert_eq!(
        lease.attempt, 3,
        "attempt numbers go on: they are fencing tokens"
    );
    q.complete(lease, &"ok", Duration::ZERO).unwrap();
    let attempts: Vec<i32> = q
        .get_results(id)
        .unwrap()
        .iter()
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
}

fn a_paused_queue_is_not_claimed_from_and_resumes_cleanly<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    q.enqueue(&job("p")).unwrap();
    q.enqueue(&job("other")).unwrap();
    assert!(q.pause("p").unwrap());
    assert!(!q.pause("p").unwrap(), "idempotent");
    assert_eq!(q.paused().unwrap(), ["p"]);
    assert!(q
        .claim("p", 10, "w", Duration::from_secs(30))
        .unwrap()
        .is_empty());
    assert_eq!(
        q.claim("other", 10, "w", Duration::from_secs(30))
            .unwrap()
            .len(),
        1
    );
    assert!(q.activity(Some("p")).unwrap()["p"].paused);
    assert!(q.resume("p").unwrap());
    assert!(!q.resume("p").unwrap());
    assert_eq!(
        q.claim("p", 10, "w", Duration::from_secs(30))
            .unwrap()
            .len(),
        1
    );
    assert!(q.pause("").unwrap_err().is_invalid_input());
}

fn wait_for_returns_the_finished_job_or_times_out_leaving_it_alone<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&job("w")).unwrap();
    let err = q.wait_for(id, Duration::from_millis(100)).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(q.get_job(id).unwrap().state, JobState::Queued);
    let finisher = {
        let q = q.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            let lease = q.claim("w", 1, "w", Duration::from_secs(30)).unwrap()[0].lease();
            q.complete(lease, &serde_json::json!({"answer": 42}), Duration::ZERO)
                .unwrap();
        })
    };
    let done = q.wait_for(id, Duration::from_secs(10)).unwrap();
    finisher.join().unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let results = q.get_results(id).unwrap();
    assert_eq!(
        results[0].output::<serde_json::Value>().unwrap().unwrap()["answer"],
        42
    );
    assert!(q
        .wait_for(987_654, Duration::from_secs(1))
        .unwrap_err()
        .is_not_found());
}

fn activity_shows_the_oldest_due_wait_and_last_minute_throughput<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let old = Utc::now() - chrono::Duration::seconds(90);
    q.enqueue(&job("a").run_at(old)).unwrap();
    q.enqueue(&job("a")).unwrap();
    q.enqueue(&job("a").run_at(Utc::now() + chrono::Duration::hours(1)))
        .unwrap();
    let a = &q.activity(Some("a")).unwrap()["a"];
    let age = a.oldest_due_age_s.unwrap();
    assert!((89.0..120.0).contains(&age), "{a:?}");
    for j in q.claim("a", 2, "w", Duration::from_secs(30)).unwrap() {
        q.complete(j.lease(), &1, Duration::ZERO).unwrap();
    }
    let a = &q.activity(Some("a")).unwrap()["a"];
    assert_eq!(a.succeeded_last_minute, 2);
    assert_eq!(a.oldest_due_age_s, None, "only a future job is left");
}

/// 100,000 finished jobs (each with a results row) pruned while 4 workers keep processing.
#[test]
fn pruning_a_hundred_thousand_jobs_under_load_keeps_every_transaction_short() {
    let db = TestDb::new();
    let q = db.queue();
    // History: 100k succeeded jobs with one results row each, last changed two hours ago.
    q.run("history", |c| {
        c.batch_execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
             INSERT INTO jobs (queue, state, payload, attempts, run_at, created_at, updated_at) \
             SELECT 'old', 'succeeded', '{\"i\":' || i || '}', 1, datetime('now', '-2 hours'), \
                    datetime('now', '-2 hours'), datetime('now', '-2 hours') FROM n; \
             INSERT INTO results (job_id, attempt, outcome, output, created_at) \
             SELECT id, 1, 'succeeded', '\"done\"', updated_at FROM jobs WHERE queue = 'old';",
        )?;
        Ok(())
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let feeder_and_workers: Vec<_> = (0..4)
        .map(|w| {
            let (q, stop, errors, done) = (q.clone(), stop.clone(), errors.clone(), done.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let step = q
                        .enqueue(&job("live"))
                        .and_then(|_| q.claim("live", 1, &format!("w{w}"), Duration::from_secs(30)))
                        .and_then(|jobs| {
                            jobs.into_iter()
                                .try_for_each(|j| q.complete(j.lease(), &"ok", Duration::ZERO))
                        });
                    match step {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("worker error: {e}");
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let before = done.load(Ordering::Relaxed);
    let report = q
        .prune(
            Duration::from_secs(3600),
            &[JobState::Succeeded],
            PruneBatch::default(),
        )
        .unwrap();
    let during = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for t in feeder_and_workers {
        t.join().unwrap();
    }
    eprintln!("prune under load: {report:?}; workers completed {during} jobs meanwhile");
    assert_eq!(report.deleted, 100_000);
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert!(during > 0, "the workers kept going");
    // The protection is structural: never one giant delete, 500 jobs per transaction. Its
    // time is a measurement (README: longest hold 6.7 ms on a quiet machine, target 50 ms);
    // under the suite's own parallel load the scheduler's noise dominates, so the bound
    // asserted here is loose and the figure is printed above.
    assert_eq!(report.transactions, 200, "{report:?}");
    assert!(
        report.max_lock_hold_ms < 500.0,
        "a prune transaction held the write lock {} ms",
        report.max_lock_hold_ms
    );
    let stats = q.stats(None).unwrap();
    assert_eq!(stats.queues.get("old").map(|c| c.total()), None);
    assert!(stats.queues["live"].succeeded > 0, "recent jobs are kept");
    let orphans = q
        .run("orphans", |c| {
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            Ok(diesel::sql_query(
                "SELECT count(*) AS n FROM results WHERE job_id NOT IN (SELECT id FROM jobs)",
            )
            .get_result::<N>(c)?
            .n)
        })
        .unwrap();
    assert_eq!(orphans, 0, "results went with their jobs");
}
