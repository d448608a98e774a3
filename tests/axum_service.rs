//! `examples/axum_service` served over real HTTP (ureq as the client) on both backends: the
//! POST commits the post and its job together, the async worker in the same process runs the
//! job once, the GETs show the result; bad input is a 400 that writes nothing.

use std::time::{Duration, Instant};

#[path = "../examples/axum_service/app.rs"]
#[allow(dead_code)]
mod app;

use crate::backends::{Backend, TestConn};

crate::on_both_backends!(the_example_service_serves_posts_and_jobs_over_http);

/// The service on a port of its own, on a runtime of its own, until dropped.
struct Server {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    done: std::thread::JoinHandle<jobdb::WorkerReport>,
}

fn start<C: app::AppConnection>(url: &str) -> Server {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let url = url.to_owned();
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let queue: jobdb::AsyncQueue<C> =
                jobdb::AsyncQueue::open(&url, jobdb::Config::default())
                    .await
                    .unwrap();
            app::create_tables(&queue).await.unwrap();
            let (stop_worker, worker) = app::start_worker(queue.clone(), 8);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ready_tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app::router(queue))
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            stop_worker.cancel();
            worker.await.unwrap().unwrap()
        })
    });
    let addr = ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    Server {
        base: format!("http://{addr}"),
        stop,
        done,
    }
}

fn agent() -> ureq::Agent {
    crate::common::http_agent(Duration::from_secs(30))
}

/// A request's status and JSON body.
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut response = match (method, body) {
        ("POST", Some(b)) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(b)
            .unwrap(),
        _ => agent.get(url).call().unwrap(),
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn the_example_service_serves_posts_and_jobs_over_http<C: TestConn + app::AppConnection>(
    b: &Backend<C>,
) {
    let server = start::<C>(&b.url());
    let http = agent();
    // Many clients at once: each POST is one transaction (the row and its job).
    let created: Vec<app::Created> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|n| {
                let (http, base) = (&http, &server.base);
                s.spawn(move || {
                    let body = format!(r#"{{"title":"post {n}","body":"text {n}"}}"#);
                    let (status, json) = call(http, "POST", &format!("{base}/posts"), Some(&body));
                    assert_eq!(status, 201, "{json}");
                    serde_json::from_value::<app::Created>(json).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for c in &created {
        let started = Instant::now();
        let job = loop {
            let (status, json) = call(
                &http,
                "GET",
                &format!("{}/jobs/{}", server.base, c.job_id),
                None,
            );
            assert_eq!(status, 200, "{json}");
            let job: app::JobView = serde_json::from_value(json).unwrap();
            if job.state == "succeeded" || started.elapsed() > Duration::from_secs(20) {
                break job;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            (job.state.as_str(), job.attempts),
            ("succeeded", 1),
            "{job:?}"
        );
        assert_eq!(
            job.result,
            Some(serde_json::json!({"post_id": c.post_id, "published": true}))
        );
        let (status, post) = call(
            &http,
            "GET",
            &format!("{}/posts/{}", server.base, c.post_id),
            None,
        );
        assert_eq!(
            (status, &post["published"]),
            (200, &serde_json::json!(true))
        );
    }
    // Bad input: a typed 400, and nothing written.
    let (status, json) = call(
        &http,
        "POST",
        &format!("{}/posts", server.base),
        Some(r#"{"title":"  ","body":"x"}"#),
    );
    assert_eq!(status, 400, "{json}");
    let (status, _) = call(&http, "GET", &format!("{}/jobs/987654", server.base), None);
    assert_eq!(status, 404);
    let (status, _) = call(&http, "GET", &format!("{}/posts/987654", server.base), None);
    assert_eq!(status, 404);
    let mut conn = b.conn();
    assert_eq!(conn.query_i64("SELECT COUNT(*) AS n FROM posts"), 40);
    assert_eq!(conn.query_i64("SELECT COUNT(*) AS n FROM jobs"), 40);
    server.stop.send(()).unwrap();
    let report = server.done.join().unwrap();
    assert_eq!((report.succeeded, report.failed), (40, 0), "{report:?}");
    let audit = jobdb::Queue::<C>::open(&b.url(), jobdb::Config::default())
        .unwrap()
        .audit(app::QUEUE)
        .unwrap();
    assert_eq!(
        (audit.jobs, audit.not_succeeded, audit.duplicated),
        (40, 0, 0)
    );
}
