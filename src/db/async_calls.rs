//! The persistence handle's async twins (feature `tokio`): the same transactions, awaited
//! instead of blocked on, so a runtime thread never waits for the database.
//!
//! See [`crate::db`] for where each call waits, and for how long.

use std::sync::Arc;
use std::time::Duration;

use super::combine::{Kick, WriterThreads};
use super::{Db, Inner};
use crate::driver::QueueConnection;
use crate::error::{Error, Result};

impl<C: QueueConnection> Db<C> {
    /// [`Db::write`] for async code: the app's own write transaction (on SQLite group-committed
    /// with the queue's writes, `BEGIN IMMEDIATE`, re-run whole on busy), awaited without
    /// blocking the runtime. `f` may call the connection-level API, e.g.
    /// `jobdb::queue::enqueue(conn, …)`, to enqueue atomically with its own rows.
    ///
    /// ```no_run
    /// # async fn demo(db: jobdb::Db) -> jobdb::Result<()> {
    /// use diesel::connection::SimpleConnection;
    /// let id = db
    ///     .write_async(|conn| {
    ///         conn.batch_execute("UPDATE posts SET published = 1 WHERE id = 7")?;
    ///         jobdb::queue::enqueue(conn, &jobdb::NewJob::new("notify", &7)?)
    ///     })
    ///     .await?;
    /// # let _ = id; Ok(()) }
    /// ```
    pub async fn write_async<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut C) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let done = self
            .inner
            .write_async("app_write", move |c| c.write_transaction(|c| f(c)))
            .await;
        if done.is_ok() {
            self.inner.wakeup.notify();
        }
        done
    }

    /// [`Db::read`] for async code: `op` on a pooled connection (never the writer), on the
    /// blocking pool, re-run on busy.
    pub async fn read_async<T: Send + 'static>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut C) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.inner.read_async(name, op).await
    }

    /// [`Db::transaction`] for async code: `op` alone on the writer (SQLite) or a pooled
    /// connection (PostgreSQL), on the blocking pool. `op` opens its transaction itself.
    pub async fn transaction_async<T: Send + 'static>(
        &self,
        name: &'static str,
        op: impl FnMut(&mut C) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || inner.run(name, op)).await?
    }
}

impl<C: QueueConnection> Inner<C> {
    /// [`Inner::write`] without blocking: on SQLite a group-commit task answered through a
    /// oneshot channel, on PostgreSQL a pooled transaction on the blocking pool.
    pub(crate) async fn write_async<T: Send + 'static>(
        self: &Arc<Self>,
        name: &'static str,
        op: impl FnMut(&mut C) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if !C::GROUP_COMMIT {
            let inner = self.clone();
            return blocking(move || inner.writer.pooled(&inner.ctx(), name, op)).await?;
        }
        let Some(kick) = self.kicker() else {
            // No writer threads: the sync path, on the blocking pool.
            let inner = self.clone();
            return blocking(move || inner.write(name, op)).await?;
        };
        let reply = self.writer.submit_async(name, op, kick.clone());
        kick();
        reply.await.unwrap_or_else(|_| {
            Err(Error::Internal {
                what: "group commit",
                reason: "the operation was dropped unanswered (a panic in its group)".into(),
            })
        })
    }

    /// [`Inner::read`] on the blocking pool.
    pub(crate) async fn read_async<T: Send + 'static>(
        self: &Arc<Self>,
        name: &'static str,
        op: impl FnMut(&mut C) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.clone();
        blocking(move || inner.read(name, op)).await?
    }

    /// The kick of this handle's async writes (its writer threads start on first use);
    /// `None` if they could not start.
    fn kicker(self: &Arc<Self>) -> Option<Kick> {
        self.writer_threads
            .get_or_init(|| WriterThreads::start(self))
            .as_ref()
            .map(WriterThreads::kick)
    }

    /// Waits without blocking until work may have arrived since `seen`, or `timeout`.
    pub(crate) async fn wait_for_work_async(&self, seen: u64, timeout: Duration) -> bool {
        self.wakeup.wait_async(seen, timeout).await
    }
}

/// Runs `f` on tokio's blocking pool. A panic in `f` is resumed here; a runtime that shut
/// down first is an [`Error::Internal`].
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Internal {
            what: "blocking call",
            reason: "the runtime shut down before the call finished".into(),
        }),
    }
}
