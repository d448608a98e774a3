//! The `jobdb` binary, driven as an operator would: many worker processes on one file, crash
//! recovery, graceful shutdown, retries, bad input and exit codes.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl, SqliteConnection};
use serde_json::Value;

use crate::common::TestDb;

pub(crate) fn jobdb(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobdb"));
    cmd.arg("--database-url")
        .arg(db.url())
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG");
    cmd
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run jobdb")
}

pub(crate) fn ok_stdout(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `jobdb enqueue ARGS`, which must succeed: the id it prints.
pub(crate) fn enqueue_id(db: &TestDb, args: &[&str]) -> i64 {
    let out = ok_stdout(jobdb(db).arg("enqueue").args(args));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("enqueue printed {out:?}"))
}

pub(crate) fn stats(db: &TestDb) -> Value {
    serde_json::from_str(&ok_stdout(jobdb(db).args(["stats", "--json"]))).unwrap()
}

pub(crate) fn show(db: &TestDb, id: i64) -> Value {
    serde_json::from_str(&ok_stdout(jobdb(db).args([
        "show",
        &id.to_string(),
        "--json",
    ])))
    .unwrap()
}

pub(crate) fn spawn_worker(db: &TestDb, args: &[&str]) -> Child {
    jobdb(db)
        .arg("work")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn write_ndjson(db: &TestDb, n: usize) -> std::path::PathBuf {
    let path = db.path.with_file_name("jobs.ndjson");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..n {
        writeln!(f, r#"{{"n":{i},"text":"job number {i}"}}"#).unwrap();
    }
    path
}

/// Every job: state succeeded, exactly one succeeded results row, whose output equals the
/// payload (the handler is `cat`). Checked in SQL.
fn assert_all_succeeded_once_with_output_equal_payload(db: &TestDb, n: i64) {
    #[derive(diesel::QueryableByName, Debug, PartialEq)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        jobs: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        good: i64,
    }
    let mut conn = SqliteConnection::establish(&db.url()).unwrap();
    let row: Row = diesel::sql_query(
        "SELECT count(*) AS jobs, coalesce(sum(j.state = 'succeeded' AND \
           (SELECT count(*) FROM results r WHERE r.job_id = j.id AND r.outcome = 'succeeded') = 1 AND \
           (SELECT json(r.output) FROM results r WHERE r.job_id = j.id AND r.outcome = 'succeeded') = json(j.payload)), 0) AS good \
         FROM jobs j",
    )
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(row, Row { jobs: n, good: n });
}

#[test]
fn four_worker_processes_drain_two_thousand_jobs_exactly_once() {
    let db = TestDb::new();
    let file = write_ndjson(&db, 2000);
    assert_eq!(
        ok_stdout(jobdb(&db).args(["enqueue", "--file"]).arg(&file)).trim(),
        "2000"
    );

    let workers: Vec<Child> = (0..4)
        .map(|_| {
            spawn_worker(
                &db,
                &["--concurrency", "4", "--exit-when-empty", "--exec", "cat"],
            )
        })
        .collect();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "worker failed: {all}");
        assert!(!all.contains("database is locked"), "{all}");
    }
    assert_all_succeeded_once_with_output_equal_payload(&db, 2000);
    let s = stats(&db);
    let counts: Vec<&Value> = ["queued", "running", "succeeded", "dead", "cancelled"]
        .iter()
        .map(|k| &s[*k])
        .collect();
    assert_eq!(counts, [0, 0, 2000, 0, 0], "{s}");
}

#[test]
fn killed_workers_jobs_come_back_after_the_lease() {
    let db = TestDb::new();
    let file = write_ndjson(&db, 60);
    ok_stdout(jobdb(&db).args(["enqueue", "--file"]).arg(&file));

    let mut victims: Vec<Child> = (0..2)
        .map(|_| {
            spawn_worker(
                &db,
                &[
                    "--concurrency",
                    "4",
                    "--lease",
                    "2s",
                    "--exec",
                    "sleep 0.2; cat",
                ],
            )
        })
        .collect();
    wait_until_some_running(&db);
    thread::sleep(Duration::from_millis(100));
    for v in &mut victims {
        v.kill().unwrap(); // SIGKILL: no chance to release anything
        v.wait().unwrap();
    }
    let s = stats(&db);
    assert!(
        s["running"].as_i64().unwrap() > 0,
        "some jobs were mid-run when killed: {s}"
    );

    thread::sleep(Duration::from_millis(2200)); // the lease passes
    let reaped: i64 = ok_stdout(jobdb(&db).arg("reap")).trim().parse().unwrap();
    assert_eq!(
        reaped,
        s["running"].as_i64().unwrap(),
        "every orphaned job is reaped"
    );

    let fresh: Vec<Child> = (0..2)
        .map(|_| {
            spawn_worker(
                &db,
                &[
                    "--concurrency",
                    "4",
                    "--lease",
                    "2s",
                    "--exit-when-empty",
                    "--exec",
                    "sleep 0.2; cat",
                ],
            )
        })
        .collect();
    for f in fresh {
        assert!(f.wait_with_output().unwrap().status.success());
    }
    assert_all_succeeded_once_with_output_equal_payload(&db, 60);
    crate::common::assert_integrity_ok(&db);
}

#[test]
fn sigterm_exits_within_the_grace_period_and_leaves_nothing_running() {
    let db = TestDb::new();
    for i in 0..4 {
        ok_stdout(jobdb(&db).args(["enqueue", &format!(r#"{{"i":{i}}}"#)]));
    }
    // One handler that finishes inside the grace period, then one that never would.
    let worker = spawn_worker(
        &db,
        &[
            "--concurrency",
            "2",
            "--grace",
            "3s",
            "--exec",
            "sleep 0.5; cat",
        ],
    );
    wait_until_running(&db, 2);
    terminate_within(worker, Duration::from_secs(3));
    let s = stats(&db);
    assert_eq!(s["running"], 0, "{s}");
    assert_eq!(s["succeeded"], 2, "the two running jobs finished: {s}");
    assert_eq!(s["queued"], 2, "{s}");

    let stuck = spawn_worker(
        &db,
        &[
            "--concurrency",
            "1",
            "--grace",
            "500ms",
            "--exec",
            "sleep 30",
        ],
    );
    wait_until_running(&db, 1);
    terminate_within(stuck, Duration::from_secs(3));
    let s = stats(&db);
    assert_eq!(s["running"], 0, "the unfinished job was released: {s}");
    assert_eq!(s["queued"], 2, "{s}");
}

/// Waits (up to 20 s) until at least one job is running.
fn wait_until_some_running(db: &TestDb) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats(db)["running"].as_i64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no job ever started");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 20 s, for loaded machines) until `n` jobs are running.
pub(crate) fn wait_until_running(db: &TestDb, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats(db)["running"].as_i64() != Some(n) {
        assert!(
            Instant::now() < deadline,
            "jobs never started: {}",
            stats(db)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM and checks the worker exits successfully within `limit`.
pub(crate) fn terminate_within(child: Child, limit: Duration) {
    let started = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        elapsed < limit,
        "exited within the grace period: {elapsed:?}"
    );
}

#[test]
fn a_failing_command_is_retried_until_dead() {
    let db = TestDb::new();
    let id: i64 = ok_stdout(jobdb(&db).args(["enqueue", "--max-attempts", "3", r#"{"x":1}"#]))
        .trim()
        .parse()
        .unwrap();
    let out = run(jobdb(&db).env("JOBDB_JOB_BACKOFF_BASE_MS", "50").args([
        "work",
        "--exit-when-empty",
        "--exec",
        "echo boom >&2; exit 1",
    ]));
    assert!(out.status.success());
    let job = show(&db, id);
    assert_eq!(job["state"], "dead");
    assert_eq!(job["attempts"], 3);
    let results = job["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["attempt"], i as i64 + 1);
        assert_eq!(r["outcome"], "failed");
        assert_eq!(r["error"], "exit status 1: boom");
    }
}

#[test]
fn show_and_stats_print_the_documented_json() {
    let db = TestDb::new();
    let id: i64 = ok_stdout(jobdb(&db).args([
        "enqueue",
        "--queue",
        "q1",
        "--priority",
        "-3",
        r#"{"a":[1,2]}"#,
    ]))
    .trim()
    .parse()
    .unwrap();
    ok_stdout(jobdb(&db).args([
        "work",
        "--queue",
        "q1",
        "--exit-when-empty",
        "--exec",
        "echo '{\"done\":true}'",
    ]));
    let job = show(&db, id);
    assert_eq!(job["id"], id);
    assert_eq!(job["queue"], "q1");
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["max_attempts"], 5);
    assert_eq!(job["payload"], serde_json::json!({"a":[1,2]}));
    assert_eq!(job["results"][0]["outcome"], "succeeded");
    assert_eq!(
        job["results"][0]["output"],
        serde_json::json!({"done": true})
    );
    assert_eq!(job["results"][0]["error"], Value::Null);
    let s: Value = serde_json::from_str(&ok_stdout(
        jobdb(&db).args(["stats", "--queue", "q1", "--json"]),
    ))
    .unwrap();
    for (key, n) in [
        ("queued", 0),
        ("running", 0),
        ("succeeded", 1),
        ("dead", 0),
        ("cancelled", 0),
    ] {
        assert_eq!(s[key], n, "{key} in {s}");
        assert_eq!(s["queues"]["q1"][key], n, "{key} of q1 in {s}");
    }
    assert_eq!(s["queues"]["q1"]["succeeded_last_minute"], 1, "{s}");
    assert_eq!(s["queues"]["q1"]["paused"], false, "{s}");
    assert!(s["metrics"]["retries"]["transactions"].is_u64(), "{s}");
    assert!(s["metrics"]["wal"].is_object(), "{s}");

    // Non-JSON stdout is stored as a JSON string.
    let id2 = enqueue_id(&db, &["{}"]);
    ok_stdout(jobdb(&db).args(["work", "--exit-when-empty", "--exec", "echo plain text"]));
    assert_eq!(show(&db, id2)["results"][0]["output"], "plain text\n");
}

#[test]
fn delayed_jobs_wait_for_their_time() {
    let db = TestDb::new();
    let id = enqueue_id(&db, &["--delay", "1h", "{}"]);
    let later: i64 =
        ok_stdout(jobdb(&db).args(["enqueue", "--run-at", "2999-01-01T00:00:00Z", "{}"]))
            .trim()
            .parse()
            .unwrap();
    let q = db.queue();
    assert!(q
        .claim("default", 10, "t", Duration::from_secs(1))
        .unwrap()
        .is_empty());
    assert!(q.get_job(id).unwrap().run_at > chrono::Utc::now() + chrono::Duration::minutes(59));
    assert_eq!(
        q.get_job(later).unwrap().run_at.to_rfc3339(),
        "2999-01-01T00:00:00+00:00"
    );
}

/// Runs a command that must fail: returns (exit code, the single stderr line).
pub(crate) fn fails(cmd: &mut Command) -> (i32, String) {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one clear line: {stderr:?}"
    );
    (out.status.code().unwrap(), stderr)
}

#[test]
fn bad_input_gets_one_clear_line_the_documented_exit_code_and_writes_nothing() {
    let db = TestDb::new();
    let (code, err) = fails(jobdb(&db).args(["enqueue", "{not json"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid JSON payload"), "{err}");
    assert!(
        !db.path.exists(),
        "nothing was created for a rejected payload"
    );

    let file = db.path.with_file_name("bad.ndjson");
    std::fs::write(&file, "{\"ok\":1}\n{\"ok\":2}\n{oops\n{\"ok\":4}\n").unwrap();
    let (code, err) = fails(jobdb(&db).args(["enqueue", "--file"]).arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("line 3") && err.contains("nothing was enqueued"),
        "{err}"
    );

    let (code, err) = fails(jobdb(&db).args(["enqueue", "--max-attempts", "-1", "{}"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("max_attempts"), "{err}");
    assert_eq!(
        stats(&db)["queued"],
        0,
        "nothing was enqueued by any of the above"
    );

    let (code, err) = fails(jobdb(&db).args(["show", "424242"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no job with id 424242"), "{err}");

    let (code, _) = fails(
        jobdb(&db)
            .args(["enqueue", "--delay", "5 parsecs", "{}"])
            .env("NO_COLOR", "1"),
    );
    assert_eq!(code, 2);

    let missing = db.path.with_file_name("no/such/dir/jobs.sqlite3");
    let (code, err) = fails(
        Command::new(env!("CARGO_BIN_EXE_jobdb"))
            .arg("--database-url")
            .arg(&missing)
            .arg("stats"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!db.path.with_file_name("no").exists());

    let (code, err) = fails(Command::new(env!("CARGO_BIN_EXE_jobdb")).args([
        "--database-url",
        ":memory:",
        "stats",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("in-memory"), "{err}");
}

#[test]
fn a_database_busy_past_the_deadline_exits_75_and_writes_nothing() {
    let db = TestDb::new();
    let _ = db.queue(); // migrated
    let mut holder = SqliteConnection::establish(&db.url()).unwrap();
    holder.batch_execute("BEGIN IMMEDIATE").unwrap();
    let (code, err) = fails(
        jobdb(&db)
            .env("JOBDB_BUSY_TIMEOUT_MS", "10")
            .env("JOBDB_RETRY_DEADLINE_MS", "300")
            .args(["enqueue", "{}"]),
    );
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("busy"), "{err}");
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(stats(&db)["queued"], 0);
}

#[test]
fn many_processes_opening_a_fresh_file_at_once_all_succeed() {
    // The first opener switches the file to WAL, which needs an exclusive lock that busy_timeout
    // cannot wait on; the others must retry instead of failing.
    for _round in 0..3 {
        let db = TestDb::new();
        let children: Vec<Child> = (0..8)
            .map(|i| {
                jobdb(&db)
                    .args(["enqueue", &format!(r#"{{"i":{i}}}"#)])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(stats(&db)["queued"], 8);
    }
}

#[test]
fn doctor_passes_a_healthy_file_and_names_what_is_wrong() {
    let db = TestDb::new();
    drop(db.queue());
    let out = ok_stdout(jobdb(&db).arg("doctor"));
    assert!(out.contains("journal_mode wal"), "{out}");
    let report: Value =
        serde_json::from_str(&ok_stdout(jobdb(&db).args(["doctor", "--json"]))).unwrap();
    assert!(report["write_lock_wait_ms"].as_f64().is_some(), "{report}");

    // A lock held by someone else.
    let mut holder = SqliteConnection::establish(&db.url()).unwrap();
    holder.batch_execute("BEGIN IMMEDIATE").unwrap();
    let out = run(jobdb(&db).arg("doctor"));
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL write_lock still held"), "{text}");
    holder.batch_execute("ROLLBACK").unwrap();
    drop(holder);

    // A database in DELETE journal mode (made by someone else), which doctor must not change.
    let plain = TestDb::new();
    let mut conn = SqliteConnection::establish(&plain.url()).unwrap();
    conn.batch_execute("PRAGMA journal_mode = DELETE; CREATE TABLE t (x);")
        .unwrap();
    drop(conn);
    let out = run(jobdb(&plain).arg("doctor"));
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL journal_mode delete"), "{text}");
    let mut conn = SqliteConnection::establish(&plain.url()).unwrap();
    assert_eq!(
        jobdb::pragmas::journal_mode(&mut conn).unwrap(),
        "delete",
        "doctor changed nothing"
    );
}

/// "Core correctness" defect 5, as an operator sees it: `--max-attempts 2`, one release at
/// shutdown (SIGTERM past the grace period), one real failure. The job is queued for its
/// second real attempt (`attempts_left` 1). On 41b6fc7 it ended `dead (attempt 2/2)`.
#[test]
fn a_job_released_at_shutdown_keeps_its_attempts() {
    let db = TestDb::new();
    let id = enqueue_id(&db, &["--max-attempts", "2", "{}"]);
    let stuck = spawn_worker(&db, &["--grace", "200ms", "--exec", "sleep 30"]);
    wait_until_running(&db, 1);
    terminate_within(stuck, Duration::from_secs(3));
    let job = show(&db, id);
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(
        job["attempts_left"], 2,
        "the release gave its attempt back: {job}"
    );

    // One real failure; a long backoff keeps the job queued while we look.
    let failing = jobdb(&db)
        .env("JOBDB_JOB_BACKOFF_BASE_MS", "600000")
        .args(["work", "--exec", "exit 3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while show(&db, id)["results"].as_array().map_or(0, |r| r.len()) == 0 {
        assert!(Instant::now() < deadline, "the failure was never recorded");
        thread::sleep(Duration::from_millis(20));
    }
    terminate_within(failing, Duration::from_secs(5));
    let job = show(&db, id);
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["attempts_left"], 1, "{job}");
    assert_eq!(
        job["attempts"], 2,
        "the attempt number (fencing token) still went up: {job}"
    );
}

/// Found by hostile use: the read-only `stats`, `show` and `wait`
/// exited 75 after the retry deadline while another process held the write lock (opening the
/// queue took the lock to look for pending migrations). WAL readers need no lock.
#[test]
fn reads_do_not_wait_for_a_writer_holding_the_lock() {
    let db = TestDb::new();
    let id = enqueue_id(&db, &["{}"]);
    let mut holder = SqliteConnection::establish(&db.url()).unwrap();
    holder
        .batch_execute("BEGIN IMMEDIATE; UPDATE jobs SET priority = 1")
        .unwrap();
    let started = Instant::now();
    for args in [
        vec!["stats", "--json"],
        vec!["show", &id.to_string()],
        vec!["stats"],
    ] {
        let out = run(jobdb(&db)
            .env("JOBDB_BUSY_TIMEOUT_MS", "10")
            .env("JOBDB_RETRY_DEADLINE_MS", "300")
            .args(&args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    holder.batch_execute("ROLLBACK").unwrap();
}

/// 41b6fc7: `jobdb` alone printed only its tagline, and `jobdb work` said "the following
/// required arguments were not provided:" naming none.
#[test]
fn usage_errors_say_what_is_missing() {
    let db = TestDb::new();
    let out = run(&mut Command::new(env!("CARGO_BIN_EXE_jobdb")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Usage:") && stderr.contains("enqueue"),
        "{stderr}"
    );
    let (code, stderr) = fails(jobdb(&db).arg("work"));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--exec"),
        "names the missing flag: {stderr}"
    );
}

/// 41b6fc7: `doctor` printed the password of a PostgreSQL URL, and a `?password=` query
/// parameter was never hidden (`stats` echoed it).
#[test]
fn passwords_never_reach_any_message() {
    for url in [
        "postgres://postgres:hunter2@127.0.0.1:5999/x",
        "postgres://postgres@127.0.0.1:5999/x?sslmode=disable&password=hunter2",
    ] {
        for command in ["doctor", "stats", "enqueue"] {
            let out = run(Command::new(env!("CARGO_BIN_EXE_jobdb"))
                .args(["--database-url", url, command])
                .args(if command == "enqueue" {
                    &["{}"][..]
                } else {
                    &[][..]
                })
                .env_remove("DATABASE_URL"));
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{command} {url}: {all}");
            assert!(!all.contains("hunter2"), "{command} {url}: {all}");
            assert!(all.contains("***"), "{command} {url}: {all}");
        }
    }
}

/// 41b6fc7: a database created through a `file:` URI got mode 0644 under umask 000 (plain
/// paths got 0600). Every form now gives 0600, its WAL too; a `mode=ro` URI creates nothing.
#[test]
fn every_url_form_creates_the_database_0600() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    for (name, url) in [
        ("plain.sqlite3", format!("{d}/plain.sqlite3")),
        ("scheme.sqlite3", format!("sqlite://{d}/scheme.sqlite3")),
        ("uri.sqlite3", format!("file:{d}/uri.sqlite3")),
        ("authority.sqlite3", format!("file://{d}/authority.sqlite3")),
        (
            "query.sqlite3",
            format!("file:{d}/query.sqlite3?cache=private"),
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobdb"));
        cmd.args(["--database-url", &url, "enqueue", "{}"])
            .env_remove("DATABASE_URL");
        // SAFETY: umask(2) in the child between fork and exec is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        ok_stdout(&mut cmd);
        for file in [name.to_owned(), format!("{name}-wal")] {
            let path = dir.path().join(&file);
            if file.ends_with("-wal") && !path.exists() {
                continue; // checkpointed away on close
            }
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{url}: {file} has mode {mode:o}");
        }
    }
    let missing = dir.path().join("missing.sqlite3");
    let out = run(Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args([
            "--database-url",
            &format!("file:{}?mode=ro", missing.display()),
            "stats",
        ])
        .env_remove("DATABASE_URL"));
    assert!(!out.status.success());
    assert!(!missing.exists(), "a read-only URI creates no file");
}

/// NDJSON files as users have them: 41b6fc7 exited 1 for a missing file or a non-UTF-8 line,
/// failed a file starting with a byte-order mark, and named no line for an oversized one
/// (reading a 300 MB line whole first). Now: exit 2 with the line, a BOM is skipped, and a
/// line is refused once the payload limit is read.
#[test]
fn ndjson_files_get_clear_answers_with_line_numbers() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let missing = dir.path().join("missing.ndjson").display().to_string();
    let not_utf8 = file("bad.ndjson", b"{\"a\":1}\n\"\xff\xfe\"\n");
    let mut long = b"{}\n".to_vec();
    long.extend(format!("\"{}\"\n", "x".repeat(5000)).as_bytes());
    let long = file("long.ndjson", &long);
    for (path, says) in [
        (&missing, "cannot read it"),
        (&not_utf8, "line 2: not UTF-8"),
        (&long, "line 2: longer than the payload limit of 1000 bytes"),
    ] {
        let (code, stderr) = fails(
            jobdb(&db)
                .env("JOBDB_MAX_PAYLOAD_BYTES", "1000")
                .args(["enqueue", "--file", path]),
        );
        assert_eq!(code, 2, "{path}: {stderr}");
        assert!(stderr.contains(says), "{path}: {stderr}");
        assert!(stderr.contains("nothing was enqueued"), "{stderr}");
    }
    let bom = file("bom.ndjson", "\u{feff}{\"a\":1}\r\n{\"b\":2}\n".as_bytes());
    assert_eq!(
        ok_stdout(jobdb(&db).args(["enqueue", "--file", &bom])).trim(),
        "2"
    );
    assert_eq!(stats(&db)["queued"], 2, "only the BOM file's two jobs");
}

/// `doctor` is documented to change nothing. 41b6fc7 created `__diesel_schema_migrations` in
/// an empty file and in another app's SQLite database (changing its bytes), and exited 1 on a
/// file that is not a database, where other commands exit 2.
#[test]
fn doctor_changes_nothing_and_refuses_a_non_database_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.sqlite3");
    std::fs::write(&empty, b"").unwrap();
    let other = dir.path().join("other.sqlite3");
    {
        let mut c = SqliteConnection::establish(other.to_str().unwrap()).unwrap();
        c.batch_execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('mine')")
            .unwrap();
    }
    for path in [&empty, &other] {
        let before = std::fs::read(path).unwrap();
        let out = run(Command::new(env!("CARGO_BIN_EXE_jobdb"))
            .args(["--database-url", path.to_str().unwrap(), "doctor", "--json"])
            .env_remove("DATABASE_URL"));
        assert_eq!(
            out.status.code(),
            Some(1),
            "unhealthy, not an error: {out:?}"
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            report["pending_migrations"]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
            "{report}"
        );
        assert_eq!(
            std::fs::read(path).unwrap(),
            before,
            "{} was changed",
            path.display()
        );
    }
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, just text that is long enough",
    )
    .unwrap();
    let (code, stderr) = fails(
        Command::new(env!("CARGO_BIN_EXE_jobdb"))
            .args(["--database-url", text.to_str().unwrap(), "doctor"])
            .env_remove("DATABASE_URL"),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a SQLite database"), "{stderr}");
}

/// Found by hostile use: `enqueue --file` of 2M lines held the write
/// lock 32.6 s in one transaction (474 MB RSS), and meanwhile another process's `enqueue`
/// exited 75. Now a file goes in transactions of 1000 rows (after every line was checked):
/// another process's enqueues and a worker run beside a big import, and nobody exits 75.
/// (`--atomic` keeps the one-transaction import.) Scaled down for the suite: 60,000 lines.
#[test]
fn a_big_import_does_not_starve_other_writers() {
    let db = TestDb::new();
    drop(db.queue());
    let file = db.path.with_file_name("big.ndjson");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..60_000 {
            writeln!(f, r#"{{"i":{i}}}"#).unwrap();
        }
    }
    let worker = spawn_worker(&db, &["--queue", "other", "--exec", "cat"]);
    // A short retry deadline: anyone held up for a whole import would exit 75.
    let import = jobdb(&db)
        .env("JOBDB_RETRY_DEADLINE_MS", "3000")
        .args(["enqueue", "--file"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut slowest = Duration::ZERO;
    let mut others = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        let out = run(jobdb(&db)
            .env("JOBDB_RETRY_DEADLINE_MS", "3000")
            .args(["enqueue", "--queue", "other", "{}"]));
        assert!(
            out.status.success(),
            "an enqueue beside the import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        slowest = slowest.max(t.elapsed());
        others += 1;
        if others >= 20 && stats(&db)["queues"]["default"]["queued"].as_i64() == Some(60_000) {
            break;
        }
    }
    let out = import.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "60000");
    crate::cli::terminate_within(worker, Duration::from_secs(10));
    crate::backends::loud!(
        "import of 60,000 lines beside {others} single enqueues (slowest {slowest:?}) and a worker"
    );
    let s = stats(&db);
    assert_eq!(s["queues"]["default"]["queued"], 60_000, "{s}");
}
