//! Reads (jobs, results, counts, the audit), WAL checkpoints, and the benchmark's history
//! insert.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text, Timestamp};
use diesel::sqlite::SqliteConnection;

use crate::driver::rows::{AuditRow, Count, AUDIT_BY_SUMS};
use crate::driver::stmt::{bind, cached};
use crate::driver::{parse_state, ReadDriver};
use crate::error::{Error, Result};
use crate::models::JobState;
use crate::models::{JobRow, ResultRow};
use crate::queue::Audit;
use crate::schema::{jobs, results};

/// How hard a checkpoint tries (SQLite's `wal_checkpoint` modes we use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copies what it can without waiting for any lock; never blocks readers or writers.
    Passive,
    /// Takes the write lock, copies everything and waits (busy handler) for readers of the
    /// old WAL, so the next writer starts the WAL over from its first frame. The file keeps
    /// its size (SQLite trims it to `journal_size_limit` at that restart), so the writes that
    /// follow overwrite blocks the file already has.
    Restart,
}

/// What `PRAGMA wal_checkpoint` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct CheckpointOutcome {
    /// 1 when the checkpoint could not finish (a lock or a reader was in the way), else 0.
    /// Not an error: the work done so far stays done.
    #[diesel(sql_type = Integer)]
    pub busy: i32,
    /// Frames in the WAL (-1 when not in WAL mode).
    #[diesel(sql_type = BigInt, column_name = log)]
    pub log_frames: i64,
    /// Frames copied into the database so far.
    #[diesel(sql_type = BigInt)]
    pub checkpointed: i64,
}

/// `PRAGMA wal_checkpoint(mode)`. The statement text is fixed per mode (no user input).
pub fn checkpoint(conn: &mut SqliteConnection, mode: CheckpointMode) -> Result<CheckpointOutcome> {
    let sql = match mode {
        CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        CheckpointMode::Restart => "PRAGMA wal_checkpoint(RESTART)",
    };
    Ok(diesel::sql_query(sql).get_result(conn)?)
}

/// The file of the connection's main database (`PRAGMA database_list`), `None` for an
/// in-memory or temporary database (empty name).
pub fn main_file(conn: &mut SqliteConnection) -> Result<Option<std::path::PathBuf>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Text)]
        file: String,
    }
    let rows: Vec<Row> = diesel::sql_query("PRAGMA database_list").load(conn)?;
    Ok(rows
        .into_iter()
        .find(|r| r.name == "main")
        .filter(|r| !r.file.is_empty())
        .map(|r| std::path::PathBuf::from(r.file)))
}

/// A connection of its own that tells whether another process enqueued (see
/// `wakeup::start_sqlite_watcher`).
pub struct ChangeWatch {
    conn: SqliteConnection,
    data_version: i64,
    newest_job: i64,
}

impl ChangeWatch {
    /// Opens the watch on the database file `file`.
    pub fn open(file: &std::path::Path) -> Result<ChangeWatch> {
        use diesel::connection::SimpleConnection;
        let url = file.to_string_lossy().into_owned();
        let mut conn = SqliteConnection::establish(&url)
            .map_err(|source| Error::Connection { url, source })?;
        // Reads in WAL mode wait only while another connection recovers the WAL.
        conn.batch_execute("PRAGMA busy_timeout = 1000")?;
        let mut watch = ChangeWatch {
            data_version: data_version(&mut conn)?,
            newest_job: 0,
            conn,
        };
        watch.newest_job = watch.newest_job()?;
        Ok(watch)
    }

    /// Whether the newest job id changed since the last call: checked only when
    /// `PRAGMA data_version` says another connection committed.
    pub fn new_jobs(&mut self) -> Result<bool> {
        let version = data_version(&mut self.conn)?;
        if version == self.data_version {
            return Ok(false);
        }
        self.data_version = version;
        let newest = self.newest_job()?;
        let moved = newest != self.newest_job;
        self.newest_job = newest;
        Ok(moved)
    }

    fn newest_job(&mut self) -> Result<i64> {
        let newest: Option<i64> = jobs::table
            .select(diesel::dsl::max(jobs::id))
            .get_result(&mut self.conn)?;
        Ok(newest.unwrap_or(0))
    }
}

fn data_version(conn: &mut SqliteConnection) -> Result<i64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        data_version: i64,
    }
    let r: Row = diesel::sql_query("PRAGMA data_version").get_result(conn)?;
    Ok(r.data_version)
}

/// `PRAGMA page_size`, in bytes.
pub fn page_size(conn: &mut SqliteConnection) -> Result<u64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        page_size: i64,
    }
    let r: Row = diesel::sql_query("PRAGMA page_size").get_result(conn)?;
    u64::try_from(r.page_size).map_err(|_| Error::CorruptRow {
        table: "pragma page_size",
        reason: format!("negative page size {}", r.page_size),
    })
}

impl ReadDriver for SqliteConnection {
    /// One job row, `None` if no such id.
    fn find_job(&mut self, job_id: i64) -> Result<Option<JobRow>> {
        Ok(jobs::table
            .find(job_id)
            .select(JobRow::as_select())
            .first(self)
            .optional()?)
    }

    fn list_jobs(
        &mut self,
        filter: &crate::queue::JobFilter,
        from: i64,
        before: i64,
        limit: i64,
    ) -> Result<Vec<JobRow>> {
        let mut query = jobs::table
            .filter(jobs::id.lt(before))
            .filter(jobs::id.ge(from))
            .select(JobRow::as_select())
            .into_boxed();
        if let Some(q) = &filter.queue {
            query = query.filter(jobs::queue.eq(q));
        }
        if let Some(state) = filter.state {
            query = query.filter(jobs::state.eq(state.as_str()));
        }
        if let Some(key) = &filter.unique_key {
            query = query.filter(jobs::unique_key.eq(key));
        }
        Ok(query.order(jobs::id.desc()).limit(limit).load(self)?)
    }

    fn max_job_id(&mut self) -> Result<Option<i64>> {
        Ok(jobs::table.select(diesel::dsl::max(jobs::id)).first(self)?)
    }

    /// Whether a job with this id exists.
    fn job_exists(&mut self, job_id: i64) -> Result<bool> {
        Ok(diesel::select(diesel::dsl::exists(jobs::table.find(job_id))).get_result(self)?)
    }

    /// All results rows of a job, by attempt.
    fn results_of(&mut self, job_id: i64) -> Result<Vec<ResultRow>> {
        Ok(results::table
            .filter(results::job_id.eq(job_id))
            .order((results::attempt, results::id))
            .select(ResultRow::as_select())
            .load(self)?)
    }

    /// `(queue, state, count)` for every queue (or one).
    fn count_by_queue_state(
        &mut self,
        queue: Option<&str>,
    ) -> Result<Vec<(String, JobState, i64)>> {
        let mut q = jobs::table
            .group_by((jobs::queue, jobs::state))
            .select((jobs::queue, jobs::state, diesel::dsl::count_star()))
            .into_boxed();
        if let Some(queue) = queue {
            q = q.filter(jobs::queue.eq(queue));
        }
        q.load::<(String, String, i64)>(self)?
            .into_iter()
            .map(|(q, s, n)| Ok((q, parse_state(None, &s)?, n)))
            .collect()
    }

    /// Queued jobs of `queue`, due or not (served by the claim index).
    fn queued_count(&mut self, queue: &str) -> Result<i64> {
        let row: Count = cached(
            "SELECT count(*) AS n FROM jobs WHERE queue = ? AND state = 'queued'",
            (bind::<Text, _>(queue),),
        )
        .get_result(self)?;
        Ok(row.n)
    }

    fn pending_count(&mut self, queue: &str, now: NaiveDateTime) -> Result<i64> {
        let row: Count = cached(
            "SELECT count(*) AS n FROM jobs WHERE queue = ? AND state = 'queued' \
             AND (run_at <= ? OR attempts > attempt_base)",
            (bind::<Text, _>(queue), bind::<Timestamp, _>(now)),
        )
        .get_result(self)?;
        Ok(row.n)
    }

    /// Whether any job of `queue` is running (a scan: no index on running jobs).
    fn any_running(&mut self, queue: &str) -> Result<bool> {
        Ok(diesel::select(diesel::dsl::exists(
            jobs::table
                .filter(jobs::queue.eq(queue))
                .filter(jobs::state.eq("running")),
        ))
        .get_result(self)?)
    }

    /// `sqlite_version()`.
    fn version(&mut self) -> Result<String> {
        Ok(diesel::select(diesel::dsl::sql::<Text>("sqlite_version()")).get_result(self)?)
    }

    /// Exactly-once audit of one queue, in SQL: (jobs, jobs not succeeded, jobs with more than one
    /// succeeded results row).
    fn audit(&mut self, queue: &str) -> Result<Audit> {
        let r: AuditRow = cached(AUDIT_BY_SUMS, (bind::<Text, _>(queue),)).get_result(self)?;
        Ok(r.into())
    }

    /// Inserts `n` already-succeeded jobs on `queue` in one statement (for `jobdb bench --finished`:
    /// measuring the claim with a large history in the table).
    fn insert_finished(&mut self, queue: &str, n: i64, now: NaiveDateTime) -> Result<usize> {
        Ok(diesel::sql_query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
             INSERT INTO jobs (queue, state, priority, payload, attempts, max_attempts, run_at, \
                               created_at, updated_at) \
             SELECT ?, 'succeeded', 0, '{\"history\":true}', 1, 5, ?, ?, ? FROM n",
        )
        .bind::<BigInt, _>(n)
        .bind::<Text, _>(queue)
        .bind::<Timestamp, _>(now)
        .bind::<Timestamp, _>(now)
        .bind::<Timestamp, _>(now)
        .execute(self)?)
    }
}
