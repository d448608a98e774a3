//! A small Diesel app of the shape of Diesel's `examples/sqlite/getting_started_step_3` (a
//! `posts` table, its migration, models, a schema printed by `diesel print-schema`) that adopts
//! jobdb: jobdb's migrations sit beside its own, its `schema.rs` is what `diesel print-schema`
//! prints for both (and `schema_bigint.rs` what it prints with
//! `sqlite_integer_primary_key_is_bigint = true`: both compile, joins included), and every
//! write goes through jobdb's persistence handle, so it never meets `database is locked` while
//! jobdb workers run in other processes.
//!
//! ```sh
//! cargo run --example diesel_app -- app.sqlite3 publish 50   # 50 posts, each + its job, atomically
//! cargo run --example diesel_app -- app.sqlite3 publish 50 protected  # on its own connection
//! jobdb --database-url app.sqlite3 work --queue notify --exec cat --exit-when-empty
//! cargo run --example diesel_app -- app.sqlite3 check        # each post notified exactly once
//! ```
//!
//! `publish` prints one JSON line with its write latencies: `{"via":…,"writes":N,"failed":F,
//! "p50_ms":…,"p99_ms":…,"max_ms":…}`. Its last argument picks the connection the app writes
//! on (see `publish`): through the handle (`write`, the default), a pooled connection of the
//! handle (`pool`), or the app's own `establish_connection()` with `protect_process` called at
//! startup (`protected`) or not (`plain`, which fails beside jobdb's workers).

mod models;
mod schema;
/// The same tables printed with `sqlite_integer_primary_key_is_bigint = true`: kept here so the
/// build proves that schema compiles too (its `joinable!` included).
#[allow(dead_code)]
mod schema_bigint;

use std::error::Error;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use models::{NewPost, Post};
use schema::{jobs, posts, results};

/// The app's own migrations (jobdb's are embedded in jobdb and run when the handle opens).
const APP_MIGRATIONS: EmbeddedMigrations = embed_migrations!("examples/diesel_app/migrations");

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(command)) = (args.get(1), args.get(2)) else {
        return Err(
            "usage: diesel_app DATABASE (publish N [write|protected|pool|plain] | check)".into(),
        );
    };
    // jobdb's warnings (slow statements, with JOBDB_SLOW_STATEMENT_MS) on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let config = jobdb::Config::from_env()?;
    let via = args.get(4).map_or("write", String::as_str);
    if via == "protected" {
        // The one line an app adds at startup: every SQLite connection opened from here on,
        // the app's plain `establish` included, waits its turn with jobdb's writers.
        jobdb::sqlite::protect_process(&config)?;
    }
    // The handle: WAL on and verified, the pragmas on every connection, jobdb's migrations.
    let db: jobdb::Db = jobdb::Db::open(url, config)?;
    // The app's own migrations, as one IMMEDIATE transaction on the handle's writer (re-run on
    // busy), so several processes starting at once apply each exactly once.
    db.transaction("app_migrations", |conn| {
        conn.immediate_transaction(|c| {
            c.run_pending_migrations(APP_MIGRATIONS)
                .map(|_| ())
                .map_err(jobdb::Error::Migration)
        })
    })?;
    match command.as_str() {
        "publish" => {
            let n: usize = args.get(3).map_or(Ok(10), |s| s.parse())?;
            publish(&db, url, n, via)
        }
        "check" => check(&db),
        other => Err(format!("unknown command {other:?}").into()),
    }
}

/// Diesel's getting-started `establish_connection`, unmodified.
fn establish_connection(url: &str) -> SqliteConnection {
    SqliteConnection::establish(url).unwrap_or_else(|_| panic!("Error connecting to {url}"))
}

/// One of the app's own transactions: insert a post, publish it and enqueue its `notify`
/// job, atomically (on a connection already inside the transaction).
fn post_and_notify(conn: &mut SqliteConnection, i: usize) -> jobdb::Result<i64> {
    let title = format!("post {i} of {}", std::process::id());
    let post: Post = diesel::insert_into(posts::table)
        .values(&NewPost {
            title: &title,
            body: "hello",
        })
        .returning(Post::as_returning())
        .get_result(conn)?;
    diesel::update(posts::table.find(post.id))
        .set(posts::published.eq(true))
        .execute(conn)?;
    let job = jobdb::NewJob::new("notify", &serde_json::json!({ "post": post.id }))?;
    jobdb::queue::enqueue(conn, &job)
}

/// `n` of the app's transactions, on the connection `via` names:
/// - `write`: through the handle (`db.write`, group-committed with jobdb's writes);
/// - `pool`: the app's own `immediate_transaction` on a connection of `db.pool()`;
/// - `protected` / `plain`: the app's own `immediate_transaction` on its unmodified
///   `establish_connection()`, with [`jobdb::sqlite::protect_process`] called at startup or
///   not.
///
/// A transaction that fails is counted, not retried. Prints one JSON line: the writes, the
/// failures, their first error, and the latencies of the rest.
fn publish(db: &jobdb::Db, url: &str, n: usize, via: &str) -> Result<(), Box<dyn Error>> {
    let mut latencies = Vec::with_capacity(n);
    let mut slowest = (Duration::ZERO, 0);
    let mut failed = 0;
    let mut first_error = None;
    let mut own = match via {
        "protected" | "plain" => Some(establish_connection(url)),
        "write" | "pool" => None,
        other => return Err(format!("unknown connection {other:?}").into()),
    };
    wait_for_start()?;
    for i in 0..n {
        let started = Instant::now();
        let done = match (via, own.as_mut()) {
            ("write", _) => db.write(move |conn| post_and_notify(conn, i)).map(drop),
            ("pool", _) => match db.pool().get() {
                Ok(mut conn) => conn
                    .immediate_transaction(|c| post_and_notify(c, i))
                    .map(drop),
                Err(e) => Err(e.into()),
            },
            (_, Some(conn)) => conn
                .immediate_transaction(|c| post_and_notify(c, i))
                .map(drop),
            (_, None) => unreachable!("a connection was opened for this mode above"),
        };
        match done {
            Ok(()) => {
                let took = started.elapsed();
                slowest = slowest.max((took, i));
                latencies.push(took);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| ms(*d))
    };
    println!(
        "{}",
        serde_json::json!({
            "via": via,
            "writes": n,
            "failed": failed,
            "first_error": first_error,
            "p50_ms": at(0.50),
            "p99_ms": at(0.99),
            "max_ms": latencies.last().map_or(0.0, |d| ms(*d)),
            "slowest_write": slowest.1,
            "latencies_ms": latencies.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

/// With `DIESEL_APP_START=PATH`: says it is ready (`PATH.ready.PID`) and waits for `PATH` to
/// exist, so several app processes start writing together once all have started up
/// (`scripts/app-connections.sh`), and their process start-up is not in the figures.
fn wait_for_start() -> Result<(), Box<dyn Error>> {
    let Some(start) = std::env::var_os("DIESEL_APP_START") else {
        return Ok(());
    };
    let mut ready = start.clone();
    ready.push(format!(".ready.{}", std::process::id()));
    std::fs::write(&ready, b"")?;
    let start = std::path::PathBuf::from(start);
    while !start.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Each published post has exactly one `notify` job, and each of those succeeded once: read
/// through the app's own schema, joining jobdb's tables.
fn check(db: &jobdb::Db) -> Result<(), Box<dyn Error>> {
    let (posts_published, succeeded_results, latest) = db.read("check", |conn| {
        let published: i64 = posts::table
            .filter(posts::published.eq(true))
            .count()
            .get_result(conn)?;
        let succeeded: i64 = results::table
            .inner_join(jobs::table)
            .filter(jobs::queue.eq("notify"))
            .filter(results::outcome.eq("succeeded"))
            .count()
            .get_result(conn)?;
        let latest: Option<Post> = posts::table
            .order(posts::id.desc())
            .select(Post::as_select())
            .first(conn)
            .optional()?;
        Ok((published, succeeded, latest))
    })?;
    println!("{posts_published} posts published, {succeeded_results} notified");
    if let Some(p) = latest {
        println!(
            "latest: #{} {:?} ({:?}, published: {})",
            p.id, p.title, p.body, p.published
        );
    }
    if posts_published != succeeded_results {
        return Err("some posts were not notified exactly once".into());
    }
    Ok(())
}
