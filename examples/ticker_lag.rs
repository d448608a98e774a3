//! How late a 1 ms ticker on a tokio `current_thread` runtime runs while 1,000 tasks enqueue
//! one job each and an async worker of 16 runs them all: through the async API, and through
//! the blocking calls on the same runtime. A figure, not a test (it moves with the machine's
//! load): `scripts/ticker-lag.sh` prints it; `docs/benchmarks.md` keeps the measured runs.
//!
//! ```sh
//! cargo run --release --example ticker_lag -- [RUNS]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobdb::{AsyncWorker, Config, HandlerError, NewJob, Queue, WorkerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
    let dir = std::env::temp_dir().join(format!("jobdb-ticker-lag-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let queue: Queue = Queue::open(
        dir.join("ticker.sqlite3").to_str().ok_or("path")?,
        Config::default(),
    )?;
    for run in 0..runs {
        let async_lag = ticker_lag(&queue, &format!("async-{run}"), false)?;
        let blocking_lag = ticker_lag(&queue, &format!("blocking-{run}"), true)?;
        println!(
            "run {run}: worst ticker lag {:.2} ms with the async API, {:.2} ms with the blocking calls",
            ms(async_lag),
            ms(blocking_lag)
        );
    }
    drop(queue);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The worst lateness of the ticker while the jobs flow (through the blocking calls if
/// `blocking`).
fn ticker_lag(
    q: &Queue,
    queue: &str,
    blocking: bool,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let aq = q.to_async();
    let queue = queue.to_owned();
    rt.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_millis(1));
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut worst = Duration::ZERO;
                interval.tick().await;
                while !stop.load(Ordering::SeqCst) {
                    let due = interval.tick().await;
                    worst = worst.max(due.elapsed());
                }
                worst
            })
        };
        // Let the ticker settle before the load starts.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut config = WorkerConfig::new(&queue).lease(Duration::from_secs(30));
        config.concurrency = 16;
        config.max_jobs = Some(1000);
        let worker = AsyncWorker::new(aq.clone(), config, |ctx| async move {
            Ok::<_, HandlerError>(ctx.id)
        });
        let working = tokio::spawn(async move { worker.run().await });
        let mut enqueues = Vec::with_capacity(1000);
        for n in 0..1000u32 {
            let (aq, job) = (aq.clone(), NewJob::new(&queue, &n)?);
            enqueues.push(tokio::spawn(async move {
                if blocking {
                    aq.sync().enqueue(&job).map(|_| ())
                } else {
                    aq.enqueue(&job).await.map(|_| ())
                }
            }));
            // The spawning loop yields now and then, as an accept loop does: the lag measured
            // is the calls', not a thousand spawns in one poll.
            if n % 64 == 63 {
                tokio::task::yield_now().await;
            }
        }
        for e in enqueues {
            e.await??;
        }
        let report = working.await??;
        if report.succeeded != 1000 {
            return Err(format!("the worker ran {} jobs of 1000", report.succeeded).into());
        }
        stop.store(true, Ordering::SeqCst);
        Ok(ticker.await?)
    })
}
