//! Worker processes through the real binary, on any backend: many `jobdb work` processes run
//! every job exactly once, each with its own output (used by the PostgreSQL and MySQL
//! tests).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobdb::{Queue, QueueConnection};

pub fn jobdb(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobdb"));
    cmd.arg("--database-url")
        .arg(url)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG");
    cmd
}

/// Enqueues 2,000 jobs through the CLI into the fresh database at `url`, runs 4 `jobdb work`
/// processes of 4 workers (`cat` echoes each payload), calls `meanwhile` once a tenth of them
/// succeeded, and checks that every job succeeded exactly once with its own payload as its
/// output.
pub fn four_by_four<C: QueueConnection>(url: &str, meanwhile: impl FnOnce()) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.ndjson");
    let lines: String = (0..2000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    std::fs::write(&file, lines).unwrap();
    let out = jobdb(url)
        .args(["enqueue", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let workers: Vec<Child> = (0..4)
        .map(|_| {
            jobdb(url)
                .args([
                    "work",
                    "--concurrency",
                    "4",
                    "--lease",
                    "5s",
                    "--exit-when-empty",
                ])
                .args(["--exec", "sleep 0.005; cat"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    {
        let queue = Queue::<C>::open(url, jobdb::Config::default()).unwrap();
        let started = Instant::now();
        while queue.stats(None).unwrap().total.succeeded < 200 {
            assert!(started.elapsed() < Duration::from_secs(60), "no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let t0 = Instant::now();
    meanwhile();
    let t1 = t0.elapsed();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rest = t0.elapsed() - t1;
    let queue = Queue::<C>::open(url, jobdb::Config::default()).unwrap();
    crate::backends::loud!(
        "{}: 4 x 4 workers, 2000 jobs: the event took {t1:.1?}, the rest of the run {rest:.1?}",
        queue.backend()
    );
    let audit = queue.audit("default").unwrap();
    assert_eq!(
        (audit.jobs, audit.not_succeeded, audit.duplicated),
        (2000, 0, 0),
        "every job succeeded exactly once"
    );
    // Each output is its own payload: the right result went to the right job.
    for id in 1..=2000 {
        let job = queue.get_job(id).unwrap();
        let r = queue.get_results(job.id).unwrap();
        let ok: Vec<_> = r
            .iter()
            .filter(|r| r.outcome == jobdb::Outcome::Succeeded)
            .collect();
        assert_eq!(ok.len(), 1, "job {}: {r:?}", job.id);
        assert_eq!(
            ok[0].output_json.as_deref(),
            Some(job.payload_json.as_str())
        );
    }
}
