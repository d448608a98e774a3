//! `jobdb doctor`: looks at a database and says what is wrong, changing nothing.
//!
//! It opens one plain connection (no journal-mode switch, no migrations), applies jobdb's
//! per-connection pragmas to that connection only (to show the values jobdb's connections get),
//! and reads: SQLite version and compile options, pragmas against what we recommend, the
//! filesystem, file sizes, pending migrations, and how long it waits right now for the write
//! lock.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::pool::{Config, DatabaseUrl};
use crate::pragmas::{journal_mode, read_integer_pragma, IntegerPragma};

/// How long doctor waits for the write lock before calling it a problem.
pub const LOCK_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One checked value.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// What it is.
    pub actual: String,
    /// What jobdb recommends.
    pub recommended: String,
    /// Whether `actual` is acceptable.
    pub ok: bool,
}

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    /// `sqlite_version()`.
    pub sqlite_version: String,
    /// Compile options that matter to jobdb.
    pub compile_options: Vec<String>,
    /// Each check, in order.
    pub checks: Vec<Check>,
    /// Size of the database file, bytes.
    pub database_bytes: u64,
    /// Size of the `-wal` file, bytes (0 when there is none).
    pub wal_bytes: u64,
    /// Migrations embedded in this build that the database has not applied (any jobdb command
    /// applies them).
    pub pending_migrations: Vec<String>,
    /// How long taking the write lock took now, ms (`None`: not within the probe timeout).
    pub write_lock_wait_ms: Option<f64>,
}

impl Diagnosis {
    /// The checks that failed.
    pub fn problems(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    /// True when nothing is wrong.
    pub fn healthy(&self) -> bool {
        self.problems().next().is_none()
    }
}

fn check(name: &str, actual: impl ToString, recommended: impl ToString, ok: bool) -> Check {
    Check {
        name: name.to_owned(),
        actual: actual.to_string(),
        recommended: recommended.to_string(),
        ok,
    }
}

/// What the configured `synchronous` risks on a power loss. Every setting is accepted (the
/// opt-out is the user's choice); the text says what it costs.
fn durability(sync: crate::Synchronous) -> Check {
    let actual = match sync {
        crate::Synchronous::Durable => {
            "durable: enqueues, results and app writes are on disk before they are acknowledged; a power loss may undo claims and heartbeats only (the lease recovers them)"
        }
        crate::Synchronous::Full => "full: every commit is on disk before it returns",
        crate::Synchronous::Normal => {
            "normal: a power loss can undo the last acknowledged enqueues, results and app writes (those not yet checkpointed, typically the last fraction of a second); never corrupts"
        }
    };
    check("durability (JOBDB_SYNCHRONOUS)", actual, "durable", true)
}

/// What `doctor` finds on a database server (PostgreSQL, or MySQL / MariaDB with feature
/// `mysql`): whether a commit is durable there.
#[derive(Debug, Clone, Serialize)]
pub struct PgDiagnosis {
    /// `server_version`.
    pub server_version: String,
    /// Each check, in order.
    pub checks: Vec<Check>,
}

impl PgDiagnosis {
    /// The checks that failed.
    pub fn problems(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }
}

/// Examines a PostgreSQL server: `fsync` must be on (off risks corruption on a crash), and
/// `synchronous_commit` says whether a commit waits for its WAL flush (`off`: a power loss
/// or crash can undo the last acknowledged commits, ~3× `wal_writer_delay`, without
/// corruption).
#[cfg(feature = "postgres")]
pub fn diagnose_postgres(url: &str) -> Result<PgDiagnosis> {
    use diesel::PgConnection;
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        setting: String,
    }
    let mut conn = PgConnection::establish(url).map_err(|source| Error::Connection {
        url: crate::pool::redact(url),
        source,
    })?;
    let mut show = |name: &str| -> Result<String> {
        let s: Setting = diesel::sql_query("SELECT setting FROM pg_settings WHERE name = $1")
            .bind::<diesel::sql_types::Text, _>(name)
            .get_result(&mut conn)?;
        Ok(s.setting)
    };
    let server_version = show("server_version")?;
    let fsync = show("fsync")?;
    let sync_commit = show("synchronous_commit")?;
    let checks = vec![
        check("fsync", &fsync, "on", fsync == "on"),
        check(
            "synchronous_commit",
            &sync_commit,
            "on (or remote_write / remote_apply with replicas)",
            sync_commit != "off",
        ),
    ];
    Ok(PgDiagnosis {
        server_version,
        checks,
    })
}

/// Examines a MySQL / MariaDB server (the same report as PostgreSQL's):
/// - `innodb_flush_log_at_trx_commit` must be 1: 0 or 2 acknowledge a commit before its redo
///   log reaches the disk, so a power loss (2) or a crash (0) can undo acknowledged jobs;
/// - with the binary log on, `sync_binlog` should be 1 for the same reason;
/// - the version must have `SKIP LOCKED` and `JSON_TABLE` (MySQL 8.0, MariaDB 10.6).
#[cfg(feature = "mysql")]
pub fn diagnose_mysql(url: &str) -> Result<PgDiagnosis> {
    use diesel::MysqlConnection;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    let url = crate::pool::mysql_url(url);
    let mut conn = MysqlConnection::establish(&url).map_err(|source| Error::Connection {
        url: crate::pool::redact(&url),
        source,
    })?;
    let mut var = |expr: &str| -> Result<String> {
        let r: Row =
            diesel::sql_query(format!("SELECT CAST({expr} AS CHAR) AS v")).get_result(&mut conn)?;
        Ok(r.v)
    };
    let server_version = var("VERSION()")?;
    let flush = var("@@innodb_flush_log_at_trx_commit")?;
    let log_bin = var("@@log_bin")?;
    let sync_binlog = var("@@sync_binlog")?;
    let mariadb = server_version.contains("MariaDB");
    let numbers: Vec<u32> = server_version
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let (major, minor) = (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
    );
    let new_enough = if mariadb {
        (major, minor) >= (10, 6)
    } else {
        major >= 8
    };
    let checks = vec![
        check(
            "version",
            &server_version,
            "MySQL 8.0+ or MariaDB 10.6+ (SKIP LOCKED, JSON_TABLE)",
            new_enough,
        ),
        check("innodb_flush_log_at_trx_commit", &flush, "1", flush == "1"),
        check(
            "sync_binlog",
            format!("{sync_binlog} (log_bin {log_bin})"),
            "1 when the binary log is on",
            log_bin == "0" || sync_binlog == "1",
        ),
    ];
    Ok(PgDiagnosis {
        server_version,
        checks,
    })
}

/// Examines the database at `url` with the pragmas of `config`.
pub fn diagnose(url: &str, config: &Config) -> Result<Diagnosis> {
    let parsed = DatabaseUrl::parse(url)?;
    let path: Option<PathBuf> = parsed.file_path();
    let DatabaseUrl::Sqlite(target) = parsed else {
        return Err(Error::InvalidDatabaseUrl {
            url: crate::pool::redact(url),
            reason: "doctor checks SQLite files; this is a PostgreSQL URL".into(),
        });
    };
    if let Some(p) = &path {
        if !p.is_file() {
            return Err(Error::InvalidDatabaseUrl {
                url: url.to_owned(),
                reason: "no database file there (doctor creates nothing)".into(),
            });
        }
    }
    let mut conn = SqliteConnection::establish(&target).map_err(|source| Error::Connection {
        url: url.to_owned(),
        source,
    })?;
    // The first read tells a database from any other file: SQLITE_NOTADB is bad input here,
    // as it is for every other command.
    let mode = journal_mode(&mut conn).map_err(|e| match &e {
        Error::Database(diesel::result::Error::DatabaseError(_, info))
            if info.message() == "file is not a database" =>
        {
            Error::InvalidDatabaseUrl {
                url: url.to_owned(),
                reason: "the file is not a SQLite database".into(),
            }
        }
        _ => e,
    })?;
    config.sqlite.pragmas.apply(&mut conn)?;

    let mut checks = Vec::new();
    checks.push(check("journal_mode", &mode, "wal", mode == "wal"));
    let sync = read_integer_pragma(&mut conn, IntegerPragma::Synchronous)?;
    checks.push(check(
        "synchronous",
        sync,
        "1 (NORMAL) or 2 (FULL)",
        sync >= 1,
    ));
    checks.push(durability(config.sqlite.pragmas.synchronous));
    let fk = read_integer_pragma(&mut conn, IntegerPragma::ForeignKeys)?;
    checks.push(check("foreign_keys", fk, 1, fk == 1));
    let busy = read_integer_pragma(&mut conn, IntegerPragma::BusyTimeout)?;
    checks.push(check("busy_timeout_ms", busy, "> 0", busy > 0));
    if let Some(fs) = path.as_deref().and_then(crate::fsinfo::filesystem_of) {
        checks.push(check(
            "filesystem",
            fs.name,
            "a local filesystem",
            !fs.network,
        ));
    }
    let sqlite_version = crate::queue::backend_version(&mut conn)?;
    // The WAL-reset bug: this process's SQLite must be past it, and so must every other
    // process's that opens the file (doctor cannot see theirs).
    let (linked, linked_text) = crate::sqlite::linked_version();
    checks.push(check(
        "sqlite_wal_reset_fix",
        format!(
            "{linked_text} linked here; every other process on this file needs it too (an \
             older sqlite3 shell or app can corrupt a WAL database)"
        ),
        format!("SQLite {}", crate::sqlite::FLOOR_TEXT),
        !crate::sqlite::has_wal_reset_bug(linked),
    ));
    let compile_options = compile_options(&mut conn)?;
    let threadsafe = !compile_options.iter().any(|o| o == "THREADSAFE=0");
    checks.push(check("threadsafe", threadsafe, true, threadsafe));

    // The write lock, now: BEGIN IMMEDIATE waits up to LOCK_PROBE_TIMEOUT in SQLite's handler.
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {};",
        LOCK_PROBE_TIMEOUT.as_millis()
    ))?;
    let started = Instant::now();
    let write_lock_wait_ms = match conn.batch_execute("BEGIN IMMEDIATE") {
        Ok(()) => {
            conn.batch_execute("ROLLBACK")?;
            Some(started.elapsed().as_secs_f64() * 1000.0)
        }
        Err(e) if crate::error::is_busy_diesel(&e) => None,
        Err(e) => return Err(e.into()),
    };
    checks.push(check(
        "write_lock",
        match write_lock_wait_ms {
            Some(ms) => format!("acquired in {ms:.1} ms"),
            None => format!("still held by another connection after {LOCK_PROBE_TIMEOUT:?}"),
        },
        "acquired quickly",
        write_lock_wait_ms.is_some(),
    ));

    let pending = pending_without_writing(&mut conn)?;
    let size = |p: Option<PathBuf>| {
        p.and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    };
    Ok(Diagnosis {
        sqlite_version,
        compile_options,
        checks,
        database_bytes: size(path.clone()),
        wal_bytes: size(path.map(|p| {
            let mut s = p.into_os_string();
            s.push("-wal");
            PathBuf::from(s)
        })),
        pending_migrations: pending,
        write_lock_wait_ms,
    })
}

/// The compile options that bear on jobdb (threading, sleeping, defaults).
fn compile_options(conn: &mut SqliteConnection) -> Result<Vec<String>> {
    #[derive(QueryableByName)]
    struct Opt {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }
    let all: Vec<Opt> =
        diesel::sql_query("SELECT compile_options FROM pragma_compile_options").load(conn)?;
    Ok(all
        .into_iter()
        .map(|o| o.compile_options)
        .filter(|o| {
            [
                "THREADSAFE",
                "HAVE_USLEEP",
                "DEFAULT_FOREIGN_KEYS",
                "DEFAULT_WAL_SYNCHRONOUS",
                "ENABLE_STAT4",
                "DEFAULT_SYNCHRONOUS",
            ]
            .iter()
            .any(|k| o.starts_with(k))
        })
        .collect())
}

/// The embedded migrations the database has not applied, read without writing anything:
/// Diesel's own `pending_migrations` creates `__diesel_schema_migrations` when it is missing,
/// which would change a file doctor promises to leave alone (an empty file, or another app's
/// database). Without that table, every migration is pending.
fn pending_without_writing(conn: &mut SqliteConnection) -> Result<Vec<String>> {
    use diesel::migration::MigrationSource;
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    let has_table = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "EXISTS (SELECT 1 FROM sqlite_master \
         WHERE type = 'table' AND name = '__diesel_schema_migrations')",
    ))
    .get_result::<bool>(conn)?;
    let applied: std::collections::HashSet<String> = if has_table {
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<Version>(conn)?
            .into_iter()
            .map(|v| v.version)
            .collect()
    } else {
        Default::default()
    };
    let embedded =
        MigrationSource::<diesel::sqlite::Sqlite>::migrations(&crate::pool::SQLITE_MIGRATIONS)
            .map_err(Error::Migration)?;
    Ok(embedded
        .iter()
        .filter(|m| !applied.contains(&m.name().version().to_string()))
        .map(|m| m.name().to_string())
        .collect())
}
