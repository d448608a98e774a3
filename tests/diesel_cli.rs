//! The real diesel CLI works with the repository's diesel.toml and migrations, and
//! `diesel print-schema` prints exactly `src/schema.rs`.
//!
//! Needs the `diesel` binary (`.ci/run` installs it). Without it the test says so loudly and
//! passes, unless `JOBDB_REQUIRE_DIESEL_CLI=1` (set by CI), where a missing CLI fails.

use std::path::Path;
use std::process::Command;

use crate::common::TestDb;

fn diesel_available() -> bool {
    Command::new("diesel")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn diesel(db: &TestDb, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Work on a copy of diesel.toml that writes the schema elsewhere: the test must never
    // rewrite src/schema.rs (that would hide a mismatch instead of reporting it).
    let config = db.path.with_file_name("diesel.toml");
    let toml = std::fs::read_to_string(root.join("diesel.toml"))
        .unwrap()
        .replace(
            "file = \"src/schema.rs\"",
            &format!(
                "file = {:?}",
                db.path.with_file_name("schema.rs").to_str().unwrap()
            ),
        );
    std::fs::write(&config, toml).unwrap();
    let mut cmd = Command::new("diesel");
    cmd.args(args)
        .arg("--database-url")
        .arg(db.url())
        .arg("--config-file")
        .arg(&config)
        .current_dir(root);
    if args[0] == "migration" {
        cmd.arg("--migration-dir")
            .arg(root.join("migrations/sqlite"));
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "diesel {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn diesel_cli_runs_redoes_and_prints_the_committed_schema() {
    if !diesel_available() {
        assert!(
            std::env::var("JOBDB_REQUIRE_DIESEL_CLI").is_err(),
            "JOBDB_REQUIRE_DIESEL_CLI is set but the diesel CLI is not installed"
        );
        crate::backends::loud!("SKIPPED diesel_cli test: the `diesel` CLI is not installed (cargo install diesel_cli --no-default-features --features sqlite-bundled)");
        return;
    }
    let db = TestDb::new();
    std::fs::File::create(&db.path).unwrap();
    diesel(&db, &["migration", "run"]);
    diesel(&db, &["migration", "redo", "--all"]);
    let printed = diesel(&db, &["print-schema"]);
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/schema.rs"))
            .unwrap();
    assert_eq!(
        printed, committed,
        "src/schema.rs differs from `diesel print-schema`"
    );

    // The embedded migrations agree with what the CLI applied: nothing pending, queue works.
    let queue = db.queue();
    let id = queue
        .enqueue(&jobdb::NewJob::new("cli", &1).unwrap())
        .unwrap();
    assert_eq!(queue.get_job(id).unwrap().queue, "cli");
}

#[test]
fn diesel_cli_runs_the_postgres_migrations_and_prints_the_committed_postgres_schema() {
    if !diesel_required_or_skip("postgres") {
        return;
    }
    let Some(db) = crate::backends::PgTestDb::new("diesel_cli postgres") else {
        return;
    };
    server_cli(&db.url, "postgres");
    // The embedded migrations agree: nothing pending, the queue works on the CLI's tables.
    let queue = jobdb::PgQueue::open(&db.url, jobdb::Config::default()).unwrap();
    assert!(queue.migrate().unwrap().is_empty());
    let id = queue
        .enqueue(&jobdb::NewJob::new("cli", &1).unwrap())
        .unwrap();
    assert_eq!(queue.get_job(id).unwrap().queue, "cli");
}

#[cfg(feature = "mysql")]
#[test]
fn diesel_cli_runs_the_mysql_migrations_and_prints_the_committed_mysql_schema() {
    if !diesel_required_or_skip("mysql") {
        return;
    }
    let Some(db) = crate::mysql_backend::MyTestDb::new("diesel_cli mysql") else {
        return;
    };
    server_cli(&db.url, "mysql");
    let queue = jobdb::MysqlQueue::open(&db.url, jobdb::Config::default()).unwrap();
    assert!(queue.migrate().unwrap().is_empty());
    let id = queue
        .enqueue(&jobdb::NewJob::new("cli", &1).unwrap())
        .unwrap();
    assert_eq!(queue.get_job(id).unwrap().queue, "cli");
}

/// Whether the diesel CLI is there; when it is not, fails under `JOBDB_REQUIRE_DIESEL_CLI`,
/// else says SKIPPED.
fn diesel_required_or_skip(backend: &str) -> bool {
    if diesel_available() {
        return true;
    }
    assert!(
        std::env::var("JOBDB_REQUIRE_DIESEL_CLI").is_err(),
        "JOBDB_REQUIRE_DIESEL_CLI is set but the diesel CLI is not installed"
    );
    crate::backends::loud!("SKIPPED diesel_cli {backend} test: the `diesel` CLI is not installed");
    false
}

/// `diesel migration run`, `migration redo --all` and `print-schema` on the server database
/// at `url` with `diesel.<backend>.toml` (copied, so that the schema is written outside
/// `src/`), and the printed schema compared with `src/schema_<backend>.rs`.
fn server_cli(url: &str, backend: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("diesel.toml");
    let committed_file = format!("src/schema_{backend}.rs");
    let schema = dir.path().join(format!("schema_{backend}.rs"));
    let toml = std::fs::read_to_string(root.join(format!("diesel.{backend}.toml")))
        .unwrap()
        .replace(
            &format!("file = {committed_file:?}"),
            &format!("file = {:?}", schema.to_str().unwrap()),
        );
    std::fs::write(&config, toml).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new("diesel");
        cmd.args(args)
            .arg("--database-url")
            .arg(url)
            .arg("--config-file")
            .arg(&config)
            .current_dir(root);
        if args[0] == "migration" {
            cmd.arg("--migration-dir")
                .arg(root.join("migrations").join(backend));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "diesel {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["migration", "run"]);
    run(&["migration", "redo", "--all"]);
    let printed = run(&["print-schema"]);
    let committed = std::fs::read_to_string(root.join(&committed_file)).unwrap();
    assert_eq!(
        printed, committed,
        "{committed_file} differs from `diesel print-schema`"
    );
}
