//! The life of a job: enqueue, claim, heartbeat, complete / fail / reap, fencing and bad input.

use std::thread;
use std::time::Duration;

use chrono::Utc;
use diesel::connection::SimpleConnection;
use jobdb::{Error, JobState, NewJob, Outcome};
use serde::{Deserialize, Serialize};

const LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Email {
    to: String,
    n: u32,
}

fn email(n: u32) -> NewJob {
    NewJob::new(
        "mail",
        &Email {
            to: format!("u{n}@example.com"),
            n,
        },
    )
    .unwrap()
}
use crate::backends::{Backend, TestConn};

crate::on_both_backends!(
    claims_follow_priority_then_run_at_then_id_and_skip_future_jobs,
    claim_takes_at_most_n,
    complete_records_one_typed_result_and_succeeds,
    a_job_failing_every_time_backs_off_and_ends_dead,
    reaping_a_job_out_of_attempts_marks_it_dead,
    released_jobs_go_back_to_the_queue,
    enqueue_inside_the_callers_transaction_rolls_back_with_it,
    bad_input_is_a_typed_error_and_changes_nothing,
    hostile_text_is_stored_verbatim,
    metrics_count_operations_claims_and_slow_transactions,
);

fn claims_follow_priority_then_run_at_then_id_and_skip_future_jobs<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let past = Utc::now() - chrono::Duration::seconds(10);
    let a = q.enqueue(&email(1).priority(5)).unwrap();
    let b = q.enqueue(&email(2).priority(1)).unwrap();
    let c = q.enqueue(&email(3).priority(1).run_at(past)).unwrap();
    let future = q
        .enqueue(
            &email(4)
                .priority(-100)
                .run_at(Utc::now() + chrono::Duration::hours(1)),
        )
        .unwrap();
    let _other_queue = q.enqueue(&NewJob::new("other", &1).unwrap()).unwrap();

    let jobs = q.claim("mail", 10, "w1", LEASE).unwrap();
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(
        ids,
        vec![c, b, a],
        "priority, then run_at, then id; never the future job"
    );
    for j in &jobs {
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.attempts, 1);
        assert_eq!(j.worker_id.as_deref(), Some("w1"));
        assert!(j.lease_expires_at.unwrap() > Utc::now());
    }
    assert!(q.claim("mail", 10, "w1", LEASE).unwrap().is_empty());
    assert_eq!(q.get_job(future).unwrap().state, JobState::Queued);
}

fn claim_takes_at_most_n<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    q.enqueue_many(&(0..10).map(email).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(q.claim("mail", 4, "w", LEASE).unwrap().len(), 4);
    assert_eq!(q.claim("mail", 4, "w", LEASE).unwrap().len(), 4);
    assert_eq!(q.claim("mail", 4, "w", LEASE).unwrap().len(), 2);
}

fn complete_records_one_typed_result_and_succeeds<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&email(7)).unwrap();
    let job = q.claim("mail", 1, "w", LEASE).unwrap().remove(0);
    let payload: Email = job.payload().unwrap();
    assert_eq!(
        payload,
        Email {
            to: "u7@example.com".into(),
            n: 7
        }
    );
    let until = q.heartbeat(job.lease(), LEASE).unwrap();
    assert!(until > Utc::now());
    q.complete(
        job.lease(),
        &serde_json::json!({"sent": payload.n}),
        Duration::from_millis(12),
    )
    .unwrap();

    let job = q.get_job(id).unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.lease_expires_at, None);
    let results = q.get_results(id).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].outcome, Outcome::Succeeded);
    assert_eq!(results[0].attempt, 1);
    assert_eq!(results[0].duration_ms, 12);
    let out: serde_json::Value = results[0].output().unwrap().unwrap();
    assert_eq!(out, serde_json::json!({"sent": 7}));
    // A second completion of the same attempt is fenced off.
    assert!(q
        .complete(job.lease(), &1, Duration::ZERO)
        .unwrap_err()
        .is_lease_lost());
    assert_eq!(q.get_results(id).unwrap().len(), 1);
}

fn a_job_failing_every_time_backs_off_and_ends_dead<C: TestConn>(b: &Backend<C>) {
    let q = b.queue_with(|c| c.job_backoff.base = Duration::from_millis(100));
    let id = q.enqueue(&email(1).max_attempts(3)).unwrap();

    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let job = loop {
            if let Some(job) = q.claim("mail", 1, "w", LEASE).unwrap().pop() {
                break job;
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(job.attempts, attempt);
        let state = q
            .fail(job.lease(), &format!("boom {attempt}"), Duration::ZERO)
            .unwrap();
        let after = q.get_job(id).unwrap();
        if attempt < 3 {
            assert_eq!(state, JobState::Queued);
            delays.push(after.run_at - after.updated_at);
            // Not claimable before its backoff passes.
            assert!(q.claim("mail", 1, "w", LEASE).unwrap().is_empty());
        } else {
            assert_eq!(state, JobState::Dead);
            assert_eq!(after.last_error.as_deref(), Some("boom 3"));
        }
    }
    assert_eq!(delays[0], chrono::Duration::milliseconds(100));
    assert_eq!(
        delays[1],
        chrono::Duration::milliseconds(200),
        "delays grow"
    );
    let results = q.get_results(id).unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.outcome == Outcome::Failed));
    assert_eq!(
        results.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(q.get_job(id).unwrap().state, JobState::Dead);
}

fn reaping_a_job_out_of_attempts_marks_it_dead<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&email(1).max_attempts(1)).unwrap();
    q.claim("mail", 1, "w", Duration::from_millis(1)).unwrap();
    thread::sleep(Duration::from_millis(20));
    assert_eq!(q.reap().unwrap(), 1);
    assert_eq!(q.get_job(id).unwrap().state, JobState::Dead);
    assert_eq!(q.reap().unwrap(), 0);
}

fn released_jobs_go_back_to_the_queue<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&email(1)).unwrap();
    let job = q.claim("mail", 1, "w", LEASE).unwrap().remove(0);
    q.release(job.lease()).unwrap();
    let again = q.claim("mail", 1, "w2", LEASE).unwrap().remove(0);
    assert_eq!(
        (again.id, again.attempts),
        (id, 2),
        "attempt numbers are never reused"
    );
}

fn enqueue_inside_the_callers_transaction_rolls_back_with_it<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let mut conn = q.pool().get().unwrap();
    conn.batch_execute("CREATE TABLE orders (item TEXT NOT NULL)")
        .unwrap();

    let rolled_back: Result<(), Error> = conn.transaction(|c| {
        c.batch_execute("INSERT INTO orders (item) VALUES ('book')")?;
        jobdb::queue::enqueue(c, &email(1))?;
        jobdb::queue::enqueue_many(c, &[email(2), email(3)])?;
        Err(Error::InvalidArgument {
            field: "test",
            reason: "roll back".into(),
        })
    });
    assert!(rolled_back.is_err());
    assert_eq!(
        q.stats(None).unwrap().total.total(),
        0,
        "no job survives the rollback"
    );

    conn.transaction::<_, Error, _>(|c| {
        c.batch_execute("INSERT INTO orders (item) VALUES ('pen')")?;
        jobdb::queue::enqueue(c, &email(4))?;
        Ok(())
    })
    .unwrap();
    assert_eq!(
        q.stats(None).unwrap().total.total(),
        1,
        "committed with the caller's row"
    );
}

fn bad_input_is_a_typed_error_and_changes_nothing<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let existing = q.enqueue(&email(1)).unwrap();

    let err = NewJob::from_json("mail", "{not json").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Json {
                what: "payload",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_invalid_input());

    let err = q.enqueue(&email(2).max_attempts(-1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                field: "max_attempts",
                ..
            }
        ),
        "{err:?}"
    );
    let err = q.enqueue(&NewJob::new("", &1).unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { field: "queue", .. }),
        "{err:?}"
    );
    // One bad job in a batch: nothing of the batch is written.
    let err = q
        .enqueue_many(&[email(3), email(4).max_attempts(0)])
        .unwrap_err();
    assert!(err.is_invalid_input());
    let big = NewJob::new("mail", &"x".repeat(2 * 1024 * 1024)).unwrap();
    assert!(matches!(
        q.enqueue(&big).unwrap_err(),
        Error::InvalidArgument {
            field: "payload",
            ..
        }
    ));

    let unknown = existing + 1000;
    assert!(q.get_job(unknown).unwrap_err().is_not_found());
    assert!(q.get_results(unknown).unwrap_err().is_not_found());
    let lease = jobdb::Lease {
        job_id: unknown,
        attempt: 1,
    };
    assert!(q.heartbeat(lease, LEASE).unwrap_err().is_not_found());
    assert!(q
        .complete(lease, &1, Duration::ZERO)
        .unwrap_err()
        .is_not_found());

    let stats = q.stats(None).unwrap();
    assert_eq!(stats.total.total(), 1, "only the first, valid job exists");
    assert_eq!(stats.total.queued, 1);
}

fn hostile_text_is_stored_verbatim<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let queue_name = "q'; DROP TABLE jobs; --";
    // A NUL inside JSON text is refused on both backends (PostgreSQL cannot store it).
    let nul = NewJob::new(queue_name, &serde_json::json!({"s": "a\u{0}b"})).unwrap();
    assert!(q.enqueue(&nul).unwrap_err().is_invalid_input());
    let payload = serde_json::json!({"s": "'); DELETE FROM results; --"});
    let id = q
        .enqueue(&NewJob::new(queue_name, &payload).unwrap())
        .unwrap();
    let job = q.claim(queue_name, 1, "w'\"", LEASE).unwrap().remove(0);
    assert_eq!(job.id, id);
    assert_eq!(job.payload::<serde_json::Value>().unwrap(), payload);
    assert_eq!(q.stats(Some(queue_name)).unwrap().total.running, 1);
}

fn metrics_count_operations_claims_and_slow_transactions<C: TestConn>(b: &Backend<C>) {
    let q = b.queue_with(|c| c.slow_transaction = Duration::ZERO);
    q.enqueue_many(&(0..10).map(email).collect::<Vec<_>>())
        .unwrap();
    for job in q.claim("mail", 10, "w", LEASE).unwrap() {
        q.complete(job.lease(), &1, Duration::ZERO).unwrap();
    }
    let m = q.metrics();
    assert_eq!(m.claim_latency.count, 1);
    assert!(m.claim_latency.max_ms > 0.0);
    assert_eq!(
        m.operations, 12,
        "1 enqueue chunk + 1 claim + 10 completions"
    );
    assert!(m.lock_hold.count >= 12, "{m:?}");
    assert!(
        m.slow_transactions >= 12,
        "a zero threshold makes every transaction slow: {m:?}"
    );
    assert!(m.retries.transactions >= 12);
}
