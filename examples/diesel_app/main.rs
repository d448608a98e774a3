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
//! jobdb --database-url app.sqlite3 work --queue notify --exec cat --exit-when-empty
//! cargo run --example diesel_app -- app.sqlite3 check        # each post notified exactly once
//! ```
//!
//! `publish` prints one JSON line with its write latencies: `{"writes":N,"p50_ms":…,"p99_ms":…,
//! "max_ms":…}`.

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
        return Err("usage: diesel_app DATABASE (publish N | check)".into());
    };
    // The handle: WAL on and verified, the pragmas on every connection, jobdb's migrations.
    let db: jobdb::Db = jobdb::Db::open(url, jobdb::Config::from_env()?)?;
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
            publish(&db, n)
        }
        "check" => check(&db),
        other => Err(format!("unknown command {other:?}").into()),
    }
}

/// `n` transactions of the app's own: insert a post, publish it and enqueue its `notify` job,
/// atomically, through the handle (group-committed with jobdb's writes of this process).
fn publish(db: &jobdb::Db, n: usize) -> Result<(), Box<dyn Error>> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        db.write(move |conn| {
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
        })?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{}",
        serde_json::json!({
            "writes": n,
            "p50_ms": ms(at(0.50)),
            "p99_ms": ms(at(0.99)),
            "max_ms": latencies.last().map_or(0.0, |d| ms(*d)),
        })
    );
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
