//! The example Diesel app (`examples/diesel_app`, the shape of Diesel's getting-started app)
//! with jobdb adopted: its schema as the real diesel CLI prints it under either setting of
//! `sqlite_integer_primary_key_is_bigint`, and its own transactions in 4 processes while 2
//! `jobdb work` processes run on the same file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::common::{assert_integrity_ok, TestDb};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The example's binary, built by `cargo test` beside the test binary.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).unwrap();
    debug.join("examples").join("diesel_app")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// An app directory as README tells users to lay it out: its own migrations with jobdb's
/// copied beside them, and a diesel.toml with `bigint` for the setting. Returns what
/// `diesel migration run` wrote to the app's schema file.
fn printed_schema(bigint: bool) -> String {
    let app = tempfile::tempdir().unwrap();
    let migrations = app.path().join("migrations");
    copy_dir(&root().join("examples/diesel_app/migrations"), &migrations);
    copy_dir(&root().join("migrations/sqlite"), &migrations);
    std::fs::write(
        app.path().join("diesel.toml"),
        format!(
            "[print_schema]\nfile = \"schema.rs\"\nsqlite_integer_primary_key_is_bigint = {bigint}\n\
             [migrations_directory]\ndir = \"migrations\"\n"
        ),
    )
    .unwrap();
    let out = Command::new("diesel")
        .args(["migration", "run", "--database-url", "app.sqlite3"])
        .current_dir(app.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diesel migration run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(app.path().join("schema.rs")).unwrap()
}

/// `diesel migration run` in an app with jobdb's migrations copied in prints, under either
/// setting, exactly the schema the example commits, and the example compiles with both (so
/// `cargo build` needs no edits). On 41b6fc7 the default setting printed `jobs.id -> Integer`
/// beside `results.job_id -> BigInt`, whose `joinable!` did not compile.
#[test]
fn an_apps_printed_schema_is_joinable_under_either_bigint_setting() {
    if Command::new("diesel").arg("--version").output().is_err() {
        assert!(
            std::env::var("JOBDB_REQUIRE_DIESEL_CLI").is_err(),
            "JOBDB_REQUIRE_DIESEL_CLI is set but the diesel CLI is missing"
        );
        crate::backends::loud!("SKIPPED diesel_app schema test: the `diesel` CLI is not installed");
        return;
    }
    for (bigint, committed) in [(false, "schema.rs"), (true, "schema_bigint.rs")] {
        let printed = printed_schema(bigint);
        let expected =
            std::fs::read_to_string(root().join("examples/diesel_app").join(committed)).unwrap();
        assert_eq!(
            printed, expected,
            "bigint = {bigint}: examples/diesel_app/{committed}"
        );
        let ty = if bigint { "BigInt" } else { "Integer" };
        assert!(printed.contains(&format!("job_id -> {ty},")), "{printed}");
        assert!(printed.contains("diesel::joinable!(results -> jobs (job_id));"));
    }
}

/// 4 app processes each run 50 of the app's own transactions (insert + publish a post, enqueue
/// its job) while 2 `jobdb work` processes of 4 workers run: every transaction commits, one
/// job per post, each succeeded once, no "database is locked" anywhere, integrity ok, WAL.
/// Prints the app's write latency (measured, not asserted here: `scripts/app-connections.sh`
/// owns the figures). Through the handle (`db.write`):
#[test]
fn app_processes_beside_worker_processes_never_see_a_lock_error() {
    apps_beside_workers("write");
}

/// The same on the app's own, unmodified `establish_connection()` and `immediate_transaction`,
/// with only `jobdb::sqlite::protect_process` added at startup. c92a778 had no such call, and
/// the same code failed 499 of 600 transactions (`plain` in the script).
#[test]
fn an_apps_own_connections_protected_at_startup_never_see_a_lock_error() {
    apps_beside_workers("protected");
}

/// The same on connections of the handle's pool with the app's own `immediate_transaction`.
#[test]
fn an_apps_transactions_on_the_pool_never_see_a_lock_error() {
    apps_beside_workers("pool");
}

/// The scenario above, the apps writing on the connection `via` names (see the example's
/// `publish`).
fn apps_beside_workers(via: &str) {
    let db = TestDb::new();
    // A backlog, so the workers hammer the file the whole time the apps write.
    let backlog: Vec<jobdb::NewJob> = (0..2000)
        .map(|i| jobdb::NewJob::new("notify", &serde_json::json!({ "backlog": i })).unwrap())
        .collect();
    db.queue().enqueue_many(&backlog).unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            crate::cli::jobdb(&db)
                .args([
                    "work",
                    "--queue",
                    "notify",
                    "--concurrency",
                    "4",
                    "--exec",
                    "cat",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // The apps start once the workers are at it.
    let started = Instant::now();
    while db.queue().stats(Some("notify")).unwrap().total.succeeded < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the workers never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let apps: Vec<_> = (0..4)
        .map(|_| {
            Command::new(example_bin())
                .args([&db.url(), "publish", "50", via])
                .env_remove("DATABASE_URL")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("run {}: {e}", example_bin().display()))
        })
        .collect();
    let mut latencies = Vec::new();
    for app in apps {
        let out = app.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "an app process failed: {stdout}\n{stderr}"
        );
        assert!(
            !format!("{stdout}{stderr}").contains("database is locked"),
            "{stderr}"
        );
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(report["failed"], 0, "{via}: {report}");
        latencies.push(report);
    }
    let q = db.queue();
    let deadline = Instant::now() + Duration::from_secs(60);
    let during = q.stats(Some("notify")).unwrap().total;
    assert!(
        during.queued > 0,
        "the workers were still busy when the apps finished: {during:?}"
    );
    while q.stats(Some("notify")).unwrap().total.succeeded < 2200 {
        assert!(
            Instant::now() < deadline,
            "the workers did not drain the queue"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in workers {
        let pid = libc::pid_t::try_from(w.id()).unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "a worker failed: {out:?}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("database is locked"), "{all}");
    }
    // Exactly one job per post, each succeeded once.
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    #[derive(QueryableByName)]
    struct Mode {
        #[diesel(sql_type = Text)]
        journal_mode: String,
    }
    let mut c = SqliteConnection::establish(&db.url()).unwrap();
    let n =
        |c: &mut SqliteConnection, sql: &str| diesel::sql_query(sql).get_result::<N>(c).unwrap().n;
    assert_eq!(
        n(&mut c, "SELECT count(*) AS n FROM posts WHERE published"),
        200
    );
    assert_eq!(
        n(
            &mut c,
            "SELECT count(*) AS n FROM posts p WHERE (SELECT count(*) FROM jobs j \
             WHERE j.queue = 'notify' AND json_extract(j.payload, '$.post') = p.id) = 1"
        ),
        200,
        "one job per post"
    );
    let audit = q.audit("notify").unwrap();
    assert_eq!(
        (audit.jobs, audit.not_succeeded, audit.duplicated),
        (2200, 0, 0)
    );
    let mode: Mode = diesel::sql_query("PRAGMA journal_mode")
        .get_result(&mut c)
        .unwrap();
    assert_eq!(mode.journal_mode, "wal");
    assert_integrity_ok(&db);
    crate::backends::loud!(
        "app write latency ({via}), 4 app processes beside 2 worker processes: {latencies:?}"
    );
}
