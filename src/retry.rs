//! Retrying whole write transactions that failed because the database was busy.
//!
//! The loop here never re-runs a statement inside a transaction: the operation it is given is
//! a whole transaction (BEGIN IMMEDIATE … COMMIT), which either committed or changed nothing.
//! Retried are the errors after which re-running the whole transaction is safe and may
//! succeed: SQLite's SQLITE_BUSY (see [`Error::is_busy`]) and PostgreSQL's serialization
//! failure (40001) and deadlock (40P01), where the server rolled the transaction back.
//! Everything else, SQLITE_LOCKED included, goes straight back to the caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long to wait between tries of a busy transaction, and when to give up.
///
/// Delays grow exponentially from `initial_delay` by 2× per try up to `max_delay`, with
/// "equal jitter": half of each delay is fixed, half random, so waiters that collided spread
/// out while each still backs off. A try can itself wait up to the connection's
/// `busy_timeout` inside SQLite, so total time can pass `deadline` by at most one busy_timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the second try.
    pub initial_delay: Duration,
    /// Cap on one delay.
    pub max_delay: Duration,
    /// Give up after this many tries in all (the first included).
    pub max_attempts: u32,
    /// Give up when this much time has passed since the first try began.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(250),
            max_attempts: 1_000,
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before try number `retry + 2` (retry 0 is the first retry), jittered with
    /// `random` in `[0, 1)`. Pure, so the schedule is testable without sleeping.
    pub fn delay(&self, retry: u32, random: f64) -> Duration {
        let exp = self
            .initial_delay
            .saturating_mul(2u32.saturating_pow(retry.min(30)));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        half + half.mul_f64(random.clamp(0.0, 1.0))
    }
}

/// Counters of the retry loop, shared by everything using one queue handle.
#[derive(Debug, Default)]
pub struct RetryStats {
    transactions: AtomicU64,
    busy_retries: AtomicU64,
    busy_exhausted: AtomicU64,
}

/// A copy of [`RetryStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetrySnapshot {
    /// Write transactions that committed or failed for a reason other than busy.
    pub transactions: u64,
    /// Tries that hit "database is locked" and were run again.
    pub busy_retries: u64,
    /// Operations that gave up with [`Error::Busy`].
    pub busy_exhausted: u64,
}

impl RetryStats {
    /// Reads the counters.
    pub fn snapshot(&self) -> RetrySnapshot {
        RetrySnapshot {
            transactions: self.transactions.load(Ordering::Relaxed),
            busy_retries: self.busy_retries.load(Ordering::Relaxed),
            busy_exhausted: self.busy_exhausted.load(Ordering::Relaxed),
        }
    }
}

/// Runs `transaction` until it succeeds, fails with a non-busy error, or the policy gives up
/// (then [`Error::Busy`]). `name` labels the tracing events ("claim", "complete", …).
pub fn retry_busy<T>(
    policy: &RetryPolicy,
    stats: &RetryStats,
    name: &'static str,
    mut transaction: impl FnMut() -> Result<T>,
) -> Result<T> {
    let started = Instant::now();
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        match transaction() {
            Ok(v) => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                return Ok(v);
            }
            Err(e) if e.is_retryable() => {}
            Err(e) => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        let waited = started.elapsed();
        let delay = policy.delay(attempts - 1, fastrand::f64());
        if attempts >= policy.max_attempts || waited + delay > policy.deadline {
            stats.busy_exhausted.fetch_add(1, Ordering::Relaxed);
            // The caller receives Error::Busy and decides how loudly to report it.
            tracing::debug!(
                transaction = name,
                attempts,
                ?waited,
                "database stayed busy; giving up"
            );
            return Err(Error::Busy { attempts, waited });
        }
        stats.busy_retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            transaction = name,
            attempt = attempts,
            ?delay,
            "database busy; retrying the whole transaction"
        );
        std::thread::sleep(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap_and_jitter_stays_within_half() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(4),
            max_delay: Duration::from_millis(64),
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay(0, 0.0), Duration::from_millis(2));
        assert_eq!(p.delay(0, 1.0), Duration::from_millis(4));
        assert_eq!(p.delay(3, 1.0), Duration::from_millis(32));
        assert_eq!(p.delay(10, 1.0), Duration::from_millis(64));
        assert_eq!(p.delay(10, 0.0), Duration::from_millis(32));
        assert_eq!(p.delay(u32::MAX, 0.5), Duration::from_millis(48));
    }
}
