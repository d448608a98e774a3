//! Helpers shared by the integration tests.

use std::path::PathBuf;

use jobdb::{Config, Queue};

/// A database file in its own temporary directory, removed when dropped.
pub struct TestDb {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestDb {
    pub fn new() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jobs.sqlite3");
        TestDb { _dir: dir, path }
    }

    pub fn url(&self) -> String {
        self.path.to_str().expect("utf-8 temp path").to_owned()
    }

    /// A migrated queue with the default configuration.
    pub fn queue(&self) -> Queue {
        self.queue_with(|_| {})
    }

    /// A migrated queue with the configuration adjusted by `f`.
    pub fn queue_with(&self, f: impl FnOnce(&mut Config)) -> Queue {
        let mut config = Config::default();
        f(&mut config);
        Queue::open(&self.url(), config).expect("open queue")
    }
}

/// Asserts `PRAGMA integrity_check` answers "ok", on a fresh connection.
pub fn assert_integrity_ok(db: &TestDb) {
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = diesel::sql_types::Text)]
        integrity_check: String,
    }
    let mut conn = diesel::SqliteConnection::establish(&db.url()).unwrap();
    let r: R = diesel::sql_query("PRAGMA integrity_check")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(r.integrity_check, "ok");
}

/// An HTTP client for the tests that talk to a server of ours: statuses are answers, not
/// errors, and no request waits longer than `timeout`.
pub fn http_agent(timeout: std::time::Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// A writer into a shared buffer, for `tracing_subscriber`'s `with_writer`: what a test's
/// subscriber wrote, read back by the test.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// What was written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
