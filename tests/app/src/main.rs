//! Builds against jobdb as an app does (`default-features = false`) and uses it: a handle on a
//! fresh SQLite file, a job enqueued inside the app's own write, claimed and completed.

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("jobdb-app-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("app.sqlite3");
    let db: jobdb::Db = jobdb::Db::open(path.to_str().ok_or("path")?, jobdb::Config::default())?;
    let id = db.write(|conn| {
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
    std::fs::remove_dir_all(&dir)?;
    println!("jobdb-app-check: ok");
    Ok(())
}
