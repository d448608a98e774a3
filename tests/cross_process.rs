//! What processes on one SQLite file do for each other: the write gate (a `flock` every
//! jobdb process takes around its write transactions, so they queue in the kernel instead of
//! polling SQLite's lock) and the change watcher (an idle worker hears of another process's
//! enqueue within milliseconds). A second `Queue` on the same file stands for another process
//! where only the signal matters (it shares nothing in memory with the first); the gate is
//! held by a real other process, util-linux's `flock`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use jobdb::NewJob;

use crate::common::TestDb;

/// The gate's lock file of `db`.
fn gate_file(db: &TestDb) -> String {
    format!("{}-jobdb-lock", db.url())
}

/// Another process holding the gate until killed: returns once it holds it.
fn hold_gate(db: &TestDb) -> Child {
    let mut child = Command::new("flock")
        .args(["--exclusive", "--no-fork", &gate_file(db)])
        .args(["sh", "-c", "echo held; exec sleep 60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("util-linux flock");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "held");
    child
}

#[test]
fn a_write_waits_at_the_gate_while_another_process_holds_it_and_goes_on_when_it_lets_go() {
    let db = TestDb::new();
    let q = db.queue();
    q.enqueue(&NewJob::new("g", &0).unwrap()).unwrap();
    assert!(
        std::path::Path::new(&gate_file(&db)).exists(),
        "the gate's lock file is created beside the database"
    );

    let mut holder = hold_gate(&db);
    let (tx, rx) = mpsc::channel();
    let writer = {
        let q = q.clone();
        thread::spawn(move || {
            let r = q.enqueue(&NewJob::new("g", &1).unwrap());
            tx.send(Instant::now()).unwrap();
            r
        })
    };
    // The enqueue must not get past the gate while the other process holds it.
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "an enqueue committed while another jobdb process held the write gate"
    );
    // Reads never take the gate.
    assert_eq!(q.stats(Some("g")).unwrap().total.queued, 1);
    let released = Instant::now();
    holder.kill().unwrap();
    holder.wait().unwrap();
    let done = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("enqueue finished");
    writer.join().unwrap().expect("enqueue succeeded");
    eprintln!(
        "enqueue went on {:?} after the other process let go",
        done - released
    );
    assert_eq!(q.stats(Some("g")).unwrap().total.queued, 2);
}

#[test]
fn with_the_gate_off_a_write_does_not_wait_for_it() {
    let db = TestDb::new();
    let q = db.queue_with(|c| c.sqlite.write_gate = false);
    let mut holder = hold_gate(&db);
    q.enqueue(&NewJob::new("g", &1).unwrap()).unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn an_idle_worker_hears_of_another_process_s_enqueue_and_not_of_its_heartbeats() {
    let db = TestDb::new();
    let idle = db.queue();
    let other = db.queue();
    // Another process's work that is not an enqueue: it must not wake idle workers.
    other.enqueue(&NewJob::new("w", &0).unwrap()).unwrap();
    let job = other
        .claim("w", 1, "busy", Duration::from_secs(30))
        .unwrap()
        .pop()
        .expect("claimed");

    // The first signal starts the watcher; its starting point is taken before it returns.
    let seen = idle.work_signal();
    other
        .heartbeat(job.lease(), Duration::from_secs(30))
        .unwrap();
    other
        .complete(job.lease(), &"done", Duration::ZERO)
        .unwrap();
    assert!(
        !idle.wait_for_work(seen, Duration::from_millis(300)),
        "another process's heartbeat or completion woke the idle worker"
    );

    let seen = idle.work_signal();
    let t = Instant::now();
    other.enqueue(&NewJob::new("w", &1).unwrap()).unwrap();
    // Without the watcher this wait times out: the idle worker would only poll.
    assert!(
        idle.wait_for_work(seen, Duration::from_secs(5)),
        "another process's enqueue never woke the idle worker"
    );
    eprintln!("woken {:?} after the other process's enqueue", t.elapsed());
}
