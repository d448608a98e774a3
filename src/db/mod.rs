//! [`Db`]: the persistence handle. A pool with the backend's connection settings, the
//! process's writer with group commit (SQLite), the busy-retry loop, the WAL checkpointer
//! (SQLite), metrics and the wake-up signal of idle workers. [`crate::Queue`] sits on it; an
//! app uses it for its own transactions beside the queue's.
//!
//! # From async code (feature `tokio`)
//!
//! [`Db::write_async`], [`Db::read_async`], [`Db::transaction_async`] and
//! [`crate::AsyncQueue`] are the same transactions, awaited instead of blocked on; no runtime
//! thread waits for the database. Where each waits, and for how long:
//! - Writes (the app's and the queue's) on SQLite join the process's group commit like the
//!   sync calls; their results arrive through a oneshot channel, and the groups run on two
//!   helper threads of the handle (one commits, one syncs the WAL), never on a runtime
//!   thread. A write waits for the groups ahead of it, its own commit and (durable by
//!   default) the WAL sync: under a millisecond alone, a few milliseconds under load; while
//!   another process holds the database, up to the retry deadline (`Config::retry`, 30 s by
//!   default), then [`crate::Error::Busy`].
//! - Writes on PostgreSQL, reads on both backends and the caller's own non-group work run on
//!   tokio's blocking pool (`spawn_blocking`) as the sync call would: as long as the query
//!   takes, plus waiting for a pooled connection (`Config::connection_timeout`).
//!
//! Dropping a future does not cancel its write: an operation already queued still runs and
//! commits; its result is discarded. A panic inside the caller's closure is resumed in the
//! awaiting task, as the sync call would panic on the calling thread.

#[cfg(feature = "tokio")]
pub(crate) mod async_calls;
pub(crate) mod checkpoint;
pub(crate) mod combine;
pub(crate) mod gate;
mod mysql;
mod postgres;
mod sqlite;
pub(crate) mod ticket;
pub(crate) mod wal_sync;

use std::sync::{Arc, Once};

use diesel::r2d2::ConnectionManager;

use crate::db::combine::{Combiner, WriteCtx};
use crate::driver::{JobDriver, QueueConnection};
use crate::error::Result;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::pool::Config;
use crate::retry::{retry_busy, RetrySnapshot, RetryStats};
use crate::wakeup::Wakeup;

/// An r2d2 pool of `C` connections.
pub type Pool<C> = r2d2::Pool<ConnectionManager<C>>;

/// What opening a [`Db`] differs in per backend: the pool (pragmas and WAL on SQLite, the
/// session settings on PostgreSQL), the migrations, and what runs beside the handle (SQLite's
/// checkpointer, PostgreSQL's LISTEN thread). Crate-private, like the drivers: it seals
/// [`QueueConnection`].
pub(crate) trait DbBackend:
    JobDriver
    + crate::driver::BatchDriver
    + crate::driver::ManageDriver
    + crate::driver::ReadDriver
    + crate::driver::CopyDriver
    + diesel::r2d2::R2D2Connection
    + Sized
{
    /// Whether `url` names a database of this backend.
    fn accepts(url: &str) -> bool;
    /// Refuses settings of another backend that differ from their defaults.
    fn refuse_foreign(config: &Config) -> Result<()>;
    /// Builds the pool for `url`.
    fn build_pool(url: &str, config: &Config) -> Result<Pool<Self>>;
    /// Applies pending embedded migrations; the versions applied.
    fn migrate(db: &Inner<Self>) -> Result<Vec<String>>;
    /// The file of this pool's database (SQLite), where the write gate and the change
    /// watcher live; `None` for a server or an in-memory database.
    fn database_file(_pool: &Pool<Self>) -> Option<std::path::PathBuf> {
        None
    }
    /// The cross-process write gate for the database `file` (SQLite, when
    /// `config.sqlite.write_gate`; see `gate.rs`), or `None`.
    fn write_gate(_file: &std::path::Path, _config: &Config) -> Option<gate::WriteGate> {
        None
    }
    /// Starts what runs beside the handle (called once, after the handle is built).
    fn start(_db: &Arc<Inner<Self>>) {}
    /// Starts the cross-process wake-up listener, if this backend has one and the handle
    /// knows its URL (called by the first idle worker; runs once).
    fn listen(_db: &Arc<Inner<Self>>) {}
}

/// A cheap-to-clone handle to one database: every clone shares the pool, the writer, the
/// counters and the background threads, which stop when the last clone is dropped. Open one
/// per database per process and clone it.
pub struct Db<C: QueueConnection = diesel::SqliteConnection> {
    pub(crate) inner: Arc<Inner<C>>,
}

impl<C: QueueConnection> Clone for Db<C> {
    fn clone(&self) -> Self {
        Db {
            inner: self.inner.clone(),
        }
    }
}

impl<C: QueueConnection> std::fmt::Debug for Db<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &C::NAME)
            .field("config", &self.inner.config)
            .field("retry_stats", &self.inner.stats.snapshot())
            .finish_non_exhaustive()
    }
}

/// The shared state behind a [`Db`].
pub(crate) struct Inner<C: QueueConnection> {
    pub(crate) pool: Pool<C>,
    pub(crate) config: Config,
    pub(crate) stats: RetryStats,
    pub(crate) metrics: Metrics,
    /// Every write transaction of this handle runs through it: on SQLite group-committed on
    /// ONE writer connection; on PostgreSQL in parallel on pooled connections.
    ///
    /// Why one writer on SQLite: SQLite lets one transaction write at a time anyway, and in
    /// WAL mode a connection that did not make the previous commit finds the WAL changed and
    /// throws its whole page cache away, so N connections taking turns each start every
    /// transaction cold. One connection keeps its page cache and prepared statements warm;
    /// threads queue in-process instead of polling the file lock through SQLite's busy
    /// handler (which sleeps 1, 2, 5 … 100 ms per wait and lets unlucky threads starve for
    /// seconds); and operations that queue up while one commits are committed together (see
    /// `combine.rs`). Other processes still meet at the file lock (busy_timeout and the retry
    /// loop). Reads use the rest of the pool and never wait for the writer (WAL).
    ///
    /// Why not on PostgreSQL: it runs transactions in parallel, and group commit through one
    /// connection ran 16 workers at a fraction of the parallel rate (each operation paying a
    /// SAVEPOINT round trip); other processes' claims meet at `FOR UPDATE SKIP LOCKED`.
    pub(crate) writer: Combiner<C>,
    /// Taken around every write transaction, so this process's writers queue in the kernel
    /// behind other jobdb processes' instead of polling SQLite's lock (see `gate.rs`).
    pub(crate) gate: Option<gate::WriteGate>,
    /// Syncs the WAL for durable acknowledgements (SQLite with the default
    /// [`crate::Synchronous::Durable`]; see `wal_sync.rs`).
    pub(crate) wal_sync: Option<wal_sync::WalSync>,
    /// The database file (SQLite): where the change watcher connects.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) file: Option<std::path::PathBuf>,
    /// Wakes this process's idle workers when work arrives (see `wakeup.rs`).
    pub(crate) wakeup: Arc<Wakeup>,
    /// The URL the handle was opened with, when it was (not from a caller's pool): where a
    /// connection the server dropped is re-established, and where PostgreSQL's LISTEN thread
    /// connects. `None`: no reconnect in place, and idle workers poll.
    pub(crate) url: Option<String>,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // PostgreSQL's LISTEN thread
    pub(crate) listener: Once,
    /// The threads that combine and sync handed-over writes (async callers' always; sync
    /// callers' with durable acknowledgements): started with the handle then, else by the
    /// first async write.
    /// `None` inside when the system would not start them.
    pub(crate) writer_threads: std::sync::OnceLock<Option<combine::WriterThreads>>,
    /// Contended sync callers hand their writes to `writer_threads` (SQLite, durable; see
    /// `Combiner::submit`) instead of combining themselves.
    pub(crate) handoff: bool,
}

impl<C: QueueConnection> Db<C> {
    /// Opens the database at `url` (a SQLite path, `sqlite://…` or `file:` URI for
    /// `Db<SqliteConnection>`; a `postgres://` URL for `Db<PgConnection>`), builds the pool
    /// and, if `config.run_migrations`, applies pending migrations. A URL of the other
    /// backend is [`crate::Error::InvalidDatabaseUrl`]; to choose the backend by the URL at run
    /// time, use [`crate::open_any`].
    pub fn open(url: &str, config: Config) -> Result<Db<C>> {
        if !C::accepts(url) {
            return Err(crate::Error::InvalidDatabaseUrl {
                url: crate::pool::redact(url),
                reason: format!(
                    "this handle is for {}; the URL names another backend",
                    C::NAME
                ),
            });
        }
        C::refuse_foreign(&config)?;
        // One spelling of the URL from here on, for the pool and for the connections the
        // handle opens itself (a `mariadb://` URL becomes the `mysql://` one it means).
        let url = crate::pool::mysql_url(url);
        let pool = C::build_pool(&url, &config)?;
        Db::with_pool(pool, config, Some(url))
    }

    /// Wraps a pool the caller built (with [`crate::build_pool`], or with the same
    /// customizer) and, if `config.run_migrations`, applies pending migrations. Without the
    /// URL, a connection a PostgreSQL restart dropped is not replaced in place (the pool
    /// replaces it when r2d2 finds it broken) and idle workers poll instead of LISTENing.
    pub fn from_pool(pool: Pool<C>, config: Config) -> Result<Db<C>> {
        Db::with_pool(pool, config, None)
    }

    fn with_pool(pool: Pool<C>, config: Config, url: Option<String>) -> Result<Db<C>> {
        C::refuse_foreign(&config)?;
        let run_migrations = config.run_migrations;
        let file = C::database_file(&pool);
        let gate = file.as_deref().and_then(|f| C::write_gate(f, &config));
        let wal_sync = file
            .as_deref()
            .filter(|_| {
                cfg!(unix)
                    && C::GROUP_COMMIT
                    && config.sqlite.pragmas.synchronous == crate::Synchronous::Durable
            })
            .map(wal_sync::WalSync::new);
        // Measured with 16 workers: durable 11.7k jobs/s handing over against 8.7–9.1k
        // combining in turns (14.2k at NORMAL); alone, a caller still combines itself.
        let handoff = C::GROUP_COMMIT && wal_sync.is_some();
        let inner = Arc::new(Inner {
            pool,
            config,
            stats: RetryStats::default(),
            metrics: Metrics::default(),
            writer: Combiner::new(),
            gate,
            wal_sync,
            file,
            wakeup: Arc::new(Wakeup::default()),
            url,
            listener: Once::new(),
            writer_threads: std::sync::OnceLock::new(),
            handoff,
        });
        if handoff {
            inner
                .writer_threads
                .get_or_init(|| combine::WriterThreads::start(&inner));
        }
        let db = Db { inner };
        if run_migrations {
            db.migrate()?;
        }
        C::start(&db.inner);
        Ok(db)
    }

    /// `"sqlite"`, `"postgres"` or `"mysql"`.
    pub fn backend(&self) -> &'static str {
        C::NAME
    }

    /// Applies pending embedded migrations; returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<String>> {
        C::migrate(&self.inner)
    }

    /// The pool, for the caller's own queries (reads, or connections of its own).
    pub fn pool(&self) -> &Pool<C> {
        &self.inner.pool
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Transactions, busy retries and busy give-ups so far, over every clone of this handle.
    pub fn retry_stats(&self) -> RetrySnapshot {
        self.inner.stats.snapshot()
    }

    /// Counters and latency histograms of this handle's work (see [`crate::metrics`]).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot(self.inner.stats.snapshot())
    }

    /// Runs `f` as one write transaction of the app's own, the way jobdb runs its own: on
    /// SQLite `BEGIN IMMEDIATE` on the process's writer connection, group-committed with the
    /// queue's writes (each in its own savepoint), so the app's writes queue fairly in-process
    /// instead of sleeping in SQLite's busy handler behind jobdb's; on PostgreSQL a
    /// transaction on a pooled connection. `f` may call the connection-level API, e.g.
    /// `jobdb::queue::enqueue(conn, …)`, to enqueue atomically with its own rows; idle workers
    /// of this process are woken when it commits.
    ///
    /// Errors: `f` returns the app's own error type `E` (anything `From<jobdb::Error>`; with
    /// `?` on Diesel's errors inside, `jobdb::Error` itself). An `Err` from `f` rolls back
    /// `f`'s writes and comes back unchanged. The whole transaction is re-run while the
    /// database is busy (so `f` must be safe to run again: it only touches the database
    /// through `conn`); jobdb sees busy errors inside `f` only when `E` is `jobdb::Error`.
    /// A panic in `f` is caught: this write, and the operations group-committed with it, fail
    /// with [`crate::Error::Internal`] and are rolled back, and the writer goes on.
    ///
    /// `f` must be `Send + 'static` because another thread may run it in its group; a
    /// closure that borrows from the caller goes through [`Db::write_scoped`]. Code that opens
    /// its own transaction (`conn.immediate_transaction(…)`) cannot run inside this one
    /// (Diesel refuses a second `BEGIN`; `conn.transaction(…)` inside is a savepoint and
    /// works): call it through [`Db::transaction`], which runs it on the writer with no
    /// transaction around it. When `E` is `jobdb::Error`, such a closure fails with
    /// [`crate::Error::InvalidArgument`] saying so, its writes rolled back; with another `E`,
    /// Diesel's `AlreadyInTransaction` comes back inside it.
    ///
    /// ```no_run
    /// # fn main() -> jobdb::Result<()> {
    /// use diesel::connection::SimpleConnection;
    /// let db: jobdb::Db = jobdb::Db::open("app.sqlite3", jobdb::Config::default())?;
    /// let id = db.write(|conn| {
    ///     conn.batch_execute("UPDATE posts SET published = 1 WHERE id = 7")?;
    ///     jobdb::queue::enqueue(conn, &jobdb::NewJob::new("notify", &7)?)
    /// })?;
    /// # let _ = id; Ok(()) }
    /// ```
    pub fn write<T, E>(
        &self,
        f: impl FnMut(&mut C) -> std::result::Result<T, E> + Send + 'static,
    ) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<crate::Error> + Send + 'static,
    {
        let kept = Arc::new(std::sync::Mutex::new(None));
        let slot = kept.clone();
        let mut f = f;
        let done = self.inner.write("app_write", move |c| {
            // Each run starts clean: an error kept by an earlier run of a group that was then
            // re-run is not this run's.
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
            c.write_transaction(|c| f(c).map_err(|e| keep_app_error(e, &slot)))
        });
        let kept = kept.lock().unwrap_or_else(|p| p.into_inner()).take();
        let done = finish(done, kept);
        if done.is_ok() {
            self.inner.wakeup.notify();
        }
        done
    }

    /// As [`Db::write`], for a closure that borrows from the caller (or cannot be sent to
    /// another thread), such as `|conn| create_post(conn, &title, &body)`: it runs on the
    /// calling thread, alone on the writer connection (after the groups ahead of it), in its
    /// own `BEGIN IMMEDIATE` transaction, re-run whole while the database is busy, and is
    /// acknowledged as durably as [`Db::write`]. What it gives up is riding in a group with
    /// other threads' writes: another thread cannot run a closure that borrows from this
    /// one's stack.
    pub fn write_scoped<T, E>(
        &self,
        mut f: impl FnMut(&mut C) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        E: From<crate::Error> + 'static,
    {
        let mut kept = None;
        let done = self.inner.run("app_write", |c| {
            kept = None;
            c.write_transaction(|c| f(c).map_err(|e| keep_app_error_local(e, &mut kept)))
        });
        let done = finish(done, kept);
        if done.is_ok() {
            self.inner.wakeup.notify();
        }
        done
    }

    /// Runs `op` on the writer connection (SQLite) or a pooled connection (PostgreSQL),
    /// alone, with no transaction around it: for code that opens its own, such as an app
    /// function that calls `conn.immediate_transaction(…)`, or the queue's own functions. On
    /// SQLite it runs in turn with the handle's writes (after the groups ahead of it, and
    /// behind other processes' at the write gate), so its `BEGIN IMMEDIATE` finds the write
    /// lock free. Re-run whole while the database is busy when `E` is `jobdb::Error` (`op`
    /// must then be safe to run again); an error of another type comes back as it is. `op`
    /// may borrow from the caller; it must not call this handle (the writer is not
    /// re-entrant).
    pub fn transaction<T, E>(
        &self,
        name: &'static str,
        mut op: impl FnMut(&mut C) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        E: From<crate::Error> + 'static,
    {
        let mut kept = None;
        let done = self.inner.run(name, |c| {
            kept = None;
            op(c).map_err(|e| keep_app_error_local(e, &mut kept))
        });
        match (done, kept) {
            (Ok(v), _) => Ok(v),
            (Err(crate::Error::AppRollback), Some(e)) => Err(e),
            (Err(e), _) => Err(E::from(e)),
        }
    }

    /// Runs `op` on a pooled connection (never the writer), re-run on busy.
    pub fn read<T>(&self, name: &'static str, op: impl FnMut(&mut C) -> Result<T>) -> Result<T> {
        self.inner.read(name, op)
    }
}

impl<C: QueueConnection> Inner<C> {
    pub(crate) fn ctx(&self) -> WriteCtx<'_, C> {
        WriteCtx {
            pool: &self.pool,
            policy: &self.config.retry,
            stats: &self.stats,
            metrics: &self.metrics,
            slow: self.config.slow_transaction,
            reconnect: self.url.as_deref(),
            gate: self.gate.as_ref(),
            wal_sync: self.wal_sync.as_ref(),
        }
    }

    /// Runs `op` alone on the writer connection (for closures that cannot be sent to another
    /// thread), re-run whole while the database is busy.
    pub(crate) fn run<T>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut C) -> Result<T>,
    ) -> Result<T> {
        self.writer.direct(&self.ctx(), name, op)
    }

    /// Runs a write operation: on SQLite as part of a group commit on the writer connection
    /// (see `combine.rs`); on PostgreSQL as its own transaction on a pooled connection.
    pub(crate) fn write<T: Send + 'static>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut C) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if C::GROUP_COMMIT {
            let handoff = self
                .writer_threads
                .get()
                .and_then(Option::as_ref)
                .filter(|_| self.handoff);
            self.writer
                .submit(&self.ctx(), name, op, handoff.map(|t| &t.kick))
        } else {
            self.writer.pooled(&self.ctx(), name, op)
        }
    }

    /// Runs a read on a pooled connection (not the writer). A read on a connection the
    /// server dropped is run once more on a fresh one (reads are safe to repeat).
    pub(crate) fn read<T>(
        &self,
        name: &'static str,
        mut op: impl FnMut(&mut C) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.pool.get()?;
        let first = retry_busy(&self.config.retry, &self.stats, name, || op(&mut conn));
        match first {
            Err(e) if e.is_connection_lost() && self.url.is_some() => {
                crate::db::combine::heal(&mut *conn, &e, self.url.as_deref());
                retry_busy(&self.config.retry, &self.stats, name, || op(&mut conn))
            }
            r => r,
        }
    }
}

/// An error of the app's closure, seen by jobdb's retry loop: `jobdb::Error` itself passes
/// through (so a busy error inside is retried), any other type is kept in `slot` for the
/// caller and replaced by [`crate::Error::AppRollback`], which rolls the closure's writes
/// back and is never retried.
fn keep_app_error<E: 'static>(e: E, slot: &std::sync::Mutex<Option<E>>) -> crate::Error {
    match as_jobdb_error(e) {
        Ok(own) => own,
        Err(e) => {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            crate::Error::AppRollback
        }
    }
}

/// [`keep_app_error`] for a closure that stays on this thread.
fn keep_app_error_local<E: 'static>(e: E, slot: &mut Option<E>) -> crate::Error {
    match as_jobdb_error(e) {
        Ok(own) => own,
        Err(e) => {
            *slot = Some(e);
            crate::Error::AppRollback
        }
    }
}

/// `e` as a `jobdb::Error` if that is its type.
fn as_jobdb_error<E: 'static>(e: E) -> std::result::Result<crate::Error, E> {
    let mut e = Some(e);
    if let Some(own) = (&mut e as &mut dyn std::any::Any).downcast_mut::<Option<crate::Error>>() {
        if let Some(own) = own.take() {
            return Ok(own);
        }
    }
    match e {
        Some(e) => Err(e),
        None => Ok(crate::Error::AppRollback),
    }
}

/// Whether `e` is Diesel refusing a transaction inside the one jobdb opened.
fn opened_its_own_transaction(e: &crate::Error) -> bool {
    matches!(
        e.root(),
        crate::Error::Database(diesel::result::Error::AlreadyInTransaction)
    )
}

/// The caller's answer for one of the app's write transactions: the app's own error when the
/// closure's error rolled it back, a typed refusal when the closure opened a transaction of
/// its own inside jobdb's, else jobdb's result.
fn finish<T, E: From<crate::Error>>(
    done: crate::Result<T>,
    kept: Option<E>,
) -> std::result::Result<T, E> {
    match (done, kept) {
        (Ok(v), _) => Ok(v),
        (Err(crate::Error::AppRollback), Some(e)) => Err(e),
        (Err(e), _) if opened_its_own_transaction(&e) => {
            Err(E::from(crate::Error::InvalidArgument {
                field: "write",
                reason: "the closure opens a transaction of its own (conn.immediate_transaction), \
                     inside the one Db::write runs it in; call it through \
                     Db::transaction(name, …), which runs it on the writer with no transaction \
                     around it (conn.transaction(…) inside Db::write is a savepoint and works)"
                    .into(),
            }))
        }
        (Err(e), _) => Err(E::from(e)),
    }
}
