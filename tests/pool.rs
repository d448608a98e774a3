//! The pool applies and verifies the pragmas; bad locations are refused with typed errors.

use diesel::connection::SimpleConnection;
use jobdb::pragmas::{journal_mode, read_integer_pragma, IntegerPragma};
use jobdb::{build_pool, Config, Error, Synchronous};

use crate::common::TestDb;

#[test]
fn pooled_connections_report_the_configured_pragmas() {
    let db = TestDb::new();
    let mut config = Config::default();
    config.sqlite.pragmas.busy_timeout = std::time::Duration::from_millis(4321);
    let pool = build_pool(&db.url(), &config).unwrap();
    // Two different physical connections: the customizer runs on each.
    let mut a = pool.get().unwrap();
    let mut b = pool.get().unwrap();
    for conn in [&mut *a, &mut *b] {
        assert_eq!(journal_mode(conn).unwrap(), "wal");
        // jobdb's busy handler, with the configured timeout (SQLite's own reads 0 then).
        assert_eq!(
            jobdb::sqlite::guarded_busy_timeout(conn),
            Some(std::time::Duration::from_millis(4321))
        );
        // The default (durable): FULL on the pool's connections; the writer of a `Db` runs
        // at NORMAL with its own WAL syncer (tests/durability.rs).
        assert_eq!(
            read_integer_pragma(conn, IntegerPragma::Synchronous).unwrap(),
            2
        );
        assert_eq!(
            read_integer_pragma(conn, IntegerPragma::ForeignKeys).unwrap(),
            1
        );
        assert_eq!(
            read_integer_pragma(conn, IntegerPragma::CacheSize).unwrap(),
            -8192
        );
        assert_eq!(
            read_integer_pragma(conn, IntegerPragma::TempStore).unwrap(),
            2
        );
        assert_eq!(
            read_integer_pragma(conn, IntegerPragma::JournalSizeLimit).unwrap(),
            64 * 1024 * 1024
        );
    }
}

#[test]
fn every_synchronous_setting_reaches_the_pool_s_connections() {
    // Durable and full: FULL on pool connections (a durable handle's writer then runs at
    // NORMAL with its WAL syncer, tests/durability.rs); normal: NORMAL.
    for (setting, pragma) in [
        (Synchronous::Durable, 2),
        (Synchronous::Normal, 1),
        (Synchronous::Full, 2),
    ] {
        let db = TestDb::new();
        let mut config = Config::default();
        config.sqlite.pragmas.synchronous = setting;
        let pool = build_pool(&db.url(), &config).unwrap();
        let mut conn = pool.get().unwrap();
        assert_eq!(
            read_integer_pragma(&mut conn, IntegerPragma::Synchronous).unwrap(),
            pragma,
            "{setting}"
        );
    }
}

#[test]
fn in_memory_databases_are_refused_because_wal_cannot_be_enabled() {
    for url in [":memory:", "sqlite://:memory:", "file::memory:"] {
        let err = build_pool(url, &Config::default()).unwrap_err();
        match &err {
            Error::WalUnavailable { answered } => assert_eq!(answered, "memory", "{url}"),
            other => panic!("{url}: expected WalUnavailable, got {other:?}"),
        }
        assert!(err.to_string().contains("in-memory"), "{err}");
    }
}

#[test]
fn a_missing_directory_is_a_clear_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("no/such/dir/jobs.sqlite3");
    let err = jobdb::SqliteQueue::open(url.to_str().unwrap(), Config::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidDatabaseUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!dir.path().join("no").exists());
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let db = TestDb::new();
    let junk = b"this is not a sqlite database, just some text that is long enough....".repeat(20);
    std::fs::write(&db.path, &junk).unwrap();
    let err = jobdb::SqliteQueue::open(&db.url(), Config::default()).unwrap_err();
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    assert_eq!(std::fs::read(&db.path).unwrap(), junk);
}

#[test]
fn an_unreadable_path_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be.
    let err =
        jobdb::SqliteQueue::open(dir.path().to_str().unwrap(), Config::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidDatabaseUrl { .. }), "{err:?}");
    assert!(err.is_invalid_input());
}

#[cfg(unix)]
#[test]
fn new_database_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new();
    let _queue = db.queue();
    let mode = std::fs::metadata(&db.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn bad_configuration_values_name_the_variable() {
    // Env vars are process-global; this is the only test that sets JOBDB_POOL_SIZE.
    std::env::set_var("JOBDB_POOL_SIZE", "lots");
    let err = Config::from_env().unwrap_err();
    std::env::remove_var("JOBDB_POOL_SIZE");
    assert!(err.to_string().contains("JOBDB_POOL_SIZE"), "{err}");
    assert!(err.is_invalid_input());
}

#[test]
fn migrations_are_applied_once_and_the_claim_uses_its_index() {
    let db = TestDb::new();
    let queue = db.queue();
    assert!(
        queue.migrate().unwrap().is_empty(),
        "second run applies nothing"
    );
    let mut conn = queue.pool().get().unwrap();
    conn.batch_execute("SELECT 1 FROM jobs LIMIT 1; SELECT 1 FROM results LIMIT 1;")
        .unwrap();
    assert!(jobdb::pool::pending_migrations(&mut conn)
        .unwrap()
        .is_empty());
    let plan = jobdb::queue::explain_claim(&mut *conn).unwrap();
    assert!(plan.contains("jobs_claim_idx"), "claim plan: {plan}");
    assert!(!plan.contains("TEMP B-TREE"), "claim must not sort: {plan}");
}

#[test]
fn the_background_checkpointer_backfills_the_wal_with_autocheckpoint_off() {
    // Probe without side effects: the main database file only grows when WAL pages are
    // checkpointed into it. With automatic checkpoints off, only our thread can do that.
    fn main_file_after_load(checkpoint_every: Option<std::time::Duration>) -> (u64, u64) {
        let db = TestDb::new();
        let queue = db.queue_with(|c| {
            c.sqlite.checkpoint_every = checkpoint_every;
            c.sqlite.pragmas.wal_autocheckpoint = 0;
        });
        let mut conn = queue.pool().get().unwrap();
        assert_eq!(
            read_integer_pragma(&mut conn, IntegerPragma::WalAutocheckpoint).unwrap(),
            0
        );
        drop(conn);
        std::thread::sleep(std::time::Duration::from_millis(400));
        let before = std::fs::metadata(&db.path).unwrap().len();
        let jobs: Vec<_> = (0..3000)
            .map(|i| jobdb::NewJob::new("ck", &i).unwrap())
            .collect();
        queue.enqueue_many(&jobs).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(600));
        (before, std::fs::metadata(&db.path).unwrap().len())
    }
    let (before, after) = main_file_after_load(Some(std::time::Duration::from_millis(100)));
    assert!(
        after > before + 100_000,
        "checkpointed into the database: {before} -> {after}"
    );
    let (before, after) = main_file_after_load(None);
    assert_eq!(
        after, before,
        "control: nothing checkpoints without the thread"
    );
}
