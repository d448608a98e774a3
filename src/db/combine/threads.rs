//! The handle's two writer threads (SQLite): one runs queued groups whenever it is kicked,
//! the other runs the WAL sync for the durable operations the first committed, so the next
//! group commits while the last one syncs. Async callers always hand their operations to
//! them (a future cannot block to combine); with durable acknowledgements, sync callers do
//! too when contended (see `Combiner::submit`).

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use super::{lock, Combiner, Task, Wake, WriteCtx, EXTRA_ROUNDS};
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

/// The two writer threads of a handle: one combines, one syncs the WAL.
pub(crate) struct WriterThreads {
    combine: Arc<Signal>,
    flush: Arc<Signal>,
    /// Wakes the combining thread: the kick of every handed-over task.
    pub(crate) kick: Kick,
}

impl WriterThreads {
    /// Starts both threads for `inner` (held weakly: they end within a second of the handle);
    /// `None` if the system would not start them.
    pub(crate) fn start<C: QueueConnection>(inner: &Arc<Inner<C>>) -> Option<WriterThreads> {
        let combine = Arc::new(Signal::default());
        let kick: Kick = {
            let combine = combine.clone();
            Arc::new(move || combine.raise())
        };
        let helpers = WriterThreads {
            combine,
            flush: Arc::new(Signal::default()),
            kick,
        };
        let (combine, flush) = (helpers.combine.clone(), helpers.flush.clone());
        let combining = spawn_helper("jobdb-combine", Arc::downgrade(inner), combine.clone(), {
            let flush = flush.clone();
            move |inner: &Inner<C>| {
                if inner.writer.help(&inner.ctx()) {
                    flush.raise();
                }
            }
        });
        let syncing = spawn_helper(
            "jobdb-wal-sync",
            Arc::downgrade(inner),
            flush,
            |inner: &Inner<C>| inner.writer.flush_durable(&inner.ctx()),
        );
        (combining && syncing).then_some(helpers)
    }

    /// A task's kick: wakes the combining thread (the async calls').
    #[cfg(feature = "tokio")]
    pub(crate) fn kick(&self) -> Kick {
        self.kick.clone()
    }
}

fn spawn_helper<C: QueueConnection>(
    name: &str,
    inner: Weak<Inner<C>>,
    signal: Arc<Signal>,
    work: impl Fn(&Inner<C>) + Send + 'static,
) -> bool {
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
    match spawned {
        Ok(_) => true,
        Err(e) => {
            // The handle then does without (sync callers combine themselves, async ones run
            // them on the blocking pool): say so loudly.
            tracing::error!(error = %e, "cannot start the writer thread {name}");
            false
        }
    }
}
impl<C: QueueConnection> Combiner<C> {
    /// Waits (blocked) for `task`, queued already, to be run by the combining thread; a kick
    /// (the front of the queue and nobody combining) wakes that thread again rather than
    /// combining here. Used under contention with durable acknowledgements: every caller
    /// waits for the WAL sync anyway, and one thread that keeps combining while callers wait
    /// builds groups several times larger than callers that take turns (each woken caller
    /// would commit its own small group first).
    pub(super) fn wait_handoff<T, F>(&self, task: &Task<T, F>, kick: &Kick) -> Result<T> {
        kick();
        let Wake::Thread(cv) = &task.wake else {
            return Err(super::no_result());
        };
        let mut st = lock(&task.state);
        loop {
            while !st.done && !st.kicked {
                st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.done {
                return st.result.take().unwrap_or_else(|| Err(super::no_result()));
            }
            st.kicked = false;
            kick();
        }
    }

    /// Runs queued groups if nobody holds the writer (a holder runs them, or kicks the next
    /// caller when it lets go, so returning at once loses nothing), then hands over. Returns
    /// whether durable operations wait for a WAL sync. Blocks.
    pub(crate) fn help(&self, ctx: &WriteCtx<'_, C>) -> bool {
        let Some(mut writer) = self.writer.try_lock() else {
            return false;
        };
        for _ in 0..=EXTRA_ROUNDS {
            let Some((group, held)) = self.next_group(ctx) else {
                break;
            };
            self.run_group(&mut writer, ctx, &group, held);
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
