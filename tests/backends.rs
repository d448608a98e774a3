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
    #[cfg(feature = "mysql")]
    Mysql(crate::mysql_backend::MyTestDb),
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

#[cfg(feature = "mysql")]
impl Backend<diesel::MysqlConnection> {
    /// `None` (after saying so on stderr) when no MySQL / MariaDB server is configured.
    pub fn mysql(test: &str) -> Option<Self> {
        crate::mysql_backend::MyTestDb::new(test).map(|db| Backend {
            db: Db::Mysql(db),
            _conn: PhantomData,
        })
    }
}

impl<C: TestConn> Backend<C> {
    pub fn url(&self) -> String {
        match &self.db {
            Db::Sqlite(db) => db.url(),
            Db::Postgres(db) => db.url.clone(),
            #[cfg(feature = "mysql")]
            Db::Mysql(db) => db.url.clone(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// Whether this is the MySQL / MariaDB variant.
    #[allow(dead_code)]
    pub fn is_mysql(&self) -> bool {
        #[cfg(feature = "mysql")]
        return matches!(self.db, Db::Mysql(_));
        #[cfg(not(feature = "mysql"))]
        false
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
    /// What the server's sessions on this database are doing (one line each), for the message
    /// of a test that found a statement hanging; nothing where there is no server (SQLite).
    fn sessions(&mut self) -> String {
        String::new()
    }
}

/// One server session, as `TestConn::sessions` lists it.
#[derive(QueryableByName)]
pub struct SessionRow {
    #[diesel(sql_type = Text)]
    pub line: String,
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
    fn sessions(&mut self) -> String {
        diesel::sql_query(
            "SELECT concat_ws(' | ', pid, state, wait_event_type, wait_event, \
                    now() - state_change, left(query, 120)) AS line \
             FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .load::<SessionRow>(self)
        .map(|rows| rows.into_iter().map(|r| r.line + "\n").collect())
        .unwrap_or_else(|e| format!("(pg_stat_activity unreadable: {e:?})"))
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

/// The server URL tests create their PostgreSQL databases on (see `crate::containers`).
pub fn postgres_server_url() -> Option<String> {
    crate::containers::server_url(&crate::containers::POSTGRES)
}

/// A kind of database server the tests create databases on.
pub trait TestServer: Connection + SimpleConnection {
    /// "PostgreSQL", "MySQL".
    const NAME: &'static str;
    /// The variable that makes a missing server a failure (`.ci/run` sets it).
    const REQUIRE: &'static str;
    /// What to set to name a server.
    const HOW: &'static str;
    /// The configured server's URL (see `crate::containers`).
    fn server_url() -> Option<String>;
    /// SQL dropping database `name`, whoever is still connected.
    fn drop_database(name: &str) -> String;
}

impl TestServer for PgConnection {
    const NAME: &'static str = "PostgreSQL";
    const REQUIRE: &'static str = "JOBDB_REQUIRE_POSTGRES";
    const HOW: &'static str = "set JOBDB_TEST_POSTGRES_URL=postgres://user@host/db, or run a \
        Docker engine for the postgres:17-alpine fallback";
    fn server_url() -> Option<String> {
        postgres_server_url()
    }
    fn drop_database(name: &str) -> String {
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    }
}

/// A database of its own on the test server of kind `C`, dropped when this is dropped.
pub struct ServerTestDb<C: TestServer> {
    server: String,
    name: String,
    pub url: String,
    _conn: PhantomData<C>,
}

/// A database of its own on the PostgreSQL test server.
pub type PgTestDb = ServerTestDb<PgConnection>;

impl<C: TestServer> ServerTestDb<C> {
    /// `None` (after saying SKIPPED on stderr) when no server is configured; a panic instead
    /// under `C::REQUIRE=1`.
    pub fn new(test: &str) -> Option<Self> {
        let Some(server) = C::server_url() else {
            if std::env::var(C::REQUIRE).as_deref() == Ok("1") {
                panic!("{}=1 but no {} server is configured", C::REQUIRE, C::NAME);
            }
            crate::backends::loud!("SKIPPED {test} on {}: no server ({})", C::NAME, C::HOW);
            return None;
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "jobdb_t_{}_{}_{:04x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            fastrand::u16(..)
        );
        let mut admin = C::establish(&server)
            .unwrap_or_else(|e| panic!("cannot reach the test {} server: {e}", C::NAME));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = match server.rsplit_once('/') {
            Some((base, _db)) if !base.ends_with('/') => format!("{base}/{name}"),
            _ => panic!(
                "the test {} server URL needs a database path: {server}",
                C::NAME
            ),
        };
        Some(ServerTestDb {
            server,
            name,
            url,
            _conn: PhantomData,
        })
    }
}

impl<C: TestServer> Drop for ServerTestDb<C> {
    fn drop(&mut self) {
        if let Ok(mut admin) = C::establish(&self.server) {
            let _ = admin.batch_execute(&C::drop_database(&self.name));
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

/// Declares each listed `fn name(b: &Backend)` as a test per backend: `sqlite::name`,
/// `postgres::name` and (feature `mysql`) `mysql::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::on_sqlite_and_postgres!($($name),*);
        #[cfg(feature = "mysql")]
        mod mysql {
            $(
                #[test]
                fn $name() {
                    if let Some(b) = $crate::backends::Backend::mysql(stringify!($name)) {
                        super::$name(&b);
                    }
                }
            )*
        }
    };
}

/// As [`on_both_backends`], without the MySQL variant (for cases about a feature MySQL does
/// not have, such as LISTEN).
#[macro_export]
macro_rules! on_sqlite_and_postgres {
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
