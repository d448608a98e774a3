//! Typed settings per backend, as sqlx's `SqliteConnectOptions` and `PgConnectOptions` are:
//! what only SQLite understands lives in [`SqliteOptions`], what only PostgreSQL understands
//! in [`PgOptions`], and [`crate::Config`] keeps what both share. A handle on one backend
//! refuses settings of the other that differ from their defaults ([`Error::InvalidArgument`]
//! naming the setting, or the `JOBDB_*` variable it came from), so `JOBDB_SYNCHRONOUS=full`
//! against a PostgreSQL URL is an error, not a durability promise silently dropped.

use std::time::Duration;

use crate::error::Error;
use crate::pragmas::Pragmas;

/// Settings only SQLite understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Pragmas applied to every connection.
    pub pragmas: Pragmas,
    /// Checkpoint the WAL from a background thread this often (PASSIVE: it never blocks
    /// writers), with automatic checkpoints turned off on the queue's connections. `None`
    /// keeps SQLite's automatic checkpoints (`pragmas.wal_autocheckpoint`), which run inside
    /// a commit, while the write lock is held (`JOBDB_CHECKPOINT_EVERY_MS=0`).
    pub checkpoint_every: Option<Duration>,
    /// When the WAL still holds more than this many bytes after a background checkpoint, the
    /// checkpointer runs `wal_checkpoint(RESTART)`, which waits for readers of the old WAL so
    /// the next writer starts it over (see `checkpoint.rs`; the name is older than the mode).
    /// `None` turns it off (`JOBDB_WAL_TRUNCATE_BYTES=0`).
    pub wal_truncate_above: Option<u64>,
    /// How long that reset may wait for readers (and so hold writers back), at most
    /// (`JOBDB_WAL_TRUNCATE_WAIT_MS`).
    pub wal_truncate_wait: Duration,
    /// Open databases on network filesystems (NFS, SMB, FUSE, …). WAL's shared memory does not
    /// work across hosts and is unreliable there; off by default (`JOBDB_ALLOW_NETWORK_FS=1`).
    pub allow_network_filesystem: bool,
    /// Queue this process's write transactions behind other jobdb processes' in the kernel
    /// (`flock` on `<database>-jobdb-lock`) instead of polling SQLite's lock through the busy
    /// handler: the cure for multi-second stalls with several processes (see `db/gate.rs`).
    /// On by default (`JOBDB_WRITE_GATE=0` turns it off).
    pub write_gate: bool,
    /// How often an idle worker's process looks for jobs other processes enqueued: a thread
    /// of its own reads `PRAGMA data_version` (shared memory, no disk) this often and, when
    /// another connection committed, whether the newest job id moved, and wakes idle workers
    /// if so. `None` leaves them to their poll backoff (up to `poll_max`, 200 ms)
    /// (`JOBDB_WATCH_MS`, 0 = off).
    pub watch_every: Option<Duration>,
    /// Statements slower than this, on jobdb's connections and on those
    /// [`crate::sqlite::protect_process`] protects, are logged through `tracing` (warn) with
    /// their SQL text; `None` logs none. Every statement's duration is counted by kind either
    /// way (`JOBDB_SLOW_STATEMENT_MS`, 0 = off).
    pub slow_statement: Option<Duration>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            pragmas: Pragmas::default(),
            checkpoint_every: Some(Duration::from_millis(500)),
            wal_truncate_above: Some(16 * 1024 * 1024),
            wal_truncate_wait: Duration::from_secs(1),
            allow_network_filesystem: false,
            write_gate: true,
            watch_every: Some(Duration::from_millis(1)),
            slow_statement: Some(Duration::from_millis(100)),
        }
    }
}

impl SqliteOptions {
    /// The first setting that differs from its default, by name: what a PostgreSQL handle
    /// refuses.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn first_set(&self) -> Option<&'static str> {
        let d = SqliteOptions::default();
        let p = &self.pragmas;
        let dp = &d.pragmas;
        [
            (
                p.busy_timeout != dp.busy_timeout,
                "sqlite.pragmas.busy_timeout (JOBDB_BUSY_TIMEOUT_MS)",
            ),
            (
                p.synchronous != dp.synchronous,
                "sqlite.pragmas.synchronous (JOBDB_SYNCHRONOUS)",
            ),
            (
                p.cache_size_kib != dp.cache_size_kib,
                "sqlite.pragmas.cache_size_kib (JOBDB_CACHE_SIZE_KIB)",
            ),
            (
                p.mmap_size != dp.mmap_size,
                "sqlite.pragmas.mmap_size (JOBDB_MMAP_SIZE)",
            ),
            (
                p.journal_size_limit != dp.journal_size_limit,
                "sqlite.pragmas.journal_size_limit (JOBDB_JOURNAL_SIZE_LIMIT)",
            ),
            (p != dp, "sqlite.pragmas"),
            (
                self.checkpoint_every != d.checkpoint_every,
                "sqlite.checkpoint_every (JOBDB_CHECKPOINT_EVERY_MS)",
            ),
            (
                self.wal_truncate_above != d.wal_truncate_above,
                "sqlite.wal_truncate_above (JOBDB_WAL_TRUNCATE_BYTES)",
            ),
            (
                self.wal_truncate_wait != d.wal_truncate_wait,
                "sqlite.wal_truncate_wait (JOBDB_WAL_TRUNCATE_WAIT_MS)",
            ),
            (
                self.allow_network_filesystem != d.allow_network_filesystem,
                "sqlite.allow_network_filesystem (JOBDB_ALLOW_NETWORK_FS)",
            ),
            (
                self.write_gate != d.write_gate,
                "sqlite.write_gate (JOBDB_WRITE_GATE)",
            ),
            (
                self.watch_every != d.watch_every,
                "sqlite.watch_every (JOBDB_WATCH_MS)",
            ),
            (
                self.slow_statement != d.slow_statement,
                "sqlite.slow_statement (JOBDB_SLOW_STATEMENT_MS)",
            ),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }
}

/// Settings only PostgreSQL understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Wake idle workers of every process by `LISTEN`/`NOTIFY` when jobs are enqueued (the
    /// first idle worker starts one listening connection). Off: they poll
    /// (`JOBDB_PG_LISTEN=0`).
    pub listen: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { listen: true }
    }
}

impl PgOptions {
    /// The first setting that differs from its default, by name: what a SQLite handle refuses.
    pub(crate) fn first_set(&self) -> Option<&'static str> {
        (self != &PgOptions::default()).then_some("postgres.listen (JOBDB_PG_LISTEN)")
    }
}

/// The refusal of a setting of the other backend.
pub(crate) fn foreign(setting: &'static str, backend: &str, owner: &str) -> Error {
    Error::InvalidArgument {
        field: setting,
        reason: format!("is a {owner} setting; it means nothing for a {backend} database"),
    }
}
