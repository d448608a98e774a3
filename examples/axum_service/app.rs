//! The service of `examples/axum_service`: an axum router whose POST inserts the app's own
//! row and enqueues its job in ONE transaction, a GET for a job's state and result, and the
//! async worker that runs those jobs in the same process. Generic over the backend: the same
//! code serves SQLite and PostgreSQL (`tests/axum_service.rs` runs it on both, over HTTP).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use diesel::prelude::*;
use jobdb::{AsyncQueue, AsyncWorker, HandlerError, NewJob, QueueConnection, WorkerConfig};
use serde::{Deserialize, Serialize};

/// The queue the service's jobs go to.
pub const QUEUE: &str = "publish";

diesel::table! {
    /// The app's own table: a post, published by a job after it is created.
    posts (id) {
        id -> BigInt,
        title -> Text,
        body -> Text,
        published -> Bool,
    }
}

/// A row of `posts`.
#[derive(Debug, Serialize, Deserialize, Queryable, Selectable)]
#[diesel(table_name = posts)]
pub struct Post {
    /// Its id.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// Its text.
    pub body: String,
    /// Set by its publish job.
    pub published: bool,
}

/// The body of `POST /posts`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewPost {
    /// Must not be empty.
    pub title: String,
    /// Any text.
    pub body: String,
}

/// The answer of `POST /posts`: the row's id and its job's.
#[derive(Debug, Serialize, Deserialize)]
pub struct Created {
    /// `posts.id`.
    pub post_id: i64,
    /// The job that publishes it.
    pub job_id: i64,
}

/// The payload of a publish job.
#[derive(Debug, Serialize, Deserialize)]
pub struct Publish {
    /// The post to publish.
    pub post_id: i64,
}

/// What the service needs of a connection beyond jobdb's: its own table. The Diesel queries
/// are the same on both backends; only the DDL differs.
pub trait AppConnection: QueueConnection {
    /// `CREATE TABLE IF NOT EXISTS posts …` in this backend's dialect.
    const POSTS_DDL: &'static str;
    /// Inserts a post; its id.
    fn insert_post(&mut self, post: &NewPost) -> QueryResult<i64>;
    /// Marks a post published; rows changed.
    fn set_published(&mut self, id: i64) -> QueryResult<usize>;
    /// One post, if it exists.
    fn find_post(&mut self, id: i64) -> QueryResult<Option<Post>>;
}

macro_rules! app_connection {
    ($conn:ty, $ddl:expr) => {
        app_connection!($conn, $ddl, |conn: &mut $conn, post: &NewPost| {
            diesel::insert_into(posts::table)
                .values((posts::title.eq(&post.title), posts::body.eq(&post.body)))
                .returning(posts::id)
                .get_result(conn)
        });
    };
    ($conn:ty, $ddl:expr, $insert:expr) => {
        impl AppConnection for $conn {
            const POSTS_DDL: &'static str = $ddl;

            fn insert_post(&mut self, post: &NewPost) -> QueryResult<i64> {
                $insert(self, post)
            }

            fn set_published(&mut self, id: i64) -> QueryResult<usize> {
                diesel::update(posts::table.find(id))
                    .set(posts::published.eq(true))
                    .execute(self)
            }

            fn find_post(&mut self, id: i64) -> QueryResult<Option<Post>> {
                posts::table
                    .find(id)
                    .select(Post::as_select())
                    .first(self)
                    .optional()
            }
        }
    };
}

app_connection!(
    diesel::SqliteConnection,
    "CREATE TABLE IF NOT EXISTS posts (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT \
     NULL, body TEXT NOT NULL, published BOOLEAN NOT NULL DEFAULT FALSE)"
);
app_connection!(
    diesel::PgConnection,
    "CREATE TABLE IF NOT EXISTS posts (id BIGSERIAL PRIMARY KEY, title TEXT NOT NULL, body \
     TEXT NOT NULL, published BOOLEAN NOT NULL DEFAULT FALSE)"
);

// MySQL has no INSERT … RETURNING: the id is the connection's LAST_INSERT_ID(), read in the
// same transaction.
#[cfg(feature = "mysql")]
app_connection!(
    diesel::MysqlConnection,
    "CREATE TABLE IF NOT EXISTS posts (id BIGINT AUTO_INCREMENT PRIMARY KEY, title TEXT NOT \
     NULL, body TEXT NOT NULL, published BOOLEAN NOT NULL DEFAULT FALSE)",
    |conn: &mut diesel::MysqlConnection, post: &NewPost| {
        diesel::insert_into(posts::table)
            .values((posts::title.eq(&post.title), posts::body.eq(&post.body)))
            .execute(conn)?;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "LAST_INSERT_ID()",
        ))
        .get_result(conn)
    }
);

/// Creates the app's table (jobdb's own tables come from its migrations when it opens).
pub async fn create_tables<C: AppConnection>(queue: &AsyncQueue<C>) -> jobdb::Result<()> {
    queue
        .db()
        .write_async(|conn| {
            Ok(diesel::connection::SimpleConnection::batch_execute(
                conn,
                C::POSTS_DDL,
            )?)
        })
        .await
}

/// The routes: `POST /posts`, `GET /posts/{id}`, `GET /jobs/{id}`.
pub fn router<C: AppConnection>(queue: AsyncQueue<C>) -> Router {
    Router::new()
        .route("/posts", post(create_post::<C>))
        .route("/posts/{id}", get(show_post::<C>))
        .route("/jobs/{id}", get(show_job::<C>))
        .with_state(queue)
}

/// Starts the worker that publishes posts: an async handler (it would call another service
/// here; it sleeps a little instead), then the app's own write through the same handle.
/// Returns the token that stops it and the task that reports what it did.
pub fn start_worker<C: AppConnection>(
    queue: AsyncQueue<C>,
    concurrency: usize,
) -> (
    jobdb::CancellationToken,
    tokio::task::JoinHandle<jobdb::Result<jobdb::WorkerReport>>,
) {
    let mut config = WorkerConfig::new(QUEUE).lease(Duration::from_secs(30));
    config.concurrency = concurrency;
    config.grace = Duration::from_secs(5);
    let db = queue.db().clone();
    let worker = AsyncWorker::new(queue, config, move |ctx| {
        let db = db.clone();
        async move {
            let Publish { post_id } = ctx.payload()?;
            tokio::select! {
                _ = ctx.token().cancelled() => return Err(HandlerError::msg("stopped")),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            let changed = db
                .write_async(move |conn| Ok(conn.set_published(post_id)?))
                .await?;
            if changed == 0 {
                return Err(HandlerError::msg(format!("post {post_id} does not exist")));
            }
            Ok(serde_json::json!({ "post_id": post_id, "published": true }))
        }
    });
    let stop = worker.shutdown_token();
    (stop, tokio::spawn(async move { worker.run().await }))
}

/// Inserts the post and enqueues its publish job in one transaction: both or neither.
async fn create_post<C: AppConnection>(
    State(queue): State<AsyncQueue<C>>,
    Json(post): Json<NewPost>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    if post.title.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "title must not be empty".into(),
        ));
    }
    let created = queue
        .db()
        .write_async(move |conn| {
            let post_id = conn.insert_post(&post)?;
            let job = NewJob::new(QUEUE, &Publish { post_id })?.max_attempts(5);
            let job_id = jobdb::queue::enqueue(conn, &job)?;
            Ok(Created { post_id, job_id })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// A post, 404 if there is none.
async fn show_post<C: AppConnection>(
    State(queue): State<AsyncQueue<C>>,
    Path(id): Path<i64>,
) -> Result<Json<Post>, ApiError> {
    let post = queue
        .db()
        .read_async("find_post", move |conn| Ok(conn.find_post(id)?))
        .await?;
    post.map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no post {id}")))
}

/// A job's state and attempts, with its result once it has one.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id.
    pub id: i64,
    /// `queued`, `running`, `succeeded`, `dead` or `cancelled`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The succeeded attempt's output.
    pub result: Option<serde_json::Value>,
    /// The last failed attempt's error.
    pub error: Option<String>,
}

async fn show_job<C: AppConnection>(
    State(queue): State<AsyncQueue<C>>,
    Path(id): Path<i64>,
) -> Result<Json<JobView>, ApiError> {
    let job = queue.get_job(id).await?;
    let results = queue.get_results(id).await?;
    let result = results
        .iter()
        .rev()
        .find_map(|r| r.output::<serde_json::Value>().transpose())
        .transpose()?;
    Ok(Json(JobView {
        id: job.id,
        state: job.state.to_string(),
        attempts: job.attempts,
        result,
        error: job.last_error,
    }))
}

/// An error answer: a status and a message, as JSON.
pub struct ApiError(StatusCode, String);

/// jobdb's typed errors map to statuses by kind, never by text.
impl From<jobdb::Error> for ApiError {
    fn from(e: jobdb::Error) -> Self {
        let status = if e.is_not_found() {
            StatusCode::NOT_FOUND
        } else if e.is_invalid_input() {
            StatusCode::BAD_REQUEST
        } else if e.is_busy() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}
