//! Waking idle workers when work arrives, instead of letting them sleep out their poll delay.
//!
//! In one process, every enqueue (and retry, resume) through a [`crate::Queue`] bumps a
//! counter and wakes the workers of every clone of that queue. Across processes, on
//! PostgreSQL, enqueues also `NOTIFY jobdb_enqueued` in their transaction (delivered at
//! commit), and a listener thread with a connection of its own `LISTEN`s and bumps the same
//! counter; on SQLite a watcher thread reads `PRAGMA data_version` every millisecond and bumps
//! it when another process enqueued. Polling stays as the fallback: a wait always ends after its timeout.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A counter of "work may have arrived" events, with waiting.
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    seq: Mutex<u64>,
    changed: Condvar,
    /// The same events for async waiters (feature `tokio`).
    #[cfg(feature = "tokio")]
    changed_async: tokio::sync::Notify,
}

impl Wakeup {
    /// The current count: read it before looking for work, then [`Wakeup::wait`] with it, so
    /// an event between the two is not missed.
    pub(crate) fn seen(&self) -> u64 {
        *self.seq.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Work may have arrived: wake every waiter.
    pub(crate) fn notify(&self) {
        *self.seq.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
        #[cfg(feature = "tokio")]
        self.changed_async.notify_waiters();
    }

    /// [`Wakeup::wait`] for async waiters: the same events, awaited.
    #[cfg(feature = "tokio")]
    pub(crate) async fn wait_async(&self, seen: u64, timeout: Duration) -> bool {
        let notified = self.changed_async.notified();
        tokio::pin!(notified);
        // Registered before the count is checked, so a notify in between is not missed.
        notified.as_mut().enable();
        if self.seen() != seen {
            return true;
        }
        tokio::select! {
            _ = notified => true,
            _ = tokio::time::sleep(timeout) => self.seen() != seen,
        }
    }

    /// Waits until the count moves past `seen` or `timeout` passes. Returns whether it moved.
    pub(crate) fn wait(&self, seen: u64, timeout: Duration) -> bool {
        let guard = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |seq| *seq == seen)
            .unwrap_or_else(|p| p.into_inner());
        *guard != seen
    }
}

/// Starts the SQLite change watcher: a connection of its own on `file` that reads
/// `PRAGMA data_version` every `every` and, when another connection has committed since,
/// whether the newest job id changed; if it did (an enqueue, by any process), it bumps
/// `wakeup`. Runs until the queue is dropped.
///
/// Why `data_version`: it is read from the WAL index in shared memory, so a poll costs a few
/// microseconds and no I/O, where a claim on every poll would take the write lock. Why the
/// job id on top: other processes' heartbeats and completions change `data_version` all the
/// time, and waking idle workers for those would make them claim in vain.
pub(crate) fn start_sqlite_watcher(
    file: std::path::PathBuf,
    every: Duration,
    wakeup: std::sync::Weak<Wakeup>,
) {
    use crate::driver::sqlite::ChangeWatch;
    // Opened here, on the caller's thread, so that an enqueue after the caller's
    // `work_signal()` is never taken for the watch's starting point.
    let first = ChangeWatch::open(&file);
    let spawned = std::thread::Builder::new()
        .name("jobdb-watch".into())
        .spawn(move || {
            let mut opened = first;
            let mut backoff = Duration::from_millis(100);
            loop {
                match opened {
                    Ok(mut watch) => {
                        backoff = Duration::from_millis(100);
                        if !relay_changes(&mut watch, every, &wakeup) {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the change watcher; workers poll")
                    }
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if wakeup.strong_count() == 0 {
                    return;
                }
                opened = ChangeWatch::open(&file);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the change watcher thread; workers poll");
    }
}

/// Polls `watch` every `every` and wakes workers on new jobs. Returns false when the queue is
/// gone, true when the watch failed (to be reopened).
fn relay_changes(
    watch: &mut crate::driver::sqlite::ChangeWatch,
    every: Duration,
    wakeup: &std::sync::Weak<Wakeup>,
) -> bool {
    loop {
        std::thread::sleep(every);
        let Some(w) = wakeup.upgrade() else {
            return false;
        };
        match watch.new_jobs() {
            Ok(true) => w.notify(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the change watcher failed; reopening");
                return true;
            }
        }
    }
}

/// Starts the PostgreSQL listener: a connection of its own that `LISTEN`s on the enqueue
/// channel and bumps `wakeup` on each notification, until the queue is dropped. A lost
/// connection (server restart) is re-established with a backoff of 100 ms doubling to 5 s;
/// meanwhile workers fall back to polling.
#[cfg(feature = "postgres")]
pub(crate) fn start_postgres_listener(url: String, wakeup: std::sync::Weak<Wakeup>) {
    use diesel::{Connection, PgConnection, RunQueryDsl};
    let spawned = std::thread::Builder::new()
        .name("jobdb-listen".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(100);
            while wakeup.strong_count() > 0 {
                let listening = PgConnection::establish(&url)
                    .map_err(|e| e.to_string())
                    .and_then(|mut c| {
                        diesel::sql_query(crate::driver::postgres::LISTEN_ENQUEUED)
                            .execute(&mut c)
                            .map(|_| c)
                            .map_err(|e| e.to_string())
                    });
                match listening {
                    Ok(mut conn) => {
                        backoff = Duration::from_millis(100);
                        // Returns when the queue is gone or the connection broke.
                        if !relay_notifications(&mut conn, &wakeup) {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed; workers poll meanwhile"),
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the LISTEN thread; workers poll");
    }
}

/// Checks for notifications every millisecond (a non-blocking local socket read, no query)
/// and wakes workers.
/// Returns false when the queue is gone, true when the connection broke.
#[cfg(feature = "postgres")]
fn relay_notifications(conn: &mut diesel::PgConnection, wakeup: &std::sync::Weak<Wakeup>) -> bool {
    loop {
        let Some(w) = wakeup.upgrade() else {
            return false;
        };
        let mut arrived = false;
        for n in conn.notifications_iter() {
            match n {
                Ok(_) => arrived = true,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    return true;
                }
            }
        }
        if arrived {
            w.notify();
        }
        drop(w);
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_notify_ends_the_wait_and_none_is_missed_in_between() {
        let w = Arc::new(Wakeup::default());
        let seen = w.seen();
        w.notify(); // before the wait: still seen by it
        assert!(w.wait(seen, Duration::from_secs(5)));
        let seen = w.seen();
        let started = Instant::now();
        assert!(!w.wait(seen, Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w2.notify();
        });
        assert!(w.wait(seen, Duration::from_secs(5)));
        t.join().unwrap();
    }
}
