//! Group commit for futures: an async caller's operation joins the same queue as the blocked
//! threads', and its result comes back through a oneshot channel, so no runtime thread waits
//! for the writer.
//!
//! A thread that queues an operation combines itself when nobody else does. A future cannot
//! (running a group blocks on SQLite), so wherever the sync protocol would wake a waiting
//! caller to combine (`kick`), an async operation wakes the handle's combining thread
//! instead, and a second thread runs the WAL sync for the durable operations it committed
//! (so the next group commits while the last one syncs, as with combining threads). Two
//! threads per handle, started by the first async write, rather than a `spawn_blocking` per
//! operation: a burst of a thousand writes would otherwise start hundreds of threads from the
//! runtime thread, and starting threads is what stalled it.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{lock, Combiner, Task, Wake, WriteCtx, EXTRA_ROUNDS, MAX_GROUP};
use crate::db::Inner;
use crate::driver::QueueConnection;
use crate::error::Result;

/// Wakes the combining thread; stored in each async task as its `kick`.
pub(crate) type Kick = Arc<dyn Fn() + Send + Sync>;

/// A wake-up flag a helper thread waits on: set before the notify, so none is lost.
#[derive(Default)]
pub(crate) struct Signal {
    raised: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    /// Raises the flag; wakes the thread only if it was down (a raised flag is seen anyway),
    /// so a burst of kicks costs one wake-up, not a system call each.
    pub(crate) fn raise(&self) {
        let was = std::mem::replace(&mut *lock(&self.raised), true);
        if !was {
            self.cv.notify_one();
        }
    }

    /// Waits until raised (and lowers it), or a second passes: false then, so the thread can
    /// see whether its handle is gone.
    fn wait(&self) -> bool {
        let raised = lock(&self.raised);
        let (mut raised, _) = self
            .cv
            .wait_timeout_while(raised, Duration::from_secs(1), |r| !*r)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *raised)
    }
}

/// The two helper threads of a handle's async writes: one combines, one syncs the WAL.
pub(crate) struct AsyncHelpers {
    combine: Arc<Signal>,
    flush: Arc<Signal>,
}

impl AsyncHelpers {
    /// Starts both threads for `inner` (held weakly: they end within a second of the handle).
    pub(crate) fn start<C: QueueConnection>(inner: &Arc<Inner<C>>) -> AsyncHelpers {
        let helpers = AsyncHelpers {
            combine: Arc::new(Signal::default()),
            flush: Arc::new(Signal::default()),
        };
        let (combine, flush) = (helpers.combine.clone(), helpers.flush.clone());
        spawn_helper(
            "jobdb-async-combine",
            Arc::downgrade(inner),
            combine.clone(),
            {
                let flush = flush.clone();
                move |inner: &Inner<C>| {
                    if inner.writer.help(&inner.ctx()) {
                        flush.raise();
                    }
                }
            },
        );
        spawn_helper(
            "jobdb-async-sync",
            Arc::downgrade(inner),
            flush,
            |inner: &Inner<C>| inner.writer.flush_durable(&inner.ctx()),
        );
        helpers
    }

    /// The kick of an async task: wakes the combining thread.
    pub(crate) fn kick(&self) -> Kick {
        let combine = self.combine.clone();
        Arc::new(move || combine.raise())
    }
}

fn spawn_helper<C: QueueConnection>(
    name: &str,
    inner: Weak<Inner<C>>,
    signal: Arc<Signal>,
    work: impl Fn(&Inner<C>) + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            let raised = signal.wait();
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if raised {
                work(&inner);
            }
        });
    if let Err(e) = spawned {
        // Without it async writes would wait for a sync caller to combine: say so loudly.
        tracing::error!(error = %e, "cannot start the async writer thread {name}");
    }
}

impl<C: QueueConnection> Combiner<C> {
    /// Queues `f` for the next group and returns where its result will arrive (after the
    /// group committed, and for durable operations after the WAL sync covering it). The
    /// caller then calls `kick` once, so a combiner runs even if none is running now.
    pub(crate) fn submit_async<T, F>(
        &self,
        name: &'static str,
        f: F,
        kick: Kick,
    ) -> oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnMut(&mut C) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let wake = Wake::Future {
            reply: Mutex::new(Some(tx)),
            kick,
        };
        lock(&self.pending).push_back(Arc::new(Task::new(name, f, wake)));
        rx
    }

    /// Runs queued groups if nobody holds the writer (a holder runs them, or kicks the next
    /// caller when it lets go, so returning at once loses nothing), then hands over. Returns
    /// whether durable operations wait for a WAL sync. Blocks.
    pub(crate) fn help(&self, ctx: &WriteCtx<'_, C>) -> bool {
        let Some(mut writer) = self.writer.try_lock() else {
            return false;
        };
        for _ in 0..=EXTRA_ROUNDS {
            let group: Vec<_> = {
                let mut pending = lock(&self.pending);
                let n = pending.len().min(MAX_GROUP);
                pending.drain(..n).collect()
            };
            if group.is_empty() {
                break;
            }
            self.run_group(&mut writer, ctx, &group);
            // Durable operations wait for the sync: start it rather than run more first.
            if !lock(&self.durable).is_empty() {
                break;
            }
        }
        drop(writer);
        if let Some(next) = lock(&self.pending).front() {
            next.kick();
        }
        !lock(&self.durable).is_empty()
    }
}
