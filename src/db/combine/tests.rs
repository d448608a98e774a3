//! Group commit at the write gate, with a second `WriteGate` on the same file standing for
//! another process (its own open file, so its `flock` excludes ours as a process's would).

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::SqliteConnection;

use crate::db::gate::WriteGate;
use crate::db::Db;

/// Waits, without a fixed sleep, until `done` holds (10 s at most).
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let began = Instant::now();
    while !done() {
        assert!(began.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::yield_now();
    }
}

/// Operations queued while this process's combiner waits behind another process at the
/// gate ride in the combiner's transaction: one commit for all four. Draining the queue
/// before waiting (the old order) committed the first alone and the three after it in a
/// second transaction, a second turn at the gate.
#[test]
fn what_queues_while_the_combiner_waits_at_the_gate_commits_with_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("g.sqlite3");
    // No background checkpointer: its rounds would take tickets and transactions of their own.
    let mut config = crate::Config::default();
    config.sqlite.checkpoint_every = None;
    let db = Db::<SqliteConnection>::open(path.to_str().expect("utf-8"), config).expect("open");
    db.inner
        .run("create", |c| {
            Ok(c.batch_execute("CREATE TABLE t (x INTEGER)")?)
        })
        .expect("create");
    let other = WriteGate::open(&path).expect("the other process's gate");
    let tickets = other.queue().expect("a ticket queue");
    let inner = &db.inner;
    let before = db.retry_stats().transactions;
    let held = other.hold(far()).expect("the other process holds the gate");
    let taken = tickets.tickets_taken();
    let write = |name: &'static str, x: i64| {
        let inner = inner.clone();
        std::thread::spawn(move || {
            inner.write(name, move |c| {
                Ok(c.batch_execute(&format!("INSERT INTO t VALUES ({x})"))?)
            })
        })
    };
    // The first becomes the combiner and takes its ticket behind the other process.
    let first = write("first_insert", 0);
    until("the combiner waits at the gate", || {
        tickets.tickets_taken() == taken.wrapping_add(1)
    });
    let rest: Vec<_> = (1..4).map(|x| write("later_insert", x)).collect();
    // (The first may or may not still be queued: that is the order under test.)
    until("the three later ones wait in the queue", || {
        let pending = super::lock(&inner.writer.pending);
        pending
            .iter()
            .filter(|op| op.name() == "later_insert")
            .count()
            == 3
    });
    drop(held);
    for t in std::iter::once(first).chain(rest) {
        t.join().expect("no panic").expect("committed");
    }
    let transactions = db.retry_stats().transactions - before;
    let n: i64 = db
        .read("count", |c| {
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            Ok(diesel::sql_query("SELECT count(*) AS n FROM t")
                .get_result::<N>(c)?
                .n)
        })
        .expect("count");
    assert_eq!(n, 4, "every write landed");
    assert_eq!(transactions, 1, "the four writes rode in one transaction");
}

/// A deadline no test reaches.
#[cfg(test)]
fn far() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(3600)
}
