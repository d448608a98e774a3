//! `jobdb work --exec` under hostile commands: the command runs in a process group of its own
//! and nothing of the group outlives the attempt (shutdown, cancel, a backgrounded child);
//! output is bounded; a signal is named. Through the real binary.

use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{enqueue_id, jobdb, ok_stdout, show, spawn_worker, stats, wait_until_running};
use crate::common::TestDb;

/// A command that records its shell's pid and a backgrounded grandchild's, then waits.
fn forking_command(dir: &Path) -> String {
    let pids = dir.join("pids");
    format!(
        "echo $$ >> {p}; sleep 1000 & echo $! >> {p}; wait",
        p = pids.display()
    )
}

fn recorded_pids(dir: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only probes whether the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn wait_for_pids(dir: &Path, n: usize) -> Vec<libc::pid_t> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = recorded_pids(dir);
        if pids.len() >= n {
            return pids;
        }
        assert!(Instant::now() < deadline, "the command never started");
        thread::sleep(Duration::from_millis(10));
    }
}

/// 41b6fc7 killed only `sh`: after SIGTERM past the grace period the job was released while
/// `sleep 1000` kept running, and the next worker ran the job beside it.
#[test]
fn sigterm_past_the_grace_period_kills_the_whole_group_before_the_job_is_released() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let id = enqueue_id(&db, &["{}"]);
    let worker = spawn_worker(
        &db,
        &["--grace", "300ms", "--exec", &forking_command(dir.path())],
    );
    wait_until_running(&db, 1);
    let pids = wait_for_pids(dir.path(), 2);
    crate::cli::terminate_within(worker, Duration::from_secs(10));
    for pid in &pids {
        assert!(
            !alive(*pid),
            "process {pid} of the group outlived the worker"
        );
    }
    let job = show(&db, id);
    assert_eq!(job["state"], "queued", "released: {job}");
    assert_eq!(job["attempts_left"], 5, "a release costs no attempt: {job}");
}

/// 41b6fc7's `cancel` marked the job cancelled while `sleep` kept running.
#[test]
fn cancel_kills_the_whole_group() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let id = enqueue_id(&db, &["{}"]);
    // A short lease, so the heartbeat that carries the cancel comes soon.
    let worker = spawn_worker(
        &db,
        &["--lease", "900ms", "--exec", &forking_command(dir.path())],
    );
    let pids = wait_for_pids(dir.path(), 2);
    ok_stdout(jobdb(&db).args(["cancel", &id.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while show(&db, id)["state"] != "cancelled" {
        assert!(Instant::now() < deadline, "the cancel never ended the job");
        thread::sleep(Duration::from_millis(20));
    }
    for pid in &pids {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(*pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} survived the cancel"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
    crate::cli::terminate_within(worker, Duration::from_secs(5));
}

/// 41b6fc7 read stdout until every writer closed it: `sleep 6 & echo hi` took 6 s.
#[test]
fn a_backgrounded_child_does_not_hold_the_attempt_open() {
    let db = TestDb::new();
    let id = enqueue_id(&db, &["{}"]);
    let started = Instant::now();
    ok_stdout(jobdb(&db).args(["work", "--exit-when-empty", "--exec", "sleep 6 & echo hi"]));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let job = show(&db, id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["results"][0]["output"], "hi\n", "{job}");
}

/// Peak RSS of a running process, KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// 41b6fc7 buffered stdout without bound (200 MB → 1.39 GB RSS; 1.1 GB → "string or blob too
/// big" and a successful handler recorded as a lease expiry).
#[test]
fn output_past_the_cap_fails_the_attempt_with_bounded_memory() {
    let db = TestDb::new();
    let id = enqueue_id(&db, &["--max-attempts", "1", "{}"]);
    let mut worker = jobdb(&db)
        .args([
            "work",
            "--max-jobs",
            "1",
            "--exec",
            "head -c 2000000000 /dev/zero",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = worker.id();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.try_wait().unwrap().is_none() {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        assert!(Instant::now() < deadline, "the worker never finished");
        thread::sleep(Duration::from_millis(5));
    }
    crate::backends::loud!("worker peak RSS with 2 GB of stdout: {} MiB", peak / 1024);
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
    let job = show(&db, id);
    assert_eq!(job["state"], "dead", "{job}");
    let error = job["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("passed the cap of 1048576 bytes"), "{error}");
}

#[test]
fn a_command_killed_by_a_signal_says_which() {
    let db = TestDb::new();
    let id = enqueue_id(&db, &["--max-attempts", "1", "{}"]);
    ok_stdout(jobdb(&db).args(["work", "--exit-when-empty", "--exec", "kill -TERM $$"]));
    let job = show(&db, id);
    let error = job["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("killed by signal SIGTERM (15)"), "{error}");
}

/// 41b6fc7 ran `sh -c ''` for every job: each "succeeded".
#[test]
fn an_empty_command_is_refused_with_exit_2() {
    let db = TestDb::new();
    ok_stdout(jobdb(&db).args(["enqueue", "{}"]));
    let (code, stderr) = crate::cli::fails(jobdb(&db).args(["work", "--exec", "  "]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("the command is empty"), "{stderr}");
    assert_eq!(stats(&db)["queued"], 1, "nothing ran");
}

/// 41b6fc7: INT, INT, then TERM did not stop a worker with `--grace 1h`. A second signal now
/// abandons the running job at once (its process group killed, the job released).
#[test]
fn a_second_signal_hurries_the_shutdown() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let id = enqueue_id(&db, &["{}"]);
    let mut worker = spawn_worker(
        &db,
        &["--grace", "1h", "--exec", &forking_command(dir.path())],
    );
    let pids = wait_for_pids(dir.path(), 2);
    let pid = libc::pid_t::try_from(worker.id()).unwrap();
    let started = Instant::now();
    for _ in 0..2 {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while worker.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "two signals did not stop the worker"
        );
        thread::sleep(Duration::from_millis(20));
    }
    crate::backends::loud!(
        "stopped {:?} after the first of two SIGINTs",
        started.elapsed()
    );
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} outlived the worker");
    }
    assert_eq!(show(&db, id)["state"], "queued", "the job was released");
}

/// A command that daemonizes (`setsid -f`: a process in a session of its own, which keeps
/// the output pipes open) ends its attempt when `sh` exits: the job succeeds with what `sh`
/// wrote and `--exit-when-empty` exits. c92a778 read stdout until end of file, which the
/// daemon held: the job stayed `running`, cancel and timeouts could not free the slot, and
/// the worker never exited. The escaped daemon is left running, as README says; the test
/// stops it.
#[test]
fn a_command_that_daemonizes_ends_its_attempt_when_sh_exits() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let id = enqueue_id(&db, &["{}"]);
    let command = format!(
        "setsid -f sh -c 'echo $$ > {p}; exec sleep 300'; echo ok",
        p = pidfile.display()
    );
    let mut worker = jobdb(&db)
        .args(["work", "--exit-when-empty", "--exec", &command])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A quiet run exits in well under a second; 60 s is far over 10x, and the daemon sleeps
    // for 300.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = worker.kill();
            break worker.wait().unwrap();
        }
        thread::sleep(Duration::from_millis(20));
    };
    let daemon: Option<libc::pid_t> = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if let Some(pid) = daemon {
        // SAFETY: kill(2) on the daemon the command started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    assert!(
        status.success(),
        "the worker did not exit on its own: {status:?}"
    );
    let job = show(&db, id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(daemon.is_some(), "the command daemonized");
}
