//! Job progress on both backends: `set_progress` is fenced by the lease and refuses bad input
//! without writing; a handler may report as often as it likes while the worker writes at most
//! once per `progress_every` per job (counted by a trigger in the database, on the sync and
//! the async worker); the value outlives the attempt; `jobdb show` and the job page show it,
//! escaped, and each attempt's worker.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use jobdb::{
    AsyncWorker, HandlerError, JobState, NewJob, Queue, Worker, WorkerConfig, WorkerReport,
};
use serde_json::{json, Value};

use crate::backends::{loud, Backend, TestConn};

crate::on_both_backends!(
    progress_is_fenced_by_the_lease_and_bad_input_changes_nothing,
    a_handler_reports_at_will_and_the_worker_writes_at_most_once_per_interval,
    an_async_handler_reports_progress_the_same_way,
    show_and_the_job_page_show_progress_as_text,
    a_shell_command_reports_progress_on_stderr,
);

const LEASE: Duration = Duration::from_secs(30);

fn progress_of<C: TestConn>(b: &Backend<C>, id: i64) -> Option<Value> {
    b.queue().get_job(id).unwrap().progress::<Value>().unwrap()
}

fn progress_is_fenced_by_the_lease_and_bad_input_changes_nothing<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&NewJob::new("p", &1).unwrap()).unwrap();
    let lease = q.claim("p", 1, "w", LEASE).unwrap()[0].lease();
    assert_eq!(progress_of(b, id), None);
    q.set_progress(lease, &json!({"done": 1, "of": 3})).unwrap();
    assert_eq!(progress_of(b, id), Some(json!({"done": 1, "of": 3})));
    // A bare string stays a JSON string (not unquoted on the way in).
    q.set_progress(lease, &"half way").unwrap();
    assert_eq!(progress_of(b, id), Some(json!("half way")));

    // Too large: a typed error, and the stored value is unchanged.
    let big = json!({"log": "x".repeat(jobdb::queue::MAX_PROGRESS_BYTES)});
    assert!(q.set_progress(lease, &big).unwrap_err().is_invalid_input());
    assert_eq!(progress_of(b, id), Some(json!("half way")));
    // Text a backend cannot store (a NUL, a lone surrogate), refused as in payloads: c92a778
    // stored it on SQLite, retried it every second on PostgreSQL, and a copy failed on it.
    assert!(q
        .set_progress(lease, &json!("a\u{0}b"))
        .unwrap_err()
        .is_invalid_input());
    for raw in ["\"a\\u0000b\"", "\"\\ud800\""] {
        let refused = q.set_progress_many(vec![(lease, raw.into())]);
        assert!(refused.unwrap_err().is_invalid_input(), "{raw}");
    }
    assert_eq!(progress_of(b, id), Some(json!("half way")));

    // Many in one statement: a lease listed twice keeps its last value; a stale lease and a
    // missing job fail their own slots only.
    let stale = jobdb::Lease {
        attempt: lease.attempt + 7,
        ..lease
    };
    let missing = jobdb::Lease {
        job_id: id + 1000,
        attempt: 1,
    };
    let each = q
        .set_progress_many(vec![
            (lease, "{\"done\":2}".into()),
            (stale, "{\"done\":99}".into()),
            (missing, "{\"done\":98}".into()),
            (lease, "{\"done\":3}".into()),
        ])
        .unwrap();
    assert!(each[0].is_ok() && each[3].is_ok(), "{each:?}");
    assert!(each[1].as_ref().unwrap_err().is_lease_lost(), "{each:?}");
    assert!(each[2].as_ref().unwrap_err().is_not_found(), "{each:?}");
    assert_eq!(progress_of(b, id), Some(json!({"done": 3})));

    // Another worker owns the job now (the factory moves it to attempt 2): the old lease can
    // no longer write.
    b.conn().set_running(
        id,
        lease.attempt + 1,
        chrono::Utc::now() + chrono::Duration::seconds(30),
    );
    assert!(q
        .set_progress(lease, &json!({"done": 9}))
        .unwrap_err()
        .is_lease_lost());
    assert_eq!(progress_of(b, id), Some(json!({"done": 3})));
    let new = jobdb::Lease {
        attempt: lease.attempt + 1,
        ..lease
    };
    q.set_progress(new, &json!({"done": 4})).unwrap();
    q.complete(new, &"ok", Duration::ZERO).unwrap();
    // Finished: no lease can write, and the last value stays for the operator.
    assert!(q
        .set_progress(new, &json!({"done": 5}))
        .unwrap_err()
        .is_lease_lost());
    let done = q.get_job(id).unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.progress::<Value>().unwrap(), Some(json!({"done": 4})));
}

/// Logs every write of `jobs.progress` into `progress_log`, in the database itself.
fn log_progress_writes<C: TestConn>(b: &Backend<C>) {
    if b.is_mysql() {
        // MySQL has no `UPDATE OF column`: a write is logged when it changes the value (each
        // report of these cases carries a new one).
        b.exec(
            "CREATE TABLE progress_log (v LONGTEXT);
             CREATE TRIGGER log_progress AFTER UPDATE ON jobs FOR EACH ROW
               INSERT INTO progress_log SELECT NEW.progress FROM DUAL
               WHERE NOT (NEW.progress <=> OLD.progress);",
        );
    } else if b.is_postgres() {
        b.exec(
            "CREATE TABLE progress_log (v jsonb);
             CREATE FUNCTION log_progress() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO progress_log VALUES (NEW.progress); RETURN NEW; END $$;
             CREATE TRIGGER log_progress AFTER UPDATE OF progress ON jobs
               FOR EACH ROW EXECUTE FUNCTION log_progress();",
        );
    } else {
        b.exec(
            "CREATE TABLE progress_log (v TEXT);
             CREATE TRIGGER log_progress AFTER UPDATE OF progress ON jobs
             BEGIN INSERT INTO progress_log VALUES (NEW.progress); END;",
        );
    }
}

fn progress_writes<C: TestConn>(b: &Backend<C>) -> i64 {
    b.conn().query_i64("SELECT count(*) AS n FROM progress_log")
}

/// What each handler of the two rate tests does: report `done` 0..REPORTS for about a second
/// (a pause each 100), then the final value, then wait until the test saw the final value in
/// the database. The heartbeat thread ticks every 50 ms here, so writing whatever is pending
/// on each tick would take about 20 writes; one per EVERY takes about 5.
const REPORTS: u64 = 2000;
const EVERY: Duration = Duration::from_millis(250);

/// Waits (up to 10 s) until job `id`'s stored progress is `{"done": REPORTS}`, then sets `seen`.
fn watch_for_final<C: TestConn>(b: &Backend<C>, id: i64, seen: &AtomicBool) -> Duration {
    let started = Instant::now();
    while progress_of(b, id) != Some(json!({"done": REPORTS})) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the final progress was never written"
        );
        thread::sleep(Duration::from_millis(5));
    }
    seen.store(true, Ordering::SeqCst);
    started.elapsed()
}

/// The writes a run of `elapsed` may take: one per interval, one at the start, one spare.
fn allowed_writes(elapsed: Duration) -> i64 {
    (elapsed.as_secs_f64() / EVERY.as_secs_f64()).ceil() as i64 + 2
}

/// The rate case around one worker runtime: `start` runs it on a thread of its own, with the
/// config and the flag its handler waits for at the end.
fn check_rate<C: TestConn>(
    b: &Backend<C>,
    runtime: &str,
    start: impl FnOnce(
        Queue<C>,
        WorkerConfig,
        Arc<AtomicBool>,
    ) -> thread::JoinHandle<jobdb::Result<WorkerReport>>,
) {
    let q = b.queue();
    log_progress_writes(b);
    let id = q.enqueue(&NewJob::new("rate", &1).unwrap()).unwrap();
    let mut config = WorkerConfig::new("rate");
    config.progress_every = EVERY;
    config.max_jobs = Some(1);
    let seen = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let run = start(q.clone(), config, seen.clone());
    let waited = watch_for_final(b, id, &seen);
    let report = run.join().unwrap().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.succeeded, 1, "{report:?}");
    let writes = progress_writes(b);
    loud!(
        "{runtime} progress: {} reports, {writes} writes in {elapsed:?} (final value seen after \
         {waited:?})",
        REPORTS + 1
    );
    assert!(writes >= 2, "{writes} writes: the worker wrote too little");
    assert!(
        writes <= allowed_writes(elapsed),
        "{writes} writes in {elapsed:?} at one per {EVERY:?}"
    );
    assert_eq!(progress_of(b, id), Some(json!({"done": REPORTS})));
}

fn a_handler_reports_at_will_and_the_worker_writes_at_most_once_per_interval<C: TestConn>(
    b: &Backend<C>,
) {
    check_rate(b, "sync", |q, config, seen| {
        let worker = Worker::new(q, config, move |ctx| {
            for done in 0..REPORTS {
                ctx.set_progress(&json!({ "done": done }))?;
                if done % 100 == 0 {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            ctx.set_progress(&json!({ "done": REPORTS }))?;
            while !seen.load(Ordering::SeqCst) && !ctx.should_abandon() {
                thread::sleep(Duration::from_millis(2));
            }
            Ok::<_, HandlerError>("done")
        });
        thread::spawn(move || worker.run())
    });
}

fn an_async_handler_reports_progress_the_same_way<C: TestConn>(b: &Backend<C>) {
    check_rate(b, "async", |q, config, seen| {
        let worker = AsyncWorker::new(q.to_async(), config, move |ctx| {
            let seen = seen.clone();
            async move {
                for done in 0..REPORTS {
                    ctx.set_progress(&json!({ "done": done }))?;
                    if done % 100 == 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                ctx.set_progress(&json!({ "done": REPORTS }))?;
                while !seen.load(Ordering::SeqCst) && !ctx.should_abandon() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok::<_, HandlerError>("done")
            }
        });
        thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(worker.run())
        })
    });
}

/// What `jobdb show ID [extra]` prints (it must succeed).
fn show<C: TestConn>(b: &Backend<C>, id: i64, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args(["--database-url", &b.url(), "show", &id.to_string()])
        .args(extra)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn show_and_the_job_page_show_progress_as_text<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let id = q.enqueue(&NewJob::new("shown", &1).unwrap()).unwrap();
    let lease = q.claim("shown", 1, "w", LEASE).unwrap()[0].lease();
    let hostile = json!({"step": "<script>window.pwned=1</script>", "done": 7});
    q.set_progress(lease, &hostile).unwrap();

    let shown: Value = serde_json::from_str(&show(b, id, &["--json"])).unwrap();
    assert_eq!(shown["progress"], hostile);
    let text = show(b, id, &[]);
    assert!(text.contains("progress: {"), "{text}");

    let server = crate::serve::serve(&b.url(), &[]);
    let (status, page) = crate::serve::call(&format!("{}/jobs/{id}", server.base), None, &[]);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("&lt;script&gt;window.pwned=1&lt;/script&gt;"),
        "progress not shown escaped: {page}"
    );
    assert!(!page.contains("<script>window.pwned"), "{page}");
    let (_, api) = crate::serve::call(&format!("{}/api/jobs/{id}", server.base), None, &[]);
    let api: Value = serde_json::from_str(&api).unwrap();
    let stored: Value =
        serde_json::from_str(api["job"]["progress_json"].as_str().unwrap()).unwrap();
    assert_eq!(stored, hostile);

    // Finished: the attempt's row names its worker, on the page, in the API and in `show`.
    q.complete(lease, &"ok", Duration::from_millis(5)).unwrap();
    let (_, page) = crate::serve::call(&format!("{}/jobs/{id}", server.base), None, &[]);
    assert!(page.contains(r#"<td class="worker">w</td>"#), "{page}");
    let (_, api) = crate::serve::call(&format!("{}/api/jobs/{id}", server.base), None, &[]);
    let api: Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["results"][0]["worker_id"], "w");
    let text = show(b, id, &[]);
    assert!(text.contains("attempt 1: succeeded in 5 ms on w"), "{text}");
}

/// `--exec` commands report progress with `jobdb:progress <JSON>` lines on stderr; those lines
/// are not part of a failed attempt's error, and a line whose JSON is bad stays in it.
fn a_shell_command_reports_progress_on_stderr<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("go");
    let id = q
        .enqueue(&NewJob::new("shell", &1).unwrap().max_attempts(1))
        .unwrap();
    let mut config = WorkerConfig::new("shell");
    config.progress_every = Duration::from_millis(100);
    config.max_jobs = Some(1);
    let command = format!(
        "echo 'jobdb:progress {{\"done\": 1, \"step\": \"<b>x</b>\"}}' >&2; echo 'not progress' >&2; \
         while [ ! -e '{}' ]; do sleep 0.02; done; echo 'jobdb:progress {{bad' >&2; exit 3",
        marker.display()
    );
    let worker = Worker::new(q.clone(), config, move |ctx| {
        jobdb::exec::run_shell(&command, ctx)
    });
    let run = thread::spawn(move || worker.run());
    let started = Instant::now();
    while progress_of(b, id) != Some(json!({"done": 1, "step": "<b>x</b>"})) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the command's progress never arrived: {:?}",
            progress_of(b, id)
        );
        thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&marker, b"").unwrap();
    let report = run.join().unwrap().unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    let job = q.get_job(id).unwrap();
    let error = job.last_error.unwrap_or_default();
    assert!(error.contains("not progress"), "{error}");
    assert!(error.contains("jobdb:progress {bad"), "{error}");
    assert!(
        !error.contains("\"done\""),
        "a progress line leaked into the error: {error}"
    );
    assert_eq!(
        job.progress_json
            .as_deref()
            .map(|p| serde_json::from_str::<Value>(p).unwrap()),
        Some(json!({"done": 1, "step": "<b>x</b>"}))
    );
}
