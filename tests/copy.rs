//! `jobdb copy`: a SQLite queue with 100,000 jobs in every state, with results, schedules and
//! a paused queue, copied to PostgreSQL and compared field by field; workers on PostgreSQL
//! then finish the queued jobs exactly once and the unique and schedule rules still hold; a
//! copy killed midway leaves nothing, and its rerun is complete and equal.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::{PgConnection, SqliteConnection};
use jobdb::copy::{CopyOptions, CopyReport};
use jobdb::models::{JobRow, PausedRow, ResultRow, ScheduleRow};
use jobdb::{Config, HandlerError, JobState, NewJob, Queue, Schedule, Worker, WorkerConfig};

use crate::backends::{loud, PgTestDb};
use crate::common::TestDb;

const JOBS: i64 = 100_000;

/// The factory: rows put straight into every state (never reached by running anything), with
/// payloads that JSONB would normalize, text that is hostile, microsecond timestamps, unique
/// keys on live jobs, leases, cancel requests, attempt bases, time limits and progress.
fn source(jobs: i64) -> (TestDb, Queue) {
    let db = TestDb::new();
    let queue = db.queue();
    let mut conn = SqliteConnection::establish(&db.url()).unwrap();
    conn.batch_execute(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {jobs}),
         t(i, at, later) AS (
           SELECT i,
             strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || (i % 5000) || ' seconds') || printf('%03d', i % 1000),
             strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || (3600 + i % 600) || ' seconds') || printf('%03d', i % 997)
           FROM n)
         INSERT INTO jobs (id, queue, state, priority, payload, attempts, max_attempts, run_at,
           created_at, updated_at, worker_id, heartbeat_at, lease_expires_at, last_error,
           unique_key, cancel_requested_at, attempt_base, timeout_ms, progress)
         SELECT i, 'q' || (i % 3),
           CASE i % 5 WHEN 0 THEN 'queued' WHEN 1 THEN 'running' WHEN 2 THEN 'succeeded'
                      WHEN 3 THEN 'dead' ELSE 'cancelled' END,
           (i % 7) - 3,
           '{{\"z\": ' || i || ', \"a\":  [1.5, \"é\\u00e9 <script>alert(1)</script>\", null], \"n\": {{\"k\": true}}}}',
           CASE i % 5 WHEN 0 THEN i % 2 ELSE 1 + i % 3 END,
           5, at, at, at,
           CASE WHEN i % 5 = 1 THEN 'worker-' || (i % 16) END,
           CASE WHEN i % 5 = 1 THEN at END,
           CASE WHEN i % 5 = 1 THEN later END,
           CASE WHEN i % 5 IN (1, 3) THEN 'boom \"' || i || '\" '' ; DROP TABLE jobs; --' END,
           CASE WHEN i % 10 IN (0, 1) THEN 'key-' || i END,
           CASE WHEN i % 20 = 1 THEN at END,
           CASE WHEN i % 5 = 0 THEN i % 2 ELSE 0 END,
           CASE WHEN i % 4 = 0 THEN 1000 * (1 + i % 60) END,
           CASE WHEN i % 3 = 1 THEN '{{\"done\":  ' || (i % 100) || ', \"of\": 100, \"step\": \"<b>x</b>\"}}' END
         FROM t;
         INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms, worker_id)
           SELECT id, attempts, CASE state WHEN 'succeeded' THEN 'succeeded' ELSE 'failed' END,
                  CASE state WHEN 'succeeded' THEN '{{\"ok\":1,  \"id\":' || id || '}}' END,
                  CASE state WHEN 'dead' THEN last_error END, updated_at, id % 1000,
                  CASE WHEN id % 7 > 0 THEN 'pid' || (id % 97) || '-w' END
           FROM jobs WHERE state IN ('succeeded', 'dead');
         INSERT INTO results (job_id, attempt, outcome, error, created_at, duration_ms)
           SELECT id, 1, 'failed', 'lease expired', created_at, 0
           FROM jobs WHERE state = 'running' AND attempts >= 2;
         INSERT INTO schedules (name, last_tick, updated_at) VALUES
           ('nightly', '2026-11-30 00:00:00.000000', '2026-11-30 00:00:01.250000'),
           ('every-5m', '2026-12-01 09:55:00.000000', '2026-12-01 09:55:00.000123');
         INSERT INTO paused_queues (queue, paused_at) VALUES ('held', '2026-12-01 08:00:00.5');"
    ))
    .unwrap();
    (db, queue)
}

/// Everything in a database, by id or name, as Diesel reads it.
#[derive(Debug, PartialEq)]
struct Tables {
    jobs: Vec<JobRow>,
    results: Vec<ResultRow>,
    schedules: Vec<ScheduleRow>,
    paused: Vec<PausedRow>,
}

fn sqlite_tables(url: &str) -> Tables {
    let mut c = SqliteConnection::establish(url).unwrap();
    use jobdb::schema::{jobs, results};
    Tables {
        jobs: jobs::table
            .order(jobs::id)
            .select(JobRow::as_select())
            .load(&mut c)
            .unwrap(),
        results: results::table
            .order(results::id)
            .select(ResultRow::as_select())
            .load(&mut c)
            .unwrap(),
        schedules: diesel::sql_query(
            "SELECT name, last_tick, updated_at FROM schedules ORDER BY name",
        )
        .load(&mut c)
        .unwrap(),
        paused: diesel::sql_query("SELECT queue, paused_at FROM paused_queues ORDER BY queue")
            .load(&mut c)
            .unwrap(),
    }
}

fn pg_tables(url: &str) -> Tables {
    let mut c = PgConnection::establish(url).unwrap();
    let utc = |col: &str| format!("({col} AT TIME ZONE 'UTC') AS {col}");
    Tables {
        jobs: diesel::sql_query(format!(
            "SELECT id, queue, state, priority, payload::text AS payload, attempts, max_attempts, \
             {}, {}, {}, worker_id, {}, {}, last_error, unique_key, {}, attempt_base, timeout_ms, \
             progress::text AS progress \
             FROM jobs ORDER BY id",
            utc("run_at"),
            utc("created_at"),
            utc("updated_at"),
            utc("heartbeat_at"),
            utc("lease_expires_at"),
            utc("cancel_requested_at")
        ))
        .load(&mut c)
        .unwrap(),
        results: diesel::sql_query(format!(
            "SELECT id, job_id, attempt, outcome, output::text AS output, error, {}, duration_ms, \
             worker_id \
             FROM results ORDER BY id",
            utc("created_at")
        ))
        .load(&mut c)
        .unwrap(),
        schedules: diesel::sql_query(format!(
            "SELECT name, {}, {} FROM schedules ORDER BY name",
            utc("last_tick"),
            utc("updated_at")
        ))
        .load(&mut c)
        .unwrap(),
        paused: diesel::sql_query(format!(
            "SELECT queue, {} FROM paused_queues ORDER BY queue",
            utc("paused_at")
        ))
        .load(&mut c)
        .unwrap(),
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// Field by field; JSON columns as JSON values (JSONB normalizes spacing and key order).
fn assert_equal(src: &Tables, dst: &Tables) {
    assert_eq!(src.jobs.len(), dst.jobs.len());
    for (a, b) in src.jobs.iter().zip(&dst.jobs) {
        assert_eq!(json(&a.payload), json(&b.payload), "job {}", a.id);
        assert_eq!(
            a.progress.as_deref().map(json),
            b.progress.as_deref().map(json),
            "job {}",
            a.id
        );
        let strip = |r: &JobRow| JobRow {
            payload: String::new(),
            progress: None,
            ..r.clone()
        };
        assert_eq!(strip(a), strip(b), "job {}", a.id);
    }
    assert_eq!(src.results.len(), dst.results.len());
    for (a, b) in src.results.iter().zip(&dst.results) {
        assert_eq!(
            a.output.as_deref().map(json),
            b.output.as_deref().map(json),
            "result {}",
            a.id
        );
        let strip = |r: &ResultRow| ResultRow {
            output: None,
            ..r.clone()
        };
        assert_eq!(strip(a), strip(b), "result {}", a.id);
    }
    assert_eq!(src.schedules, dst.schedules);
    assert_eq!(src.paused, dst.paused);
}

/// The factory's source has running jobs: they are copied with their leases.
fn with_running() -> CopyOptions {
    CopyOptions {
        allow_running: true,
        ..CopyOptions::default()
    }
}

fn copy_into(src: &Queue, dst_url: &str) -> CopyReport {
    let dst: Queue<PgConnection> = Queue::open(dst_url, Config::default()).unwrap();
    jobdb::copy::copy(src.db(), dst.db(), &with_running(), |_| {}).unwrap()
}

#[test]
fn a_hundred_thousand_jobs_copy_to_postgres_field_by_field_and_keep_their_rules() {
    let Some(pg) = PgTestDb::new("copy") else {
        return;
    };
    let (db, src) = source(JOBS);
    let before = sqlite_tables(&db.url());
    assert_eq!(before.jobs.len() as i64, JOBS);
    let report = copy_into(&src, &pg.url);
    loud!(
        "copy sqlite → postgres: {} rows in {:.2} s, {:.0} rows/s (debug build)",
        report.tables.iter().map(|t| t.rows).sum::<u64>(),
        report.seconds,
        report.rows_per_sec
    );
    let rows: Vec<(&str, u64)> = report.tables.iter().map(|t| (t.table, t.rows)).collect();
    assert_eq!(
        rows,
        [
            ("jobs", JOBS as u64),
            ("results", before.results.len() as u64),
            ("schedules", 2),
            ("paused_queues", 1)
        ]
    );
    let after = pg_tables(&pg.url);
    assert_equal(&before, &after);

    // A second copy into the now full target is refused, and changes nothing.
    let dst: Queue<PgConnection> = Queue::open(&pg.url, Config::default()).unwrap();
    let refused = jobdb::copy::copy(src.db(), dst.db(), &with_running(), |_| {});
    assert!(refused.unwrap_err().is_copy_refused());

    // The rules hold on PostgreSQL: a copied live job still holds its unique key, a copied
    // schedule's last tick is taken, new ids come after the copied ones.
    let live = dst
        .enqueue_unique(&NewJob::new("q1", &1).unwrap().unique_key("key-10"))
        .unwrap();
    assert_eq!((live.id, live.inserted), (10, false));
    let nightly = Schedule::interval(
        "nightly",
        Duration::from_secs(86_400),
        NewJob::new("nightly-q", &0).unwrap(),
    )
    .unwrap();
    let tick = after
        .schedules
        .iter()
        .find(|s| s.name == "nightly")
        .unwrap()
        .last_tick
        .and_utc();
    assert_eq!(dst.enqueue_tick(&nightly, tick).unwrap(), None);
    assert!(dst
        .enqueue_tick(&nightly, tick + chrono::Duration::days(1))
        .unwrap()
        .is_some());
    let fresh = dst.enqueue(&NewJob::new("elsewhere", &0).unwrap()).unwrap();
    assert!(fresh > JOBS, "{fresh}");
    assert_eq!(dst.paused().unwrap(), ["held"]);

    // Workers on PostgreSQL finish the copied queued jobs of every queue, each exactly
    // once; the copied running jobs keep their leases (an hour ahead) and are not taken.
    for q in ["q0", "q1", "q2"] {
        let queued: HashSet<i64> = before
            .jobs
            .iter()
            .filter(|j| j.state == "queued" && j.queue == q)
            .map(|j| j.id)
            .collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut config = WorkerConfig::new(q).lease(Duration::from_secs(60));
        config.concurrency = 8;
        config.exit_when_idle = Some(Duration::from_millis(500));
        let worker = {
            let seen = seen.clone();
            Worker::new(dst.clone(), config, move |ctx| {
                seen.lock().unwrap().push(ctx.id);
                Ok::<_, HandlerError>(ctx.id)
            })
        };
        let report = worker.run().unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), queued.len(), "{q}: each queued job ran once");
        assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), queued, "{q}");
        assert_eq!(report.succeeded as usize, queued.len(), "{q}");
        let stats = dst.stats(Some(q)).unwrap().total;
        let copied_running = before
            .jobs
            .iter()
            .filter(|j| j.state == "running" && j.queue == q)
            .count() as i64;
        assert_eq!((stats.queued, stats.running), (0, copied_running), "{q}");
    }
    assert_eq!(dst.get_job(15).unwrap().state, JobState::Succeeded); // q0, queued before
}

/// SIGKILL in the middle of `jobdb copy`: the target is left empty (the copy is one
/// transaction), and a rerun copies everything, equal field by field.
#[cfg(unix)]
#[test]
fn a_copy_killed_midway_leaves_nothing_and_its_rerun_is_complete() {
    use std::os::unix::process::ExitStatusExt;
    let Some(pg) = PgTestDb::new("copy_kill") else {
        return;
    };
    let (db, _src) = source(JOBS);
    let copy = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobdb"));
        cmd.args([
            "--database-url",
            &db.url(),
            "copy",
            "--to",
            &pg.url,
            "--allow-running",
            "--json",
        ])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        cmd
    };
    let mut admin = PgConnection::establish(&pg.url).unwrap();
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count = |c: &mut PgConnection, sql: &str| -> i64 {
        diesel::sql_query(sql).get_result::<N>(c).unwrap().n
    };
    let mut child = copy().spawn().unwrap();
    // Midway: once the copy's transaction has written rows (it holds the jobs table's
    // RowExclusiveLock), and a moment more.
    let started = Instant::now();
    while count(
        &mut admin,
        "SELECT count(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
         WHERE c.relname = 'results' AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid()",
    ) == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the copy never reached results"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy finished before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    // The server rolls the dead client's transaction back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        &mut admin,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    ) > 0
    {
        assert!(
            Instant::now() < deadline,
            "the killed copy's session did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(&mut admin, "SELECT count(*) AS n FROM jobs"), 0);
    assert_eq!(count(&mut admin, "SELECT count(*) AS n FROM results"), 0);

    let out = copy().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tables"][0]["rows"], JOBS);
    assert_equal(&sqlite_tables(&db.url()), &pg_tables(&pg.url));
}

/// Running jobs refuse a copy unless it is told to take their leases along.
#[test]
fn running_jobs_refuse_a_copy_unless_allowed() {
    let Some(pg) = PgTestDb::new("copy_running") else {
        return;
    };
    let (_db, src) = source(50);
    let dst: Queue<PgConnection> = Queue::open(&pg.url, Config::default()).unwrap();
    let refused = jobdb::copy::copy(src.db(), dst.db(), &CopyOptions::default(), |_| {});
    let e = refused.unwrap_err();
    assert!(
        e.is_copy_refused() && e.to_string().contains("running"),
        "{e}"
    );
    assert_eq!(dst.stats(None).unwrap().total.total(), 0);
    let report = jobdb::copy::copy(src.db(), dst.db(), &with_running(), |_| {}).unwrap();
    assert_eq!(report.tables[0].rows, 50);
}

/// `jobdb copy --wait` waits while a job runs on the source, then copies (here SQLite to
/// SQLite: any pair of backends works).
#[test]
fn copy_wait_waits_for_running_jobs_then_copies() {
    let src_db = TestDb::new();
    let src = src_db.queue();
    src.enqueue(&NewJob::new("w", &1).unwrap()).unwrap();
    let lease = src.claim("w", 1, "w1", Duration::from_secs(30)).unwrap()[0].lease();
    let dst_db = TestDb::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args([
            "--database-url",
            &src_db.url(),
            "copy",
            "--wait",
            "--json",
            "--to",
            &dst_db.url(),
        ])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "copy did not wait for the running job"
    );
    src.complete(lease, &"done", Duration::ZERO).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["from"].as_str(), report["to"].as_str()),
        (Some("sqlite"), Some("sqlite"))
    );
    assert_equal(&sqlite_tables(&src_db.url()), &sqlite_tables(&dst_db.url()));
    assert_eq!(
        dst_db.queue().get_job(1).unwrap().state,
        JobState::Succeeded
    );
}

#[cfg(feature = "mysql")]
fn mysql_tables(url: &str) -> Tables {
    let mut c = diesel::MysqlConnection::establish(url).unwrap();
    Tables {
        jobs: diesel::sql_query(
            "SELECT id, queue, state, priority, payload, attempts, max_attempts, run_at, \
             created_at, updated_at, worker_id, heartbeat_at, lease_expires_at, last_error, \
             unique_key, cancel_requested_at, attempt_base, timeout_ms, progress \
             FROM jobs ORDER BY id",
        )
        .load(&mut c)
        .unwrap(),
        results: diesel::sql_query(
            "SELECT id, job_id, attempt, outcome, output, error, created_at, duration_ms, \
             worker_id FROM results ORDER BY id",
        )
        .load(&mut c)
        .unwrap(),
        schedules: diesel::sql_query(
            "SELECT name, last_tick, updated_at FROM schedules ORDER BY name",
        )
        .load(&mut c)
        .unwrap(),
        paused: diesel::sql_query("SELECT queue, paused_at FROM paused_queues ORDER BY queue")
            .load(&mut c)
            .unwrap(),
    }
}

/// SQLite → MariaDB → a fresh SQLite file: 20,000 jobs in every state with their results,
/// schedules and paused queues, equal field by field at each step (MySQL keeps JSON text
/// verbatim), and the unique-key rule holds on the copy (a live job's key is taken there).
#[cfg(feature = "mysql")]
#[test]
fn jobs_copy_to_mysql_and_back_field_by_field() {
    let Some(my) = crate::mysql_backend::MyTestDb::new("copy_mysql") else {
        return;
    };
    let (src_db, src) = source(20_000);
    let mysql: Queue<diesel::MysqlConnection> = Queue::open(&my.url, Config::default()).unwrap();
    let report = jobdb::copy::copy(src.db(), mysql.db(), &with_running(), |_| {}).unwrap();
    assert_eq!(report.tables[0].rows, 20_000);
    let original = sqlite_tables(&src_db.url());
    let on_mysql = mysql_tables(&my.url);
    assert_equal(&original, &on_mysql);
    assert_eq!(
        original.jobs, on_mysql.jobs,
        "MySQL keeps the JSON text as it was"
    );

    let back_db = TestDb::new();
    let back = back_db.queue();
    jobdb::copy::copy(mysql.db(), back.db(), &with_running(), |_| {}).unwrap();
    assert_equal(&original, &sqlite_tables(&back_db.url()));

    // Job 10 is queued with unique key "key-10": the key is taken on the copy too.
    let live = original.jobs.iter().find(|j| j.id == 10).unwrap();
    assert_eq!(
        (live.state.as_str(), live.unique_key.as_deref()),
        ("queued", Some("key-10"))
    );
    let again = mysql
        .enqueue_unique(&NewJob::new(&live.queue, &1).unwrap().unique_key("key-10"))
        .unwrap();
    assert_eq!((again.id, again.inserted), (10, false));
    // New ids continue past the copied ones.
    let fresh = mysql.enqueue(&NewJob::new("after", &1).unwrap()).unwrap();
    assert!(fresh > 20_000, "{fresh}");
}

/// `copy --from` a file that does not exist, or that holds no jobdb queue, is an error that
/// says so (exit 2), and copy creates no file: c92a778 created the missing source, "copied 0
/// rows, verified" and exited 0, as it did for the default source run from the wrong
/// directory.
#[test]
fn copy_refuses_a_missing_source_or_one_without_a_queue_and_creates_nothing() {
    let dst = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let to = dir.path().join("out.db");
    for args in [
        vec![
            "copy".to_owned(),
            "--from".to_owned(),
            missing.display().to_string(),
            "--to".to_owned(),
            to.display().to_string(),
        ],
        // The default source (--database-url) named relative to another directory.
        vec![
            "copy".to_owned(),
            "--to".to_owned(),
            to.display().to_string(),
        ],
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobdb"));
        cmd.env_remove("DATABASE_URL")
            .args(["--database-url", "missing.db"])
            .current_dir(dir.path())
            .args(&args);
        let (code, stderr) = crate::cli::fails(&mut cmd);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("does not exist"), "{stderr}");
    }
    assert!(!missing.exists() && !to.exists() && !dir.path().join("missing.db").exists());

    // A SQLite file of another app's, with no jobdb tables: refused, and left as it was.
    let other = dir.path().join("other.db");
    let mut c =
        <diesel::SqliteConnection as diesel::Connection>::establish(other.to_str().unwrap())
            .unwrap();
    diesel::connection::SimpleConnection::batch_execute(&mut c, "CREATE TABLE t (x)").unwrap();
    drop(c);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobdb"));
    cmd.env_remove("DATABASE_URL").args([
        "copy",
        "--from",
        other.to_str().unwrap(),
        "--to",
        &dst.url(),
    ]);
    let (code, stderr) = crate::cli::fails(&mut cmd);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no jobdb queue"), "{stderr}");
}

/// A row the target stores differently (here a `run_at` with 7 fractional digits, written
/// into SQLite by hand past jobdb's normalisation: PostgreSQL keeps microseconds) fails the
/// verification with the table, the row's id and the column, both values shown, and nothing
/// is committed (c92a778 said only "checksum differs").
#[test]
fn a_copy_that_does_not_verify_names_the_table_the_row_and_the_column() {
    let Some(pg) = PgTestDb::new("copy_names_row") else {
        return;
    };
    let (db, src) = source(20);
    let mut conn = SqliteConnection::establish(&db.url()).unwrap();
    conn.batch_execute("UPDATE jobs SET run_at = '2030-01-02 03:04:05.1234567' WHERE id = 7")
        .unwrap();
    let dst: Queue<PgConnection> = Queue::open(&pg.url, Config::default()).unwrap();
    let e = jobdb::copy::copy(src.db(), dst.db(), &with_running(), |_| {}).unwrap_err();
    let text = e.to_string();
    assert!(e.is_copy_refused(), "{e:?}");
    assert!(
        text.contains("jobs")
            && text.contains("row id 7")
            && text.contains("column run_at")
            && text.contains("2030-01-02 03:04:05.123456")
            && text.contains("nothing was committed"),
        "{text}"
    );
    assert_eq!(dst.stats(None).unwrap().total.total(), 0);
}

/// A copy into an app's database that already has a table of its own named `jobs` fails at
/// the migration and leaves the file exactly as it was: no `__diesel_schema_migrations`
/// (c92a778 left it behind), the app's rows untouched.
#[test]
fn a_copy_refused_by_an_app_s_own_jobs_table_leaves_the_target_as_it_was() {
    let (db, _src) = source(3);
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.sqlite3");
    let mut conn = SqliteConnection::establish(app.to_str().unwrap()).unwrap();
    conn.batch_execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT NOT NULL);
         INSERT INTO jobs (title) VALUES ('the app''s own');",
    )
    .unwrap();
    let tables = |c: &mut SqliteConnection| -> Vec<String> {
        #[derive(QueryableByName)]
        struct Name {
            #[diesel(sql_type = diesel::sql_types::Text)]
            name: String,
        }
        diesel::sql_query("SELECT name FROM sqlite_master ORDER BY name")
            .load::<Name>(c)
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect()
    };
    let before = tables(&mut conn);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args([
            "--database-url",
            &db.url(),
            "copy",
            "--allow-running",
            "--to",
        ])
        .arg(&app)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("jobs already exists"), "{stderr}");
    assert_eq!(tables(&mut conn), before, "{stderr}");
    #[derive(QueryableByName)]
    struct Title {
        #[diesel(sql_type = diesel::sql_types::Text)]
        title: String,
    }
    let rows: Vec<Title> = diesel::sql_query("SELECT title FROM jobs")
        .load(&mut conn)
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].title, "the app's own");
}
