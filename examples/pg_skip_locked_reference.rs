//! The yardstick for `jobdb bench` on PostgreSQL: the same lifecycle (claim → one heartbeat →
//! complete with a small output and a result row) written by hand, as a careful user would
//! without a library: one statement per step in autocommit, the claim by `FOR UPDATE SKIP
//! LOCKED` on a partial index, fenced by the attempt number. Its own tables (`ref_jobs`,
//! `ref_results`), emptied first.
//!
//! ```sh
//! cargo run --release --example pg_skip_locked_reference -- postgres://postgres@127.0.0.1/bench 16 10000
//! ```
//! prints one JSON object: `{"workers":16,"jobs":10000,"jobs_per_sec":…}`.
//! `scripts/bench-pg-reference.sh` runs it alternately with `jobdb bench`.

use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

const SETUP: &str = "
CREATE TABLE IF NOT EXISTS ref_jobs (
    id BIGSERIAL PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'queued',
    payload JSONB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_expires_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS ref_jobs_queued ON ref_jobs (id) WHERE state = 'queued';
CREATE TABLE IF NOT EXISTS ref_results (
    job_id BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    output JSONB NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
TRUNCATE ref_jobs, ref_results;
";

const CLAIM: &str = "UPDATE ref_jobs SET state = 'running', attempts = attempts + 1, worker = $1, \
    lease_expires_at = now() + interval '120 seconds' \
    WHERE id = (SELECT id FROM ref_jobs WHERE state = 'queued' ORDER BY id \
                FOR UPDATE SKIP LOCKED LIMIT 1) \
    RETURNING id, attempts";
const HEARTBEAT: &str = "UPDATE ref_jobs SET lease_expires_at = now() + interval '120 seconds' \
    WHERE id = $1 AND attempts = $2 AND state = 'running'";
const COMPLETE: &str =
    "WITH done AS (UPDATE ref_jobs SET state = 'succeeded', lease_expires_at = NULL \
    WHERE id = $1 AND attempts = $2 AND state = 'running' RETURNING id, attempts) \
    INSERT INTO ref_results (job_id, attempt, output) SELECT id, attempts, $3::jsonb FROM done";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pg_skip_locked_reference POSTGRES_URL WORKERS JOBS";
    let url = args.next().ok_or(usage)?;
    let workers: usize = args.next().ok_or(usage)?.parse()?;
    let jobs: i64 = args.next().ok_or(usage)?.parse()?;

    let mut setup = PgConnection::establish(&url)?;
    setup.batch_execute(SETUP)?;
    setup.batch_execute(&format!(
        "INSERT INTO ref_jobs (payload) SELECT jsonb_build_object('n', n, 'kind', 'bench', \
         'pad', repeat('x', 60)) FROM generate_series(1, {jobs}) AS n"
    ))?;

    let started = Instant::now();
    let done: Vec<std::thread::JoinHandle<Result<u64, String>>> = (0..workers)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = PgConnection::establish(&url).map_err(|e| e.to_string())?;
                let worker = format!("ref-{w}");
                let mut completed = 0;
                loop {
                    let claimed: Vec<Claimed> = diesel::sql_query(CLAIM)
                        .bind::<Text, _>(&worker)
                        .load(&mut c)
                        .map_err(|e| e.to_string())?;
                    let Some(job) = claimed.into_iter().next() else {
                        return Ok(completed);
                    };
                    diesel::sql_query(HEARTBEAT)
                        .bind::<BigInt, _>(job.id)
                        .bind::<Integer, _>(job.attempts)
                        .execute(&mut c)
                        .map_err(|e| e.to_string())?;
                    completed += diesel::sql_query(COMPLETE)
                        .bind::<BigInt, _>(job.id)
                        .bind::<Integer, _>(job.attempts)
                        .bind::<Text, _>(r#"{"ok":true,"note":"lifecycle bench output 50 b"}"#)
                        .execute(&mut c)
                        .map_err(|e| e.to_string())? as u64;
                }
            })
        })
        .collect();
    let mut completed = 0;
    for t in done {
        completed += t.join().map_err(|_| "a worker panicked")??;
    }
    let secs = started.elapsed().as_secs_f64();
    if completed != jobs as u64 {
        return Err(format!("completed {completed} of {jobs}").into());
    }
    println!(
        "{{\"workers\":{workers},\"jobs\":{jobs},\"jobs_per_sec\":{:.1}}}",
        completed as f64 / secs
    );
    Ok(())
}
