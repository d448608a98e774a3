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

/// The server URL tests create their databases on: `JOBDB_TEST_POSTGRES_URL`, else a
/// postgres `DATABASE_URL`, else a Docker container (when a Docker engine answers).
pub fn postgres_server_url() -> Option<String> {
    std::env::var("JOBDB_TEST_POSTGRES_URL")
        .ok()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
        .or_else(docker_postgres)
}

/// The fallback for machines with Docker and no configured server: one container,
/// `jobdb-test-postgres` (postgres:17-alpine, trust auth, a random local port), started on
/// first use and reused by later runs; `docker rm -f jobdb-test-postgres` removes it. Uses the
/// docker CLI rather than the testcontainers crate (no async runtime in the test build).
/// Not exercised on our CI machine, which has no Docker engine.
fn docker_postgres() -> Option<String> {
    static URL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        docker(&["info", "--format", "{{.ServerVersion}}"])?;
        const NAME: &str = "jobdb-test-postgres";
        if docker(&["start", NAME]).is_none() {
            docker(&[
                "run",
                "-d",
                "--name",
                NAME,
                "-e",
                "POSTGRES_HOST_AUTH_METHOD=trust",
                "-p",
                "127.0.0.1::5432",
                "postgres:17-alpine",
            ])?;
        }
        let port = docker(&["port", NAME, "5432"])?;
        let port = port.lines().next()?.rsplit(':').next()?.to_owned();
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while PgConnection::establish(&url).is_err() {
            if std::time::Instant::now() > deadline {
                eprintln!("the {NAME} container did not accept connections within 60 s");
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        Some(url)
    })
    .clone()
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
            crate::backends::loud!(
                "SKIPPED {test} on PostgreSQL: no server (set JOBDB_TEST_POSTGRES_URL=postgres://user@host/db, \
                 or run a Docker engine for the postgres:17-alpine fallback)"
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

/// Writes a line straight to the process's stderr: libtest captures `eprintln!` and shows it
/// only for failing tests, and a skip must be seen.
macro_rules! loud {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use loud;

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
