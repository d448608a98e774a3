//! In-process metrics: counters and latency histograms, lock-free, read as a snapshot.
//!
//! jobdb depends on no metrics crate. Export a snapshot from your own code, e.g. with the
//! `metrics` facade: `gauge!("jobdb_claim_p99_ms").set(q.metrics().claim_latency.p99_ms)`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::retry::RetrySnapshot;

/// Buckets of powers of two microseconds: bucket `i` holds values in `[2^(i-1), 2^i)` µs;
/// 40 buckets reach about 6 days.
const BUCKETS: usize = 40;

/// A latency histogram with power-of-two microsecond buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Count, mean, p50, p99 and max. Percentiles are the upper bound of their bucket, so
    /// they over-estimate by less than 2×.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let pct = |p: f64| -> f64 {
            let rank = ((count as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return (1u64 << i) as f64 / 1000.0;
                }
            }
            0.0
        };
        HistogramSnapshot {
            count,
            mean_ms: self.sum_us.load(Ordering::Relaxed) as f64 / count.max(1) as f64 / 1000.0,
            p50_ms: if count == 0 { 0.0 } else { pct(0.50) },
            p99_ms: if count == 0 { 0.0 } else { pct(0.99) },
            max_ms: self.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

impl Histogram {
    /// Cumulative bucket counts for the Prometheus text format: `(upper bound in seconds,
    /// values at or below it)`, then the sum in seconds and the count. Bucket `i` holds
    /// whole microseconds below `2^i`, so its inclusive bound is `2^i - 1` µs: exact.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut seen = 0;
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                seen += b.load(Ordering::Relaxed);
                (((1u64 << i) - 1) as f64 / 1e6, seen)
            })
            .collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, seen)
    }
}

/// A [`Histogram`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    /// Values recorded.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median (bucket upper bound), ms.
    pub p50_ms: f64,
    /// 99th percentile (bucket upper bound), ms.
    pub p99_ms: f64,
    /// Largest value, ms.
    pub max_ms: f64,
}

/// The metrics of one [`crate::Queue`] (shared by its clones).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Whole `claim` calls, queueing included, as the caller sees them.
    pub claim_latency: Histogram,
    /// How long each write transaction held SQLite's write lock (from BEGIN IMMEDIATE being
    /// granted to COMMIT; on PostgreSQL the whole transaction).
    pub lock_hold: Histogram,
    /// How long each write transaction waited for SQLite's write lock (inside BEGIN IMMEDIATE,
    /// in SQLite's busy handler): time spent behind other processes' writers.
    pub lock_wait: Histogram,
    /// Write transactions that held the lock longer than the slow threshold.
    pub slow_transactions: AtomicU64,
    /// Operations committed (several per transaction under group commit).
    pub operations: AtomicU64,
    /// Background checkpoint rounds.
    pub checkpoints: AtomicU64,
    /// WAL size after the last background checkpoint, bytes.
    pub wal_bytes: AtomicU64,
    /// Largest WAL size seen by the checkpointer, bytes.
    pub wal_bytes_max: AtomicU64,
    /// RESTART checkpoints that reset an oversize WAL (named when they were TRUNCATEs).
    pub wal_truncates: AtomicU64,
    /// RESTART checkpoints that gave up because a reader held the old WAL.
    pub wal_truncate_busy: AtomicU64,
    /// `fdatasync`s of the WAL run for durable acknowledgements (SQLite, `synchronous`
    /// durable): fewer than the commits they covered.
    pub wal_syncs: AtomicU64,
    /// How long a durable operation waited, after its commit, for the WAL sync covering it.
    pub sync_wait: Histogram,
    /// Attempts this handle recorded, by how they ended.
    pub outcomes: Outcomes,
}

/// Attempts one handle recorded, by how they ended: what `jobdb_attempts_finished_total`
/// counts, so that `rate()` over it is each process's throughput by outcome.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Completed: the job succeeded.
    pub succeeded: AtomicU64,
    /// Failed and queued again for a retry.
    pub retried: AtomicU64,
    /// Failed for the last time: the job is dead.
    pub dead: AtomicU64,
    /// Ended as cancelled (a cancel was requested while it ran).
    pub cancelled: AtomicU64,
    /// Refused: the lease was lost, so the result was not recorded.
    pub refused: AtomicU64,
    /// Leases of others that ran out and were reaped by this handle.
    pub expired: AtomicU64,
}

impl Outcomes {
    /// Counts a completion's result.
    pub(crate) fn completion(&self, r: &crate::Result<()>) {
        let counter = match r {
            Ok(()) => &self.succeeded,
            Err(e) if e.is_cancelled() => &self.cancelled,
            Err(e) if e.is_lease_lost() => &self.refused,
            Err(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure's result.
    pub(crate) fn failure(&self, r: &crate::Result<crate::JobState>) {
        let counter = match r {
            Ok(crate::JobState::Dead) => &self.dead,
            Ok(crate::JobState::Cancelled) => &self.cancelled,
            Ok(_) => &self.retried,
            Err(e) if e.is_lease_lost() => &self.refused,
            Err(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> OutcomeCounts {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OutcomeCounts {
            succeeded: n(&self.succeeded),
            retried: n(&self.retried),
            dead: n(&self.dead),
            cancelled: n(&self.cancelled),
            refused: n(&self.refused),
            expired: n(&self.expired),
        }
    }

    /// `(outcome label, count)` for each outcome, as `/metrics` labels them.
    pub fn counts(&self) -> [(&'static str, u64); 6] {
        let c = self.snapshot();
        [
            ("succeeded", c.succeeded),
            ("retried", c.retried),
            ("dead", c.dead),
            ("cancelled", c.cancelled),
            ("refused", c.refused),
            ("expired", c.expired),
        ]
    }
}

/// [`Outcomes`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // the fields are Outcomes' own
pub struct OutcomeCounts {
    pub succeeded: u64,
    pub retried: u64,
    pub dead: u64,
    pub cancelled: u64,
    pub refused: u64,
    pub expired: u64,
}

/// Everything measured, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Transactions, busy retries, busy give-ups.
    pub retries: RetrySnapshot,
    /// Write operations committed.
    pub operations: u64,
    /// Claim latency.
    pub claim_latency: HistogramSnapshot,
    /// Write-lock hold time per transaction.
    pub lock_hold: HistogramSnapshot,
    /// Write-lock wait time per transaction (SQLite).
    pub lock_wait: HistogramSnapshot,
    /// Transactions over the slow threshold.
    pub slow_transactions: u64,
    /// The WAL as the background checkpointer sees it.
    pub wal: WalSnapshot,
    /// Wait after commit for the WAL sync, per durable operation (SQLite, durable).
    pub sync_wait: HistogramSnapshot,
    /// Attempts this handle recorded, by how they ended.
    pub outcomes: OutcomeCounts,
}

/// The WAL, as seen by the background checkpointer (all zero when it is off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WalSnapshot {
    /// Checkpoint rounds run.
    pub checkpoints: u64,
    /// WAL size after the last round, bytes.
    pub bytes: u64,
    /// Largest WAL size seen, bytes.
    pub bytes_max: u64,
    /// Oversize WALs reset by a RESTART checkpoint (named when they were TRUNCATEs).
    pub truncates: u64,
    /// RESTART checkpoints that a long read transaction made give up.
    pub truncate_busy: u64,
    /// `fdatasync`s for durable acknowledgements.
    pub syncs: u64,
}

impl Metrics {
    /// A snapshot, with the retry counters kept alongside.
    pub fn snapshot(&self, retries: RetrySnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            retries,
            operations: self.operations.load(Ordering::Relaxed),
            claim_latency: self.claim_latency.snapshot(),
            lock_hold: self.lock_hold.snapshot(),
            lock_wait: self.lock_wait.snapshot(),
            slow_transactions: self.slow_transactions.load(Ordering::Relaxed),
            wal: WalSnapshot {
                checkpoints: self.checkpoints.load(Ordering::Relaxed),
                bytes: self.wal_bytes.load(Ordering::Relaxed),
                bytes_max: self.wal_bytes_max.load(Ordering::Relaxed),
                truncates: self.wal_truncates.load(Ordering::Relaxed),
                truncate_busy: self.wal_truncate_busy.load(Ordering::Relaxed),
                syncs: self.wal_syncs.load(Ordering::Relaxed),
            },
            sync_wait: self.sync_wait.snapshot(),
            outcomes: self.outcomes.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.record(Duration::from_micros(100)); // bucket [64, 128) µs
        }
        h.record(Duration::from_millis(50)); // bucket [32.768, 65.536) ms
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 0.128);
        assert_eq!(s.p99_ms, 0.128);
        assert_eq!(s.max_ms, 50.0);
        assert_eq!(Histogram::default().snapshot().p99_ms, 0.0);
    }
}
