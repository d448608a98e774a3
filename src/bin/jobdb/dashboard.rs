//! `jobdb serve`'s pages: the overview, the job list and the job detail, rendered on the
//! server with maud (HTML built by a compile-time-checked macro that escapes every value: a
//! hostile queue name, payload or error is shown as text), with one static script for the
//! actions and the live counts (no inline script, nothing built from data).

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use jobdb::queue::JobFilter;
use jobdb::{JobState, QueueConnection};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::serve::{ApiError, Shared};

const SCRIPT: &str = include_str!("static/app.js");
const STYLE: &str = include_str!("static/app.css");

pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

pub async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

fn page(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) " · jobdb" }
                    link rel="stylesheet" href="/static/app.css";
                    script src="/static/app.js" defer {}
                }
                body {
                    nav { a href="/" { "Queues" } a href="/jobs" { "Jobs" } a href="/metrics" { "Metrics" } }
                    h1 { (title) }
                    p #message {}
                    (body)
                }
            }
        }
        .into_string(),
    )
}

/// `/`: every queue with its counts (refreshed every 2 s), oldest due wait, throughput and
/// paused state; the handle's busy retries and WAL size; an enqueue form.
pub async fn overview<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
) -> Result<Html<String>, ApiError> {
    let overview = ctx.overview().await?;
    let metrics = ctx.queue.sync().metrics();
    let states = JobState::ALL;
    Ok(page(
        "Queues",
        html! {
            table #queues {
                tr { th { "queue" } @for s in states { th { (s.as_str()) } } th { "oldest due (s)" } th { "done/s" } th { "succeeded, last hour" } th { "" } }
                @for (name, q) in &overview.queues {
                    @let a = &q.activity;
                    tr {
                        td { a href={ "/jobs?queue=" (urlencode(name)) } { (name) } @if a.paused { " (paused)" } }
                        @for s in states {
                            td data-queue=(name) data-field=(s.as_str()) {
                                a href={ "/jobs?queue=" (urlencode(name)) "&state=" (s.as_str()) } { (count(&q.counts, s)) }
                            }
                        }
                        td data-queue=(name) data-field="oldest_due_age_s" { (a.oldest_due_age_s.map_or("–".to_owned(), |s| format!("{s:.1}"))) }
                        td data-queue=(name) data-field="throughput_per_sec" { (a.throughput_per_sec) }
                        td { (chart(name, &q.succeeded_per_minute)) }
                        td {
                            @if a.paused {
                                button data-action="queue" data-verb="resume" data-queue=(name) { "resume" }
                            } @else {
                                button data-action="queue" data-verb="pause" data-queue=(name) { "pause" }
                            }
                        }
                    }
                }
            }
            p #as-of data-as-of=(overview.as_of.to_rfc3339()) {
                "Counts as of " (overview.as_of.format("%H:%M:%S UTC")) " (one scan of every job, "
                (format!("{:.0}", overview.took.as_secs_f64() * 1000.0)) " ms, taken in the background)"
            }
            p { "Busy retries " (metrics.retries.busy_retries) ", busy give-ups " (metrics.retries.busy_exhausted)
                " (this server's handle)"
                @if let Some(wal) = overview.wal_bytes { ", WAL " (wal / 1024) " KiB" } }
            h2 { "Enqueue a job" }
            form data-action="enqueue" {
                label { "queue " input name="queue" required; } " "
                label { "priority " input name="priority" type="number" value="0"; } " "
                label { "delay (ms) " input name="delay_ms" type="number" value="0" min="0"; }
                br;
                textarea name="payload" rows="4" cols="60" { "{}" }
                br;
                button type="submit" { "enqueue" }
            }
        },
    ))
}

/// Jobs succeeded per minute over the last hour as bars (an inline SVG, no script); the
/// total in `data-total` and the title.
fn chart(queue: &str, minutes: &[i64]) -> Markup {
    let total: i64 = minutes.iter().sum();
    let top = minutes.iter().copied().max().unwrap_or(0).max(1);
    html! {
        svg.chart width="120" height="24" viewBox="0 0 120 24" data-queue=(queue) data-total=(total) {
            title { (total) " succeeded in the last hour" }
            @for (i, n) in minutes.iter().enumerate() {
                @let h = (n * 24 + top - 1) / top;
                rect x=(i * 2) y=(24 - h) width="2" height=(h) fill="#4a7" {}
            }
        }
    }
}

fn count(c: &jobdb::StateCounts, s: JobState) -> i64 {
    match s {
        JobState::Queued => c.queued,
        JobState::Running => c.running,
        JobState::Succeeded => c.succeeded,
        JobState::Dead => c.dead,
        JobState::Cancelled => c.cancelled,
    }
}

/// The list page's query.
#[derive(Deserialize)]
pub struct ListPage {
    queue: Option<String>,
    state: Option<JobState>,
    unique_key: Option<String>,
    id: Option<i64>,
    before: Option<i64>,
}

/// `/jobs`: the jobs a filter matches, newest first, 50 a page (keyset), with bulk retry and
/// cancel of everything the filter matches.
pub async fn list<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    Query(q): Query<ListPage>,
) -> Result<Response, ApiError> {
    if let Some(id) = q.id {
        return Ok(axum::response::Redirect::to(&format!("/jobs/{id}")).into_response());
    }
    let filter = JobFilter {
        queue: q.queue.filter(|s| !s.is_empty()),
        state: q.state,
        unique_key: q.unique_key.filter(|s| !s.is_empty()),
    };
    let (f, before) = (filter.clone(), q.before);
    let jobdb::queue::JobPage {
        jobs,
        next_before: next,
    } = ctx
        .queue
        .blocking(move |queue| queue.list_jobs(&f, before, 50))
        .await??;
    // A short page with more below: the search stopped at its time budget.
    let searched_to = next.filter(|_| jobs.len() < 50);
    let query = |before: Option<i64>| {
        let mut parts = Vec::new();
        if let Some(v) = &filter.queue {
            parts.push(format!("queue={}", urlencode(v)));
        }
        if let Some(v) = filter.state {
            parts.push(format!("state={v}"));
        }
        if let Some(v) = &filter.unique_key {
            parts.push(format!("unique_key={}", urlencode(v)));
        }
        if let Some(b) = before {
            parts.push(format!("before={b}"));
        }
        parts.join("&")
    };
    Ok(page(
        "Jobs",
        html! {
            form method="get" action="/jobs" {
                label { "queue " input name="queue" value=(filter.queue.clone().unwrap_or_default()); } " "
                label { "state "
                    select name="state" {
                        option value="" { "any" }
                        @for s in JobState::ALL { option value=(s.as_str()) selected[filter.state == Some(s)] { (s.as_str()) } }
                    }
                } " "
                label { "unique key " input name="unique_key" value=(filter.unique_key.clone().unwrap_or_default()); } " "
                label { "id " input name="id" type="number"; } " "
                button type="submit" { "filter" }
            }
            p {
                @let (queue, state, key) = (filter.queue.clone().unwrap_or_default(), filter.state.map(|s| s.as_str()).unwrap_or(""), filter.unique_key.clone().unwrap_or_default());
                button #bulk-retry data-action="bulk" data-verb="retry" data-queue=(queue) data-state=(state) data-key=(key) { "retry all matching" }
                button #bulk-cancel data-action="bulk" data-verb="cancel" data-queue=(queue) data-state=(state) data-key=(key) { "cancel all matching" }
            }
            table #jobs {
                tr { th { "id" } th { "queue" } th { "state" } th { "attempts" } th { "last error" } th { "updated" } }
                @for j in &jobs {
                    tr data-job=(j.id) {
                        td { a href={ "/jobs/" (j.id) } { (j.id) } }
                        td { (j.queue) }
                        td.state { (j.state.as_str()) }
                        td { (j.attempts) "/" (j.max_attempts) }
                        td { (j.last_error.as_deref().unwrap_or("")) }
                        td { (j.updated_at.to_rfc3339()) }
                    }
                }
            }
            @if let Some(n) = searched_to {
                p #searched { "Searched the jobs down to id " (n) " so far; older ones may match too." }
            }
            @if let Some(n) = next { a #older href={ "/jobs?" (query(Some(n))) } { "older →" } }
        },
    )
    .into_response())
}

/// `/jobs/{id}`: the job, its payload, lease and every attempt.
pub async fn detail<C: QueueConnection>(
    State(ctx): State<Shared<C>>,
    Path(id): Path<i64>,
) -> Result<Html<String>, ApiError> {
    let job = ctx.queue.get_job(id).await?;
    let results = ctx.queue.get_results(id).await?;
    let payload = serde_json::from_str::<serde_json::Value>(&job.payload_json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| job.payload_json.clone());
    Ok(page(
        &format!("Job {id}"),
        html! {
            table #job {
                tr { th { "queue" } td { a href={ "/jobs?queue=" (urlencode(&job.queue)) } { (job.queue) } } }
                tr { th { "state" } td #state { (job.state.as_str()) } }
                tr { th { "attempts" } td { (job.attempts) " of " (job.max_attempts) } }
                tr { th { "priority" } td { (job.priority) } }
                tr { th { "run at" } td { (job.run_at.to_rfc3339()) } }
                tr { th { "worker" } td { (job.worker_id.as_deref().unwrap_or("")) } }
                tr { th { "lease until" } td { (job.lease_expires_at.map(|t| t.to_rfc3339()).unwrap_or_default()) } }
                tr { th { "unique key" } td { (job.unique_key.as_deref().unwrap_or("")) } }
                tr { th { "last error" } td { (job.last_error.as_deref().unwrap_or("")) } }
                tr { th { "progress" } td #progress { (job.progress_json.as_deref().unwrap_or("")) } }
            }
            p {
                button #retry data-action="job" data-verb="retry" data-id=(id) { "retry" }
                button #cancel data-action="job" data-verb="cancel" data-id=(id) { "cancel" }
            }
            h2 { "Payload" }
            pre #payload { (payload) }
            h2 { "Attempts" }
            table #attempts {
                tr { th { "attempt" } th { "outcome" } th { "output or error" } th { "duration" } th { "worker" } th { "finished" } }
                @for r in &results {
                    tr {
                        td { (r.attempt) }
                        td { (format!("{:?}", r.outcome).to_lowercase()) }
                        td { pre { (r.output_json.as_deref().or(r.error.as_deref()).unwrap_or("")) } }
                        td { (r.duration_ms) " ms" }
                        td.worker { (r.worker_id.as_deref().unwrap_or("")) }
                        td { (r.created_at.to_rfc3339()) }
                    }
                }
            }
        },
    ))
}

/// Percent-encodes a query value (queue names are user input).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
