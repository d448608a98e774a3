//! Building a MySQL / MariaDB pool and running the MySQL migrations.

use diesel::connection::SimpleConnection;
use diesel::mysql::MysqlConnection;
use diesel::r2d2::ConnectionManager;
use diesel::{OptionalExtension, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::Config;
use crate::error::{Error, Result};

/// A pool of MySQL / MariaDB connections.
pub type MysqlPool = r2d2::Pool<ConnectionManager<MysqlConnection>>;

/// The MySQL migrations, embedded (the same files `diesel --config-file diesel.mysql.toml
/// migration run` uses).
pub const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// The session settings every connection gets, before any statement of ours:
/// - `READ COMMITTED`: InnoDB's default REPEATABLE READ takes next-key (gap) locks on the
///   ranges a locking read scans, so a claim's `FOR UPDATE SKIP LOCKED` over the claim index
///   would block concurrent enqueues into that range and deadlock with them. Every write of
///   ours is a fenced statement that re-reads the newest row version under its row lock, so
///   nothing needs a stronger isolation (PostgreSQL's default is the same).
/// - `time_zone = '+00:00'`: our columns are DATETIME, which the time zone never converts,
///   but a user's `NOW()` in an ad hoc query then agrees with the stored UTC times.
/// - `innodb_lock_wait_timeout = 10`: a statement waiting on a row lock longer than this is
///   a 1205 error, which the retry loop re-runs as a whole transaction (instead of the
///   default 50 s hang).
pub const MYSQL_SESSION_SETTINGS: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
     SET time_zone = '+00:00'; SET SESSION innodb_lock_wait_timeout = 10";

/// Builds a pool for `url`, as PostgreSQL's is built (one connection opened first for a clear
/// error, no ping at check-out), each new connection given [`MYSQL_SESSION_SETTINGS`].
/// A `mariadb://` URL is taken as the `mysql://` URL it means.
pub fn build_mysql_pool(url: &str, config: &Config) -> Result<MysqlPool> {
    super::server_pool(&super::mysql_url(url), config, Box::new(SessionSettings))
}

/// Applies [`MYSQL_SESSION_SETTINGS`] to each new pooled connection; a connection that refuses
/// them is not handed out.
#[derive(Debug)]
struct SessionSettings;

impl r2d2::CustomizeConnection<MysqlConnection, diesel::r2d2::Error> for SessionSettings {
    fn on_acquire(
        &self,
        conn: &mut MysqlConnection,
    ) -> std::result::Result<(), diesel::r2d2::Error> {
        conn.batch_execute(MYSQL_SESSION_SETTINGS)
            .map_err(diesel::r2d2::Error::QueryError)?;
        close_on_exec(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Makes `conn`'s socket close-on-exec (see `cloexec.rs`: Connector/C leaves it inheritable,
/// so a spawned job's command would keep a crashed worker's sessions and locks alive), found
/// by the client address the server saw it come from. A socket not found (a proxy between,
/// which the server sees instead of us) or a process without `/proc` is logged and left as
/// it is: the connection works the same, only a spawned child inherits it.
pub(crate) fn close_on_exec(conn: &mut MysqlConnection) -> diesel::QueryResult<()> {
    use super::cloexec::ClientEnd;
    #[derive(diesel::QueryableByName)]
    struct Seen {
        #[diesel(sql_type = diesel::sql_types::Text)]
        host: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        socket: Option<String>,
    }
    // A session always sees its own row; a server that shows none (a proxy's own list) has
    // nothing to match, which is not an error of the connection.
    let Some(seen) = diesel::sql_query(
        "SELECT HOST AS host, @@socket AS socket FROM information_schema.PROCESSLIST \
         WHERE ID = CONNECTION_ID()",
    )
    .get_result::<Seen>(conn)
    .optional()?
    else {
        tracing::debug!("the MySQL server lists no session of ours; sockets left as they are");
        return Ok(());
    };
    // TCP shows as `address:port`; a Unix-domain connection as `localhost`, without a port.
    let end = match seen.host.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) {
        Some(port) => ClientEnd::Tcp(port),
        None => match seen.socket {
            Some(path) => ClientEnd::Unix(path),
            None => return Ok(()),
        },
    };
    match super::cloexec::close_on_exec(&end) {
        Ok(0) if cfg!(target_os = "linux") => {
            tracing::debug!(?end, "no socket of ours at the MySQL connection's address")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not mark MySQL sockets close-on-exec"),
    }
    Ok(())
}

/// Runs the pending MySQL migrations while holding a named server lock (`GET_LOCK`), so
/// several processes opening a fresh database at once apply each migration exactly once.
/// MySQL's DDL commits implicitly, so unlike PostgreSQL a migration is not one transaction;
/// the lock is what serialises them. The lock is released even when a migration fails.
pub fn run_mysql_migrations(conn: &mut MysqlConnection) -> Result<Vec<String>> {
    #[derive(diesel::QueryableByName)]
    struct Got {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
        got: Option<i32>,
    }
    // Any fixed name works: it only has to be the same in every jobdb process; the lock is
    // per server, so it is qualified by the database.
    let got: Got =
        diesel::sql_query("SELECT GET_LOCK(CONCAT('jobdb_migrate_', DATABASE()), 60) AS got")
            .get_result(conn)?;
    if got.got != Some(1) {
        return Err(Error::Internal {
            what: "migrations",
            reason: "another process held the migration lock for 60 s".into(),
        });
    }
    let applied = conn
        .run_pending_migrations(MYSQL_MIGRATIONS)
        .map(|v| v.iter().map(|v| v.to_string()).collect())
        .map_err(Error::Migration);
    let released =
        diesel::sql_query("DO RELEASE_LOCK(CONCAT('jobdb_migrate_', DATABASE()))").execute(conn);
    let applied = applied?;
    released?;
    Ok(applied)
}
