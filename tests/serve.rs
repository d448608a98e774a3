//! `jobdb serve` over real HTTP on both backends: the admin API's reads and actions go through
//! the library calls (checked in the database), errors are typed JSON, `/metrics` passes
//! `promtool check metrics` (when installed; CI requires it) and its values are the
//! database's; the token, read-only, JSON-only and same-origin rules hold.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jobdb::{JobState, NewJob};

use crate::backends::{Backend, TestConn};

crate::on_both_backends!(
    the_admin_api_and_metrics_answer_from_the_database,
    pages_are_keyset_and_bulk_actions_touch_exactly_the_filtered_jobs,
);

/// `jobdb serve` on a free loopback port, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn serve(url: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args(["--database-url", url, "serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("DATABASE_URL")
        .env_remove("JOBDB_SERVE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    Server { child, base }
}

fn agent() -> ureq::Agent {
    crate::common::http_agent(Duration::from_secs(30))
}

/// `(status, body)` of a request; POSTs send JSON unless `content_type` says otherwise.
pub(crate) fn call(url: &str, post: Option<&str>, headers: &[(&str, &str)]) -> (u16, String) {
    let agent = agent();
    let mut response = match post {
        Some(body) => {
            let mut req = agent.post(url);
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                req = req.header("content-type", "application/json");
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send(body).unwrap()
        }
        None => {
            let mut req = agent.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.call().unwrap()
        }
    };
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn the_admin_api_and_metrics_answer_from_the_database<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let dead = q
        .enqueue(&NewJob::new("mail", &1).unwrap().max_attempts(1))
        .unwrap();
    let lease = q.claim("mail", 1, "w", Duration::from_secs(30)).unwrap()[0].lease();
    q.fail(lease, "smtp said no <script>", Duration::ZERO)
        .unwrap();
    let s = serve(&b.url(), &[]);

    // Enqueue through the API; read it back; bad input is a typed 400 that writes nothing.
    let (status, body) = call(
        &format!("{}/api/jobs", s.base),
        Some(
            r#"{"queue":"mail","payload":{"to":"\"><img src=x onerror=alert(1)>"},"priority":-2}"#,
        ),
        &[],
    );
    assert_eq!(status, 201, "{body}");
    let id = json(&body)["id"].as_i64().unwrap();
    assert_eq!(q.get_job(id).unwrap().priority, -2);
    let (status, body) = call(&format!("{}/api/jobs/{id}", s.base), None, &[]);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["job"]["state"], "queued");
    for bad in [
        r#"{"queue":"","payload":1}"#,
        r#"{"queue":"q"}"#,
        "not json",
    ] {
        let (status, body) = call(&format!("{}/api/jobs", s.base), Some(bad), &[]);
        assert_eq!(
            (status, json(&body)["kind"].as_str()),
            (400, Some("invalid_input")),
            "{bad}: {body}"
        );
    }
    assert_eq!(q.stats(None).unwrap().total.total(), 2);
    let (status, body) = call(&format!("{}/api/jobs/987654", s.base), None, &[]);
    assert_eq!(
        (status, json(&body)["kind"].as_str()),
        (404, Some("not_found"))
    );
    // The router's and the extractors' own errors are the same JSON (they were plain text,
    // or an empty 404).
    for (path, post, want) in [
        ("/api/jobs/abc", None, (400, "invalid_input")),
        (
            "/api/jobs/99999999999999999999",
            None,
            (400, "invalid_input"),
        ),
        ("/api/no-such-thing", None, (404, "not_found")),
        ("/api/queues", Some("{}"), (405, "method_not_allowed")),
    ] {
        let (status, body) = call(&format!("{}{path}", s.base), post, &[]);
        let answer = json(&body);
        assert_eq!(
            (status, answer["kind"].as_str().unwrap_or_default()),
            want,
            "{path}: {body}"
        );
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }

    // Actions: retry the dead job, cancel the queued one, pause and resume a queue.
    let (status, _) = call(
        &format!("{}/api/jobs/{dead}/retry", s.base),
        Some("{}"),
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(q.get_job(dead).unwrap().state, JobState::Queued);
    let (status, body) = call(&format!("{}/api/jobs/{id}/cancel", s.base), Some("{}"), &[]);
    assert_eq!(
        (status, json(&body)["outcome"].as_str()),
        (200, Some("cancelled"))
    );
    assert_eq!(q.get_job(id).unwrap().state, JobState::Cancelled);
    let (status, body) = call(&format!("{}/api/jobs/{id}/retry", s.base), Some("{}"), &[]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &format!("{}/api/jobs/{dead}/retry", s.base),
        Some("{}"),
        &[],
    );
    assert_eq!(
        (status, json(&body)["kind"].as_str()),
        (409, Some("wrong_state")),
        "{body}"
    );
    call(
        &format!("{}/api/queues/mail/pause", s.base),
        Some("{}"),
        &[],
    );
    assert_eq!(q.paused().unwrap(), ["mail"]);
    let (_, body) = call(&format!("{}/api/queues", s.base), None, &[]);
    let queues = json(&body);
    assert_eq!(
        (queues[0]["queue"].as_str(), queues[0]["paused"].as_bool()),
        (Some("mail"), Some(true))
    );
    assert_eq!(queues[0]["counts"]["queued"], 2);
    call(
        &format!("{}/api/queues/mail/resume", s.base),
        Some("{}"),
        &[],
    );
    assert!(q.paused().unwrap().is_empty());

    // Cross-site and non-JSON actions are refused and change nothing.
    let (status, _) = call(
        &format!("{}/api/jobs/{id}/cancel", s.base),
        Some("{}"),
        &[("origin", "http://evil.example")],
    );
    assert_eq!(status, 403);
    let (status, _) = call(
        &format!("{}/api/queues/mail/pause", s.base),
        Some("x=1"),
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(status, 415);
    assert!(q.paused().unwrap().is_empty());
    assert_eq!(q.get_job(id).unwrap().state, JobState::Queued);

    // /metrics: the database's counts, in a format promtool accepts.
    let (status, text) = call(&format!("{}/metrics", s.base), None, &[]);
    assert_eq!(status, 200);
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value(r#"jobdb_jobs{queue="mail",state="queued"} "#), 2.0);
    assert_eq!(value(r#"jobdb_jobs{queue="mail",state="dead"} "#), 0.0);
    assert_eq!(value(r#"jobdb_queue_paused{queue="mail"} "#), 0.0);
    assert!(value("jobdb_transactions_total ") >= 5.0);
    assert!(value("jobdb_overview_age_seconds ") < 60.0);
    if !b.is_postgres() && !b.is_mysql() {
        // The server runs no checkpoint thread of its own: the WAL's size is the file's.
        let wal = std::fs::metadata(format!("{}-wal", b.url().trim_start_matches("sqlite://")))
            .map_or(0, |m| m.len());
        assert!(wal > 0 && value("jobdb_wal_bytes ") > 0.0, "{wal}\n{text}");
    }
    assert!(text.contains("# TYPE jobdb_write_lock_hold_seconds histogram"));
    promtool_check(&text);
}

/// `promtool check metrics` on `text`, when promtool is installed (CI requires it).
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        if std::env::var("JOBDB_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
            panic!("JOBDB_REQUIRE_PROMTOOL=1 but promtool is not installed");
        }
        crate::backends::loud!("SKIPPED promtool check metrics: promtool is not installed");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A token guards every request; `--read-only` refuses actions; a non-loopback address
/// without a token is refused at start (exit 2).
#[test]
fn the_token_read_only_and_loopback_rules_hold() {
    let db = crate::common::TestDb::new();
    let q = db.queue();
    let id = q.enqueue(&NewJob::new("t", &1).unwrap()).unwrap();
    let s = serve(&db.url(), &["--token", "s3cret"]);
    let (status, body) = call(&format!("{}/api/queues", s.base), None, &[]);
    assert_eq!(
        (status, json(&body)["kind"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = call(
        &format!("{}/metrics", s.base),
        None,
        &[("authorization", "Bearer wrong")],
    );
    assert_eq!(status, 401);
    let (status, _) = call(&format!("{}/api/jobs/{id}/cancel", s.base), Some("{}"), &[]);
    assert_eq!(status, 401);
    assert_eq!(q.get_job(id).unwrap().state, JobState::Queued);
    let (status, _) = call(
        &format!("{}/api/queues", s.base),
        None,
        &[("authorization", "Bearer s3cret")],
    );
    assert_eq!(status, 200);
    drop(s);

    let ro = serve(&db.url(), &["--read-only"]);
    let (status, body) = call(
        &format!("{}/api/jobs/{id}/cancel", ro.base),
        Some("{}"),
        &[],
    );
    assert_eq!(
        (status, json(&body)["kind"].as_str()),
        (403, Some("read_only"))
    );
    assert_eq!(q.get_job(id).unwrap().state, JobState::Queued);
    let (status, _) = call(&format!("{}/api/jobs/{id}", ro.base), None, &[]);
    assert_eq!(status, 200);
    drop(ro);

    let out = Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args([
            "--database-url",
            &db.url(),
            "serve",
            "--listen",
            "0.0.0.0:0",
        ])
        .env_remove("JOBDB_SERVE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
}

/// `GET /api/jobs` pages newest first by keyset with filters; a bulk cancel needs `confirm`
/// and cancels exactly what the filter shows.
fn pages_are_keyset_and_bulk_actions_touch_exactly_the_filtered_jobs<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let mut a_ids = Vec::new();
    for n in 0..120 {
        let queue = if n % 2 == 0 { "a" } else { "b" };
        let id = q.enqueue(&NewJob::new(queue, &n).unwrap()).unwrap();
        if queue == "a" {
            a_ids.push(id);
        }
    }
    let keyed = q
        .enqueue(&NewJob::new("a", &"k").unwrap().unique_key("order-7"))
        .unwrap();
    a_ids.push(keyed);
    let s = serve(&b.url(), &[]);
    // Pages of 25 of queue a, newest first, until next_before is null.
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let url = match before {
            Some(id) => format!(
                "{}/api/jobs?queue=a&state=queued&limit=25&before={id}",
                s.base
            ),
            None => format!("{}/api/jobs?queue=a&state=queued&limit=25", s.base),
        };
        let (status, body) = call(&url, None, &[]);
        assert_eq!(status, 200, "{body}");
        let page = json(&body);
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_i64().unwrap()),
        );
        match page["next_before"].as_i64() {
            Some(id) => before = Some(id),
            None => break,
        }
    }
    let mut want = a_ids.clone();
    want.reverse();
    assert_eq!(seen, want);
    let (_, body) = call(
        &format!("{}/api/jobs?unique_key=order-7", s.base),
        None,
        &[],
    );
    let page = json(&body);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["id"], keyed);
    for bad in ["state=nope", "limit=0", "limit=501", "wat=1"] {
        let (status, body) = call(&format!("{}/api/jobs?{bad}", s.base), None, &[]);
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // The overview's chart counts the last hour's successes per queue.
    for _ in 0..2 {
        let lease = q.claim("a", 1, "w", Duration::from_secs(30)).unwrap()[0].lease();
        q.complete(lease, &"ok", Duration::ZERO).unwrap();
    }
    // Those two were written by another handle, not through the server: the overview's
    // snapshot shows them after its next background scan (at most a second apart while
    // someone looks, at this size).
    let started = std::time::Instant::now();
    let page = loop {
        let (status, page) = call(&format!("{}/", s.base), None, &[]);
        assert_eq!(status, 200);
        if page.contains(r#"data-queue="a" data-total="2""#) {
            break page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the overview never showed another handle's writes: {page}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(page.contains(r#"id="as-of""#), "{page}");
    assert!(page.contains(r#"data-queue="b" data-total="0""#), "{page}");

    // Bulk cancel of queue b: refused without confirm; with it, exactly queue b's jobs.
    let bulk = format!("{}/api/jobs/bulk", s.base);
    let (status, _) = call(
        &bulk,
        Some(r#"{"action":"cancel","filter":{"queue":"b"}}"#),
        &[],
    );
    assert_eq!(status, 400);
    assert_eq!(q.stats(Some("b")).unwrap().total.cancelled, 0);
    // A misspelt filter field is a typed 400, not a filter that matches everything: c92a778
    // took `queues` for no filter at all and cancelled every job of every queue.
    let (status, body) = call(
        &bulk,
        Some(r#"{"action":"cancel","filter":{"queues":"b"},"confirm":true}"#),
        &[],
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["kind"], "invalid_input", "{body}");
    assert!(body.contains("queues"), "{body}");
    let stats = q.stats(None).unwrap();
    assert_eq!(
        (stats.queues["a"].cancelled, stats.queues["b"].cancelled),
        (0, 0)
    );
    let (status, body) = call(
        &bulk,
        Some(r#"{"action":"cancel","filter":{"queue":"b"},"confirm":true}"#),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            json(&body)["done"].as_u64(),
            json(&body)["skipped"].as_u64()
        ),
        (Some(60), Some(0))
    );
    let stats = q.stats(None).unwrap();
    assert_eq!(
        (stats.queues["b"].cancelled, stats.queues["b"].queued),
        (60, 0)
    );
    assert_eq!(
        (
            stats.queues["a"].cancelled,
            stats.queues["a"].queued,
            stats.queues["a"].succeeded
        ),
        (0, 59, 2)
    );
    // Bulk retry of what is cancelled brings exactly those back; queued ones are skipped.
    let (_, body) = call(
        &bulk,
        Some(r#"{"action":"retry","filter":{"queue":"b","state":"cancelled"},"confirm":true}"#),
        &[],
    );
    assert_eq!(json(&body)["done"].as_u64(), Some(60));
    assert_eq!(q.stats(Some("b")).unwrap().total.queued, 60);
}

/// The `http://…/metrics` address a `work --metrics-listen` child prints on stderr, and that
/// stderr, to keep open while the child runs (closed, the child's next line would fail).
fn metrics_url(child: &mut Child) -> (String, BufReader<std::process::ChildStderr>) {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("metrics on ") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no metrics line");
    }
    (line.trim().rsplit(' ').next().unwrap().to_owned(), stderr)
}

/// `jobdb work --metrics-listen`: the worker's own process serves /metrics while it works,
/// with its handle's counters (its claims and completions) beside the queue gauges.
#[test]
fn a_worker_serves_its_metrics_while_it_works() {
    let db = crate::common::TestDb::new();
    let q = db.queue();
    for n in 0..3 {
        q.enqueue(&NewJob::new("mw", &n).unwrap()).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args([
            "--database-url",
            &db.url(),
            "work",
            "--queue",
            "mw",
            "--exec",
            "echo '{}'",
        ])
        .args(["--metrics-listen", "127.0.0.1:0", "--exit-when-idle", "30s"])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (url, _stderr) = metrics_url(&mut child);
    let started = std::time::Instant::now();
    let text = loop {
        let (status, text) = call(&url, None, &[]);
        assert_eq!(status, 200);
        if text.contains(r#"jobdb_jobs{queue="mw",state="succeeded"} 3"#) {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let claims: f64 = text
        .lines()
        .find(|l| l.starts_with("jobdb_claim_duration_seconds_count "))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(claims >= 3.0, "{text}");
    // Without a token, loopback names only: a rebinding page's name gets nothing.
    let base = url.trim_end_matches("/metrics");
    let (status, body) = raw(base, "GET", "/metrics", "evil.example:9100", None);
    assert_eq!(status, 421, "{body}");
    // The worker's own count of what it recorded, by outcome.
    assert!(
        text.contains(r#"jobdb_attempts_finished_total{outcome="succeeded"} 3"#),
        "{text}"
    );
    assert!(text.contains(r#"jobdb_attempts_finished_total{outcome="dead"} 0"#));
    promtool_check(&text);
    let _ = child.kill();
    let _ = child.wait();
}

/// The worker's /metrics names every queue and its counts: any address but loopback needs a
/// token, refused as a usage error before a job is claimed; with one, a scrape without it is
/// 401 and with it 200.
#[test]
fn a_worker_s_metrics_need_a_token_beyond_loopback() {
    let db = crate::common::TestDb::new();
    let q = db.queue();
    q.enqueue(&NewJob::new("mt", &1).unwrap()).unwrap();
    let work = |listen: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobdb"));
        cmd.args(["--database-url", &db.url(), "work", "--queue", "mt"])
            .args(["--exec", "echo '{}'", "--metrics-listen", listen])
            .env_remove("DATABASE_URL")
            .env_remove("JOBDB_METRICS_TOKEN");
        cmd
    };
    let out = work("0.0.0.0:0")
        .args(["--exit-when-empty"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--metrics-token"), "{stderr}");
    assert_eq!(
        q.stats(Some("mt")).unwrap().total.queued,
        1,
        "refused before any job was claimed"
    );

    let mut child = work("0.0.0.0:0")
        .args(["--metrics-token", "s3cret", "--exit-when-idle", "30s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (url, _stderr) = metrics_url(&mut child);
    let port = url
        .trim_end_matches("/metrics")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let (status, _) = call(&url, None, &[]);
    assert_eq!(status, 401);
    let (status, _) = call(&url, None, &[("authorization", "Bearer wrong")]);
    assert_eq!(status, 401);
    let (status, text) = call(&url, None, &[("authorization", "Bearer s3cret")]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("jobdb_jobs{queue=\"mt\""), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A raw HTTP/1.1 request with the `Host` (and `Origin`) a rebinding page's browser sends:
/// `(status, body)`.
fn raw(base: &str, method: &str, path: &str, host: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// DNS rebinding: with the defaults (loopback, no token) a page on `evil.example`, whose name
/// now points at 127.0.0.1, sends its own name as `Host` and `Origin`. It is refused (421,
/// JSON) for reads and actions alike, and nothing changes; loopback names and the listen
/// address are served. c92a778 answered 200 to `GET /api/jobs` (the payloads) and to a bulk
/// cancel of everything.
#[test]
fn a_rebound_host_name_is_refused_without_a_token() {
    let db = crate::common::TestDb::new();
    let q = db.queue();
    let id = q
        .enqueue(&NewJob::new("r", &"secret payload").unwrap())
        .unwrap();
    let s = serve(&db.url(), &[]);
    let port = s.base.rsplit(':').next().unwrap().to_owned();
    let evil = format!("evil.example:{port}");
    let (status, body) = raw(&s.base, "GET", "/api/jobs", &evil, None);
    assert_eq!(status, 421, "{body}");
    assert_eq!(json(&body)["kind"], "wrong_host", "{body}");
    assert!(!body.contains("secret payload"), "{body}");
    let (status, _) = raw(
        &s.base,
        "POST",
        "/api/jobs/bulk",
        &evil,
        Some(r#"{"action":"cancel","filter":{},"confirm":true}"#),
    );
    assert_eq!(status, 421);
    let (status, _) = raw(
        &s.base,
        "POST",
        "/api/jobs",
        &evil,
        Some(r#"{"queue":"r","payload":"rm -rf ~"}"#),
    );
    assert_eq!(status, 421);
    assert_eq!(q.get_job(id).unwrap().state, JobState::Queued);
    assert_eq!(q.stats(Some("r")).unwrap().total.total(), 1);
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
    ] {
        let (status, body) = raw(&s.base, "GET", "/api/jobs", &host, None);
        assert_eq!(status, 200, "{host}: {body}");
    }
    drop(s);
    // With a token the token decides, whatever the name.
    let s = serve(&db.url(), &["--token", "s3cret"]);
    let port = s.base.rsplit(':').next().unwrap().to_owned();
    let (status, _) = raw(
        &s.base,
        "GET",
        "/?token=s3cret",
        &format!("jobs.internal:{port}"),
        None,
    );
    assert_eq!(status, 200);
    // A token with characters a URL escapes, given escaped in the query, as a browser sends
    // it (c92a778 compared the escaped text with the token), and on an API call too.
    drop(s);
    let s = serve(&db.url(), &["--token", "a b/c+d&e"]);
    let (status, body) = call(
        &format!("{}/api/jobs?token=a%20b%2Fc%2Bd%26e", s.base),
        None,
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(&format!("{}/api/jobs?token=a%20b", s.base), None, &[]);
    assert_eq!(status, 401);
}
