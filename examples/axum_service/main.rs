//! An axum service on jobdb: `POST /posts` inserts a post and enqueues its publish job in one
//! transaction, `GET /jobs/{id}` shows the job's state and result, `GET /posts/{id}` the post,
//! and an async worker in the same process runs the jobs. The same code on SQLite (the
//! default) and PostgreSQL:
//!
//! ```text
//! cargo run --example axum_service                       # ./axum_service.sqlite3, :3000
//! DATABASE_URL=postgres://postgres@127.0.0.1/app BIND=127.0.0.1:8080 cargo run --example axum_service
//! curl -s -XPOST localhost:3000/posts -H 'content-type: application/json' \
//!      -d '{"title":"hello","body":"first post"}'        # {"post_id":1,"job_id":1}
//! curl -s localhost:3000/jobs/1                          # {"state":"succeeded","result":{…}}
//! ```
//!
//! Ctrl-C stops the server (in-flight requests finish) and the worker (running jobs finish
//! within 5 s or are released).

mod app;

use app::AppConnection;
use jobdb::{AsyncQueue, Config, DatabaseUrl};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "axum_service.sqlite3".into());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".into());
    match DatabaseUrl::parse(&url)? {
        DatabaseUrl::Postgres(_) => serve::<diesel::PgConnection>(&url, &bind).await,
        #[cfg(feature = "mysql")]
        DatabaseUrl::Mysql(_) => serve::<diesel::MysqlConnection>(&url, &bind).await,
        _ => serve::<diesel::SqliteConnection>(&url, &bind).await,
    }
}

async fn serve<C: AppConnection>(url: &str, bind: &str) -> Result<(), Box<dyn std::error::Error>> {
    let queue: AsyncQueue<C> = AsyncQueue::open(url, Config::default()).await?;
    app::create_tables(&queue).await?;
    let (stop_worker, worker) = app::start_worker(queue.clone(), 16);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app::router(queue))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    stop_worker.cancel();
    let report = worker.await??;
    println!("worker stopped: {report:?}");
    Ok(())
}
