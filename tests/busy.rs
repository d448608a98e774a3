//! Two connections contend for the write lock: the raw error is busy, the retry wrapper waits
//! it out or gives up with `Error::Busy`, and SQLITE_LOCKED is never retried.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl, SqliteConnection};
use jobdb::{Error, NewJob, RetryPolicy};

use crate::common::{Captured, TestDb};

/// Opens a plain connection (not from the pool) and takes the write lock with BEGIN IMMEDIATE.
/// The lock is held until the returned sender is used (or dropped); the thread then commits.
fn hold_write_lock(db: &TestDb) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let url = db.url();
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = thread::spawn(move || {
        let mut conn = SqliteConnection::establish(&url).unwrap();
        conn.batch_execute("BEGIN IMMEDIATE; INSERT INTO jobs (queue, payload, run_at, created_at, updated_at) VALUES ('holder', '{}', '2000-01-01 00:00:00', '2000-01-01 00:00:00', '2000-01-01 00:00:00');")
            .unwrap();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv();
        conn.batch_execute("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    (release_tx, holder)
}

fn job() -> NewJob {
    NewJob::new("busy", &serde_json::json!({"n": 1})).unwrap()
}

#[test]
fn a_second_writer_sees_is_busy_without_a_busy_timeout() {
    let db = TestDb::new();
    let queue = db.queue_with(|c| c.sqlite.pragmas.busy_timeout = Duration::ZERO);
    let (release, holder) = hold_write_lock(&db);

    let mut conn = queue.pool().get().unwrap();
    let err = jobdb::queue::enqueue(&mut *conn, &job()).unwrap_err();
    assert!(err.is_busy(), "expected busy, got {err:?}");
    // It is the raw diesel error, as SQLite reported it: DatabaseError(Unknown, "database is locked").
    match &err {
        Error::Database(diesel::result::Error::DatabaseError(_, info)) => {
            assert_eq!(info.message(), "database is locked")
        }
        other => panic!("expected a raw database error, got {other:?}"),
    }
    drop(conn);

    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(
        queue.stats(Some("busy")).unwrap().total.total(),
        0,
        "the failed enqueue wrote nothing"
    );
}

#[test]
fn the_retry_wrapper_succeeds_once_the_lock_is_released() {
    let db = TestDb::new();
    let queue = db.queue_with(|c| {
        c.sqlite.pragmas.busy_timeout = Duration::ZERO;
        c.retry.deadline = Duration::from_secs(10);
    });
    let (release, holder) = hold_write_lock(&db);
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        release.send(()).unwrap();
    });

    let started = Instant::now();
    let id = queue
        .enqueue(&job())
        .expect("enqueue succeeds after the holder commits");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it really waited"
    );
    assert!(
        queue.retry_stats().busy_retries > 0,
        "{:?}",
        queue.retry_stats()
    );
    assert_eq!(queue.retry_stats().busy_exhausted, 0);
    assert_eq!(queue.get_job(id).unwrap().queue, "busy");
    releaser.join().unwrap();
    holder.join().unwrap();
}

#[test]
fn past_the_deadline_the_caller_gets_error_busy_and_nothing_is_written() {
    let db = TestDb::new();
    let queue = db.queue_with(|c| {
        c.sqlite.pragmas.busy_timeout = Duration::from_millis(20);
        c.retry = RetryPolicy {
            deadline: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
    });
    let (release, holder) = hold_write_lock(&db);

    let started = Instant::now();
    let err = queue.enqueue(&job()).unwrap_err();
    let elapsed = started.elapsed();
    match err {
        Error::Busy { attempts, waited } => {
            assert!(attempts > 1, "it retried: {attempts}");
            // It stops before a sleep that would overshoot the deadline; one try can add at
            // most one busy_timeout (20 ms) beyond it. A quiet run overshoots by at most that
            // much; the bound allows ten times as much (200 ms), still less than one more
            // backoff sleep at its cap (250 ms) on top of the try.
            assert!(waited >= Duration::from_millis(150), "{waited:?}");
            assert!(waited <= Duration::from_millis(300 + 200), "{waited:?}");
        }
        other => panic!("expected Error::Busy, got {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(2),
        "bounded by the deadline: {elapsed:?}"
    );
    assert_eq!(queue.retry_stats().busy_exhausted, 1);

    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(queue.stats(Some("busy")).unwrap().total.total(), 0);
}

#[test]
fn sqlite_locked_is_not_busy_and_is_not_retried() {
    // SQLITE_LOCKED ("database table is locked") is a conflict inside one shared cache, here
    // produced for real: one shared-cache connection writes `jobs`, another reads it.
    let db = TestDb::new();
    let queue = db.queue();
    let uri = format!("file:{}?cache=shared", db.url());
    let mut writer = SqliteConnection::establish(&uri).unwrap();
    let mut reader = SqliteConnection::establish(&uri).unwrap();
    writer
        .batch_execute("BEGIN IMMEDIATE; DELETE FROM jobs;")
        .unwrap();

    let mut tries = 0;
    let err = queue
        .run("read_locked_table", |_| {
            tries += 1;
            diesel::sql_query("SELECT id FROM jobs")
                .execute(&mut reader)
                .map_err(Error::from)
        })
        .unwrap_err();
    assert_eq!(tries, 1, "LOCKED must not be retried");
    assert!(!err.is_busy(), "{err:?}");
    match &err {
        Error::Database(diesel::result::Error::DatabaseError(_, info)) => {
            assert!(
                info.message().starts_with("database table is locked"),
                "{}",
                info.message()
            )
        }
        other => panic!("expected a raw database error, got {other:?}"),
    }
    assert_eq!(queue.retry_stats().busy_retries, 0);
    writer.batch_execute("ROLLBACK").unwrap();
}

/// A DEBUG subscriber that writes every event and every span's close (with its fields)
/// into the returned buffer.
fn debug_spans() -> (Captured, impl tracing::Subscriber + Send + Sync) {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer({
            let out = out.clone();
            move || out.clone()
        })
        .finish();
    (out, subscriber)
}

/// Runs apart, after the suite (`.ci/run`): `tracing` caches per callsite whether any
/// subscriber wants it, process-wide, and this test's subscriber is scoped to its thread.
/// Under the suite's parallel load another thread's first use of the `jobdb.write` span could
/// leave it cached as disabled, so the events of the transaction were captured without their
/// span (twice in about ten full runs), even with the cache rebuilt below.
#[test]
#[ignore = "tracing's process-wide interest cache races with other tests: run alone"]
fn each_write_transaction_has_a_span_with_its_name_and_busy_retries() {
    let db = TestDb::new();
    let queue = db.queue_with(|c| c.sqlite.pragmas.busy_timeout = Duration::ZERO);
    let (out, subscriber) = debug_spans();
    tracing::subscriber::with_default(subscriber, || {
        // Callsites cache whether any subscriber wants them; a test on another thread that
        // hits the `jobdb.write` span first, with no DEBUG subscriber in place, can leave it
        // cached as disabled (seen once under the full suite's parallel load: the events got
        // through, the span did not). Re-evaluate now that this thread's subscriber is set.
        tracing::callsite::rebuild_interest_cache();
        let (release, holder) = hold_write_lock(&db);
        let releaser = thread::spawn(move || {
            thread::sleep(Duration::from_millis(150));
            release.send(()).unwrap();
        });
        // This thread runs the transaction itself (alone, it is its own group).
        queue.enqueue(&job()).unwrap();
        releaser.join().unwrap();
        holder.join().unwrap();
    });
    let text = out.text();
    let closed = text
        .lines()
        .find(|l| l.contains("jobdb.write") && l.contains("close"))
        .unwrap_or_else(|| panic!("no closed jobdb.write span in:\n{text}"));
    assert!(closed.contains("transaction=\"enqueue\""), "{closed}");
    let retries: u32 = closed
        .split("busy_retries=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no busy_retries field: {closed}"));
    assert!(retries >= 1, "the lock was held for 150 ms: {closed}");
    assert!(closed.contains("duration_ms="), "{closed}");
}

/// The slow-transaction warning once said `claim` "held the write lock" 5014 ms while it had
/// only waited for it. Waiting and holding are now
/// two figures: a transaction queued 300 ms behind another process's writer waited 300 ms and
/// held the lock for a moment, and is not "slow".
#[test]
fn the_wait_for_the_write_lock_is_not_counted_as_holding_it() {
    let db = TestDb::new();
    let queue = db.queue_with(|c| c.slow_transaction = Duration::from_millis(150));
    let (release, holder) = hold_write_lock(&db);
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        release.send(()).unwrap();
    });
    queue.enqueue(&job()).unwrap(); // waits in SQLite's busy handler (busy_timeout 5 s)
    releaser.join().unwrap();
    holder.join().unwrap();
    let m = queue.metrics();
    assert!(m.lock_wait.max_ms >= 250.0, "it waited for the lock: {m:?}");
    // A quiet run holds it for about a millisecond: 150 ms is a margin of over 10×.
    assert!(
        m.lock_hold.max_ms < 150.0,
        "it held the lock briefly: {m:?}"
    );
    assert_eq!(m.slow_transactions, 0, "waiting is not slow holding: {m:?}");
}

/// The queue's spans carry OpenTelemetry's messaging attributes: an enqueue is `create` on
/// its queue, a claim `receive`, the handler's run `process` with the job's id, its result
/// `settle`. Runs apart for the reason above; the async worker runs on this thread (a
/// `current_thread` runtime), where this test's subscriber is.
#[test]
#[ignore = "tracing's process-wide interest cache races with other tests: run alone"]
fn spans_carry_opentelemetry_messaging_attributes() {
    let db = TestDb::new();
    let queue = db.queue();
    let (out, subscriber) = debug_spans();
    let id = tracing::subscriber::with_default(subscriber, || {
        tracing::callsite::rebuild_interest_cache();
        let id = queue.enqueue(&job()).unwrap();
        let mut config = jobdb::WorkerConfig::new("busy").lease(Duration::from_secs(30));
        config.max_jobs = Some(1);
        let worker = jobdb::AsyncWorker::new(queue.to_async(), config, |_ctx| async {
            Ok::<_, jobdb::HandlerError>("done")
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = rt.block_on(worker.run()).unwrap();
        assert_eq!(report.succeeded, 1);
        id
    });
    let text = out.text();
    let span = |kind: &str| {
        text.lines()
            .find(|l| {
                l.contains("jobdb.queue")
                    && l.contains(&format!("messaging.operation.type=\"{kind}\""))
            })
            .unwrap_or_else(|| panic!("no {kind} span in:\n{text}"))
            .to_owned()
    };
    for kind in ["create", "receive", "process", "settle"] {
        assert!(
            span(kind).contains("messaging.system=\"jobdb\""),
            "{}",
            span(kind)
        );
    }
    assert!(
        span("create").contains("messaging.destination.name=\"busy\""),
        "{}",
        span("create")
    );
    assert!(span("create").contains("otel.kind=\"producer\""));
    assert!(
        span("receive").contains("otel.name=\"claim busy\""),
        "{}",
        span("receive")
    );
    assert!(
        span("process").contains(&format!("messaging.message.id={id}")),
        "{}",
        span("process")
    );
    assert!(span("settle").contains("messaging.operation.name=\"complete\""));
}
