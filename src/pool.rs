//! Building a connection pool from a URL and a typed [`Config`], and running the embedded
//! migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::r2d2::ConnectionManager;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::driver::JobDriver;
use crate::error::{Error, Result};
use crate::models::DEFAULT_MAX_PAYLOAD_BYTES;
use crate::options::{PgOptions, SqliteOptions};
use crate::pragmas::{enable_wal, ConnectionCustomizer, Pragmas, Synchronous};
use crate::queue::JobBackoff;
use crate::retry::{retry_busy, RetryPolicy, RetryStats};

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub(crate) use postgres::english_messages;
#[cfg(feature = "postgres")]
pub use postgres::{build_postgres_pool, run_postgres_migrations, PgPool, POSTGRES_MIGRATIONS};

#[cfg(feature = "mysql")]
mod cloexec;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "mysql")]
pub(crate) use mysql::close_on_exec;
#[cfg(feature = "mysql")]
pub use mysql::{
    build_mysql_pool, run_mysql_migrations, MysqlPool, MYSQL_MIGRATIONS, MYSQL_SESSION_SETTINGS,
};

/// A pool of connections to a database server (PostgreSQL, MySQL), each new one set up by
/// `customizer`. One connection is opened first, so an unreachable server, wrong credentials
/// or a missing database is a clear [`Error::Connection`] now rather than a pool timeout
/// later. Connections are not pinged at check-out (that cost 25% of throughput on
/// PostgreSQL): one a server restart killed fails its next statement as connection-lost, and
/// the handle replaces it then (`Error::is_connection_lost`).
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn server_pool<C: diesel::r2d2::R2D2Connection + 'static>(
    url: &str,
    config: &Config,
    customizer: Box<dyn r2d2::CustomizeConnection<C, diesel::r2d2::Error>>,
) -> Result<r2d2::Pool<ConnectionManager<C>>> {
    config.validate()?;
    C::establish(url).map_err(|source| Error::Connection {
        url: redact(url),
        source,
    })?;
    r2d2::Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(0))
        .connection_timeout(config.connection_timeout)
        .test_on_check_out(false)
        .connection_customizer(customizer)
        .build(ConnectionManager::new(url))
        .map_err(Error::Pool)
}

/// Whether `url` names a MySQL or MariaDB database (`mysql://` or `mariadb://`).
pub fn is_mysql_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("mysql://") || lower.starts_with("mariadb://")
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// A `mariadb://` URL as the `mysql://` URL Diesel's client connects with (the scheme is all
/// that differs); any other URL as it is.
pub fn mysql_url(url: &str) -> String {
    let trimmed = url.trim_start();
    match trimmed.get(..10) {
        Some(scheme) if scheme.eq_ignore_ascii_case("mariadb://") => {
            format!("mysql://{}", &trimmed[10..])
        }
        _ => url.to_owned(),
    }
}

/// `url` with any password replaced by `***`, for error messages and logs.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(query) = query {
        // libpq takes `password=` (and `sslpassword=`) as query parameters too.
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().ends_with("password") => {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// `scheme://user:***@host…` for `scheme://user:password@host…`.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// A pool of SQLite connections, each set up by [`ConnectionCustomizer`].
pub type SqlitePool = r2d2::Pool<ConnectionManager<SqliteConnection>>;

/// A connection checked out of a [`SqlitePool`].
pub type PooledConnection = r2d2::PooledConnection<ConnectionManager<SqliteConnection>>;

/// The SQLite migrations, embedded in the binary (the same files `diesel migration run` uses).
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Everything tunable. [`Config::default`] is what we recommend; [`Config::from_env`] reads the
/// `JOBDB_*` variables listed in `.env.example`. The settings both backends share are fields
/// here; those of one backend are in [`Config::sqlite`] and [`Config::postgres`], and a
/// handle refuses the other backend's when they differ from their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Retrying busy transactions.
    pub retry: RetryPolicy,
    /// When failed jobs run again.
    pub job_backoff: JobBackoff,
    /// Most connections the pool opens. Each worker thread needs one while it works.
    pub pool_size: u32,
    /// How long `Pool::get` waits for a free connection.
    pub connection_timeout: Duration,
    /// Largest payload accepted, in bytes of JSON.
    pub max_payload_bytes: usize,
    /// Run pending embedded migrations when a [`crate::Queue`] is opened.
    pub run_migrations: bool,
    /// A write transaction holding the write lock longer than this logs a warning naming it
    /// (`JOBDB_SLOW_TRANSACTION_MS`).
    pub slow_transaction: Duration,
    /// SQLite's own settings (pragmas, WAL checkpoints, network filesystems).
    pub sqlite: SqliteOptions,
    /// PostgreSQL's own settings.
    pub postgres: PgOptions,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retry: RetryPolicy::default(),
            job_backoff: JobBackoff::default(),
            pool_size: 16,
            connection_timeout: Duration::from_secs(30),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            run_migrations: true,
            slow_transaction: Duration::from_millis(100),
            sqlite: SqliteOptions::default(),
            postgres: PgOptions::default(),
        }
    }
}

impl Config {
    /// Defaults overridden by `JOBDB_*` variables from the environment, after loading `.env`
    /// from the current directory if there is one. A malformed value is an error naming the
    /// variable, never silently ignored.
    pub fn from_env() -> Result<Config> {
        // A missing .env is normal; a malformed one is reported.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => {
                return Err(Error::InvalidArgument {
                    field: ".env",
                    reason: e.to_string(),
                })
            }
        }
        let mut c = Config::default();
        if let Some(ms) = env_u64("JOBDB_BUSY_TIMEOUT_MS")? {
            c.sqlite.pragmas.busy_timeout = Duration::from_millis(ms);
        }
        if let Some(v) = env_var("JOBDB_SYNCHRONOUS")? {
            c.sqlite.pragmas.synchronous = v.parse::<Synchronous>()?;
        }
        if let Some(v) = env_u64("JOBDB_CACHE_SIZE_KIB")? {
            c.sqlite.pragmas.cache_size_kib = to_u32("JOBDB_CACHE_SIZE_KIB", v)?;
        }
        if let Some(v) = env_u64("JOBDB_MMAP_SIZE")? {
            c.sqlite.pragmas.mmap_size = v;
        }
        if let Some(v) = env_u64("JOBDB_JOURNAL_SIZE_LIMIT")? {
            c.sqlite.pragmas.journal_size_limit = v;
        }
        if let Some(ms) = env_u64("JOBDB_RETRY_INITIAL_DELAY_MS")? {
            c.retry.initial_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = env_u64("JOBDB_RETRY_MAX_DELAY_MS")? {
            c.retry.max_delay = Duration::from_millis(ms);
        }
        if let Some(v) = env_u64("JOBDB_RETRY_MAX_ATTEMPTS")? {
            c.retry.max_attempts = to_u32("JOBDB_RETRY_MAX_ATTEMPTS", v)?.max(1);
        }
        if let Some(ms) = env_u64("JOBDB_RETRY_DEADLINE_MS")? {
            c.retry.deadline = Duration::from_millis(ms);
        }
        if let Some(ms) = env_u64("JOBDB_JOB_BACKOFF_BASE_MS")? {
            c.job_backoff.base = Duration::from_millis(ms);
        }
        if let Some(ms) = env_u64("JOBDB_JOB_BACKOFF_MAX_MS")? {
            c.job_backoff.max = Duration::from_millis(ms);
        }
        if let Some(v) = env_u64("JOBDB_POOL_SIZE")? {
            c.pool_size = to_u32("JOBDB_POOL_SIZE", v)?;
        }
        if let Some(ms) = env_u64("JOBDB_CHECKPOINT_EVERY_MS")? {
            // 0 means: no background checkpoints, SQLite's automatic ones instead.
            c.sqlite.checkpoint_every = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(v) = env_u64("JOBDB_WAL_TRUNCATE_BYTES")? {
            c.sqlite.wal_truncate_above = (v > 0).then_some(v);
        }
        if let Some(ms) = env_u64("JOBDB_WAL_TRUNCATE_WAIT_MS")? {
            c.sqlite.wal_truncate_wait = Duration::from_millis(ms);
        }
        if let Some(ms) = env_u64("JOBDB_SLOW_TRANSACTION_MS")? {
            c.slow_transaction = Duration::from_millis(ms);
        }
        if let Some(v) = env_u64("JOBDB_ALLOW_NETWORK_FS")? {
            c.sqlite.allow_network_filesystem = v != 0;
        }
        if let Some(ms) = env_u64("JOBDB_WATCH_MS")? {
            c.sqlite.watch_every = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(ms) = env_u64("JOBDB_SLOW_STATEMENT_MS")? {
            c.sqlite.slow_statement = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(v) = env_u64("JOBDB_WRITE_GATE")? {
            c.sqlite.write_gate = v != 0;
        }
        if let Some(v) = env_u64("JOBDB_PG_LISTEN")? {
            c.postgres.listen = v != 0;
        }
        if let Some(v) = env_u64("JOBDB_MAX_PAYLOAD_BYTES")? {
            c.max_payload_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks values that would make the pool unusable.
    pub fn validate(&self) -> Result<()> {
        if self.pool_size == 0 {
            return Err(Error::InvalidArgument {
                field: "pool_size",
                reason: "must be at least 1".into(),
            });
        }
        if self.retry.max_attempts == 0 {
            return Err(Error::InvalidArgument {
                field: "retry.max_attempts",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

fn env_var(name: &'static str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidArgument {
            field: name,
            reason: "is not valid UTF-8".into(),
        }),
    }
}

fn env_u64(name: &'static str) -> Result<Option<u64>> {
    env_var(name)?
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| Error::InvalidArgument {
                field: name,
                reason: format!("{v:?} is not a whole number"),
            })
        })
        .transpose()
}

fn to_u32(name: &'static str, v: u64) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument {
        field: name,
        reason: format!("{v} is too large"),
    })
}

/// A database location parsed from a URL, for either backend: `postgres://` and
/// `postgresql://` URLs are PostgreSQL (feature `postgres`); `sqlite://path`, `sqlite:path`,
/// `file:` URIs and plain paths are SQLite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite database; the string is what SQLite opens (a path or a `file:` URI).
    Sqlite(String),
    /// A PostgreSQL database; the string is the URL libpq connects to.
    Postgres(String),
    /// A MySQL or MariaDB database (feature `mysql`); the string is the `mysql://` URL the
    /// client library connects to (a `mariadb://` URL is accepted and rewritten to it).
    Mysql(String),
}

impl std::str::FromStr for DatabaseUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<DatabaseUrl> {
        DatabaseUrl::parse(url)
    }
}

impl DatabaseUrl {
    /// Whether it names a MySQL or MariaDB database.
    pub fn is_mysql(&self) -> bool {
        matches!(self, DatabaseUrl::Mysql(_))
    }

    /// Whether it names a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        matches!(self, DatabaseUrl::Postgres(_))
    }

    /// Parses a URL or path.
    pub fn parse(url: &str) -> Result<DatabaseUrl> {
        let invalid = |reason: &str| Error::InvalidDatabaseUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url.trim().is_empty() {
            return Err(invalid("it is empty"));
        }
        if url.contains('\0') {
            return Err(invalid("it contains a NUL character"));
        }
        let lower = url.trim_start().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            if cfg!(feature = "postgres") {
                return Ok(DatabaseUrl::Postgres(url.to_owned()));
            }
            return Err(invalid(
                "PostgreSQL is not supported by this build (feature `postgres` is off)",
            ));
        }
        if is_mysql_url(url) {
            if cfg!(feature = "mysql") {
                return Ok(DatabaseUrl::Mysql(mysql_url(url)));
            }
            return Err(invalid(
                "MySQL / MariaDB is not supported by this build (feature `mysql` is off)",
            ));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() {
            return Err(invalid("no file path after the scheme"));
        }
        Ok(DatabaseUrl::Sqlite(path.to_owned()))
    }

    /// The file a SQLite URL names: a plain path, or the path of a `file:` URI (`file:x.db`,
    /// `file:///abs/x.db`, `file://localhost/abs/x.db`, percent-escapes decoded). `None` for
    /// PostgreSQL and in-memory databases.
    pub fn file_path(&self) -> Option<PathBuf> {
        let DatabaseUrl::Sqlite(p) = self else {
            return None;
        };
        let Some(uri) = p.strip_prefix("file:") else {
            return (p != ":memory:").then(|| PathBuf::from(p));
        };
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let path = path.split('#').next().unwrap_or(path);
        let path = match path.strip_prefix("//") {
            // An authority: empty or `localhost`, then an absolute path.
            Some(rest) => &rest[rest.find('/')?..],
            None => path,
        };
        let memory = query.split('&').any(|kv| kv == "mode=memory");
        if path.is_empty() || path == ":memory:" || memory {
            return None;
        }
        Some(PathBuf::from(percent_decode(path)?))
    }

    /// Whether a `file:` URI asks for a read-only open (`mode=ro`): such a file is never
    /// created.
    fn read_only(&self) -> bool {
        matches!(self, DatabaseUrl::Sqlite(p) if p.starts_with("file:")
            && p.split_once('?').is_some_and(|(_, q)| q.split('&').any(|kv| kv == "mode=ro")))
    }
}

/// `%XX` escapes decoded (as SQLite decodes a URI's path); `None` if one is malformed or the
/// result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Builds a pool for `url`: checks the location, sets WAL once (and verifies it took), then
/// builds an r2d2 pool whose customizer applies the pragmas to each connection.
pub fn build_pool(url: &str, config: &Config) -> Result<SqlitePool> {
    config.validate()?;
    crate::sqlite::check_floor()?;
    let parsed = DatabaseUrl::parse(url)?;
    let file_path = parsed.file_path();
    let read_only = parsed.read_only();
    let DatabaseUrl::Sqlite(target) = parsed else {
        return Err(Error::InvalidDatabaseUrl {
            url: redact(url),
            reason: "a PostgreSQL URL: open it as Queue<PgConnection> (PgQueue), or with \
                     open_any to choose by the URL"
                .into(),
        });
    };
    if let Some(path) = file_path {
        if let Some(fs) = crate::fsinfo::filesystem_of(&path) {
            if fs.network && !config.sqlite.allow_network_filesystem {
                return Err(Error::InvalidDatabaseUrl {
                    url: url.to_owned(),
                    reason: format!(
                        "it is on a network filesystem ({}); SQLite's WAL needs shared memory on one host. Use a local disk, or set JOBDB_ALLOW_NETWORK_FS=1 if you are sure",
                        fs.name
                    ),
                });
            }
        }
        prepare_file(url, &path, read_only)?;
    }
    let mut conn = SqliteConnection::establish(&target).map_err(|source| Error::Connection {
        url: url.to_owned(),
        source,
    })?;
    // Switching to WAL needs an exclusive lock that SQLite's busy handler does not wait for, so
    // processes opening a fresh file at the same moment can get "database is locked" here:
    // retried like any busy transaction (it is idempotent).
    retry_busy(&config.retry, &RetryStats::default(), "open", || {
        bootstrap(&mut conn, &config.sqlite.pragmas)
    })
    .map_err(|e| explain_open_error(url, e))?;
    probe_writable(&mut conn).map_err(|e| explain_open_error(url, e))?;
    drop(conn);

    let mut pragmas = config.sqlite.pragmas.clone();
    if config.sqlite.checkpoint_every.is_some() {
        // The queue's checkpointer thread does it, outside the write lock.
        pragmas.wal_autocheckpoint = 0;
    }
    let manager = ConnectionManager::<SqliteConnection>::new(target);
    r2d2::Pool::builder()
        .max_size(config.pool_size)
        // Connections open on demand; the bootstrap above already proved we can open one.
        .min_idle(Some(0))
        .connection_timeout(config.connection_timeout)
        // r2d2 would run `SELECT 1` on every checkout; a SQLite file handle does not go stale
        // like a socket, and a connection left mid-transaction is caught by `has_broken`.
        .test_on_check_out(false)
        .connection_customizer(Box::new(
            ConnectionCustomizer::new(pragmas)
                .slow_statement(config.sqlite.slow_statement)
                .write_gate(config.sqlite.write_gate),
        ))
        .build(manager)
        .map_err(Error::Pool)
}

/// Runs the embedded migrations that are not applied yet, inside one `BEGIN IMMEDIATE`
/// transaction (retried on busy), so several processes starting at once apply each migration
/// exactly once. Returns the versions applied.
pub fn run_migrations(
    conn: &mut SqliteConnection,
    policy: &RetryPolicy,
    stats: &RetryStats,
) -> Result<Vec<String>> {
    // The common case, nothing pending, is a read: it needs no write lock, so opening a queue
    // (and a read-only command such as `stats`) never waits behind another process's writer.
    // Diesel's pending check creates its bookkeeping table where there is none: only asked
    // where that table exists, so that on a database jobdb never migrated the table is
    // created inside the transaction below, and goes with it if a migration fails (an app's
    // own `jobs` table in the way leaves the file as it was).
    if has_migrations_table(conn)? && pending_migrations(conn)?.is_empty() {
        return Ok(Vec::new());
    }
    retry_busy(policy, stats, "migrate", || {
        conn.write_transaction(|c| {
            let applied = c
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(Error::Migration)?;
            Ok(applied.iter().map(|v| v.to_string()).collect())
        })
    })
}

/// Whether Diesel's `__diesel_schema_migrations` table exists (a read).
fn has_migrations_table(conn: &mut SqliteConnection) -> Result<bool> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let found: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM sqlite_master \
         WHERE type = 'table' AND name = '__diesel_schema_migrations'",
    )
    .get_result(conn)
    .map_err(Error::Database)?;
    Ok(found.n > 0)
}

/// Migrations embedded in this build that the database has not applied.
pub fn pending_migrations(conn: &mut SqliteConnection) -> Result<Vec<String>> {
    let pending = conn
        .pending_migrations(SQLITE_MIGRATIONS)
        .map_err(Error::Migration)?;
    Ok(pending.iter().map(|m| m.name().to_string()).collect())
}

/// Refuses locations that cannot work before SQLite gets a chance to give a vaguer error, and
/// creates a new database file readable by its owner only (mode 0600): job payloads are data.
fn prepare_file(url: &str, path: &Path, read_only: bool) -> Result<()> {
    let invalid = |reason: String| Error::InvalidDatabaseUrl {
        url: url.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(invalid(format!(
                "directory {} does not exist; create it first",
                dir.display()
            )));
        }
    }
    if path.is_dir() {
        return Err(invalid(format!("{} is a directory", path.display())));
    }
    if !path.exists() && !read_only {
        // Created here, 0600 whatever the umask, so the queue's data is the owner's alone
        // (SQLite gives the -wal and -shm files the database file's mode).
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(_) => {}
            // Another process created it between our check and now: fine.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(invalid(format!("cannot create {}: {e}", path.display())));
            }
        }
    }
    Ok(())
}

/// The first statements on a new database: pragmas (busy_timeout first) and WAL, verified;
/// then proof that we can take the write lock, so a read-only file or directory is refused
/// here with a clear error rather than at the first enqueue.
fn bootstrap(conn: &mut SqliteConnection, pragmas: &Pragmas) -> Result<()> {
    pragmas.apply(conn)?;
    enable_wal(conn)
}

/// Refuses a file this process cannot write, at open, with SQLite's clear error. SQLite grants
/// BEGIN IMMEDIATE even on a read-only file and fails only on a real write, so the probe writes
/// something and rolls it back (nothing is committed). It never waits for the write lock: when
/// another connection holds it the file takes writes, the probe is skipped, and opening (for a
/// read-only command too) does not queue behind that writer. (This connection is the open-time
/// one, dropped afterwards, so its busy_timeout is ours to change.)
fn probe_writable(conn: &mut SqliteConnection) -> Result<()> {
    use diesel::connection::SimpleConnection;
    conn.batch_execute("PRAGMA busy_timeout = 0")?;
    let probed: Result<()> = conn
        .batch_execute("BEGIN IMMEDIATE; CREATE TABLE jobdb_write_probe (x); ROLLBACK;")
        .map_err(Error::from);
    match probed {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = conn.batch_execute("ROLLBACK");
            if e.is_busy() {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Gives SQLite's terse open-time messages the context a user needs.
fn explain_open_error(url: &str, e: Error) -> Error {
    if let Error::Database(diesel::result::Error::DatabaseError(_, info)) = &e {
        let msg = info.message();
        if msg.contains("not a database") {
            return Error::InvalidDatabaseUrl {
                url: url.to_owned(),
                reason: "the file exists but is not a SQLite database".into(),
            };
        }
        if msg.contains("readonly") || msg.contains("unable to open") {
            return Error::InvalidDatabaseUrl {
                url: url.to_owned(),
                reason: format!(
                    "{msg}: the file and its directory must be writable (WAL creates -wal and -shm files beside it)"
                ),
            };
        }
    }
    e
}
