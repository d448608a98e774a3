//! The operator commands through the real binary: enqueue --unique-key from 8 processes,
//! cancel, retry, prune, pause/resume, schedule from two processes, wait, stats.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use serde_json::Value;

use crate::cli::{
    fails, jobdb, ok_stdout, show, spawn_worker, stats, terminate_within, wait_until_running,
};
use crate::common::TestDb;

fn id_of(out: String) -> i64 {
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an id: {out:?}"))
}

#[test]
fn eight_processes_enqueueing_one_unique_key_print_the_same_id() {
    let db = TestDb::new();
    ok_stdout(jobdb(&db).arg("migrate"));
    let children: Vec<_> = (0..8)
        .map(|i| {
            jobdb(&db)
                .args(["enqueue", "--queue", "u", "--unique-key", "nightly-report"])
                .arg(format!("{{\"from\":{i}}}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<i64> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            id_of(String::from_utf8(out.stdout).unwrap())
        })
        .collect();
    assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
    let s = stats(&db);
    assert_eq!(s["queued"], 1, "{s}");
    assert_eq!(show(&db, ids[0])["unique_key"], "nightly-report");
}

#[test]
fn cancel_a_queued_job_and_it_never_runs_then_retry_it() {
    let db = TestDb::new();
    let id = id_of(ok_stdout(jobdb(&db).args(["enqueue", "{}"])));
    let out = ok_stdout(jobdb(&db).args(["cancel", &id.to_string()]));
    assert!(out.contains("cancelled"), "{out}");
    ok_stdout(jobdb(&db).args(["work", "--exit-when-empty", "--exec", "echo ran"]));
    let job = show(&db, id);
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["results"], serde_json::json!([]));
    // Cancelling a finished job: one clear line, exit 1; unknown id: exit 3.
    let (code, err) = fails(jobdb(&db).args(["cancel", &id.to_string()]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is cancelled"), "{err}");
    assert_eq!(fails(jobdb(&db).args(["cancel", "999999"])).0, 3);
    // Retry puts it back; then it runs.
    ok_stdout(jobdb(&db).args(["retry", &id.to_string()]));
    ok_stdout(jobdb(&db).args(["work", "--exit-when-empty", "--exec", "echo ran"]));
    assert_eq!(show(&db, id)["state"], "succeeded");
    assert_eq!(fails(jobdb(&db).args(["retry", &id.to_string()])).0, 1);
}

#[test]
fn cancel_a_running_job_kills_its_command_and_records_no_success() {
    let db = TestDb::new();
    let id = id_of(ok_stdout(jobdb(&db).args(["enqueue", "{}"])));
    let worker = spawn_worker(
        &db,
        &["--lease", "1s", "--exit-when-empty", "--exec", "sleep 30"],
    );
    wait_until_running(&db, 1);
    let out = ok_stdout(jobdb(&db).args(["cancel", &id.to_string()]));
    assert!(out.contains("cancel requested"), "{out}");
    // The worker sees it at its next heartbeat (a third of the lease), kills the command,
    // records the attempt as cancelled and, the queue being empty, exits.
    let started = Instant::now();
    let out = worker.wait_with_output().unwrap();
    // A quiet run exits within about a second of the cancel: 30 s keeps over 10x.
    assert!(started.elapsed() < Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 cancelled"), "{stderr}");
    let job = show(&db, id);
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["results"][0]["outcome"], "failed");
    assert_eq!(job["results"].as_array().map(Vec::len), Some(1));
    // `wait` on it: exit 1, the job printed.
    let out = jobdb(&db).args(["wait", &id.to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn prune_deletes_old_finished_jobs_and_their_results_only() {
    let db = TestDb::new();
    for _ in 0..5 {
        ok_stdout(jobdb(&db).args(["enqueue", "{}"]));
    }
    ok_stdout(jobdb(&db).args(["work", "--exit-when-empty", "--exec", "echo 1"]));
    let kept = id_of(ok_stdout(jobdb(&db).args(["enqueue", "{}"])));
    // Nothing is older than an hour yet.
    assert_eq!(
        ok_stdout(jobdb(&db).args(["prune", "--older-than", "1h"])).trim(),
        "0"
    );
    thread::sleep(Duration::from_millis(1100));
    let report: Value = serde_json::from_str(&ok_stdout(jobdb(&db).args([
        "prune",
        "--older-than",
        "1s",
        "--state",
        "succeeded",
        "--batch",
        "2",
        "--json",
    ])))
    .unwrap();
    assert_eq!(report["deleted"], 5, "{report}");
    assert_eq!(report["transactions"], 3, "{report}");
    let s = stats(&db);
    assert_eq!(
        (s["succeeded"].as_i64(), s["queued"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(show(&db, kept)["state"], "queued");
    let (code, err) = fails(jobdb(&db).args(["prune", "--older-than", "1s", "--state", "queued"]));
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        fails(jobdb(&db).args(["prune", "--older-than", "soon"])).0,
        2
    );
}

#[test]
fn a_paused_queue_is_not_worked_until_resumed() {
    let db = TestDb::new();
    let id = id_of(ok_stdout(
        jobdb(&db).args(["enqueue", "--queue", "p", "{}"]),
    ));
    assert_eq!(ok_stdout(jobdb(&db).args(["pause", "p"])).trim(), "paused");
    assert_eq!(
        ok_stdout(jobdb(&db).args(["pause", "p"])).trim(),
        "already paused"
    );
    let worker = spawn_worker(&db, &["--queue", "p", "--exec", "echo 1"]);
    thread::sleep(Duration::from_millis(700));
    assert_eq!(
        show(&db, id)["state"],
        "queued",
        "nothing claimed while paused"
    );
    let s = stats(&db);
    assert_eq!(s["queues"]["p"]["paused"], true, "{s}");
    assert_eq!(
        ok_stdout(jobdb(&db).args(["resume", "p"])).trim(),
        "resumed"
    );
    let done = ok_stdout(jobdb(&db).args(["wait", &id.to_string(), "--timeout", "10s", "--json"]));
    let job: Value = serde_json::from_str(&done).unwrap();
    assert_eq!(job["state"], "succeeded");
    terminate_within(worker, Duration::from_secs(10));
}

#[test]
fn wait_times_out_with_exit_124_and_leaves_the_job_alone() {
    let db = TestDb::new();
    let id = id_of(ok_stdout(jobdb(&db).args(["enqueue", "{}"])));
    let (code, err) = fails(jobdb(&db).args(["wait", &id.to_string(), "--timeout", "200ms"]));
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("did not finish"), "{err}");
    assert_eq!(show(&db, id)["state"], "queued");
}

#[test]
fn two_scheduler_processes_enqueue_each_of_ten_ticks_exactly_once() {
    let db = TestDb::new();
    ok_stdout(jobdb(&db).arg("migrate"));
    // Start both just after a second boundary, so both see the same ten ticks.
    while Utc::now().nanosecond() > 200_000_000 {
        thread::sleep(Duration::from_millis(5));
    }
    while Utc::now().nanosecond() < 50_000_000 {
        thread::sleep(Duration::from_millis(5));
    }
    let spawn = || {
        jobdb(&db)
            .args([
                "schedule",
                "heartbeat",
                "--queue",
                "ticks",
                "--every",
                "1s",
                "--for",
                "10s",
            ])
            .arg(r#"{"kind":"tick"}"#)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let mut enqueued_here = 0;
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        enqueued_here += stderr
            .split(" ticks enqueued here")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no report: {stderr}"));
    }
    let s = stats(&db);
    assert_eq!(s["queues"]["ticks"]["queued"], 10, "{s}");
    assert_eq!(enqueued_here, 10);
    // Each tick's job carries its tick as a unique key: ten different ones.
    let keys: std::collections::BTreeSet<String> = (1..=10)
        .map(|id| {
            show(&db, id)["unique_key"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("schedule:heartbeat:")),
        "{keys:?}"
    );
    let (code, _) = fails(jobdb(&db).args(["schedule", "x", "--cron", "not a cron"]));
    assert_eq!(code, 2);
}

/// `schedule --cron` reads five fields as crontab(5) does: weekday 0 and 7 are Sunday, names
/// and the nicknames work (c92a778 read Quartz's dialect: `0 9 * * 0` exited 2 and
/// `0 9 * * 1-5` fired Sunday to Thursday; the fire times themselves are checked against a
/// table in `src/crontab.rs`).
#[test]
fn schedule_cron_takes_crontabs_weekdays_and_names() {
    let db = TestDb::new();
    for cron in [
        "0 9 * * 0",
        "0 9 * * 7",
        "0 9 * * mon-fri",
        "@daily",
        "0 0 1,15 * mon",
    ] {
        ok_stdout(jobdb(&db).args(["schedule", "w", "--cron", cron, "--for", "50ms"]));
    }
    for bad in ["0 9 * * 8", "0 24 * * *", "0 9 * *"] {
        let (code, stderr) = fails(jobdb(&db).args(["schedule", "w", "--cron", bad]));
        assert_eq!(code, 2, "{bad}: {stderr}");
    }
}

#[test]
fn every_new_command_documents_itself_in_help() {
    for cmd in [
        "cancel", "retry", "prune", "pause", "resume", "schedule", "wait", "stats",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_jobdb"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: jobdb"), "{cmd}: {text}");
    }
}

/// Found by hostile use: values that could never work started,
/// warned on every tick or panicked; each is now exit 2 with one line naming it.
#[test]
fn worker_and_schedule_values_that_cannot_work_are_refused_with_exit_2() {
    let db = TestDb::new();
    ok_stdout(jobdb(&db).args(["enqueue", "{}"]));
    let cases: [(&[&str], &str); 9] = [
        // A keep-for past year 1 failed every prune, every 5 minutes, for as long as the
        // worker ran (c92a778 accepted it).
        (
            &[
                "work",
                "--keep-succeeded",
                "100000000d",
                "--exec",
                "true",
                "--exit-when-empty",
            ],
            "retention",
        ),
        (
            &[
                "work",
                "--keep-dead",
                "800000d",
                "--exec",
                "true",
                "--exit-when-empty",
            ],
            "retention",
        ),
        (&["work", "--lease", "0s", "--exec", "true"], "lease"),
        (
            &["work", "--concurrency", "0", "--exec", "true"],
            "concurrency",
        ),
        (
            &["work", "--concurrency", "4294967295", "--exec", "true"],
            "concurrency",
        ),
        (
            &[
                "work",
                "--concurrency",
                "18446744073709551615",
                "--exec",
                "true",
            ],
            "concurrency",
        ),
        (&["schedule", "s", "--every", "1s", "--queue", ""], "queue"),
        (
            &["schedule", "s", "--every", "1s", "--max-attempts", "0"],
            "max_attempts",
        ),
        (&["schedule", "s", "--cron", "0 0 30 2 *"], "never fires"),
    ];
    for (args, names) in cases {
        let (code, stderr) = fails(jobdb(&db).args(args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?} names {names}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(stats(&db)["queued"], 1, "nothing ran");
}

/// A queue name is anyone's input: `jobdb stats` prints its control characters escaped, so a
/// name holding a terminal's escape sequences cannot rewrite the operator's screen (c92a778
/// printed them raw).
#[test]
fn stats_prints_escape_sequences_in_queue_names_escaped() {
    let db = TestDb::new();
    ok_stdout(jobdb(&db).args(["enqueue", "--queue", "evil\u{1b}[2J\u{7}", "{}"]));
    let out = ok_stdout(jobdb(&db).arg("stats"));
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("evil\\u{1b}[2J\\u{7}"), "{out}");
}

/// A worker whose claims fail with an error no retry cures (a table or column the schema
/// lacks, after a hand edit) exits non-zero naming it, instead of retrying for ever (c92a778
/// logged "claim failed; backing off" every poll and never exited).
#[test]
fn a_worker_stops_on_errors_no_retry_cures() {
    use diesel::{Connection, RunQueryDsl};
    for edit in [
        "ALTER TABLE jobs DROP COLUMN progress",
        "ALTER TABLE jobs RENAME TO jobs_by_hand",
    ] {
        let db = TestDb::new();
        ok_stdout(jobdb(&db).args(["enqueue", "{}"]));
        let mut c = diesel::SqliteConnection::establish(&db.url()).unwrap();
        diesel::sql_query(edit).execute(&mut c).unwrap();
        drop(c);
        let mut child = jobdb(&db)
            .args(["work", "--exec", "true", "--exit-when-empty"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // 10x what a quiet machine needs to start, claim once and stop (well under 1 s).
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{edit}: the worker still retries after 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{edit}: {stderr}");
        assert!(
            stderr.contains("progress") || stderr.contains("no such table: jobs"),
            "{edit}: names the missing part: {stderr}"
        );
    }
}
