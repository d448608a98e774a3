//! Test databases on both backends: a SQLite file in a temporary directory, or a fresh
//! PostgreSQL database on the server named by `JOBDB_TEST_POSTGRES_URL` (else `DATABASE_URL`
//! when it is a postgres URL), dropped afterwards. Without a server the PostgreSQL variants
//! are reported as SKIPPED on stderr; with `JOBDB_REQUIRE_POSTGRES=1` (set by `.ci/run`) a
//! missing server fails them instead.

use std::sync::atomic::{AtomicU32, Ordering};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use jobdb::{Config, Queue};

use crate::common::TestDb;

/// One test database on one backend.
pub enum Backend {
    Sqlite(TestDb),
    Postgres(PgTestDb),
}

impl Backend {
    pub fn sqlite() -> Backend {
        Backend::Sqlite(TestDb::new())
    }

    /// `None` (after saying so on stderr) when no PostgreSQL server is configured.
    pub fn postgres(test: &str) -> Option<Backend> {
        PgTestDb::new(test).map(Backend::Postgres)
    }

    pub fn url(&self) -> String {
        match self {
            Backend::Sqlite(db) => db.url(),
            Backend::Postgres(db) => db.url.clone(),
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue_with(|_| {})
    }

    pub fn queue_with(&self, f: impl FnOnce(&mut Config)) -> Queue {
        let mut config = Config::default();
        f(&mut config);
        Queue::open(&self.url(), config).expect("open queue")
    }

    /// Runs SQL (portable between the two) on a connection of its own.
    pub fn exec(&self, sql: &str) {
        match self {
            Backend::Sqlite(db) => {
                let mut c = diesel::SqliteConnection::establish(&db.url()).unwrap();
                c.batch_execute("PRAGMA busy_timeout = 5000").unwrap();
                c.batch_execute(sql).unwrap();
            }
            Backend::Postgres(db) => {
                let mut c = PgConnection::establish(&db.url).unwrap();
                c.batch_execute(sql).unwrap();
            }
        }
    }
}

/// The server URL tests create their databases on.
pub fn postgres_server_url() -> Option<String> {
    std::env::var("JOBDB_TEST_POSTGRES_URL")
        .ok()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
}

/// A database of its own on the test server, dropped when this is dropped.
pub struct PgTestDb {
    server: String,
    name: String,
    pub url: String,
}

impl PgTestDb {
    pub fn new(test: &str) -> Option<PgTestDb> {
        let Some(server) = postgres_server_url() else {
            if std::env::var("JOBDB_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("JOBDB_REQUIRE_POSTGRES=1 but neither JOBDB_TEST_POSTGRES_URL nor a postgres DATABASE_URL is set");
            }
            eprintln!(
                "SKIPPED {test} on PostgreSQL: set JOBDB_TEST_POSTGRES_URL=postgres://user@host/db \
                 (Docker users: start postgres:17-alpine and point it there)"
            );
            return None;
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "jobdb_t_{}_{}_{:04x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            fastrand::u16(..)
        );
        let mut admin = PgConnection::establish(&server)
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server: {e}"));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = match server.rsplit_once('/') {
            Some((base, _db)) => format!("{base}/{name}"),
            None => panic!("JOBDB_TEST_POSTGRES_URL needs a database path: {server}"),
        };
        Some(PgTestDb { server, name, url })
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.server) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Declares each listed `fn name(b: &Backend)` as two tests, `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::backends::Backend::sqlite());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(b) = $crate::backends::Backend::postgres(stringify!($name)) {
                        super::$name(&b);
                    }
                }
            )*
        }
    };
}
