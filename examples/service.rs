//! The README's library example, compiled by `cargo test` so it cannot drift from the API.
//! Run it: `cargo run --example service` (uses ./service-example.sqlite3).

use diesel::connection::SimpleConnection;
use jobdb::{Config, HandlerError, NewJob, Queue, Worker, WorkerConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct Email {
    to: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue: Queue = Queue::open("service-example.sqlite3", Config::from_env()?)?; // pool + WAL + migrations
    let id = queue.enqueue(
        &NewJob::new(
            "mail",
            &Email {
                to: "ada@example.com".into(),
            },
        )?
        .priority(-1)
        .max_attempts(3),
    )?;

    // Enqueue inside your own transaction, atomically with your own rows.
    let pool = queue.pool();
    let mut conn = pool.get()?;
    conn.batch_execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, email TEXT)")?;
    conn.immediate_transaction(|conn| {
        conn.batch_execute("INSERT INTO orders (email) VALUES ('bob@example.com')")?;
        jobdb::queue::enqueue(
            conn,
            &NewJob::new(
                "mail",
                &Email {
                    to: "bob@example.com".into(),
                },
            )?,
        )?;
        Ok::<_, jobdb::Error>(())
    })?;
    drop(conn);

    // A worker: 4 threads, heartbeats, graceful shutdown, panics become failed attempts.
    let mut config = WorkerConfig::new("mail").lease(Duration::from_secs(30));
    config.concurrency = 4;
    config.exit_when_empty = true;
    let worker = Worker::new(queue.clone(), config, |job| {
        let email: Email = job.payload()?;
        // … send it; a long handler may check job.should_abandon() …
        Ok::<_, HandlerError>(serde_json::json!({ "sent_to": email.to }))
    });
    let _stop = worker.shutdown_handle(); // _stop.shutdown() from anywhere
    let report = worker.run()?;
    println!("{report:?}; job {id} is {}", queue.get_job(id)?.state);
    Ok(())
}
