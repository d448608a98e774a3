//! Typed SQLite pragmas and the r2d2 connection customizer that applies them to every new
//! pooled connection.
//!
//! Values are enums and integers, formatted by us: no user string is ever pasted into SQL.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::sqlite::SqliteConnection;
use diesel::RunQueryDsl;

use crate::error::{Error, Result};

/// When a commit reaches the disk (`PRAGMA synchronous`). In WAL mode none of these corrupts the
/// database on a power loss; they differ in which acknowledged commits a power loss can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// The default: a commit that enqueues, records a result, cancels, retries, or is the
    /// app's own ([`crate::Db::write`], [`crate::Db::transaction`]) is on disk before its
    /// caller is answered, as with `FULL`, but the sync runs outside the write lock and one
    /// sync covers every commit before it (see `db/wal_sync.rs`): the writer commits at
    /// `NORMAL`, and such callers wait for an `fdatasync` of the WAL that started after
    /// their commit. Commits that only claim, heartbeat, reap or release are not waited for:
    /// a power loss may undo them, and the lease recovers them (the job is claimed again:
    /// at-least-once execution, still one succeeded result). The pool's other connections,
    /// which an app may write on directly, are as durable as at `FULL`: they commit at
    /// `NORMAL` and `fdatasync` the WAL after each commit that wrote, outside the write lock,
    /// before the COMMIT returns (`sqlite/guard.rs`; [`crate::sqlite::commit_syncs`] counts
    /// them). A statement that returns rows outside a transaction (`INSERT … RETURNING` read
    /// with `get_result`) commits at `FULL` instead: SQLite commits it when the statement is
    /// reset, after which no hook runs. Where that cannot be set up (a database in memory, a
    /// non-Unix system) they run at `FULL`; an app that sets `PRAGMA synchronous` on such a
    /// connection itself gets its own setting, and the guard's syncs stop.
    #[default]
    Durable,
    /// `synchronous=NORMAL` (1) everywhere, what Rails 8, Litestream and PocketBase use:
    /// commits reach the disk at the next checkpoint, so a power loss can drop the last
    /// fraction of a second of acknowledged enqueues and completions
    /// (`JOBDB_SYNCHRONOUS=normal`, the documented opt-out).
    Normal,
    /// `synchronous=FULL` (2) everywhere, the lease commits too.
    Full,
}

impl Synchronous {
    fn sql(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            // The writer is switched to NORMAL when a WAL syncer serves it.
            Synchronous::Durable | Synchronous::Full => "FULL",
        }
    }
}

impl std::str::FromStr for Synchronous {
    type Err = Error;

    /// Parses `durable` / `normal` / `full` (any case), or the numbers 1 / 2.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "durable" => Ok(Synchronous::Durable),
            "normal" | "1" => Ok(Synchronous::Normal),
            "full" | "2" => Ok(Synchronous::Full),
            _ => Err(Error::InvalidArgument {
                field: "synchronous",
                reason: format!("{s:?} is not one of: durable, normal, full"),
            }),
        }
    }
}

impl std::fmt::Display for Synchronous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Synchronous::Durable => "durable",
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        })
    }
}

/// `PRAGMA temp_store`: where temporary tables and indices live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TempStore {
    /// Compile-time default (a file for the bundled build).
    Default,
    /// Temporary files on disk.
    File,
    /// Temporary data in memory: avoids disk I/O for sorts; what PocketBase uses.
    #[default]
    Memory,
}

impl TempStore {
    fn sql(self) -> &'static str {
        match self {
            TempStore::Default => "DEFAULT",
            TempStore::File => "FILE",
            TempStore::Memory => "MEMORY",
        }
    }
}

/// The per-connection pragmas. Defaults follow Rails 8's well-trodden choices, with
/// `temp_store=MEMORY` from PocketBase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pragmas {
    /// How long SQLite's own busy handler waits for a lock before returning SQLITE_BUSY.
    /// Kept modest (default 5 s): the retry wrapper above it re-runs whole transactions with
    /// jittered backoff, which is fairer than SQLite's handler (it sleeps up to 100 ms per wait).
    pub busy_timeout: Duration,
    /// `synchronous`, see [`Synchronous`].
    pub synchronous: Synchronous,
    /// Page cache size in KiB (sent as `cache_size = -N`). Default 8192 KiB.
    pub cache_size_kib: u32,
    /// Bytes of the file memory-mapped for reads. Default 128 MiB.
    pub mmap_size: u64,
    /// Upper bound in bytes the WAL file is truncated to after a checkpoint. Default 64 MiB.
    pub journal_size_limit: u64,
    /// `temp_store`, see [`TempStore`].
    pub temp_store: TempStore,
    /// `wal_autocheckpoint` in pages; 0 turns automatic checkpoints off. [`crate::Queue`]
    /// sets 0 when it checkpoints on a background thread (`Config::checkpoint_every`), so no
    /// commit pays for a checkpoint's copy and fsync while holding the write lock.
    pub wal_autocheckpoint: u32,
}

impl Default for Pragmas {
    fn default() -> Self {
        Pragmas {
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::Durable,
            cache_size_kib: 8 * 1024,
            mmap_size: 128 * 1024 * 1024,
            journal_size_limit: 64 * 1024 * 1024,
            temp_store: TempStore::Memory,
            wal_autocheckpoint: 1000,
        }
    }
}

impl Pragmas {
    /// The statements run on every new connection, in order. The order matters:
    ///
    /// 1. `busy_timeout` first: any later statement (even a pragma, and Diesel's own setup)
    ///    may need a lock, and without a busy handler it would fail at once with BUSY.
    /// 2. `foreign_keys=ON` before any query touches `results`, so ON DELETE CASCADE holds.
    ///    (The bundled build defaults it ON; a system SQLite does not, so we always set it.)
    /// 3. `synchronous` before the first write on this connection, so no write runs with the
    ///    slower (or less durable) setting.
    /// 4. `cache_size`, `mmap_size`, `journal_size_limit`, `temp_store`, `wal_autocheckpoint`:
    ///    performance and housekeeping knobs that only need to be in place before the
    ///    connection does work.
    ///
    /// `journal_mode=WAL` is not here: it is persistent in the file and switching needs an
    /// exclusive lock that busy_timeout cannot wait on, so it is set once when the pool is
    /// built (see [`enable_wal`]).
    pub fn statements(&self) -> Vec<String> {
        vec![
            format!("PRAGMA busy_timeout = {};", self.busy_timeout.as_millis()),
            "PRAGMA foreign_keys = ON;".to_owned(),
            format!("PRAGMA synchronous = {};", self.synchronous.sql()),
            format!("PRAGMA cache_size = -{};", self.cache_size_kib),
            format!("PRAGMA mmap_size = {};", self.mmap_size),
            format!("PRAGMA journal_size_limit = {};", self.journal_size_limit),
            format!("PRAGMA temp_store = {};", self.temp_store.sql()),
            format!("PRAGMA wal_autocheckpoint = {};", self.wal_autocheckpoint),
        ]
    }

    /// Applies the pragmas to one connection, in the documented order.
    pub fn apply(&self, conn: &mut SqliteConnection) -> Result<()> {
        conn.batch_execute(&self.statements().concat())?;
        Ok(())
    }
}

/// Sets `journal_mode=WAL` and checks that SQLite answered `wal`. An in-memory database answers
/// `memory`, some filesystems refuse WAL: both are a typed [`Error::WalUnavailable`].
pub fn enable_wal(conn: &mut SqliteConnection) -> Result<()> {
    let answered = journal_mode_query(conn, "PRAGMA journal_mode = WAL")?;
    if answered.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(Error::WalUnavailable { answered })
    }
}

/// Reads the current journal mode (`wal`, `delete`, `memory`, …).
pub fn journal_mode(conn: &mut SqliteConnection) -> Result<String> {
    journal_mode_query(conn, "PRAGMA journal_mode")
}

fn journal_mode_query(conn: &mut SqliteConnection, sql: &str) -> Result<String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
    }
    let row: Row = diesel::sql_query(sql).get_result(conn)?;
    Ok(row.journal_mode)
}

/// Reads an integer pragma (`busy_timeout`, `synchronous`, `foreign_keys`, …). The name must be
/// one of a fixed list, so this never pastes caller text into SQL.
pub fn read_integer_pragma(conn: &mut SqliteConnection, name: IntegerPragma) -> Result<i64> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        value: i64,
    }
    if name == IntegerPragma::WalAutocheckpoint {
        // Not available as a pragma_* table-valued function.
        #[derive(diesel::QueryableByName)]
        struct Wal {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            wal_autocheckpoint: i64,
        }
        let row: Wal = diesel::sql_query("PRAGMA wal_autocheckpoint").get_result(conn)?;
        // Where jobdb's guard syncs the connection's commits, its WAL hook runs the automatic
        // checkpoints and SQLite's pragma reads 0: the guard's count is the setting.
        if let Some(pages) = crate::sqlite::guard_autocheckpoint(conn) {
            return Ok(i64::from(pages));
        }
        return Ok(row.wal_autocheckpoint);
    }
    let (pragma, column) = name.sql();
    let sql = format!("SELECT {column} AS value FROM pragma_{pragma}");
    let row: Row = diesel::sql_query(sql).get_result(conn)?;
    Ok(row.value)
}

/// The integer pragmas [`read_integer_pragma`] can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is the pragma of the same name
pub enum IntegerPragma {
    BusyTimeout,
    Synchronous,
    ForeignKeys,
    CacheSize,
    MmapSize,
    JournalSizeLimit,
    TempStore,
    QueryOnly,
    WalAutocheckpoint,
}

impl IntegerPragma {
    /// (pragma name, name of the column it answers in).
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            IntegerPragma::BusyTimeout => ("busy_timeout", "timeout"),
            IntegerPragma::Synchronous => ("synchronous", "synchronous"),
            IntegerPragma::ForeignKeys => ("foreign_keys", "foreign_keys"),
            IntegerPragma::CacheSize => ("cache_size", "cache_size"),
            IntegerPragma::MmapSize => ("mmap_size", "mmap_size"),
            IntegerPragma::JournalSizeLimit => ("journal_size_limit", "journal_size_limit"),
            IntegerPragma::TempStore => ("temp_store", "temp_store"),
            IntegerPragma::QueryOnly => ("query_only", "query_only"),
            IntegerPragma::WalAutocheckpoint => ("wal_autocheckpoint", "wal_autocheckpoint"),
        }
    }
}

/// The r2d2 customizer: applies [`Pragmas`] to each new physical connection (r2d2 calls
/// `on_acquire` once per connection it opens, not on every checkout), then installs jobdb's
/// busy handler and statement hook on it (see [`crate::sqlite`]): the busy handler waits up to
/// `busy_timeout`, and for the write lock takes its turn at the write gate instead of
/// sleeping, so an app's writes on `db.pool()` connections queue in order with jobdb's. At
/// [`Synchronous::Durable`] the connection then commits at `NORMAL` and the guard syncs the
/// WAL after each commit, outside the write lock: a slow `fdatasync` no longer holds up every
/// writer queued behind it.
#[derive(Debug, Clone)]
pub struct ConnectionCustomizer {
    pragmas: Pragmas,
    slow_statement: Option<Duration>,
    write_gate: bool,
}

impl ConnectionCustomizer {
    /// A customizer that applies these pragmas (statements slower than 100 ms are logged).
    pub fn new(pragmas: Pragmas) -> Self {
        ConnectionCustomizer {
            pragmas,
            slow_statement: Some(Duration::from_millis(100)),
            write_gate: true,
        }
    }

    /// Whether the busy handler waits at the write gate (`false`: it sleeps and retries).
    pub fn write_gate(mut self, on: bool) -> Self {
        self.write_gate = on;
        self
    }

    /// Logs statements slower than this (`None`: none).
    pub fn slow_statement(mut self, slow: Option<Duration>) -> Self {
        self.slow_statement = slow;
        self
    }
}

impl r2d2::CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for ConnectionCustomizer {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // busy_timeout first (see `Pragmas::statements`): the other pragmas may need a lock.
        // The guard then replaces SQLite's handler with jobdb's.
        let sql = self.pragmas.statements().concat();
        conn.batch_execute(&sql)
            .map_err(diesel::r2d2::Error::QueryError)?;
        let durable = self.pragmas.synchronous == Synchronous::Durable;
        // At durable the guard then moves the connection to NORMAL and syncs each commit itself
        // (see `GuardSettings::sync_commits`).
        crate::sqlite::guard_connection(
            conn,
            crate::sqlite::GuardSettings {
                busy_timeout: self.pragmas.busy_timeout,
                slow_statement: self.slow_statement,
                write_gate: self.write_gate,
                sync_commits: durable,
                wal_autocheckpoint: self.pragmas.wal_autocheckpoint,
            },
        );
        Ok(())
    }
}
