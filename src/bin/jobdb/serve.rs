//! `jobdb serve`: the admin HTTP API (JSON) and `/metrics` (Prometheus), on SQLite or
//! PostgreSQL. Every action goes through the same library calls as the CLI.
//!
//! Security: it binds loopback by default; any other address needs a token (`--token` or
//! `JOBDB_SERVE_TOKEN`), and with a token every request must carry `Authorization: Bearer
//! TOKEN`. Actions are POSTs that must send `Content-Type: application/json` (a cross-site
//! form cannot, and a cross-site script cannot without a CORS preflight, which is never
//! granted) and, when the browser sends an `Origin`, one naming this server. `--read-only`
//! refuses every action.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jobdb::{AsyncQueue, NewJob, Queue, QueueConnection};
use serde::{Deserialize, Serialize};

use crate::snapshot::Snapshots;
use crate::UsageError;

/// Arguments of `jobdb serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --token
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Every request must send `Authorization: Bearer TOKEN`
    #[arg(long, env = "JOBDB_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Refuse every action (retry, cancel, pause, resume, enqueue): reads and /metrics only
    #[arg(long)]
    read_only: bool,
}

pub(crate) struct Ctx<C: QueueConnection> {
    pub(crate) queue: AsyncQueue<C>,
    /// The overview the pages, `/api/queues` and `/metrics` answer from (`None` for
    /// `work --metrics-listen`, whose scrapes scan: a worker's database is its own business).
    pub(crate) snapshots: Option<Arc<Snapshots<C>>>,
    token: Option<String>,
    read_only: bool,
    /// Without a token, serve only requests whose `Host` names a loopback address or this
    /// one (`jobdb serve`; `None` for a worker's `/metrics`, which holds no payload and no
    /// action and is scraped by whatever name reaches it).
    loopback_hosts: Option<Option<std::net::SocketAddr>>,
}

impl<C: QueueConnection> Ctx<C> {
    /// The overview to show: the shared snapshot, or a fresh scan where there is none.
    pub(crate) async fn overview(&self) -> jobdb::Result<Arc<jobdb::overview::Overview>> {
        match &self.snapshots {
            Some(s) => s.get().await,
            None => self.queue.blocking(|q| q.overview()).await?.map(Arc::new),
        }
    }
}

pub(crate) type Shared<C> = Arc<Ctx<C>>;

/// Runs `jobdb serve` until SIGINT/SIGTERM.
pub fn run<C: QueueConnection>(queue: Queue<C>, args: ServeArgs) -> Result<()> {
    if !args.listen.ip().is_loopback() && args.token.as_deref().is_none_or(|t| t.is_empty()) {
        return Err(UsageError(format!(
            "--listen {} is not a loopback address: give a --token (or JOBDB_SERVE_TOKEN) so \
             that only its holders can use the API",
            args.listen
        ))
        .into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let queue = queue.to_async();
        let ctx = Arc::new(Ctx {
            snapshots: Some(Snapshots::start(queue.clone())),
            queue,
            token: args.token.filter(|t| !t.is_empty()),
            read_only: args.read_only,
            loopback_hosts: Some(listener.local_addr().ok()),
        });
        println!("listening on http://{}", listener.local_addr()?);
        use std::io::Write as _;
        std::io::stdout().flush()?;
        axum::serve(listener, router(ctx))
            .with_graceful_shutdown(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
            })
            .await
            .context("the server failed")
    })
}

/// `jobdb work --metrics-listen`: `/metrics` alone, on a thread of its own (a one-thread
/// runtime), for as long as the process runs. Binds before returning, so a bad address is
/// an error here. Metrics are read-only; they name every queue and its counts, so any address
/// but loopback needs a token (Prometheus sends it as `authorization: {credentials: …}`), as
/// `serve` does.
pub fn metrics_only<C: QueueConnection>(
    queue: Queue<C>,
    addr: SocketAddr,
    token: Option<String>,
) -> Result<std::thread::JoinHandle<()>> {
    let token = token.filter(|t| !t.is_empty());
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(UsageError(format!(
            "--metrics-listen {addr} is not a loopback address: give a --metrics-token (or \
             JOBDB_METRICS_TOKEN) so that only its holders can scrape it"
        ))
        .into());
    }
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    eprintln!(
        "jobdb work: metrics on http://{}/metrics",
        listener.local_addr()?
    );
    let ctx = Arc::new(Ctx {
        queue: queue.to_async(),
        snapshots: None,
        // Without a token, loopback names only (DNS rebinding), as `serve`.
        loopback_hosts: token.is_none().then(|| listener.local_addr().ok()),
        token,
        read_only: true,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the metrics runtime")?;
    Ok(std::thread::Builder::new()
        .name("jobdb-metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        let app = Router::new()
                            .route("/metrics", get(metrics::<C>))
                            .layer(middleware::from_fn_with_state(ctx.clone(), guard::<C>))
                            .with_state(ctx);
                        axum::serve(l, app).await.map_err(anyhow::Error::from)
                    }
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics server stopped");
                }
            })
        })?)
}

fn router<C: QueueConnection>(ctx: Shared<C>) -> Router {
    use crate::dashboard;
    Router::new()
        .route("/", get(dashboard::overview::<C>))
        .route("/jobs", get(dashboard::list::<C>))
        .route("/jobs/{id}", get(dashboard::detail::<C>))
        .route("/static/app.js", get(dashboard::script))
        .route("/static/app.css", get(dashboard::style))
        .route("/metrics", get(metrics::<C>))
        .route("/api/queues", get(queues::<C>))
        .route("/api/jobs", get(list::<C>).post(enqueue::<C>))
        .route("/api/jobs/bulk", post(bulk::<C>))
        .route("/api/jobs/{id}", get(job::<C>))
        .route("/api/jobs/{id}/retry", post(retry::<C>))
        .route("/api/jobs/{id}/cancel", post(cancel::<C>))
        .route("/api/queues/{name}/pause", post(pause::<C>))
        .route("/api/queues/{name}/resume", post(resume::<C>))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctx.clone(), guard::<C>))
        .layer(middleware::from_fn(json_errors))
        .with_state(ctx)
}

/// No such page or endpoint.
async fn not_found(request: Request) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!(
            "no such endpoint: {} {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Every error the API answers is the documented JSON (`{"error": …, "kind": …}`), also those
/// axum's extractors and router produce themselves (a malformed id in the path, a body that is
/// not JSON, a method the endpoint does not take), which are plain text or empty.
async fn json_errors(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !api || is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let mut headers = response.headers().clone();
    headers.remove(header::CONTENT_TYPE);
    headers.remove(header::CONTENT_LENGTH);
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        s if s.is_client_error() => "invalid_input",
        _ => "internal",
    };
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    // The original's other headers (Allow, Set-Cookie, the security headers) stay.
    let mut answer = refuse(status, kind, &message);
    for (name, value) in headers.iter() {
        answer.headers_mut().append(name.clone(), value.clone());
    }
    answer
}

/// The token, and for actions: not read-only, JSON, and from this origin.
async fn guard<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    // DNS rebinding: a page on another site whose name now points at 127.0.0.1 reaches this
    // server as a "same-origin" request for its own name. Without a token only requests for
    // a loopback name (or the address listened on) are served; with one, the token decides.
    let misdirected = match ctx.loopback_hosts {
        Some(listen) => ctx.token.is_none() && !loopback_host(headers, listen),
        None => false,
    };
    if misdirected {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_host",
            "without a token this server answers only requests for a loopback name \
             (localhost, 127.0.0.1, [::1]) or its listen address; give it a --token to serve \
             others",
        );
    }
    let mut set_cookie = None;
    if let Some(token) = &ctx.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("jobdb_token="));
        // A browser opens the pages once with `?token=…`; a cookie (HttpOnly, SameSite=Strict)
        // carries it from then on.
        let query = request
            .uri()
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|p| p.strip_prefix("token="))
            .and_then(percent_decoded);
        let query = query.as_deref();
        if query.is_some_and(|q| same_token(q, token)) {
            set_cookie = Some(format!(
                "jobdb_token={token}; HttpOnly; SameSite=Strict; Path=/"
            ));
        }
        if ![bearer, cookie, query]
            .iter()
            .any(|given| given.is_some_and(|g| same_token(g, token)))
        {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid `Authorization: Bearer` token is required",
            );
        }
    }
    let action = request.method() == Method::POST;
    if action {
        if ctx.read_only {
            return refuse(
                StatusCode::FORBIDDEN,
                "read_only",
                "this server is read-only (--read-only)",
            );
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_input",
                "actions take `Content-Type: application/json`",
            );
        }
        if !same_origin(headers) {
            return refuse(
                StatusCode::FORBIDDEN,
                "cross_site",
                "a cross-site request is refused",
            );
        }
    }
    let mut response = next.run(request).await;
    if action {
        // Whatever it changed, the next overview shows it (read your writes).
        if let Some(s) = &ctx.snapshots {
            s.invalidate();
        }
    }
    let h = response.headers_mut();
    // No inline script and nothing from elsewhere: an injected <script> or handler in a
    // page would not run even if escaping failed.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if let Some(cookie) = set_cookie.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// A query value with its `%XX` escapes and `+` decoded, as a browser encodes it; `None` if
/// an escape is malformed or the result is not UTF-8 (then it matches no token).
fn percent_decoded(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `given` is `token`, compared in time that does not depend on where they differ
/// (a timing side channel would let a caller guess the token byte by byte).
fn same_token(given: &str, token: &str) -> bool {
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, &x) in b.iter().enumerate() {
        diff |= usize::from(x ^ a.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Whether the request's `Host` names this machine's loopback (`localhost`, a `127.x` or
/// `::1` address) or the address listened on, with any port.
fn loopback_host(headers: &HeaderMap, listen: Option<std::net::SocketAddr>) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // Strip the port: `[::1]:8080`, `127.0.0.1:8080`, `localhost:8080`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || listen.is_some_and(|l| l.ip() == ip),
        Err(_) => false,
    }
}

/// No `Origin` (a script, curl), or one whose host is the `Host` this request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    host.is_some() && origin_host == host
}

/// A JSON body whose rejection (not JSON, wrong fields) is a typed 400 like every other bad
/// input, not axum's plain-text answer.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = Response;
    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                &e.body_text(),
            )),
        }
    }
}

/// A query string, rejected as [`JsonBody`] is.
struct QueryParams<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for QueryParams<T>
{
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryParams(v)),
            Err(e) => Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                &e.body_text(),
            )),
        }
    }
}

/// An error answer, `{"error": …, "kind": …}`.
fn refuse(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": message, "kind": kind })),
    )
        .into_response()
}

/// jobdb's errors as answers, by kind (the CLI's exit codes' kinds), never by text.
pub(crate) struct ApiError(jobdb::Error);

impl From<jobdb::Error> for ApiError {
    fn from(e: jobdb::Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = &self.0;
        let (status, kind) = if e.is_not_found() {
            (StatusCode::NOT_FOUND, "not_found")
        } else if e.is_invalid_input() {
            (StatusCode::BAD_REQUEST, "invalid_input")
        } else if e.is_wrong_state() {
            (StatusCode::CONFLICT, "wrong_state")
        } else if e.is_unique_conflict() {
            (StatusCode::CONFLICT, "unique_conflict")
        } else if e.is_busy() {
            (StatusCode::SERVICE_UNAVAILABLE, "busy")
        } else if e.is_internal() {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, "database")
        };
        refuse(status, kind, &e.to_string())
    }
}

async fn metrics<C: QueueConnection>(State(ctx): State<Shared<C>>) -> Result<Response, ApiError> {
    let overview = ctx.overview().await?;
    let text = jobdb::prometheus::render_overview(ctx.queue.sync(), &overview);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// One queue's figures, and how old they are (every queue's are from the same scan).
#[derive(Serialize)]
struct QueueView<'a> {
    queue: &'a str,
    #[serde(flatten)]
    figures: &'a jobdb::overview::QueueOverview,
    as_of: chrono::DateTime<chrono::Utc>,
}

async fn queues<C: QueueConnection>(State(ctx): State<Shared<C>>) -> Result<Response, ApiError> {
    let overview = ctx.overview().await?;
    let views: Vec<QueueView<'_>> = overview
        .queues
        .iter()
        .map(|(queue, figures)| QueueView {
            queue,
            figures,
            as_of: overview.as_of,
        })
        .collect();
    Ok(Json(views).into_response())
}

#[derive(Serialize)]
struct JobView {
    job: jobdb::Job,
    results: Vec<jobdb::JobResult>,
}

async fn job<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    Path(id): Path<i64>,
) -> Result<Json<JobView>, ApiError> {
    let job = ctx.queue.get_job(id).await?;
    let results = ctx.queue.get_results(id).await?;
    Ok(Json(JobView { job, results }))
}

/// The body of `POST /api/jobs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueBody {
    queue: String,
    payload: serde_json::Value,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    delay_ms: u64,
    max_attempts: Option<i32>,
    unique_key: Option<String>,
}

async fn enqueue<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    JsonBody(body): JsonBody<EnqueueBody>,
) -> Result<Response, ApiError> {
    let mut job = NewJob::new(body.queue, &body.payload)?.priority(body.priority);
    if body.delay_ms > 0 {
        job = job.run_at(jobdb::timestamp::from_now(
            "delay_ms",
            Duration::from_millis(body.delay_ms),
        )?);
    }
    if let Some(n) = body.max_attempts {
        job = job.max_attempts(n);
    }
    if let Some(k) = body.unique_key {
        job = job.unique_key(k);
    }
    let done = ctx.queue.enqueue_unique(&job).await?;
    let status = if done.inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::json!({ "id": done.id, "inserted": done.inserted })),
    )
        .into_response())
}

async fn retry<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    ctx.queue.retry(id).await?;
    Ok(Json(serde_json::json!({ "id": id, "state": "queued" })))
}

async fn cancel<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let outcome = match ctx.queue.cancel(id).await? {
        jobdb::CancelOutcome::Cancelled => "cancelled",
        jobdb::CancelOutcome::Requested => "cancel_requested",
    };
    Ok(Json(serde_json::json!({ "id": id, "outcome": outcome })))
}

async fn pause<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let changed = ctx.queue.blocking(move |q| q.pause(&name)).await??;
    Ok(Json(
        serde_json::json!({ "paused": true, "changed": changed }),
    ))
}

async fn resume<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let changed = ctx.queue.blocking(move |q| q.resume(&name)).await??;
    Ok(Json(
        serde_json::json!({ "paused": false, "changed": changed }),
    ))
}

/// The query of `GET /api/jobs`: the filter, where the page starts, how long it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    queue: Option<String>,
    state: Option<jobdb::JobState>,
    unique_key: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
    /// The access token, when a page passes it in the query (the guard checked it).
    #[allow(dead_code)]
    token: Option<String>,
}

/// A page of jobs, newest first; `next_before` fetches the next page (keyset pagination).
async fn list<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    let filter = jobdb::queue::JobFilter {
        queue: q.queue,
        state: q.state,
        unique_key: q.unique_key,
    };
    let limit = q.limit.unwrap_or(50);
    let before = q.before;
    let page = ctx
        .queue
        .blocking(move |queue| queue.list_jobs(&filter, before, limit))
        .await??;
    Ok(Json(page).into_response())
}

/// The body of `POST /api/jobs/bulk`: an action on every job a filter matches.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    action: BulkAction,
    #[serde(default)]
    filter: jobdb::queue::JobFilter,
    /// Must be true: a bulk action is confirmed explicitly.
    #[serde(default)]
    confirm: bool,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum BulkAction {
    Retry,
    Cancel,
}

/// Applies the action to every job the filter matches, page by page, each job through the
/// same call as `jobdb retry` / `jobdb cancel`; jobs in a state the action does not apply to
/// are counted as skipped.
async fn bulk<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    JsonBody(body): JsonBody<BulkBody>,
) -> Result<Response, ApiError> {
    if !body.confirm {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "a bulk action needs \"confirm\": true",
        ));
    }
    let (mut done, mut skipped) = (0u64, 0u64);
    let mut ids = Vec::new();
    let mut before = None;
    loop {
        let (filter, b) = (body.filter.clone(), before);
        let page = ctx
            .queue
            .blocking(move |q| q.list_jobs(&filter, b, jobdb::queue::MAX_PAGE))
            .await??;
        ids.extend(page.jobs.iter().map(|j| j.id));
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    for id in ids {
        let r = match body.action {
            BulkAction::Retry => ctx.queue.retry(id).await,
            BulkAction::Cancel => ctx.queue.cancel(id).await.map(|_| ()),
        };
        match r {
            Ok(()) => done += 1,
            Err(e) if e.is_wrong_state() || e.is_unique_conflict() => skipped += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(serde_json::json!({ "done": done, "skipped": skipped })).into_response())
}
