//! One backend's engine: its pool, the writer (group commit on SQLite, parallel pooled
//! writes on PostgreSQL), counters, and the wake-up signal of idle workers.

use std::sync::Arc;

use diesel::r2d2::ConnectionManager;
use diesel::sqlite::SqliteConnection;

use crate::checkpoint::CheckpointTarget;
use crate::combine::{Combiner, WriteCtx};
use crate::driver::sqlite::CheckpointOutcome;
use crate::driver::QueueConnection;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::models::NewJob;
use crate::pool::{Config, SqlitePool};
use crate::retry::{retry_busy, RetryStats};
use crate::wakeup::Wakeup;

/// One backend's pool, writer and counters. All queue logic runs through it.
pub(super) struct Engine<C: QueueConnection> {
    pub(super) pool: r2d2::Pool<ConnectionManager<C>>,
    pub(super) config: Config,
    pub(super) stats: RetryStats,
    pub(super) metrics: Metrics,
    /// Every write transaction of this handle runs on ONE writer connection, group-committed.
    ///
    /// Why one writer: SQLite lets one transaction write at a time anyway, and in WAL mode a
    /// connection that did not make the previous commit finds the WAL changed and throws its
    /// whole page cache away, so N connections taking turns each start every transaction
    /// cold. One connection keeps its page cache and prepared statements warm; threads queue
    /// in-process instead of polling the file lock through SQLite's busy handler (which sleeps
    /// 1, 2, 5 … 100 ms per wait and lets unlucky threads starve for seconds); and operations
    /// that queue up while one commits are committed together (see `combine.rs`). Other
    /// processes still meet at the file lock (busy_timeout and the retry loop). Reads use the
    /// rest of the pool and never wait for the writer (WAL).
    ///
    /// On PostgreSQL the same group commit saves a commit (and its WAL flush) per operation;
    /// other processes' claims meet at `FOR UPDATE SKIP LOCKED` and never wait on our rows.
    pub(super) writer: Combiner<C>,
    /// Wakes this process's idle workers when work arrives (see `wakeup.rs`).
    pub(super) wakeup: Arc<Wakeup>,
    /// PostgreSQL: the URL the LISTEN thread connects to (started by the first waiting
    /// worker). `None`: polling only.
    #[cfg(feature = "postgres")]
    pub(super) listen_url: Option<String>,
    #[cfg(feature = "postgres")]
    pub(super) listener: std::sync::Once,
}

impl CheckpointTarget for Engine<SqliteConnection> {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn on_writer(
        &self,
        f: &mut dyn FnMut(&mut SqliteConnection) -> Result<CheckpointOutcome>,
    ) -> Result<CheckpointOutcome> {
        self.writer.direct(&self.ctx(), "wal_truncate", f)
    }
}

impl<C: QueueConnection> Engine<C> {
    pub(super) fn new(pool: r2d2::Pool<ConnectionManager<C>>, config: Config) -> Engine<C> {
        Engine {
            pool,
            config,
            stats: RetryStats::default(),
            metrics: Metrics::default(),
            writer: Combiner::new(),
            wakeup: Arc::new(Wakeup::default()),
            #[cfg(feature = "postgres")]
            listen_url: None,
            #[cfg(feature = "postgres")]
            listener: std::sync::Once::new(),
        }
    }

    pub(super) fn ctx(&self) -> WriteCtx<'_, C> {
        WriteCtx {
            pool: &self.pool,
            policy: &self.config.retry,
            stats: &self.stats,
            metrics: &self.metrics,
            slow: self.config.slow_transaction,
            reconnect: self.reconnect_url(),
        }
    }

    /// PostgreSQL: the URL to reopen a dropped connection with.
    pub(super) fn reconnect_url(&self) -> Option<&str> {
        #[cfg(feature = "postgres")]
        return self.listen_url.as_deref();
        #[cfg(not(feature = "postgres"))]
        None
    }

    /// Runs `op` alone on the writer connection (for closures that cannot be sent to another
    /// thread), re-run whole while the database is busy.
    pub(super) fn run<T>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut C) -> Result<T>,
    ) -> Result<T> {
        self.writer.direct(&self.ctx(), name, op)
    }

    /// Runs a write operation: on SQLite as part of a group commit on the writer connection
    /// (see `combine.rs`); on PostgreSQL as its own transaction on a pooled connection, since
    /// PostgreSQL runs transactions in parallel (measured: group commit through one
    /// connection ran 16 workers at a fraction of the parallel rate, each operation paying
    /// a SAVEPOINT round trip).
    pub(super) fn write<T: Send + 'static>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut C) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if C::GROUP_COMMIT {
            self.writer.submit(&self.ctx(), name, op)
        } else {
            self.writer.pooled(&self.ctx(), name, op)
        }
    }

    /// Runs a read on a pooled connection (not the writer). A read on a connection the
    /// server dropped is run once more on a fresh one (reads are safe to repeat).
    pub(super) fn read<T>(
        &self,
        name: &'static str,
        mut op: impl FnMut(&mut C) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.pool.get()?;
        let first = retry_busy(&self.config.retry, &self.stats, name, || op(&mut conn));
        match first {
            Err(e) if e.is_connection_lost() && self.reconnect_url().is_some() => {
                crate::combine::heal(&mut *conn, &e, self.reconnect_url());
                retry_busy(&self.config.retry, &self.stats, name, || op(&mut conn))
            }
            r => r,
        }
    }

    pub(super) fn validate_all(&self, jobs: &[NewJob]) -> Result<()> {
        jobs.iter()
            .try_for_each(|j| j.validate(self.config.max_payload_bytes))
    }
}
