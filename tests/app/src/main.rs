//! Builds against jobdb as an app does (`default-features = false`), with Diesel 2.4 and
//! rusqlite 0.43 in the same graph, and uses all three on one file: the process protected at
//! startup, a job enqueued inside the app's own write and run, the app's plain Diesel and
//! rusqlite connections guarded by jobdb.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::Connection;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = jobdb::Config::default();
    jobdb::sqlite::protect_process(&config)?;
    let dir = std::env::temp_dir().join(format!("jobdb-app-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("app.sqlite3");
    let url = path.to_str().ok_or("path")?;
    let db: jobdb::Db = jobdb::Db::open(url, config.clone())?;
    let id = db.write(|conn| {
        conn.batch_execute(
            "CREATE TABLE IF NOT EXISTS posts (id INTEGER PRIMARY KEY, title TEXT)",
        )?;
        jobdb::queue::enqueue(
            conn,
            &jobdb::NewJob::new("mail", &serde_json::json!({"to": 1}))?,
        )
    })?;
    let queue = jobdb::Queue::on(db);
    let jobs = queue.claim("mail", 1, "app", Duration::from_secs(30))?;
    assert_eq!(jobs.len(), 1);
    queue.complete(jobs[0].lease(), &"sent", Duration::ZERO)?;
    assert_eq!(queue.get_job(id)?.state, jobdb::JobState::Succeeded);

    // Diesel's plain `establish`, opened after the call: jobdb's busy handler is on it.
    let mut plain = diesel::SqliteConnection::establish(url)?;
    assert_eq!(
        jobdb::sqlite::guarded_busy_timeout(&mut plain),
        Some(config.sqlite.pragmas.busy_timeout)
    );
    plain.immediate_transaction(|c| {
        c.batch_execute("INSERT INTO posts (title) VALUES ('diesel')")
    })?;

    // rusqlite, which sets a 5 s busy timeout of its own when it opens: jobdb's handler is
    // put back at its first statement (SQLite's `busy_timeout` then reads 0), and its
    // statements are timed with the process's others.
    let selects = || {
        jobdb::sqlite::statement_durations()
            .into_iter()
            .find(|(k, _)| *k == jobdb::sqlite::StatementKind::Select)
            .map_or(0, |(_, h)| h.count)
    };
    let before = selects();
    let lite = rusqlite::Connection::open(&path)?;
    let posts: i64 = lite.query_row("SELECT count(*) FROM posts", [], |r| r.get(0))?;
    assert_eq!(posts, 1);
    let timeout: i64 = lite.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
    assert_eq!(timeout, 0, "jobdb's handler replaced rusqlite's timeout");
    assert!(selects() > before, "rusqlite's statements are timed");
    lite.execute("INSERT INTO posts (title) VALUES ('rusqlite')", [])?;

    drop(lite);
    drop(plain);
    drop(queue);
    std::fs::remove_dir_all(&dir)?;
    let (_, sqlite) = jobdb::sqlite::linked_version();
    println!("jobdb-app-check: ok (SQLite {sqlite}, Diesel 2.4, rusqlite 0.43)");
    Ok(())
}
