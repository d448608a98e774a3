//! SQLite beyond jobdb's own handle: the app's own connections protected, statement
//! timings, and the oldest SQLite jobdb accepts.
//!
//! jobdb's writes never meet `database is locked`: they queue at a write gate shared by every
//! jobdb process, then re-run whole while busy. An app's *own* connections do not by
//! themselves: Diesel's `SqliteConnection::establish` sets no busy timeout, so beside jobdb's
//! workers its writes fail, and even with a timeout SQLite's busy handler sleeps up to 100 ms a
//! wait and lets jobdb's writers, which never sleep, go first. [`protect_process`] fixes
//! both for every SQLite connection the process opens afterwards (Diesel's `establish`, an r2d2
//! pool of the app, rusqlite), through SQLite's `sqlite3_auto_extension`, without a change to
//! the code that opens them:
//!
//! ```no_run
//! # fn main() -> jobdb::Result<()> {
//! let config = jobdb::Config::from_env()?;
//! jobdb::sqlite::protect_process(&config)?; // once, at startup, before connections are opened
//! // … the app's unmodified `SqliteConnection::establish(…)` and `immediate_transaction` …
//! # Ok(()) }
//! ```
//!
//! Each connection opened after the call gets:
//! - a busy handler that waits up to `config.sqlite.pragmas.busy_timeout` (5 s), and that,
//!   when the connection waits for the *write* lock of a database jobdb uses, takes its turn
//!   at jobdb's write gate (arrival order, shared with jobdb's writers in every process) and
//!   holds it until the connection's transaction ends, instead of sleeping;
//! - a statement hook that records each statement's duration by kind
//!   ([`statement_durations`], `jobdb_sqlite_statement_duration_seconds` in `/metrics`) and
//!   logs statements slower than `config.sqlite.slow_statement` through `tracing`, with
//!   their SQL text (bound values are never part of it).
//!
//! jobdb's own pool connections get the same handler and hook (they are set up through
//! Diesel's raw-handle access), whether or not the process is protected. [`Db::open`] does
//! not call [`protect_process`]: the call changes every SQLite connection the process opens
//! (other databases and other libraries' too), which only the app can decide; the README's
//! "In an existing Diesel app" shows where it goes.
//!
//! What no busy handler can cure: a DEFERRED transaction (Diesel's `conn.transaction`) that
//! reads, then writes while another connection writes or after one committed, fails with
//! "database is locked" at once (`SQLITE_BUSY`, or `SQLITE_BUSY_SNAPSHOT`: its snapshot is
//! stale and waiting cannot refresh it); SQLite calls no busy handler for that upgrade. Open
//! write transactions with `conn.immediate_transaction` (or retry the whole transaction); a
//! guarded connection counts it ([`refused_upgrades`]) and logs a warning naming the fix.
//!
//! Limits: the statement log shows the SQL text as the app wrote it, with `?` for values
//! bound as parameters (never shown) but values the app formatted into the text itself in
//! full. At a connection's first statement the guard puts its busy handler back, over a
//! timeout a driver set when it opened the connection (rusqlite sets 5 s); a timeout the app
//! sets from then on stays the app's.
//!
//! [`Db::open`]: crate::Db::open

mod floor;
pub(crate) mod guard;
mod statements;

use std::ffi::{c_char, c_int};
use std::sync::RwLock;

use libsqlite3_sys as ffi;

pub(crate) use floor::check_linked as check_floor;
pub use floor::{has_wal_reset_bug, linked_version, FLOOR_TEXT, SAFE_SINCE};
pub(crate) use guard::GuardSettings;
pub(crate) use statements::histogram as statement_histogram;
pub use statements::{
    commit_syncs, refused_upgrades, slow_statements, statement_durations, StatementKind,
};

use crate::error::{Error, Result};
use crate::pool::Config;

/// What [`protect_process`] set, read by every connection the process opens afterwards.
static PROTECTION: RwLock<Option<GuardSettings>> = RwLock::new(None);

/// The settings a connection's guard takes from a configuration.
pub(crate) fn guard_settings(config: &Config) -> GuardSettings {
    GuardSettings {
        busy_timeout: config.sqlite.pragmas.busy_timeout,
        slow_statement: config.sqlite.slow_statement,
        write_gate: config.sqlite.write_gate,
        // The app's own connections keep their own `synchronous` (SQLite's default, FULL).
        sync_commits: false,
        wal_autocheckpoint: config.sqlite.pragmas.wal_autocheckpoint,
    }
}

/// Protects every SQLite connection this process opens from now on (see the module docs):
/// the fair busy handler and the statement hook, with the busy timeout and slow-statement
/// threshold of `config`. Connections already open are not changed. Calling it again
/// replaces the settings for connections opened after that call.
///
/// Fails with [`Error::UnsafeSqlite`] if the linked SQLite has the WAL-reset bug, and with
/// [`Error::InvalidArgument`] for a configuration [`Config::validate`] refuses.
pub fn protect_process(config: &Config) -> Result<()> {
    check_floor()?;
    config.validate()?;
    *PROTECTION.write().unwrap_or_else(|p| p.into_inner()) = Some(guard_settings(config));
    // SAFETY: `protect` has the signature SQLite calls auto-extensions with; registering the
    // same entry point twice is a no-op.
    let rc = unsafe { ffi::sqlite3_auto_extension(Some(protect)) };
    if rc != ffi::SQLITE_OK {
        return Err(Error::Internal {
            what: "sqlite3_auto_extension",
            reason: format!("SQLite answered {rc}"),
        });
    }
    Ok(())
}

/// Whether [`protect_process`] was called in this process.
pub fn is_process_protected() -> bool {
    PROTECTION
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_some()
}

/// The auto-extension: SQLite calls it for each connection it opens, before the opener sees
/// the connection.
unsafe extern "C" fn protect(
    db: *mut ffi::sqlite3,
    _err: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    let settings = *PROTECTION.read().unwrap_or_else(|p| p.into_inner());
    if let Some(settings) = settings {
        // SAFETY: SQLite hands over a connection it is opening, on the opening thread.
        unsafe { guard::install(db, settings) };
    }
    ffi::SQLITE_OK
}

/// Installs the guard on one of jobdb's own connections (the pool's customizer); returns
/// whether the guard syncs the connection's commits itself (then the connection may commit
/// at `synchronous=NORMAL`).
pub(crate) fn guard_connection(
    conn: &mut diesel::SqliteConnection,
    settings: GuardSettings,
) -> bool {
    // SAFETY: the handle is only used inside the closure, on this thread, while Diesel does
    // nothing else with the connection; the guard's hooks never call back into Diesel.
    unsafe {
        conn.with_raw_connection(|db| {
            guard::install(db, settings);
            guard::syncs_commits(db)
        })
    }
}

/// Turns the guard's sync of each commit off on a connection whose commits its user makes
/// durable itself (a handle's writer), or back on; returns whether the guard syncs now.
pub(crate) fn set_guard_sync(conn: &mut diesel::SqliteConnection, on: bool) -> bool {
    // SAFETY: as in `guard_connection`.
    unsafe { conn.with_raw_connection(|db| guard::set_syncing(db, on)) }
}

/// Whether `conn`'s guard was set up to sync its commits (a pool connection at durable), on
/// now or not.
pub(crate) fn guarded_to_sync(conn: &mut diesel::SqliteConnection) -> bool {
    // SAFETY: as in `guard_connection`; the handle is only read.
    unsafe { conn.with_raw_connection(|db| guard::autocheckpoint_of(db).is_some()) }
}

/// Puts the guard's busy handler back after the connection set a busy timeout of its own for
/// a while, or installs a guard with `settings` where there is none.
pub(crate) fn rearm_guard(conn: &mut diesel::SqliteConnection, settings: GuardSettings) {
    // SAFETY: as in `guard_connection`.
    let rearmed = unsafe { conn.with_raw_connection(|db| guard::rearm_busy_handler(db)) };
    if !rearmed {
        guard_connection(conn, settings);
    }
}

/// How many of `conn`'s commits jobdb's guard has made durable itself (an `fdatasync` of the
/// WAL after the commit, outside the write lock: [`crate::Synchronous::Durable`] on the pool's
/// connections), or `None` where the guard does not sync this connection's commits (an app's
/// own connection, whose `synchronous` is its own; a handle's writer, whose commits the handle
/// syncs; another durability setting). For checks and tests: a commit that wrote counts once,
/// a read or a rolled-back transaction not at all.
pub fn guard_synced_commits(conn: &mut diesel::SqliteConnection) -> Option<u64> {
    // SAFETY: as in `guard_connection`; the handle is only read.
    unsafe { conn.with_raw_connection(|db| guard::synced_commits(db)) }
}

/// The page count the guard's WAL hook checkpoints at, on a connection where it replaced
/// SQLite's automatic-checkpoint hook (`PRAGMA wal_autocheckpoint` reads 0 there).
pub(crate) fn guard_autocheckpoint(conn: &mut diesel::SqliteConnection) -> Option<u32> {
    // SAFETY: as in `guard_connection`; the handle is only read.
    unsafe { conn.with_raw_connection(|db| guard::autocheckpoint_of(db)) }
}

/// The busy timeout jobdb's guard was installed with on `conn`, or `None` if the connection
/// was never guarded. It does not tell whether the handler is still the guard's: `PRAGMA
/// busy_timeout`, Diesel's `on_busy` or `set_busy_timeout` replace it, after which SQLite's
/// own timeout, if any, applies (and `PRAGMA busy_timeout` reads it; on a connection whose
/// handler is still the guard's it reads 0).
pub fn guarded_busy_timeout(conn: &mut diesel::SqliteConnection) -> Option<std::time::Duration> {
    // SAFETY: as in `guard_connection`; the handle is only read.
    let settings = unsafe { conn.with_raw_connection(|db| guard::settings_of(db)) };
    settings.map(|s| s.busy_timeout)
}
