//! `jobdb serve`'s pages in a real browser: headless Chromium driven through chromedriver
//! (WebDriver over HTTP): the overview shows the database's counts, retry on a dead job's
//! page makes it queued, a bulk cancel of a filtered list cancels exactly those jobs, and
//! hostile queue names, payloads and errors are shown as text and run nothing. Screenshots go
//! to `target/dashboard-*.png`. Without chromedriver it says SKIPPED, unless
//! `JOBDB_REQUIRE_BROWSER=1` (CI, which installs Debian's chromium and chromium-driver).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jobdb::{JobState, NewJob};
use serde_json::{json, Value};

use crate::common::TestDb;

const HOSTILE_QUEUE: &str = "\"><img src=x onerror=window.__xss=1>";
const HOSTILE_TEXT: &str =
    "<script>window.__xss=1</script> <a href=\"javascript:window.__xss=1\">x</a>";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    crate::common::http_agent(Duration::from_secs(60))
}

/// One WebDriver session.
struct Browser {
    base: String,
    http: ureq::Agent,
}

impl Browser {
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let mut r = match method {
            "GET" => self.http.get(&url).call(),
            "DELETE" => self.http.delete(&url).call(),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .send(body.to_string()),
        }
        .unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["value"].get("error").is_none(), "{method} {path}: {text}");
        v["value"].clone()
    }
    fn open(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }
    fn find(&self, css: &str) -> String {
        let el = self.call(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        el["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap()
            .to_owned()
    }
    fn text(&self, css: &str) -> String {
        let el = self.find(css);
        self.call("GET", &format!("/element/{el}/text"), Value::Null)
            .as_str()
            .unwrap()
            .to_owned()
    }
    fn click(&self, css: &str) {
        let el = self.find(css);
        self.call("POST", &format!("/element/{el}/click"), json!({}));
    }
    fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", json!({ "script": js, "args": [] }))
    }
    fn screenshot(&self, name: &str) {
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("dashboard-{name}.png")), bytes).unwrap();
    }
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_dashboard_in_a_real_browser_shows_acts_and_runs_no_injected_script() {
    if Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("JOBDB_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("JOBDB_REQUIRE_BROWSER=1 but chromedriver is not installed");
        }
        crate::backends::loud!("SKIPPED the browser test: chromedriver is not installed");
        return;
    }
    let db = TestDb::new();
    let q = db.queue();
    let dead = q
        .enqueue(
            &NewJob::new("mail", &json!({"to": HOSTILE_TEXT}))
                .unwrap()
                .max_attempts(1),
        )
        .unwrap();
    let lease = q.claim("mail", 1, "w", Duration::from_secs(30)).unwrap()[0].lease();
    q.fail(lease, HOSTILE_TEXT, Duration::ZERO).unwrap();
    let hostile = q
        .enqueue(&NewJob::new(HOSTILE_QUEUE, &json!({"x": HOSTILE_TEXT})).unwrap())
        .unwrap();
    let b_jobs: Vec<i64> = (0..3)
        .map(|n| q.enqueue(&NewJob::new("b", &n).unwrap()).unwrap())
        .collect();
    let c_jobs: Vec<i64> = (0..2)
        .map(|n| q.enqueue(&NewJob::new("c", &n).unwrap()).unwrap())
        .collect();

    let mut server = Command::new(env!("CARGO_BIN_EXE_jobdb"))
        .args([
            "--database-url",
            &db.url(),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Killed(server);
    let site = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();

    let port = free_port();
    let _driver = Killed(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = agent();
    let driver = format!("http://127.0.0.1:{port}");
    until("chromedriver", || {
        http.get(&format!("{driver}/status"))
            .call()
            .is_ok_and(|r| r.status().is_success())
    });
    let profile = tempfile::tempdir().unwrap();
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,800",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([format!("--user-data-dir={}", profile.path().display())])
    .collect::<Vec<_>>();
    let caps = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
    }}});
    let mut r = http
        .post(&format!("{driver}/session"))
        .header("content-type", "application/json")
        .send(caps.to_string())
        .unwrap();
    let session: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let id = session["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{session}"))
        .to_owned();
    let browser = Browser {
        base: format!("{driver}/session/{id}"),
        http: agent(),
    };
    let no_injected_script = |page: &str| {
        assert_eq!(
            browser.script("return window.__xss === undefined;"),
            json!(true),
            "script ran on {page}"
        );
    };

    // The overview shows the database's counts.
    browser.open(&format!("{site}/"));
    assert_eq!(
        browser.text(r#"td[data-queue="mail"][data-field="dead"]"#),
        "1"
    );
    assert_eq!(
        browser.text(r#"td[data-queue="b"][data-field="queued"]"#),
        "3"
    );
    assert!(
        browser.text("#queues").contains(HOSTILE_QUEUE),
        "the hostile queue name is shown as text"
    );
    no_injected_script("the overview");
    browser.screenshot("overview");

    // Retry on the dead job's page makes it queued in the database.
    browser.open(&format!("{site}/jobs/{dead}"));
    assert!(browser.text("#payload").contains("<script>"));
    no_injected_script("a dead job's page");
    browser.screenshot("job");
    browser.click("#retry");
    until("the retry", || {
        q.get_job(dead).unwrap().state == JobState::Queued
    });

    // A bulk cancel of the filtered list cancels exactly those jobs (after the confirmation).
    browser.open(&format!("{site}/jobs?queue=b&state=queued"));
    assert_eq!(
        browser.script("return document.querySelectorAll('#jobs tr[data-job]').length;"),
        json!(3)
    );
    browser.click("#bulk-cancel");
    browser.call("POST", "/alert/accept", json!({}));
    until("the bulk cancel", || {
        b_jobs
            .iter()
            .all(|&j| q.get_job(j).unwrap().state == JobState::Cancelled)
    });
    assert!(c_jobs
        .iter()
        .all(|&j| q.get_job(j).unwrap().state == JobState::Queued));
    assert_eq!(q.get_job(hostile).unwrap().state, JobState::Queued);
    assert_eq!(q.get_job(dead).unwrap().state, JobState::Queued);

    // Hostile text everywhere else: the hostile queue's list and its job's page.
    browser.open(&format!(
        "{site}/jobs?queue=%22%3E%3Cimg%20src%3Dx%20onerror%3Dwindow.__xss%3D1%3E"
    ));
    assert_eq!(
        browser.script("return document.querySelectorAll('#jobs tr[data-job]').length;"),
        json!(1)
    );
    no_injected_script("the hostile queue's list");
    browser.open(&format!("{site}/jobs/{hostile}"));
    no_injected_script("the hostile job's page");
    browser.call("DELETE", "", Value::Null);
}
