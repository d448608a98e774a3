//! Typed options per backend and one URL type for both: a setting that means nothing on a
//! backend is refused there with a typed error naming it, never silently dropped.

use std::process::Command;

use jobdb::{Config, DatabaseUrl, PgQueue, SqliteQueue, Synchronous};

use crate::backends::Backend;
use crate::common::TestDb;

#[test]
fn one_url_type_names_either_backend_and_each_handle_refuses_the_other() {
    assert!(DatabaseUrl::parse("postgres://u@h/db")
        .unwrap()
        .is_postgres());
    assert!(DatabaseUrl::parse("postgresql://u@h/db")
        .unwrap()
        .is_postgres());
    for sqlite in [
        "jobs.sqlite3",
        "sqlite://jobs.sqlite3",
        "file:jobs.sqlite3?mode=rwc",
    ] {
        let parsed: DatabaseUrl = sqlite.parse().unwrap();
        assert!(!parsed.is_postgres(), "{sqlite}");
    }
    let err =
        SqliteQueue::open("postgres://u:secret@127.0.0.1:1/db", Config::default()).unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
    let db = TestDb::new();
    let err = PgQueue::open(&db.url(), Config::default()).unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
}

/// `mysql://` and `mariadb://` name MySQL with feature `mysql`, and are a typed bad-URL error
/// saying so without it; neither is ever taken for a SQLite file name; a SQLite handle
/// refuses one without touching the network (port 1 listens to nothing).
#[test]
fn mysql_urls_name_mysql_or_are_refused_by_a_build_without_it() {
    for url in ["mysql://u@h/db", "MariaDB://u@h/db"] {
        match DatabaseUrl::parse(url) {
            Ok(parsed) => {
                assert!(
                    cfg!(feature = "mysql") && parsed.is_mysql(),
                    "{url}: {parsed:?}"
                );
                let DatabaseUrl::Mysql(spelled) = parsed else {
                    unreachable!()
                };
                assert!(spelled.starts_with("mysql://"), "{spelled}");
            }
            Err(e) => {
                assert!(
                    !cfg!(feature = "mysql") && e.is_invalid_input(),
                    "{url}: {e:?}"
                );
                assert!(e.to_string().contains("feature `mysql`"), "{e}");
            }
        }
    }
    let err = SqliteQueue::open("mysql://u:secret@127.0.0.1:1/db", Config::default()).unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn a_postgres_handle_refuses_sqlite_settings_and_a_sqlite_handle_postgres_ones() {
    let mut durable = Config::default();
    durable.sqlite.pragmas.synchronous = Synchronous::Full;
    if let Some(b) = Backend::postgres("a_postgres_handle_refuses_sqlite_settings") {
        let err = PgQueue::open(&b.url(), durable.clone()).unwrap_err();
        assert!(err.is_invalid_input(), "{err:?}");
        assert!(err.to_string().contains("JOBDB_SYNCHRONOUS"), "{err}");
        // The defaults are accepted, of course.
        PgQueue::open(&b.url(), Config::default()).unwrap();
    }
    // SQLite takes its own setting…
    let db = TestDb::new();
    SqliteQueue::open(&db.url(), durable).unwrap();
    // …and refuses PostgreSQL's.
    let mut polling = Config::default();
    polling.postgres.listen = false;
    let err = SqliteQueue::open(&db.url(), polling).unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
    assert!(err.to_string().contains("postgres.listen"), "{err}");
}

#[test]
fn the_cli_refuses_a_sqlite_variable_against_a_postgres_url_with_exit_2() {
    let Some(b) = Backend::postgres("the_cli_refuses_a_sqlite_variable") else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args(["--database-url", &b.url(), "stats"])
        .env_remove("DATABASE_URL")
        .env("JOBDB_SYNCHRONOUS", "full")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("JOBDB_SYNCHRONOUS"), "{stderr}");
    assert!(stderr.contains("SQLite setting"), "{stderr}");
}
