//! The behavioural suite, written once and run on SQLite and PostgreSQL: the same API must
//! give the same guarantees on both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use jobdb::{
    CancelOutcome, HandlerError, JobState, NewJob, Outcome, PruneBatch, Schedule, Worker,
    WorkerConfig,
};

use crate::backends::{Backend, TestConn};

crate::on_both_backends!(
    lifecycle_enqueue_claim_heartbeat_complete,
    an_expired_lease_is_reaped_and_fences_off_the_old_worker,
    bad_input_is_a_typed_error_and_writes_nothing,
    unique_keys_admit_one_live_job_even_under_a_race,
    cancel_queued_and_running_jobs,
    retry_gives_fresh_attempts,
    a_paused_queue_hands_out_nothing,
    prune_deletes_old_finished_jobs_with_their_results,
    a_tick_is_enqueued_once,
    sixteen_threads_claim_each_job_exactly_once,
    a_worker_runs_handlers_and_records_results,
    batched_heartbeats_and_completions_fence_each_item,
    each_attempt_records_the_worker_that_ran_it,
    the_handle_counts_attempts_by_outcome,
);

fn job(queue: &str, n: u32) -> NewJob {
    NewJob::new(queue, &serde_json::json!({"n": n})).unwrap()
}

fn lease_for() -> Duration {
    Duration::from_secs(30)
}

fn lifecycle_enqueue_claim_heartbeat_complete<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&job("life", 7)).unwrap();
    let claimed = q.claim("life", 5, "w1", lease_for()).unwrap();
    assert_eq!(claimed.len(), 1);
    let j = &claimed[0];
    assert_eq!((j.id, j.state, j.attempts), (id, JobState::Running, 1));
    assert_eq!(j.payload::<serde_json::Value>().unwrap()["n"], 7);
    assert_eq!(j.worker_id.as_deref(), Some("w1"));
    let until = q.heartbeat(j.lease(), lease_for()).unwrap();
    assert!(until > Utc::now() + chrono::Duration::seconds(20));
    q.complete(
        j.lease(),
        &serde_json::json!({"ok": true}),
        Duration::from_millis(3),
    )
    .unwrap();
    let done = q.get_job(id).unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let results = q.get_results(id).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].outcome, Outcome::Succeeded);
    assert_eq!(
        results[0].output::<serde_json::Value>().unwrap(),
        Some(serde_json::json!({"ok": true}))
    );
    // Completing twice is refused: the lease no longer holds.
    assert!(q
        .complete(j.lease(), &1, Duration::ZERO)
        .unwrap_err()
        .is_lease_lost());
    let s = q.stats(Some("life")).unwrap();
    assert_eq!((s.total.succeeded, s.total.total()), (1, 1));
    assert!(q.get_job(987_654).unwrap_err().is_not_found());
}

fn an_expired_lease_is_reaped_and_fences_off_the_old_worker<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&job("fence", 1)).unwrap();
    let old = q
        .claim("fence", 1, "old", Duration::from_millis(50))
        .unwrap()[0]
        .lease();
    thread::sleep(Duration::from_millis(120));
    assert_eq!(q.reap().unwrap(), 1);
    let new = q.claim("fence", 1, "new", lease_for()).unwrap()[0].lease();
    assert_eq!(new.attempt, 2);
    assert!(q.heartbeat(old, lease_for()).unwrap_err().is_lease_lost());
    assert!(q
        .complete(old, &"stale", Duration::ZERO)
        .unwrap_err()
        .is_lease_lost());
    assert!(q
        .fail(old, "stale", Duration::ZERO)
        .unwrap_err()
        .is_lease_lost());
    assert!(q.release(old).unwrap_err().is_lease_lost());
    q.complete(new, &"fresh", Duration::ZERO).unwrap();
    let results = q.get_results(id).unwrap();
    let outcomes: Vec<(i32, Outcome)> = results.iter().map(|r| (r.attempt, r.outcome)).collect();
    assert_eq!(outcomes, [(1, Outcome::Failed), (2, Outcome::Succeeded)]);
}

fn bad_input_is_a_typed_error_and_writes_nothing<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    assert!(NewJob::from_json("q", "{not json")
        .unwrap_err()
        .is_invalid_input());
    for bad in [
        NewJob::from_json("", "{}").unwrap(),
        NewJob::from_json("q", "{}").unwrap().max_attempts(0),
        NewJob::from_json("q", "{}").unwrap().unique_key(""),
        NewJob::from_json("nul\0queue", "{}").unwrap(),
    ] {
        assert!(q.enqueue(&bad).unwrap_err().is_invalid_input());
    }
    let q_small = b.queue_with(|c| c.max_payload_bytes = 10);
    let big = NewJob::new("q", &"x".repeat(100)).unwrap();
    assert!(q_small.enqueue(&big).unwrap_err().is_invalid_input());
    // Hostile text is data: stored verbatim.
    let hostile = "'); DROP TABLE jobs; --";
    let id = q
        .enqueue(&NewJob::new(hostile, &serde_json::json!({"s": hostile})).unwrap())
        .unwrap();
    assert_eq!(q.get_job(id).unwrap().queue, hostile);
    assert_eq!(q.stats(None).unwrap().total.total(), 1);
}

fn unique_keys_admit_one_live_job_even_under_a_race<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let ids: Vec<i64> = (0..8)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || q.enqueue(&job("u", 1).unique_key("only-one")).unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
    assert_eq!(q.stats(Some("u")).unwrap().total.total(), 1);
    let j = q.claim("u", 1, "w", lease_for()).unwrap().remove(0);
    assert!(
        !q.enqueue_unique(&job("u", 2).unique_key("only-one"))
            .unwrap()
            .inserted
    );
    q.complete(j.lease(), &1, Duration::ZERO).unwrap();
    assert!(
        q.enqueue_unique(&job("u", 3).unique_key("only-one"))
            .unwrap()
            .inserted
    );
}

fn cancel_queued_and_running_jobs<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let queued = q.enqueue(&job("c", 1)).unwrap();
    assert_eq!(q.cancel(queued).unwrap(), CancelOutcome::Cancelled);
    let running = q.enqueue(&job("c", 2)).unwrap();
    let lease = q.claim("c", 1, "w", lease_for()).unwrap()[0].lease();
    assert_eq!(lease.job_id, running, "the cancelled job is never claimed");
    assert_eq!(q.cancel(running).unwrap(), CancelOutcome::Requested);
    assert!(q.heartbeat(lease, lease_for()).unwrap_err().is_cancelled());
    assert!(q
        .complete(lease, &"done", Duration::ZERO)
        .unwrap_err()
        .is_cancelled());
    assert_eq!(q.get_job(running).unwrap().state, JobState::Cancelled);
    assert!(q
        .get_results(running)
        .unwrap()
        .iter()
        .all(|r| r.outcome != Outcome::Succeeded));
    assert!(q.cancel(running).unwrap_err().is_wrong_state());
}

fn retry_gives_fresh_attempts<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&job("r", 1).max_attempts(1)).unwrap();
    let lease = q.claim("r", 1, "w", lease_for()).unwrap()[0].lease();
    assert_eq!(
        q.fail(lease, "once", Duration::ZERO).unwrap(),
        JobState::Dead
    );
    q.retry(id).unwrap();
    let again = q.claim("r", 1, "w", lease_for()).unwrap()[0].lease();
    assert_eq!(again.attempt, 2);
    q.complete(again, &"ok", Duration::ZERO).unwrap();
    assert!(q.retry(id).unwrap_err().is_wrong_state());
}

fn a_paused_queue_hands_out_nothing<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    q.enqueue(&job("p", 1)).unwrap();
    assert!(q.pause("p").unwrap());
    assert!(q.claim("p", 5, "w", lease_for()).unwrap().is_empty());
    assert_eq!(q.paused().unwrap(), ["p"]);
    assert!(q.resume("p").unwrap());
    assert_eq!(q.claim("p", 5, "w", lease_for()).unwrap().len(), 1);
}

fn prune_deletes_old_finished_jobs_with_their_results<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    for n in 0..5 {
        q.enqueue(&job("old", n)).unwrap();
    }
    for j in q.claim("old", 5, "w", lease_for()).unwrap() {
        q.complete(j.lease(), &1, Duration::ZERO).unwrap();
    }
    let kept = q.enqueue(&job("old", 9)).unwrap();
    b.exec("UPDATE jobs SET updated_at = '2000-01-01 00:00:00' WHERE state = 'succeeded'");
    let batch = PruneBatch {
        jobs_per_transaction: 2,
        ..PruneBatch::default()
    };
    let report = q
        .prune(Duration::from_secs(3600), &[JobState::Succeeded], batch)
        .unwrap();
    assert_eq!((report.deleted, report.transactions), (5, 3));
    let s = q.stats(None).unwrap().total;
    assert_eq!((s.succeeded, s.queued), (0, 1));
    assert_eq!(q.get_job(kept).unwrap().state, JobState::Queued);
    assert!(q
        .prune(Duration::ZERO, &[JobState::Queued], batch)
        .unwrap_err()
        .is_invalid_input());
}

fn a_tick_is_enqueued_once<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let s = Schedule::interval("t", Duration::from_secs(60), job("ticks", 1)).unwrap();
    let tick = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let won: Vec<Option<i64>> = (0..8)
        .map(|_| {
            let (q, s) = (q.clone(), s.clone());
            thread::spawn(move || q.enqueue_tick(&s, tick).unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(won.iter().flatten().count(), 1, "{won:?}");
    assert_eq!(q.enqueue_tick(&s, tick).unwrap(), None);
    assert_eq!(q.stats(Some("ticks")).unwrap().total.queued, 1);
}

fn sixteen_threads_claim_each_job_exactly_once<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let jobs: Vec<NewJob> = (0..1600).map(|n| job("many", n)).collect();
    q.enqueue_many(&jobs).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let q = q.clone();
            thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let claimed = q.claim("many", 1, &format!("t{t}"), lease_for()).unwrap();
                    let Some(j) = claimed.into_iter().next() else {
                        return mine;
                    };
                    q.heartbeat(j.lease(), lease_for()).unwrap();
                    q.complete(j.lease(), &j.id, Duration::ZERO).unwrap();
                    mine.push(j.id);
                }
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        (n, all.len()),
        (1600, 1600),
        "no job claimed twice, none missed"
    );
    let audit = q.audit("many").unwrap();
    assert_eq!(
        (audit.jobs, audit.not_succeeded, audit.duplicated),
        (1600, 0, 0)
    );
}

fn a_worker_runs_handlers_and_records_results<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    for n in 0..20 {
        q.enqueue(&job("wk", n)).unwrap();
    }
    let mut config = WorkerConfig::new("wk").lease(Duration::from_secs(5));
    config.concurrency = 4;
    config.exit_when_empty = true;
    let failed_once = Arc::new(AtomicBool::new(false));
    let worker = {
        let failed_once = failed_once.clone();
        Worker::new(q.clone(), config, move |ctx| {
            let n: serde_json::Value = ctx.payload()?;
            if n["n"] == 3 && !failed_once.swap(true, Ordering::SeqCst) {
                return Err(HandlerError::msg("first try fails"));
            }
            Ok::<_, HandlerError>(n)
        })
    };
    let report = worker.run().unwrap();
    assert_eq!((report.succeeded, report.failed), (20, 1), "{report:?}");
    let audit = q.audit("wk").unwrap();
    assert_eq!(
        (audit.jobs, audit.not_succeeded, audit.duplicated),
        (20, 0, 0)
    );
}

fn batched_heartbeats_and_completions_fence_each_item<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    for n in 0..3 {
        q.enqueue(&job("bat", n)).unwrap();
    }
    let claimed = q.claim("bat", 3, "w", Duration::from_millis(50)).unwrap();
    thread::sleep(Duration::from_millis(120));
    // All three leases ran out; two are given more time, so only the first is reaped.
    let lost = claimed[0].lease();
    b.exec(&format!(
        "UPDATE jobs SET lease_expires_at = '2099-01-01 00:00:00' WHERE id <> {}",
        lost.job_id
    ));
    assert_eq!(q.reap().unwrap(), 1);
    let leases: Vec<_> = claimed.iter().map(|j| j.lease()).collect();
    let beats = q.heartbeat_many(&leases, lease_for()).unwrap();
    assert!(beats[0].as_ref().unwrap_err().is_lease_lost());
    assert!(beats[1].is_ok() && beats[2].is_ok());
    let done = q
        .complete_many(
            leases
                .iter()
                .map(|&lease| jobdb::queue::Completion {
                    lease,
                    output_json: "{\"ok\":1}".into(),
                    duration: Duration::ZERO,
                })
                .collect(),
        )
        .unwrap();
    assert!(done[0].as_ref().unwrap_err().is_lease_lost());
    assert!(done[1].is_ok() && done[2].is_ok());
    assert_eq!(q.stats(Some("bat")).unwrap().total.succeeded, 2);
}

/// Every way an attempt ends (a failure, a reap, a completion, a batched completion) records
/// the worker that held its lease; the job row keeps only its last holder.
fn each_attempt_records_the_worker_that_ran_it<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&job("who", 1)).unwrap();
    let due_now = |b: &Backend<C>| b.exec("UPDATE jobs SET run_at = '2000-01-01 00:00:00'");
    let first = q.claim("who", 1, "w-fails", lease_for()).unwrap()[0].lease();
    q.fail(first, "no", Duration::ZERO).unwrap();
    due_now(b);
    q.claim("who", 1, "w-stalls", Duration::from_millis(50))
        .unwrap();
    thread::sleep(Duration::from_millis(120));
    assert_eq!(q.reap().unwrap(), 1);
    due_now(b);
    let third = q.claim("who", 1, "w-finishes", lease_for()).unwrap()[0].lease();
    q.complete(third, &"ok", Duration::ZERO).unwrap();
    let workers: Vec<(i32, Option<String>)> = q
        .get_results(id)
        .unwrap()
        .into_iter()
        .map(|r| (r.attempt, r.worker_id))
        .collect();
    assert_eq!(
        workers,
        [
            (1, Some("w-fails".into())),
            (2, Some("w-stalls".into())),
            (3, Some("w-finishes".into()))
        ]
    );
    assert_eq!(
        q.get_job(id).unwrap().worker_id.as_deref(),
        Some("w-finishes")
    );

    let batch = q.enqueue(&job("who", 2)).unwrap();
    let lease = q.claim("who", 1, "w-batch", lease_for()).unwrap()[0].lease();
    let done = q
        .complete_many(vec![jobdb::queue::Completion {
            lease,
            output_json: "1".into(),
            duration: Duration::ZERO,
        }])
        .unwrap();
    assert!(done[0].is_ok());
    let r = q.get_results(batch).unwrap();
    assert_eq!(r[0].worker_id.as_deref(), Some("w-batch"));
}

/// What `jobdb_attempts_finished_total` counts: each way an attempt ends, once.
fn the_handle_counts_attempts_by_outcome<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let due_now = |b: &Backend<C>| b.exec("UPDATE jobs SET run_at = '2000-01-01 00:00:00'");
    q.enqueue(&job("outc", 1).max_attempts(2)).unwrap();
    let first = q.claim("outc", 1, "w", lease_for()).unwrap()[0].lease();
    assert_eq!(
        q.fail(first, "no", Duration::ZERO).unwrap(),
        JobState::Queued
    );
    due_now(b);
    let second = q.claim("outc", 1, "w", lease_for()).unwrap()[0].lease();
    assert_eq!(
        q.fail(second, "no", Duration::ZERO).unwrap(),
        JobState::Dead
    );
    assert!(q
        .complete(second, &1, Duration::ZERO)
        .unwrap_err()
        .is_lease_lost());
    q.enqueue(&job("outc", 2)).unwrap();
    q.claim("outc", 1, "w", Duration::from_millis(50)).unwrap();
    thread::sleep(Duration::from_millis(120));
    assert_eq!(q.reap().unwrap(), 1);
    due_now(b);
    let third = q.claim("outc", 1, "w", lease_for()).unwrap()[0].lease();
    q.complete(third, &1, Duration::ZERO).unwrap();
    let c = q.metrics().outcomes;
    assert_eq!(
        (
            c.succeeded,
            c.retried,
            c.dead,
            c.cancelled,
            c.refused,
            c.expired
        ),
        (1, 1, 1, 0, 1, 1),
        "{c:?}"
    );
}
