//! Test databases on both backends: a SQLite file in a temporary directory, or a fresh
//! PostgreSQL database on the server named by `JOBDB_TEST_POSTGRES_URL` (else `DATABASE_URL`
//! when it is a postgres URL), dropped afterwards. Without a server the PostgreSQL variants
//! are reported as SKIPPED on stderr; with `JOBDB_REQUIRE_POSTGRES=1` (set by `.ci/run`) a
//! missing server fails them instead.

use std::sync::atomic::{AtomicU32, Ordering};

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text, Timestamp, Timestamptz};
use diesel::{PgConnection, SqliteConnection};
use jobdb::{Config, Queue, QueueConnection};

use crate::common::TestDb;

/// One test database on one backend: `C` is its connection type, so `queue()` is that
/// backend's `Queue<C>` and the cases are generic over it (River's `riverdrivertest` style).
pub struct Backend<C> {
    db: Db,
    _conn: PhantomData<C>,
}

enum Db {
    Sqlite(TestDb),
    Postgres(PgTestDb),
}

impl Backend<SqliteConnection> {
    pub fn sqlite() -> Self {
        Backend {
            db: Db::Sqlite(TestDb::new()),
            _conn: PhantomData,
        }
    }
}

impl Backend<PgConnection> {
    /// `None` (after saying so on stderr) when no PostgreSQL server is configured.
    pub fn postgres(test: &str) -> Option<Self> {
        PgTestDb::new(test).map(|db| Backend {
            db: Db::Postgres(db),
            _conn: PhantomData,
        })
    }
}

impl<C: TestConn> Backend<C> {
    pub fn url(&self) -> String {
        match &self.db {
            Db::Sqlite(db) => db.url(),
            Db::Postgres(db) => db.url.clone(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    pub fn queue(&self) -> Queue<C> {
        self.queue_with(|_| {})
    }

    pub fn queue_with(&self, f: impl FnOnce(&mut Config)) -> Queue<C> {
        let mut config = Config::default();
        f(&mut config);
        Queue::open(&self.url(), config).expect("open queue")
    }

    /// A raw connection of its own (the test factory's, or a second session's).
    pub fn conn(&self) -> C {
        let mut c = C::establish(&self.url()).unwrap();
        c.prepare();
        c
    }

    /// Runs SQL (portable between the two) on a connection of its own.
    pub fn exec(&self, sql: &str) {
        self.conn().batch_execute(sql).unwrap();
    }
}

/// What the suites need of a raw connection on each backend: the test factory (rows put
/// straight into a state, never reached by sleeping) and a way to see that another session
/// waits on a lock.
pub trait TestConn: QueueConnection + SimpleConnection + Sized {
    /// Session settings for a test connection.
    fn prepare(&mut self) {}
    /// Puts job `id` into `running` at `attempt`, its lease running out at `lease_expires_at`.
    fn set_running(&mut self, id: i64, attempt: i32, lease_expires_at: DateTime<Utc>);
    /// Blocks until some other session waits on a lock (PostgreSQL: `pg_locks`), or, where
    /// that cannot be seen (SQLite's busy handler), gives the other thread a moment.
    fn until_another_waits(&mut self);
    /// `(attempt, outcome)` of every results row of `id`, by attempt.
    fn results(&mut self, id: i64) -> Vec<(i32, String)>;
    /// The one BIGINT value, named `n`, that `sql` selects.
    fn query_i64(&mut self, sql: &str) -> i64;
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct ResultRow {
    #[diesel(sql_type = Integer)]
    attempt: i32,
    #[diesel(sql_type = Text)]
    outcome: String,
}

impl TestConn for SqliteConnection {
    fn query_i64(&mut self, sql: &str) -> i64 {
        diesel::sql_query(sql).get_result::<N>(self).unwrap().n
    }
    fn prepare(&mut self) {
        self.batch_execute("PRAGMA busy_timeout = 10000").unwrap();
    }
    fn set_running(&mut self, id: i64, attempt: i32, lease_expires_at: DateTime<Utc>) {
        diesel::sql_query(
            "UPDATE jobs SET state = 'running', attempts = ?, worker_id = 'factory', \
             heartbeat_at = ?, lease_expires_at = ? WHERE id = ?",
        )
        .bind::<Integer, _>(attempt)
        .bind::<Timestamp, _>(Utc::now().naive_utc())
        .bind::<Timestamp, _>(lease_expires_at.naive_utc())
        .bind::<BigInt, _>(id)
        .execute(self)
        .unwrap();
    }
    fn until_another_waits(&mut self) {
        // SQLite shows no waiters; the cases hold in either order, this only makes the
        // interesting one (the other connection already waiting) the likely one.
        std::thread::sleep(Duration::from_millis(200));
    }
    fn results(&mut self, id: i64) -> Vec<(i32, String)> {
        diesel::sql_query("SELECT attempt, outcome FROM results WHERE job_id = ? ORDER BY attempt")
            .bind::<BigInt, _>(id)
            .load::<ResultRow>(self)
            .unwrap()
            .into_iter()
            .map(|r| (r.attempt, r.outcome))
            .collect()
    }
}

impl TestConn for PgConnection {
    fn query_i64(&mut self, sql: &str) -> i64 {
        diesel::sql_query(sql).get_result::<N>(self).unwrap().n
    }
    fn set_running(&mut self, id: i64, attempt: i32, lease_expires_at: DateTime<Utc>) {
        diesel::sql_query(
            "UPDATE jobs SET state = 'running', attempts = $1, worker_id = 'factory', \
             heartbeat_at = now(), lease_expires_at = $2 WHERE id = $3",
        )
        .bind::<Integer, _>(attempt)
        .bind::<Timestamptz, _>(lease_expires_at)
        .bind::<BigInt, _>(id)
        .execute(self)
        .unwrap();
    }
    fn until_another_waits(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: N = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE NOT l.granted AND a.datname = current_database()",
            )
            .get_result(self)
            .unwrap();
            if waiting.n > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the other session never waited");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fn results(&mut self, id: i64) -> Vec<(i32, String)> {
        diesel::sql_query("SELECT attempt, outcome FROM results WHERE job_id = $1 ORDER BY attempt")
            .bind::<BigInt, _>(id)
            .load::<ResultRow>(self)
            .unwrap()
            .into_iter()
            .map(|r| (r.attempt, r.outcome))
            .collect()
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
