//! The randomized history test, on both backends: threads doing every lease operation
//! (claim, heartbeat, complete, fail, release, reap, cancel, retry, batched acks) with random
//! stalls past their lease, beside `jobdb work` processes that are SIGKILLed and SIGSTOPped
//! for longer than their lease at random. Afterwards a checker proves from the tables that no
//! job completed twice, no (job, attempt) was used twice, each job's state agrees with its
//! results, no job is `running` without a live lease once the reaper has run, and every
//! enqueued id is present.
//!
//! Seeded: `JOBDB_HISTORY_SEED=N` replays a run (the seed is printed on failure);
//! `JOBDB_HISTORY_SECS` sets its length (CI: the default, a few seconds; README gives the
//! long run and its figures).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use jobdb::queue::Completion;
use jobdb::{JobState, Lease, NewJob, Outcome, Queue};

use crate::backends::{loud, Backend, TestConn};

crate::on_both_backends!(random_history_with_kills_and_stops_keeps_every_invariant);

const QUEUE: &str = "hist";
/// The threads' lease: stalls of 1.3× to 2.3× it make their leases expire under them.
const THREAD_LEASE: Duration = Duration::from_millis(300);
/// The worker processes' lease; SIGSTOPs last 1.2× to 2× it.
const PROCESS_LEASE_MS: u64 = 1000;
/// How long after the history ends every actor must be done (each is in at most one
/// operation then); longer is a hang, reported as a failure.
const ACTOR_END_BOUND: Duration = Duration::from_secs(60);

/// What the history did, for the closing figures.
#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    lease_lost: AtomicU64,
    stalls: AtomicU64,
    kills: AtomicU64,
    stops: AtomicU64,
}

fn random_history_with_kills_and_stops_keeps_every_invariant<C: TestConn>(b: &Backend<C>) {
    let seed = std::env::var("JOBDB_HISTORY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let secs: u64 = std::env::var("JOBDB_HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| history(b, seed, secs)));
    if let Err(panic) = run {
        loud!("history test FAILED with JOBDB_HISTORY_SEED={seed} (JOBDB_HISTORY_SECS={secs})");
        std::panic::resume_unwind(panic);
    }
}

fn history<C: TestConn>(b: &Backend<C>, seed: u64, secs: u64) {
    let q = b.queue_with(|c| {
        c.job_backoff.base = Duration::from_millis(20);
        c.job_backoff.max = Duration::from_millis(200);
    });
    let counts = Arc::new(Counts::default());
    let enqueued = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);

    let actors: Vec<_> = (0..4u64)
        .map(|i| {
            let (q, counts, enqueued, stop) =
                (q.clone(), counts.clone(), enqueued.clone(), stop.clone());
            thread::spawn(move || actor(&q, seed ^ (i + 1), &counts, &enqueued, &stop))
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut workers = Workers((0..2).map(|_| spawn_worker(b)).collect());
    let workers = &mut workers.0;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(rng.u64(200..500)));
        let w = rng.usize(..workers.len());
        match rng.u8(..3) {
            0 => {
                // SIGKILL mid-whatever, and a new worker in its place.
                let _ = workers[w].kill();
                let _ = workers[w].wait();
                workers[w] = spawn_worker(b);
                counts.kills.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                // SIGSTOP past the lease: its jobs are reaped and re-run; when it resumes, its
                // late heartbeats and completions must be refused.
                signal(&workers[w], libc::SIGSTOP);
                thread::sleep(Duration::from_millis(
                    rng.u64(PROCESS_LEASE_MS * 6 / 5..PROCESS_LEASE_MS * 2),
                ));
                signal(&workers[w], libc::SIGCONT);
                counts.stops.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    // An actor ends within one operation (a stall is at most 2.3 leases): one still running
    // a minute later is stuck in the database client, and the test says so instead of
    // hanging the suite.
    let ended = Instant::now() + ACTOR_END_BOUND;
    for a in actors {
        while !a.is_finished() {
            if Instant::now() >= ended {
                panic!(
                    "an actor was still in an operation {ACTOR_END_BOUND:?} after the history \
                     ended (seed={seed}): a statement that never returned. The server's \
                     sessions:\n{}",
                    b.conn().sessions()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        a.join().expect("an actor failed: see its panic above");
    }
    for w in workers.iter_mut() {
        signal(w, libc::SIGCONT);
        let _ = w.kill();
        let _ = w.wait();
    }
    // Every lease has now run out; one reap must leave nothing running without a lease.
    thread::sleep(Duration::from_millis(PROCESS_LEASE_MS + 200));
    q.reap().unwrap();
    let reaped_at = chrono::Utc::now();

    let enqueued = enqueued.lock().unwrap().clone();
    let checked = check(&q, &enqueued, reaped_at);
    loud!(
        "history on {} seed={seed} secs={secs}: {} operations, {} lease-lost answers, {} stalls, {} \
         kills, {} stops; {} jobs checked ({checked:?}), {} invariants each",
        q.backend(),
        counts.ops.load(Ordering::Relaxed),
        counts.lease_lost.load(Ordering::Relaxed),
        counts.stalls.load(Ordering::Relaxed),
        counts.kills.load(Ordering::Relaxed),
        counts.stops.load(Ordering::Relaxed),
        enqueued.len(),
        INVARIANTS
    );
    assert!(counts.ops.load(Ordering::Relaxed) > 100, "the history ran");
}

/// The `jobdb work` processes, killed however the test ends (a failed assertion included),
/// so none outlives it.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            signal(w, libc::SIGCONT);
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn spawn_worker<C: TestConn>(b: &Backend<C>) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args(["--database-url", &b.url(), "work", "--queue", QUEUE])
        .args([
            "--concurrency",
            "2",
            "--lease",
            &format!("{PROCESS_LEASE_MS}ms"),
        ])
        // Jobs marked `"f":true` fail in the processes (and back off, and end dead); the rest
        // succeed with their payload as output.
        .args([
            "--grace",
            "100ms",
            "--exec",
            r#"grep -q '"f":true' && exit 1; echo '"ok"'"#,
        ])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn jobdb work")
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) on our own child's pid; a dead child just gives ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// One thread's random walk over the API. Errors a history may give (a lease lost, a cancel,
/// an operation on a job in the wrong state, a key conflict) are expected; any other error
/// (busy included) fails the test.
fn actor<C: TestConn>(
    q: &Queue<C>,
    seed: u64,
    counts: &Counts,
    enqueued: &Mutex<BTreeSet<i64>>,
    stop: &AtomicBool,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut held: Vec<Lease> = Vec::new();
    let mut known: Vec<i64> = Vec::new();
    let expected = |e: &jobdb::Error| {
        if e.is_lease_lost() {
            counts.lease_lost.fetch_add(1, Ordering::Relaxed);
        }
        assert!(
            e.is_lease_lost() || e.is_cancelled() || e.is_wrong_state() || e.is_unique_conflict(),
            "unexpected error: {e:?}"
        );
    };
    let ok_or_expected = |r: jobdb::Result<()>| {
        if let Err(e) = r {
            expected(&e);
        }
    };
    let item = |lease| Completion {
        lease,
        output_json: format!("{{\"by\":{seed}}}"),
        duration: Duration::ZERO,
    };
    while !stop.load(Ordering::Relaxed) {
        counts.ops.fetch_add(1, Ordering::Relaxed);
        let pick = |rng: &mut fastrand::Rng, held: &mut Vec<Lease>| {
            (!held.is_empty()).then(|| held.swap_remove(rng.usize(..held.len())))
        };
        match rng.u8(..100) {
            0..=19 => {
                let payload = serde_json::json!({"r": rng.u32(..), "f": rng.u8(..4) == 0});
                let mut job = NewJob::new(QUEUE, &payload)
                    .unwrap()
                    .max_attempts(rng.i32(1..4));
                if rng.u8(..5) == 0 {
                    job = job.unique_key(format!("k{}", rng.u8(..4)));
                }
                let id = q.enqueue(&job).unwrap();
                enqueued.lock().unwrap().insert(id);
                known.push(id);
            }
            20..=34 => {
                let n = rng.u32(1..4);
                for j in q.claim(QUEUE, n, "actor", THREAD_LEASE).unwrap() {
                    held.push(j.lease());
                }
            }
            35..=44 => {
                if let Some(&l) = held.get(rng.usize(..held.len().max(1))) {
                    ok_or_expected(q.heartbeat(l, THREAD_LEASE).map(|_| ()));
                }
            }
            45..=59 => {
                if let Some(l) = pick(&mut rng, &mut held) {
                    ok_or_expected(q.complete(l, &serde_json::json!({"by": seed}), Duration::ZERO));
                }
            }
            60..=66 => {
                // A batch that may list a lease twice, or a released one beside the live one.
                let mut batch: Vec<Lease> = (0..rng.usize(1..4))
                    .filter_map(|_| pick(&mut rng, &mut held))
                    .collect();
                if let Some(&first) = batch.first() {
                    if rng.bool() {
                        batch.push(first);
                    }
                }
                for r in q
                    .complete_many(batch.into_iter().map(item).collect())
                    .unwrap()
                {
                    ok_or_expected(r);
                }
            }
            67..=71 => {
                for r in q.heartbeat_many(&held, THREAD_LEASE).unwrap() {
                    ok_or_expected(r.map(|_| ()));
                }
            }
            72..=79 => {
                if let Some(l) = pick(&mut rng, &mut held) {
                    ok_or_expected(q.fail(l, "random failure", Duration::ZERO).map(|_| ()));
                }
            }
            80..=84 => {
                if let Some(l) = pick(&mut rng, &mut held) {
                    ok_or_expected(q.release(l));
                }
            }
            85..=88 => {
                q.reap().unwrap();
            }
            89..=91 => {
                if let Some(&id) = known.get(rng.usize(..known.len().max(1))) {
                    ok_or_expected(q.cancel(id).map(|_| ()));
                }
            }
            92..=95 => {
                if let Some(&id) = known.get(rng.usize(..known.len().max(1))) {
                    ok_or_expected(q.retry(id));
                }
            }
            _ => {
                // A stall past the lease (a GC pause, a stopped VM): what it holds is reaped
                // and reclaimed meanwhile, and it goes on using the stale leases afterwards.
                thread::sleep(THREAD_LEASE * rng.u32(13..23) / 10);
                counts.stalls.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

const INVARIANTS: usize = 6;

/// The checker: reads every job and its results back and proves the invariants. Returns the
/// jobs per final state.
fn check<C: TestConn>(
    q: &Queue<C>,
    enqueued: &BTreeSet<i64>,
    reaped_at: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<JobState, usize> {
    let total = q.stats(None).unwrap().total.total();
    // 1. Every enqueued id is present, and nothing else is.
    assert_eq!(
        total,
        i64::try_from(enqueued.len()).unwrap(),
        "jobs in the table vs ids enqueued"
    );
    let mut by_state = BTreeMap::new();
    for &id in enqueued {
        let job = q
            .get_job(id)
            .unwrap_or_else(|e| panic!("enqueued job {id} is gone: {e}"));
        let results = q.get_results(id).unwrap();
        *by_state.entry(job.state).or_insert(0) += 1;
        // 2. No (job, attempt) used twice, and no attempt beyond the job's.
        let attempts: BTreeSet<i32> = results.iter().map(|r| r.attempt).collect();
        assert_eq!(
            attempts.len(),
            results.len(),
            "job {id}: an attempt twice: {results:?}"
        );
        assert!(
            results.iter().all(|r| r.attempt <= job.attempts),
            "job {id}: a result past attempt {}: {results:?}",
            job.attempts
        );
        // 3. At most one succeeded result per job.
        let succeeded: Vec<_> = results
            .iter()
            .filter(|r| r.outcome == Outcome::Succeeded)
            .collect();
        assert!(
            succeeded.len() <= 1,
            "job {id} completed twice: {results:?}"
        );
        // 4. The state agrees with the results.
        match job.state {
            JobState::Succeeded => assert!(
                succeeded.len() == 1 && succeeded[0].attempt == job.attempts,
                "job {id} is succeeded without its last attempt's success: {job:?} {results:?}"
            ),
            _ => assert!(
                succeeded.is_empty(),
                "job {id} is {} with a succeeded result: {results:?}",
                job.state
            ),
        }
        if job.state == JobState::Dead {
            // 5. Dead means out of attempts, with the failures recorded.
            assert!(
                job.attempts_left() == 0 && results.iter().any(|r| r.outcome == Outcome::Failed),
                "job {id} is dead without its failures: {job:?} {results:?}"
            );
        }
        // 6. After the final reap, nothing is running without a live lease.
        if job.state == JobState::Running {
            assert!(
                job.lease_expires_at.is_some_and(|t| t >= reaped_at),
                "job {id} is running with an expired lease after the reap: {job:?}"
            );
        }
    }
    by_state
}
