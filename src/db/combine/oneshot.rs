//! Group commit for futures: an async caller's operation joins the same queue as the blocked
//! threads', and its result comes back through a oneshot channel, so no runtime thread waits
//! for the writer.
//!
//! A thread that queues an operation combines itself when nobody else does. A future cannot
//! (running a group blocks on SQLite), so wherever the sync protocol would wake a waiting
//! caller to combine (`kick`), an async operation wakes the handle's writer threads instead
//! (`threads.rs`), rather than a `spawn_blocking` per operation: a burst of a thousand writes
//! would otherwise start hundreds of threads from the runtime thread, and starting threads is
//! what stalled it.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::threads::Kick;
use super::{lock, Combiner, Task, Wake};
use crate::driver::QueueConnection;
use crate::error::Result;

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
}
