//! The overview `jobdb serve` answers from: one [`Overview`] (one scan of `jobs`) taken in the
//! background and shared by the overview page, `GET /api/queues` and `/metrics`, so a request
//! never waits for a scan of a large table and ten open dashboards cost what one does.
//!
//! - **Fresh enough.** While someone looks (a read in the last 30 s), a new scan starts
//!   `max(1 s, 4 × the last scan)` after the previous one ended, so scanning takes at most a
//!   fifth of one core however large the table is; otherwise every `max(5 s, 20 × scan)`.
//!   Every answer says how old it is (`as_of`, `jobdb_overview_age_seconds`).
//! - **Read your writes, where that is cheap.** An action through this server (retry, cancel,
//!   pause, enqueue, …) marks the snapshot stale: the next read waits for a scan that started
//!   after it, so the page an action reloads shows its effect. Unless scans are slow (the last
//!   took more than [`SLOW_SCAN`], a table of hundreds of thousands of jobs): then the read
//!   answers at once from the last snapshot, which says how old it is, and the scan it started
//!   shows the action a moment later (a page never waits a second for its counts).
//! - **Errors stay typed.** A read that needs a fresh snapshot when the background scan failed
//!   runs the scan itself and answers with that scan's error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobdb::overview::Overview;
use jobdb::{AsyncQueue, QueueConnection};
use tokio::sync::{watch, Notify};

/// How long after the last read the server still counts as looked at.
const VIEWED_FOR: Duration = Duration::from_secs(30);
/// The least time between scans while looked at, and the scan's share of it.
const VIEWED_MIN: Duration = Duration::from_secs(1);
const VIEWED_FACTOR: u32 = 4;
/// The same while nobody looks.
const IDLE_MIN: Duration = Duration::from_secs(5);
const IDLE_FACTOR: u32 = 20;
/// A scan slower than this is not waited for after an action (see the module docs).
const SLOW_SCAN: Duration = Duration::from_millis(200);
/// The longest a read waits for a fresh scan before it runs one itself.
const WAIT_AT_MOST: Duration = Duration::from_secs(30);

/// One background scan: the generation it satisfies and what it found.
#[derive(Clone)]
struct Taken {
    /// [`Snapshots::wanted`] when the scan started: it shows every action before that.
    generation: u64,
    /// The overview, or `None` when the scan failed (the reader rescans for the error).
    overview: Option<Arc<Overview>>,
}

/// The shared snapshot and its refresher's controls.
pub(crate) struct Snapshots<C: QueueConnection> {
    queue: AsyncQueue<C>,
    latest: watch::Sender<Option<Taken>>,
    /// Bumped by every action: a read needs a snapshot of at least this generation.
    wanted: AtomicU64,
    /// Wakes the refresher early (an action, or a read that found the snapshot old).
    kick: Notify,
    /// When the last read was.
    viewed: Mutex<Instant>,
}

impl<C: QueueConnection> Snapshots<C> {
    /// Starts the refresher on the current runtime; its first scan starts at once.
    pub(crate) fn start(queue: AsyncQueue<C>) -> Arc<Snapshots<C>> {
        let snapshots = Arc::new(Snapshots {
            queue,
            latest: watch::channel(None).0,
            wanted: AtomicU64::new(0),
            kick: Notify::new(),
            viewed: Mutex::new(Instant::now()),
        });
        // The refresher runs for as long as the server's runtime does.
        let s = snapshots.clone();
        tokio::spawn(async move {
            loop {
                let pause = s.refresh().await;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = s.kick.notified() => {}
                }
            }
        });
        snapshots
    }

    /// One background scan, published; returns how long to wait before the next.
    async fn refresh(&self) -> Duration {
        let generation = self.wanted.load(Ordering::SeqCst);
        let started = Instant::now();
        let overview = match self.queue.blocking(|q| q.overview()).await {
            Ok(Ok(o)) => Some(Arc::new(o)),
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "overview scan failed; readers will rescan");
                None
            }
        };
        let took = started.elapsed();
        self.latest.send_replace(Some(Taken {
            generation,
            overview,
        }));
        self.pause_after(took)
    }

    /// The pause before the next scan, after one that took `took`.
    fn pause_after(&self, took: Duration) -> Duration {
        if self.last_viewed().elapsed() < VIEWED_FOR {
            VIEWED_MIN.max(took * VIEWED_FACTOR)
        } else {
            IDLE_MIN.max(took * IDLE_FACTOR)
        }
    }

    fn last_viewed(&self) -> Instant {
        *self.viewed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An action changed the database: later reads wait for a scan that shows it.
    pub(crate) fn invalidate(&self) {
        self.wanted.fetch_add(1, Ordering::SeqCst);
        self.kick.notify_one();
    }

    /// The newest overview that shows every action so far: at once if there is one (and a
    /// new scan is started when it is older than the looked-at pause), else after the scan
    /// that is due.
    pub(crate) async fn get(&self) -> jobdb::Result<Arc<Overview>> {
        *self.viewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let need = self.wanted.load(Ordering::SeqCst);
        let mut rx = self.latest.subscribe();
        let usable = |t: &Option<Taken>| -> Option<Option<Arc<Overview>>> {
            t.as_ref()
                .filter(|t| t.generation >= need)
                .map(|t| t.overview.clone())
        };
        let (found, stale) = {
            let current = rx.borrow_and_update();
            let stale = current.as_ref().and_then(|t| t.overview.clone());
            (usable(&current), stale)
        };
        let found = match found {
            Some(found) => found,
            None => {
                self.kick.notify_one();
                if let Some(stale) = stale.filter(|o| o.took > SLOW_SCAN) {
                    return Ok(stale);
                }
                let wait = async {
                    loop {
                        if rx.changed().await.is_err() {
                            return None;
                        }
                        if let Some(found) = usable(&rx.borrow_and_update()) {
                            return found;
                        }
                    }
                };
                tokio::time::timeout(WAIT_AT_MOST, wait)
                    .await
                    .ok()
                    .flatten()
            }
        };
        match found {
            Some(o) => {
                let age = (chrono::Utc::now() - o.as_of).to_std().unwrap_or_default();
                if age > VIEWED_MIN.max(o.took * VIEWED_FACTOR) + o.took {
                    // Old after a quiet spell: answer now, and have the next read fresher.
                    self.kick.notify_one();
                }
                Ok(o)
            }
            // The background scan failed (or never came): scan here, for its typed error.
            None => self.queue.blocking(|q| q.overview()).await?.map(Arc::new),
        }
    }
}
