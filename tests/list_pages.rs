//! Keyset pages of filtered job lists on both backends, over a table larger than several
//! search windows: following `next_before` yields exactly the matching jobs, newest first,
//! each once, and ends; a filter that matches nothing answers without scanning the table in
//! one go; an unfiltered page and the empty table are plain.

use std::time::{Duration, Instant};

use jobdb::queue::{JobFilter, LIST_WINDOW};
use jobdb::JobState;

use crate::backends::{loud, Backend, TestConn};

crate::on_both_backends!(
    following_next_before_yields_every_match_once_newest_first,
    an_empty_table_and_an_unfiltered_page_are_plain,
);

/// Jobs 1..=n straight into the table (the factory): every 40,000th one dead (the first
/// at 777), every 3rd in queue "b", the rest succeeded in queue "a".
fn fill<C: TestConn>(b: &Backend<C>, n: i64) {
    let rows = if b.is_mysql() {
        // A thousand numbers crossed with themselves: servers may cap recursion at 1,000.
        format!(
            "WITH RECURSIVE s(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM s WHERE k < 999) \
             SELECT a.k * 1000 + b.k + 1 AS i FROM s a CROSS JOIN s b WHERE a.k * 1000 + b.k < {n}"
        )
    } else if b.is_postgres() {
        format!("SELECT i FROM generate_series(1, {n}) AS g(i)")
    } else {
        format!(
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) \
             SELECT i FROM g"
        )
    };
    let now = if b.is_mysql() {
        "UTC_TIMESTAMP(6)"
    } else if b.is_postgres() {
        "now()"
    } else {
        "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    };
    b.exec(&format!(
        "INSERT INTO jobs (id, queue, state, priority, payload, attempts, max_attempts, run_at, \
                           created_at, updated_at, attempt_base) \
         SELECT i, CASE WHEN i % 3 = 0 THEN 'b' ELSE 'a' END, \
                CASE WHEN i % 40000 = 777 THEN 'dead' ELSE 'succeeded' END, \
                0, '{{}}', 1, 3, {now}, {now}, {now}, 0 \
         FROM ({rows}) AS r"
    ));
}

fn following_next_before_yields_every_match_once_newest_first<C: TestConn>(b: &Backend<C>) {
    let n = 3 * LIST_WINDOW + 1234;
    let q = b.queue();
    fill(b, n);
    let dead = JobFilter {
        state: Some(JobState::Dead),
        ..JobFilter::default()
    };
    let want: Vec<i64> = (1..=n).rev().filter(|i| i % 40000 == 777).collect();
    for limit in [1, 2, 50] {
        let (mut seen, mut before, mut pages, mut worst) = (Vec::new(), None, 0, Duration::ZERO);
        loop {
            let started = Instant::now();
            let page = q.list_jobs(&dead, before, limit).unwrap();
            worst = worst.max(started.elapsed());
            pages += 1;
            assert!(page.jobs.len() <= limit as usize);
            assert!(page.jobs.iter().all(|j| j.state == JobState::Dead));
            seen.extend(page.jobs.iter().map(|j| j.id));
            match page.next_before {
                Some(next) => {
                    assert!(before.is_none_or(|b| next < b), "{next} did not go down");
                    before = Some(next);
                }
                None => break,
            }
            assert!(pages < 1000, "paging never ended");
        }
        assert_eq!(seen, want, "limit {limit}");
        loud!(
            "filtered pages of {n} jobs, limit {limit}: {pages} pages, slowest {:.1} ms",
            worst.as_secs_f64() * 1000.0
        );
    }
    // A `before` far past the newest id starts at the newest: paging still ends.
    let (mut seen, mut before, mut pages) = (Vec::new(), Some(i64::MAX), 0);
    loop {
        let page = q.list_jobs(&dead, before, 50).unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id));
        pages += 1;
        assert!(pages < 100, "paging from i64::MAX never ended");
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, want);
    // Two filters together; and one that matches nothing ends with an empty last page.
    let both = JobFilter {
        queue: Some("b".into()),
        state: Some(JobState::Succeeded),
        unique_key: None,
    };
    let page = q.list_jobs(&both, Some(100), 10).unwrap();
    let ids: Vec<i64> = page.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, [99, 96, 93, 90, 87, 84, 81, 78, 75, 72]);
    assert_eq!(page.next_before, Some(72));
    let nothing = JobFilter {
        unique_key: Some("no such key".into()),
        ..JobFilter::default()
    };
    let (mut before, mut pages) = (None, 0);
    loop {
        let page = q.list_jobs(&nothing, before, 50).unwrap();
        assert!(page.jobs.is_empty());
        pages += 1;
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert!(pages >= 1);
}

fn an_empty_table_and_an_unfiltered_page_are_plain<C: TestConn>(b: &Backend<C>) {
    let q = b.queue();
    let page = q.list_jobs(&JobFilter::default(), None, 10).unwrap();
    assert!(page.jobs.is_empty() && page.next_before.is_none());
    fill(b, 25);
    let page = q.list_jobs(&JobFilter::default(), None, 10).unwrap();
    let ids: Vec<i64> = page.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, (16..=25).rev().collect::<Vec<_>>());
    assert_eq!(page.next_before, Some(16));
    let last = q.list_jobs(&JobFilter::default(), Some(6), 10).unwrap();
    assert_eq!(last.jobs.len(), 5);
    assert_eq!(last.next_before, None);
    assert!(q
        .list_jobs(&JobFilter::default(), None, 0)
        .unwrap_err()
        .is_invalid_input());
}
