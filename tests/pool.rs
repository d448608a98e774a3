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
        // The default (durable): the pool's connections commit at NORMAL and their guard
        // syncs the WAL after each commit (below); the writer of a `Db` runs at NORMAL with
        // its own WAL syncer (tests/durability.rs).
        assert_eq!(
            read_integer_pragma(conn, IntegerPragma::Synchronous).unwrap(),
            1
        );
        assert_eq!(jobdb::sqlite::guard_synced_commits(conn), Some(0));
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
    // Durable: NORMAL, each commit synced by the guard outside the write lock (a durable
    // handle's writer runs at NORMAL with its WAL syncer instead, tests/durability.rs);
    // full: FULL, SQLite syncs; normal: NORMAL, nothing syncs a commit.
    for (setting, pragma, guard_syncs) in [
        (Synchronous::Durable, 1, true),
        (Synchronous::Normal, 1, false),
        (Synchronous::Full, 2, false),
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
        assert_eq!(
            jobdb::sqlite::guard_synced_commits(&mut conn).is_some(),
            guard_syncs,
            "{setting}"
        );
    }
}

/// Durable pool connections: each transaction that wrote is synced once by the guard after
/// its commit; reads, rolled-back transactions and a handle's writer are not.
#[test]
fn durable_pool_connections_sync_each_commit_that_wrote_and_nothing_else() {
    let db = TestDb::new();
    let q = db.queue();
    let mut conn = q.db().pool().get().unwrap();
    // The connection may have written already (the handle's migrations): count from here.
    let base = jobdb::sqlite::guard_synced_commits(&mut conn).expect("a syncing guard");
    let synced =
        |c: &mut diesel::SqliteConnection| jobdb::sqlite::guard_synced_commits(c).map(|n| n - base);
    conn.batch_execute("CREATE TABLE app_posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
        .unwrap();
    assert_eq!(synced(&mut conn), Some(1), "a lone DDL statement commits");
    for n in 0..3 {
        conn.immediate_transaction(|c| {
            c.batch_execute(&format!(
                "INSERT INTO app_posts (title) VALUES ('p{n}'); \
                 INSERT INTO app_posts (title) VALUES ('q{n}')"
            ))
        })
        .unwrap();
    }
    assert_eq!(
        synced(&mut conn),
        Some(4),
        "one sync per transaction, not per statement"
    );
    conn.batch_execute("SELECT count(*) FROM app_posts")
        .unwrap();
    conn.immediate_transaction(|c| c.batch_execute("SELECT 1"))
        .unwrap();
    assert_eq!(synced(&mut conn), Some(4), "reads commit nothing to sync");
    let rolled_back: Result<(), diesel::result::Error> = conn.immediate_transaction(|c| {
        c.batch_execute("INSERT INTO app_posts (title) VALUES ('never')")?;
        Err(diesel::result::Error::RollbackTransaction)
    });
    assert!(rolled_back.is_err());
    assert_eq!(
        synced(&mut conn),
        Some(4),
        "a rollback writes nothing to the WAL"
    );

    // The writer's commits are the handle's to sync (tests/durability.rs).
    q.enqueue(&jobdb::NewJob::new("w", &1).unwrap()).unwrap();
    let writer = q.run("writer_guard", |c| {
        Ok(jobdb::sqlite::guard_synced_commits(c))
    });
    assert_eq!(writer.unwrap(), None);
}

/// A handle's writer commits at NORMAL with the guard's sync off (the handle syncs what it
/// acknowledges). Handed back to a pool that outlives the handle, the connection must be
/// synced by the guard again: an app writing on it later is acknowledged only once its commit
/// is on disk.
#[test]
fn a_handle_s_writer_goes_back_to_the_pool_with_its_commits_synced() {
    let db = TestDb::new();
    let config = Config::default();
    let pool = build_pool(&db.url(), &config).unwrap();
    let q = jobdb::Queue::from_pool(pool.clone(), config).unwrap();
    q.enqueue(&jobdb::NewJob::new("w", &1).unwrap()).unwrap();
    let writer_unsynced = q.run("writer", |c| Ok(jobdb::sqlite::guard_synced_commits(c)));
    assert_eq!(
        writer_unsynced.unwrap(),
        None,
        "the writer's sync is the handle's"
    );
    drop(q);
    // Every connection the pool holds now, the former writer among them.
    let held: Vec<_> = (0..pool.state().connections)
        .map(|_| pool.get().unwrap())
        .collect();
    assert!(!held.is_empty());
    for mut conn in held {
        assert!(
            jobdb::sqlite::guard_synced_commits(&mut conn).is_some(),
            "a pool connection whose commits nothing syncs"
        );
        assert_eq!(
            read_integer_pragma(&mut conn, IntegerPragma::Synchronous).unwrap(),
            1
        );
    }
}

/// `PRAGMA wal_autocheckpoint` replaces SQLite's WAL hook; on a durable pool connection the
/// guard takes the new page count and keeps syncing its commits, and checkpoints at it.
#[test]
fn setting_wal_autocheckpoint_keeps_a_durable_connection_syncing_and_checkpointing() {
    // A bare pool: no handle, so no checkpoint thread moves the database file's size.
    let db = TestDb::new();
    let pool = build_pool(&db.url(), &Config::default()).unwrap();
    let mut conn = pool.get().unwrap();
    conn.batch_execute(
        "PRAGMA wal_autocheckpoint = 4; \
         CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL)",
    )
    .unwrap();
    assert_eq!(
        read_integer_pragma(&mut conn, IntegerPragma::WalAutocheckpoint).unwrap(),
        4,
        "the setting reads back (SQLite's pragma alone would read 0 beside the guard's hook)"
    );
    let before = jobdb::sqlite::guard_synced_commits(&mut conn).unwrap();
    // Each commit writes several pages: past 4 pages the guard checkpoints (PASSIVE), and
    // the WAL's frames go into the database file, which grows.
    let size = || std::fs::metadata(&db.path).unwrap().len();
    let size_before = size();
    for _ in 0..3 {
        conn.immediate_transaction(|c| {
            c.batch_execute("INSERT INTO blobs (b) VALUES (zeroblob(40000))")
        })
        .unwrap();
    }
    assert_eq!(
        jobdb::sqlite::guard_synced_commits(&mut conn),
        Some(before + 3),
        "the guard's WAL hook is back after the pragma"
    );
    assert!(
        size() >= size_before + 3 * 40000,
        "the commits were checkpointed into the database file: {} -> {}",
        size_before,
        size()
    );

    // 0: no automatic checkpoints, the syncs go on.
    conn.batch_execute("PRAGMA wal_autocheckpoint = 0").unwrap();
    assert_eq!(
        read_integer_pragma(&mut conn, IntegerPragma::WalAutocheckpoint).unwrap(),
        0
    );
    let size_before = size();
    conn.immediate_transaction(|c| {
        c.batch_execute("INSERT INTO blobs (b) VALUES (zeroblob(40000))")
    })
    .unwrap();
    assert_eq!(
        jobdb::sqlite::guard_synced_commits(&mut conn),
        Some(before + 4)
    );
    assert_eq!(size(), size_before, "no checkpoint at wal_autocheckpoint=0");
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
