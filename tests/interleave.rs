//! The driver-level interleaving suite, written once and run on SQLite and PostgreSQL: the
//! connection-level API (`jobdb::queue::*`) on two connections, with one connection's
//! statement put between the steps of the other's. States are reached through a test factory
//! (rows written directly), never by sleeping until a lease runs out.
//!
//! Each case here failed on 41b6fc7: the PostgreSQL reaper wedge, the PostgreSQL unique
//! enqueue race, and batched acks keyed by job id instead of by lease.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use chrono::Utc;
use jobdb::queue::{self, Completion};
use jobdb::{JobState, Lease, NewJob, Outcome};

use crate::backends::{Backend, TestConn};

crate::on_both_backends!(
    a_heartbeat_committed_during_a_reap_keeps_the_job_and_writes_no_result,
    batched_completions_are_keyed_by_lease_not_job_id,
    batched_heartbeats_tell_a_stale_lease_it_is_lost,
    a_job_finishing_between_a_unique_insert_and_its_lookup_is_not_an_error,
);

fn job(queue: &str) -> NewJob {
    NewJob::new(queue, &serde_json::json!({"n": 1})).unwrap()
}

fn lease() -> Duration {
    Duration::from_secs(30)
}

/// The reaper has found a job whose lease ran out (the factory puts it there); before its
/// write lands, the owner's heartbeat (still holding the attempt) commits. The reap must then
/// skip the job entirely: no failed result, the job still running, and the owner's completion
/// applies. On 41b6fc7's PostgreSQL the reap's INSERT saw the expired lease and its UPDATE
/// the renewed one: a stray failed row, the job left running, and the owner's complete failed
/// on `results_job_attempt_idx`.
fn a_heartbeat_committed_during_a_reap_keeps_the_job_and_writes_no_result<C: TestConn>(
    b: &Backend<C>,
) {
    let _queue = b.queue(); // migrations
    let mut owner = b.conn();
    let mut reaper = b.conn();
    let id = queue::enqueue(&mut owner, &job("reap")).unwrap();
    owner.set_running(id, 1, Utc::now() - chrono::Duration::seconds(5));
    let held = Lease {
        job_id: id,
        attempt: 1,
    };
    let expired = queue::expired_leases(&mut reaper).unwrap();
    assert_eq!(expired, [id], "the factory's job is expired");

    let (tx, rx) = mpsc::channel();
    let mut watcher = b.conn();
    owner
        .transaction::<_, jobdb::Error, _>(|c| {
            queue::heartbeat(c, held, lease()).unwrap();
            // The reap runs now, against the uncommitted heartbeat.
            let reap = thread::spawn(move || {
                let n = queue::reap_listed(&mut reaper, &expired);
                tx.send(()).unwrap();
                n
            });
            watcher.until_another_waits();
            assert!(rx.try_recv().is_err(), "the reap waits for the heartbeat");
            // Commit the heartbeat, then let the reap finish.
            Ok(reap)
        })
        .map(|reap| {
            let reaped = reap.join().unwrap().unwrap();
            assert_eq!(reaped, 0, "the renewed lease is not reaped");
        })
        .unwrap();

    assert!(owner.results(id).is_empty(), "no stray failed result");
    let j = queue::get_job(&mut owner, id).unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Running, 1));
    queue::complete(&mut owner, held, &"done", Duration::ZERO).unwrap();
    assert_eq!(owner.results(id), [(1, "succeeded".to_owned())]);
    // And the reaper still works for the next expired job.
    let other = queue::enqueue(&mut owner, &job("reap")).unwrap();
    owner.set_running(other, 1, Utc::now() - chrono::Duration::seconds(5));
    assert_eq!(queue::reap(&mut owner).unwrap(), 1);
    assert_eq!(
        queue::get_job(&mut owner, other).unwrap().state,
        JobState::Queued
    );
}

/// A released lease passed together with the live lease of the same job: only the live one
/// applies. On 41b6fc7 both got `Ok` and a second succeeded row was written (for the released
/// attempt), which the bench audit reported as `duplicated: 1`.
fn batched_completions_are_keyed_by_lease_not_job_id<C: TestConn>(b: &Backend<C>) {
    let _queue = b.queue();
    let mut c = b.conn();
    let id = queue::enqueue(&mut c, &job("batch")).unwrap();
    let stale = queue::claim(&mut c, "batch", 1, "w1", lease()).unwrap()[0].lease();
    queue::release(&mut c, stale).unwrap();
    let live = queue::claim(&mut c, "batch", 1, "w2", lease()).unwrap()[0].lease();
    assert_eq!((stale.job_id, live.job_id), (id, id));
    assert_eq!(live.attempt, stale.attempt + 1);
    let item = |lease| Completion {
        lease,
        output_json: "\"out\"".into(),
        duration: Duration::ZERO,
    };
    let out = queue::complete_many(&mut c, &[item(stale), item(live), item(live)]).unwrap();
    assert!(out[0].as_ref().unwrap_err().is_lease_lost(), "{out:?}");
    assert!(out[1].is_ok(), "{out:?}");
    assert!(
        out[2].as_ref().unwrap_err().is_lease_lost(),
        "a lease listed twice applies once: {out:?}"
    );
    assert_eq!(c.results(id), [(live.attempt, "succeeded".to_owned())]);
    let results = queue::get_results(&mut c, id).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].outcome, Outcome::Succeeded);
    let audit = queue::audit(&mut c, "batch").unwrap();
    assert_eq!(audit.duplicated, 0, "{audit:?}");
}

/// `heartbeat_many` with a stale and a live lease of one job: the stale holder is told its
/// lease is lost (so its handler abandons), as the single `heartbeat` says. On 41b6fc7 both
/// were told "extended".
fn batched_heartbeats_tell_a_stale_lease_it_is_lost<C: TestConn>(b: &Backend<C>) {
    let _queue = b.queue();
    let mut c = b.conn();
    queue::enqueue(&mut c, &job("beat")).unwrap();
    let stale = queue::claim(&mut c, "beat", 1, "w1", lease()).unwrap()[0].lease();
    queue::release(&mut c, stale).unwrap();
    let live = queue::claim(&mut c, "beat", 1, "w2", lease()).unwrap()[0].lease();
    assert!(queue::heartbeat(&mut c, stale, lease())
        .unwrap_err()
        .is_lease_lost());
    let out = queue::heartbeat_many(&mut c, &[stale, live], lease()).unwrap();
    assert!(out[0].as_ref().unwrap_err().is_lease_lost(), "{out:?}");
    assert!(out[1].is_ok(), "{out:?}");
}

fn a_job_finishing_between_a_unique_insert_and_its_lookup_is_not_an_error<C: TestConn>(
    b: &Backend<C>,
) {
    if !b.is_postgres() {
        // SQLite runs the insert and the look-up in one BEGIN IMMEDIATE transaction: nothing
        // can finish in between. The case is PostgreSQL's (READ COMMITTED).
        return;
    }
    let _queue = b.queue();
    let mut c = b.conn();
    let first = queue::enqueue(&mut c, &job("uniq").unique_key("K")).unwrap();
    // The statement-level trigger runs right after the INSERT that skips (ON CONFLICT DO
    // NOTHING), once: it finishes the live job, as a worker completing it between the insert
    // and the look-up would. On 41b6fc7 the look-up then found nothing: `Database(NotFound)`.
    c.batch_execute(
        "CREATE TABLE race_fired (fired boolean); \
         CREATE FUNCTION finish_live() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM race_fired) THEN \
             INSERT INTO race_fired VALUES (true); \
             UPDATE jobs SET state = 'succeeded' WHERE unique_key = 'K' \
               AND state IN ('queued', 'running'); \
           END IF; RETURN NULL; END $$; \
         CREATE TRIGGER race AFTER INSERT ON jobs FOR EACH STATEMENT \
           EXECUTE FUNCTION finish_live();",
    )
    .unwrap();
    let second = queue::enqueue(&mut c, &job("uniq").unique_key("K"))
        .expect("the key is free again: a new job, not an error");
    assert_ne!(second, first);
    assert_eq!(
        queue::get_job(&mut c, first).unwrap().state,
        JobState::Succeeded
    );
    assert_eq!(
        queue::get_job(&mut c, second).unwrap().state,
        JobState::Queued
    );
}
