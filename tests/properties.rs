//! Property tests of what users feed jobdb: URLs, payloads, queue names, unique keys, cron
//! expressions and durations. For any input: no panic, and either a value or a typed bad-input
//! error; never a database error, never a leaked password.

use std::time::Duration;

use jobdb::{DatabaseUrl, NewJob, Schedule};
use proptest::prelude::*;

use crate::common::TestDb;

/// Strings that look like JSON, with the escapes and brackets that matter.
fn jsonish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("\\u0000".to_owned()),
        Just("\\ud800".to_owned()),
        Just("\\udc00".to_owned()),
        Just("\\ud83d\\ude00".to_owned()),
        Just("\\\\".to_owned()),
        Just("\\\"".to_owned()),
        "[a-z0-9 ]{0,4}",
    ];
    let text = prop::collection::vec(atom, 0..4).prop_map(|v| format!("\"{}\"", v.concat()));
    (text, 0usize..200, prop::bool::ANY).prop_map(|(t, depth, object)| {
        if object {
            format!("{}{{\"k\":{t}}}{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            format!("{}{t}{}", "[".repeat(depth), "]".repeat(depth))
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_url_parses_or_is_a_typed_error(url in ".{0,80}") {
        match DatabaseUrl::parse(&url) {
            Ok(parsed) => { let _ = parsed.file_path(); }
            Err(e) => prop_assert!(e.is_invalid_input(), "{e:?}"),
        }
    }

    #[test]
    fn redaction_never_leaks_a_password(
        user in "[a-z]{1,8}",
        password in "[A-Z]{6,12}",
        host in "[a-z]{1,8}(:[0-9]{2,5})?",
        via_query in prop::bool::ANY,
    ) {
        let url = if via_query {
            format!("postgres://{user}@{host}/db?sslmode=disable&password={password}")
        } else {
            format!("postgres://{user}:{password}@{host}/db")
        };
        let shown = jobdb::pool::redact(&url);
        prop_assert!(!shown.contains(&password), "{shown}");
        prop_assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn any_cron_expression_is_a_schedule_or_a_typed_error(expr in "[0-9*/,\\- A-Za-z?#LW]{0,40}") {
        let job = NewJob::new("cron", &1).unwrap();
        if let Err(e) = Schedule::cron("s", &expr, job) {
            prop_assert!(e.is_invalid_input(), "{expr:?}: {e:?}");
        }
    }

    #[test]
    fn any_duration_added_to_now_is_a_time_or_a_typed_error(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        if let Err(e) = jobdb::timestamp::from_now("delay", Duration::new(secs, nanos)) {
            prop_assert!(e.is_invalid_input(), "{e:?}");
        }
    }
}

/// Payloads, queue names and unique keys against a real database: each is stored verbatim or
/// refused as bad input before anything is written.
#[test]
fn any_payload_queue_and_key_is_stored_verbatim_or_refused_as_bad_input() {
    let db = TestDb::new();
    let q = db.queue();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    let strategy = (jsonish(), ".{0,12}", proptest::option::of(".{0,12}"));
    runner
        .run(&strategy, |(payload, queue, key)| {
            let job = match NewJob::from_json(queue.as_str(), &payload) {
                Ok(job) => job,
                Err(e) => {
                    prop_assert!(e.is_invalid_input(), "{payload:?}: {e:?}");
                    return Ok(());
                }
            };
            let job = match &key {
                Some(k) => job.unique_key(k.as_str()),
                None => job,
            };
            let before = q.stats(None).unwrap().total.total();
            match q.enqueue(&job) {
                Ok(id) => {
                    let stored = q.get_job(id).unwrap();
                    prop_assert_eq!(&stored.queue, &queue);
                    prop_assert_eq!(&stored.payload_json, &payload);
                    prop_assert_eq!(stored.unique_key.as_deref(), key.as_deref());
                }
                Err(e) => {
                    prop_assert!(e.is_invalid_input(), "{payload:?} {queue:?} {key:?}: {e:?}");
                    prop_assert_eq!(q.stats(None).unwrap().total.total(), before);
                }
            }
            Ok(())
        })
        .unwrap();
}
