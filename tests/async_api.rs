//! The async API (feature `tokio`): `AsyncQueue`, `Db::write_async` and the async worker, on
//! both backends, and what it is for: a runtime thread that never stalls on the database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobdb::{AsyncWorker, HandlerError, JobState, NewJob, Outcome, WorkerConfig};

use crate::backends::{loud, Backend, TestConn};

crate::on_both_backends!(
    an_async_worker_runs_handlers_and_records_results,
    async_calls_are_the_sync_calls,
    an_app_write_async_commits_its_rows_and_its_job_together_or_not_at_all,
    a_cancelled_jobs_token_fires_within_one_heartbeat,
    shutdown_finishes_or_releases_every_running_job,
    a_panic_or_a_time_limit_becomes_a_failed_attempt,
    a_lost_lease_fires_the_token_and_fences_off_the_result,
    stop_modes_max_jobs_and_idle,
);

fn job(queue: &str, n: u32) -> NewJob {
    NewJob::new(queue, &serde_json::json!({"n": n})).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The conformance suite's worker case, on the async worker.
fn an_async_worker_runs_handlers_and_records_results<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    for n in 0..20 {
        q.enqueue(&job("awk", n)).unwrap();
    }
    let mut config = WorkerConfig::new("awk").lease(Duration::from_secs(5));
    config.concurrency = 4;
    config.exit_when_empty = true;
    let failed_once = Arc::new(AtomicBool::new(false));
    let worker = {
        let failed_once = failed_once.clone();
        AsyncWorker::new(q.to_async(), config, move |ctx| {
            let failed_once = failed_once.clone();
            async move {
                let n: serde_json::Value = ctx.payload()?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                if n["n"] == 3 && !failed_once.swap(true, Ordering::SeqCst) {
                    return Err(HandlerError::msg("first try fails"));
                }
                Ok::<_, HandlerError>(n)
            }
        })
    };
    let report = runtime().block_on(worker.run()).unwrap();
    assert_eq!((report.succeeded, report.failed), (20, 1), "{report:?}");
    let audit = q.audit("awk").unwrap();
    assert_eq!(
        (audit.jobs, audit.not_succeeded, audit.duplicated),
        (20, 0, 0)
    );
}

/// Each async twin does what its sync call does (the same handle underneath).
fn async_calls_are_the_sync_calls<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let aq = q.to_async();
    runtime().block_on(async {
        let id = aq.enqueue(&job("tw", 1)).await.unwrap();
        let unique = job("tw", 2).unique_key("k");
        let first = aq.enqueue_unique(&unique).await.unwrap();
        let again = aq.enqueue_unique(&unique).await.unwrap();
        assert!(first.inserted && !again.inserted && first.id == again.id);
        let many = aq
            .enqueue_many(&(0..5).map(|n| job("tw-many", n)).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(many.len(), 5);
        assert!(aq
            .enqueue(&NewJob::from_json("", "{}").unwrap())
            .await
            .unwrap_err()
            .is_invalid_input());
        let claimed = aq
            .claim("tw", 1, "w", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(claimed[0].id, id);
        let lease = claimed[0].lease();
        aq.heartbeat(lease, Duration::from_secs(30)).await.unwrap();
        aq.complete(lease, &"done", Duration::ZERO).await.unwrap();
        assert!(aq
            .complete(lease, &"twice", Duration::ZERO)
            .await
            .unwrap_err()
            .is_lease_lost());
        let finished = aq.wait_for(id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(finished.state, JobState::Succeeded);
        let results = aq.get_results(id).await.unwrap();
        assert_eq!(results[0].outcome, Outcome::Succeeded);
        let other = aq
            .claim("tw", 1, "w", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            aq.fail(other[0].lease(), "no", Duration::ZERO)
                .await
                .unwrap(),
            JobState::Queued
        );
        assert_eq!(
            aq.cancel(other[0].id).await.unwrap(),
            jobdb::CancelOutcome::Cancelled
        );
        aq.retry(other[0].id).await.unwrap();
        let stats = aq.stats(Some("tw-many")).await.unwrap();
        assert_eq!(stats.total.queued, 5);
        assert_eq!(aq.queued("tw-many").await.unwrap(), 5);
        assert!(aq.get_job(987_654).await.unwrap_err().is_not_found());
        assert_eq!(aq.reap().await.unwrap(), 0);
        let paused = aq.blocking(|q| q.pause("tw-many")).await.unwrap().unwrap();
        assert!(paused);
    });
    // And the sync handle sees the same database.
    assert_eq!(q.paused().unwrap(), ["tw-many"]);
}

/// The app's own transaction from async code: its rows and its job commit together, and an
/// error rolls back both.
fn an_app_write_async_commits_its_rows_and_its_job_together_or_not_at_all<C: TestConn>(
    b: &Backend<C>,
) {
    b.exec("CREATE TABLE posts (id BIGINT PRIMARY KEY, title TEXT NOT NULL)");
    let q = b.queue();
    let db = q.db().clone();
    runtime().block_on(async {
        let id = db
            .write_async(|conn| {
                conn.batch_execute("INSERT INTO posts (id, title) VALUES (1, 'hello')")?;
                jobdb::queue::enqueue(conn, &NewJob::new("notify", &1)?)
            })
            .await
            .unwrap();
        assert_eq!(q.get_job(id).unwrap().queue, "notify");
        let refused = db
            .write_async(|conn| {
                conn.batch_execute("INSERT INTO posts (id, title) VALUES (2, 'lost')")?;
                jobdb::queue::enqueue(conn, &NewJob::new("notify", &2)?)?;
                Err::<(), _>(jobdb::Error::InvalidArgument {
                    field: "title",
                    reason: "refused by the app".into(),
                })
            })
            .await;
        assert!(refused.unwrap_err().is_invalid_input());
    });
    assert_eq!(q.stats(Some("notify")).unwrap().total.total(), 1);
    let rows = b.conn().query_i64("SELECT COUNT(*) AS n FROM posts");
    assert_eq!(rows, 1);
}

/// Cancelling a running job fires its handler's token at the next heartbeat; the attempt is
/// recorded as cancelled, not as success.
fn a_cancelled_jobs_token_fires_within_one_heartbeat<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&job("acancel", 1)).unwrap();
    let beat = Duration::from_millis(200);
    let mut config = WorkerConfig::new("acancel").lease(Duration::from_secs(3));
    config.heartbeat_every = beat;
    config.exit_when_empty = true;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let seen_after = Arc::new(std::sync::Mutex::new(None));
    let cancelled_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let worker = {
        let (seen_after, cancelled_at) = (seen_after.clone(), cancelled_at.clone());
        AsyncWorker::new(q.to_async(), config, move |ctx| {
            let (seen_after, cancelled_at, tx) =
                (seen_after.clone(), cancelled_at.clone(), tx.clone());
            async move {
                let _ = tx.send(());
                ctx.token().cancelled().await;
                let at = cancelled_at.lock().unwrap().expect("cancelled first");
                *seen_after.lock().unwrap() = Some((at.elapsed(), ctx.is_cancelled()));
                Ok::<_, HandlerError>("finished anyway")
            }
        })
    };
    let rt = runtime();
    let running = rt.spawn(async move { worker.run().await });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    *cancelled_at.lock().unwrap() = Some(Instant::now());
    assert_eq!(q.cancel(id).unwrap(), jobdb::CancelOutcome::Requested);
    let report = rt.block_on(running).unwrap().unwrap();
    let (after, is_cancelled) = seen_after.lock().unwrap().expect("token fired");
    loud!("async cancel: token fired {after:?} after the cancel (heartbeat every {beat:?})");
    assert!(is_cancelled);
    assert!(after <= beat + Duration::from_millis(300), "{after:?}");
    assert_eq!(report.cancelled, 1, "{report:?}");
    assert_eq!(q.get_job(id).unwrap().state, JobState::Cancelled);
}

/// Shutdown: handlers that finish within the grace period are recorded; the rest see their
/// token fire (or, ignoring it, are aborted) and their jobs are released. None is left
/// `running`.
fn shutdown_finishes_or_releases_every_running_job<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    for n in 0..4 {
        q.enqueue(&job("ashut", n)).unwrap();
    }
    let mut config = WorkerConfig::new("ashut").lease(Duration::from_secs(30));
    config.concurrency = 4;
    config.grace = Duration::from_millis(300);
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let worker = {
        let started = started.clone();
        AsyncWorker::new(q.to_async(), config, move |ctx| {
            let started = started.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let n = ctx.payload::<serde_json::Value>()?["n"]
                    .as_u64()
                    .unwrap_or(0);
                match n {
                    // Quick: finishes within the grace period.
                    0 | 1 => tokio::time::sleep(Duration::from_millis(100)).await,
                    // Honours its token.
                    2 => ctx.token().cancelled().await,
                    // Ignores it: aborted after the abandon wait.
                    _ => tokio::time::sleep(Duration::from_secs(600)).await,
                }
                Ok::<_, HandlerError>(n)
            }
        })
    };
    let stop = worker.shutdown_token();
    let rt = runtime();
    let running = rt.spawn(async move { worker.run().await });
    let t = Instant::now();
    while started.load(Ordering::SeqCst) < 4 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "handlers did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.cancel();
    let report = rt.block_on(running).unwrap().unwrap();
    assert_eq!((report.succeeded, report.released), (2, 2), "{report:?}");
    // The released jobs are not also lost leases (the one that honoured its token was
    // counted as both before).
    assert_eq!(report.lease_lost, 0, "{report:?}");
    let stats = q.stats(Some("ashut")).unwrap().total;
    assert_eq!((stats.succeeded, stats.queued, stats.running), (2, 2, 0));
}

/// A handler's panic and an attempt past its time limit are failed attempts with a reason.
fn a_panic_or_a_time_limit_becomes_a_failed_attempt<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let panics = q.enqueue(&job("afail", 0).max_attempts(1)).unwrap();
    let slow = q
        .enqueue(
            &job("afail", 1)
                .max_attempts(1)
                .timeout(Duration::from_millis(150)),
        )
        .unwrap();
    let mut config = WorkerConfig::new("afail").lease(Duration::from_secs(5));
    config.concurrency = 2;
    config.exit_when_empty = true;
    let worker = AsyncWorker::new(q.to_async(), config, |ctx| async move {
        if ctx.payload::<serde_json::Value>()?["n"] == 0 {
            panic!("boom");
        }
        ctx.token().cancelled().await;
        assert!(ctx.is_timed_out());
        Ok::<_, HandlerError>("too late")
    });
    let report = runtime().block_on(worker.run()).unwrap();
    assert_eq!(report.failed, 2, "{report:?}");
    let last_error = |id| q.get_job(id).unwrap().last_error.unwrap_or_default();
    assert_eq!(q.get_job(panics).unwrap().state, JobState::Dead);
    assert!(last_error(panics).contains("handler panicked: boom"));
    assert_eq!(q.get_job(slow).unwrap().state, JobState::Dead);
    assert!(
        last_error(slow).contains("timed out after"),
        "{}",
        last_error(slow)
    );
}

/// What the async API is for, shown by order of events rather than by timing: on a
/// `current_thread` runtime, while an async enqueue waits for the database (another
/// connection holds SQLite's write lock, so the write is retried on the handle's writer
/// threads), another task of the same runtime answers a ping; through the blocking call the
/// runtime's one thread is stuck in the enqueue, and the ping is answered only once the lock
/// is let go. (How long a 1 ms ticker lags under load is a figure `scripts/ticker-lag.sh`
/// prints, not a verdict.)
#[test]
fn a_current_thread_runtime_keeps_running_tasks_while_an_async_write_waits() {
    // The async call: the pong comes back while the lock is still held.
    let (answered_while_held, enqueued) = ping_while_a_write_waits(false);
    assert!(
        answered_while_held,
        "the runtime answered while the write waited"
    );
    assert!(enqueued, "the write committed once the lock was let go");
    // The blocking call on the same runtime: no pong until the lock is let go.
    let (answered_while_held, enqueued) = ping_while_a_write_waits(true);
    assert!(
        !answered_while_held,
        "the blocking call holds the runtime's only thread"
    );
    assert!(enqueued);
}

/// Holds SQLite's write lock on a connection of its own, starts an enqueue on a
/// `current_thread` runtime (through the blocking call if `blocking`), waits until that write
/// has met the lock, then pings a second task of the runtime. Returns whether the pong came
/// back while the lock was held (waiting up to 10 s for it; without it, 300 ms suffice to
/// see none came: the runtime cannot answer before the lock is let go), and whether the
/// enqueue then committed.
fn ping_while_a_write_waits(blocking: bool) -> (bool, bool) {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let db = crate::common::TestDb::new();
    let q = db.queue_with(|c| c.sqlite.pragmas.busy_timeout = Duration::from_millis(10));
    let mut holder = diesel::SqliteConnection::establish(&db.url()).unwrap();
    holder.batch_execute("BEGIN IMMEDIATE").unwrap();
    let (ping_tx, mut ping_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (pong_tx, pong_rx) = std::sync::mpsc::channel::<()>();
    let aq = q.to_async();
    let runtime = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let ponger = tokio::spawn(async move {
                while ping_rx.recv().await.is_some() {
                    let _ = pong_tx.send(());
                }
            });
            let j = job("pinged", 1);
            let enqueued = if blocking {
                aq.sync().enqueue(&j)
            } else {
                aq.enqueue(&j).await
            };
            ponger.abort();
            enqueued.is_ok()
        })
    });
    // The write has met the lock once the handle counted a busy retry.
    let deadline = Instant::now() + Duration::from_secs(30);
    while q.retry_stats().busy_retries == 0 {
        assert!(Instant::now() < deadline, "the enqueue never met the lock");
        std::thread::sleep(Duration::from_millis(1));
    }
    ping_tx.send(()).unwrap();
    let wait = if blocking {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(10)
    };
    let answered_while_held = pong_rx.recv_timeout(wait).is_ok();
    holder.batch_execute("COMMIT").unwrap();
    let enqueued = runtime.join().unwrap();
    (answered_while_held, enqueued)
}

/// Reap vs heartbeat, interleaved through the test factory: the lease runs out under a
/// running handler, another worker takes the job, and the async worker's next heartbeat
/// fires the handler's token; its result is discarded, the new owner's stands.
fn a_lost_lease_fires_the_token_and_fences_off_the_result<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&job("alost", 1)).unwrap();
    let mut config = WorkerConfig::new("alost").lease(Duration::from_secs(30));
    config.heartbeat_every = Duration::from_millis(100);
    config.max_jobs = Some(1);
    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    let worker = AsyncWorker::new(q.to_async(), config, move |ctx| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ctx.attempts);
            ctx.token().cancelled().await;
            Ok::<_, HandlerError>("stale")
        }
    });
    let rt = runtime();
    let running = rt.spawn(async move { worker.run().await });
    let attempt = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    b.conn().set_running(
        id,
        attempt,
        chrono::Utc::now() - chrono::Duration::seconds(5),
    );
    assert_eq!(q.reap().unwrap(), 1);
    // On PostgreSQL the claim can skip the row for a moment: a heartbeat of the old owner that
    // raced the reap re-checked it under a row lock it keeps until its commit, and the claim
    // skips locked rows (SKIP LOCKED). The next claim gets it.
    let started = Instant::now();
    let thief = loop {
        let got = q
            .claim("alost", 1, "thief", Duration::from_secs(30))
            .unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the reaped job was never claimable"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(thief[0].attempts, attempt + 1);
    let report = rt.block_on(running).unwrap().unwrap();
    assert_eq!((report.lease_lost, report.succeeded), (1, 0), "{report:?}");
    q.complete(thief[0].lease(), &"fresh", Duration::ZERO)
        .unwrap();
    let outcomes: Vec<(i32, String)> = b.conn().results(id);
    assert_eq!(
        outcomes,
        [
            (attempt, "failed".to_owned()),
            (attempt + 1, "succeeded".to_owned())
        ]
    );
}

/// `max_jobs` stops after that many claims (finishing them), `exit_when_idle` once nothing
/// was claimable for the limit.
fn stop_modes_max_jobs_and_idle<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    for n in 0..10 {
        q.enqueue(&job("astop", n)).unwrap();
    }
    let mut config = WorkerConfig::new("astop").lease(Duration::from_secs(30));
    config.concurrency = 4;
    config.max_jobs = Some(6);
    let handler = |ctx: jobdb::AsyncJobContext| async move { Ok::<_, HandlerError>(ctx.id) };
    let rt = runtime();
    let report = rt
        .block_on(AsyncWorker::new(q.to_async(), config.clone(), handler).run())
        .unwrap();
    assert_eq!(report.succeeded, 6, "{report:?}");
    assert_eq!(q.stats(Some("astop")).unwrap().total.queued, 4);
    config.max_jobs = None;
    config.exit_when_idle = Some(Duration::from_millis(200));
    let started = Instant::now();
    let report = rt
        .block_on(AsyncWorker::new(q.to_async(), config, handler).run())
        .unwrap();
    assert_eq!(report.succeeded, 4, "{report:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(q.stats(Some("astop")).unwrap().total.succeeded, 10);
}

/// The child of `sigterm_stops_the_async_worker_gracefully`: a worker with `handle_signals`,
/// in a process of its own (signal handlers are process-wide).
#[test]
#[ignore = "run in a child process by sigterm_stops_the_async_worker_gracefully"]
fn async_worker_signal_child() {
    let Ok(url) = std::env::var("JOBDB_SIGNAL_CHILD_DB") else {
        return;
    };
    let q: jobdb::Queue = jobdb::Queue::open(&url, jobdb::Config::default()).unwrap();
    let mut config = WorkerConfig::new("asig").lease(Duration::from_secs(30));
    config.handle_signals = true;
    config.grace = Duration::from_secs(10);
    let worker = AsyncWorker::new(q.to_async(), config, |_ctx| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<_, HandlerError>("finished within the grace period")
    });
    let report = runtime().block_on(worker.run()).unwrap();
    assert_eq!((report.succeeded, report.released), (1, 0), "{report:?}");
}

/// SIGTERM to a process running an async worker with `handle_signals`: the running job
/// finishes within the grace period, nothing more is claimed, the process exits cleanly.
#[cfg(unix)]
#[test]
fn sigterm_stops_the_async_worker_gracefully() {
    let db = crate::common::TestDb::new();
    let q = db.queue();
    let first = q.enqueue(&job("asig", 1)).unwrap();
    let second = q.enqueue(&job("asig", 2)).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "async_api::async_worker_signal_child",
            "--nocapture",
        ])
        .env("JOBDB_SIGNAL_CHILD_DB", db.url())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while q.get_job(first).unwrap().state != JobState::Running {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the child never claimed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(q.get_job(first).unwrap().state, JobState::Succeeded);
    assert_eq!(q.get_job(second).unwrap().state, JobState::Queued);
}
