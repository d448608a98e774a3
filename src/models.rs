//! The rows of `jobs` and `results`, and the typed values the API hands out.
//!
//! Diesel rows (`JobRow`, `ResultRow`) mirror the schema; the public [`Job`] and [`JobResult`]
//! parse states into enums and timestamps into `DateTime<Utc>`, reporting a bad row as
//! [`Error::CorruptRow`] instead of panicking.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::schema::{jobs, results};

/// The life of a job: `queued → running → succeeded`, or back to `queued` for a retry, or
/// `dead` when out of attempts; `cancelled` by an operator.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed (possibly not before `run_at`).
    Queued,
    /// Claimed by a worker that holds a lease.
    Running,
    /// Finished successfully; one succeeded `results` row exists.
    Succeeded,
    /// Failed `max_attempts` times.
    Dead,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The text stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended (succeeded, dead or cancelled): nothing will run it again
    /// unless someone retries it.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The handler succeeded; `output` holds its result.
    Succeeded,
    /// The handler failed (or its lease expired); `error` says why.
    Failed,
}

impl Outcome {
    /// The text stored in the `outcome` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        }
    }
}

/// A row of `jobs`, as Diesel reads it.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = jobs, check_for_backend(diesel::sqlite::Sqlite))]
#[allow(missing_docs)] // the columns are documented in the migration
pub struct JobRow {
    pub id: i64,
    pub queue: String,
    pub state: String,
    pub priority: i32,
    pub payload: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub worker_id: Option<String>,
    pub heartbeat_at: Option<NaiveDateTime>,
    pub lease_expires_at: Option<NaiveDateTime>,
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
    pub cancel_requested_at: Option<NaiveDateTime>,
    pub attempt_base: i32,
    pub timeout_ms: Option<i64>,
    pub progress: Option<String>,
}

/// A job, as the API hands it out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// Unique, never reused.
    pub id: i64,
    /// The queue it was enqueued on.
    pub queue: String,
    /// Where it is in its life.
    pub state: JobState,
    /// Lower runs first.
    pub priority: i32,
    /// The payload as JSON text; [`Job::payload`] deserializes it.
    pub payload_json: String,
    /// Claims so far. While running, this is the current attempt (and the lease's fence).
    pub attempts: i32,
    /// After this many failed attempts the job is `dead`.
    pub max_attempts: i32,
    /// Not claimable before this moment.
    pub run_at: DateTime<Utc>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// Last change of any column.
    pub updated_at: DateTime<Utc>,
    /// Who holds (or last held) the lease.
    pub worker_id: Option<String>,
    /// Last heartbeat of the current lease.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// When the current lease runs out unless extended.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// At most one live (queued or running) job per queue has this key.
    pub unique_key: Option<String>,
    /// When a cancel was requested while the job was running.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// `attempts` when the job was last retried by hand: attempts count on from there, so
    /// the job gets `max_attempts` fresh tries while attempt numbers stay unique.
    pub attempt_base: i32,
    /// This job's time limit per attempt (`None`: the worker's default, if any).
    pub timeout: Option<std::time::Duration>,
    /// The last progress an attempt reported ([`crate::JobContext::set_progress`]) as JSON
    /// text; [`Job::progress`] deserializes it. Kept when the attempt ends, so a retried
    /// attempt can resume from it. `None`: none reported.
    pub progress_json: Option<String>,
}

impl Job {
    /// Attempts left before the job is `dead`.
    pub fn attempts_left(&self) -> i32 {
        (self.max_attempts - (self.attempts - self.attempt_base)).max(0)
    }

    /// Whether cancellation was requested (a running job keeps running until its handler
    /// notices; whatever it reports is then recorded as cancelled).
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested_at.is_some()
    }

    /// Deserializes the payload into the caller's type.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.payload_json).map_err(|source| Error::Json {
            what: "payload",
            source,
        })
    }

    /// Deserializes the last reported progress into the caller's type (`None`: none yet).
    pub fn progress<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.progress_json
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|source| Error::Json {
                what: "progress",
                source,
            })
    }

    /// The lease this job was claimed under (meaningful while `running`).
    pub fn lease(&self) -> Lease {
        Lease {
            job_id: self.id,
            attempt: self.attempts,
        }
    }
}

impl TryFrom<JobRow> for Job {
    type Error = Error;

    fn try_from(r: JobRow) -> Result<Job> {
        let state = JobState::parse(&r.state).ok_or_else(|| Error::CorruptRow {
            table: "jobs",
            reason: format!("job {} has unknown state {:?}", r.id, r.state),
        })?;
        Ok(Job {
            id: r.id,
            queue: r.queue,
            state,
            priority: r.priority,
            payload_json: r.payload,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            run_at: r.run_at.and_utc(),
            created_at: r.created_at.and_utc(),
            updated_at: r.updated_at.and_utc(),
            worker_id: r.worker_id,
            heartbeat_at: r.heartbeat_at.map(|t| t.and_utc()),
            lease_expires_at: r.lease_expires_at.map(|t| t.and_utc()),
            last_error: r.last_error,
            unique_key: r.unique_key,
            cancel_requested_at: r.cancel_requested_at.map(|t| t.and_utc()),
            attempt_base: r.attempt_base,
            timeout: r
                .timeout_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .map(std::time::Duration::from_millis),
            progress_json: r.progress,
        })
    }
}

/// Proof of a claim: the job and the attempt it was claimed for. Heartbeat, complete and fail
/// take it and apply only while the job is still `running` at this attempt (a fencing token),
/// so a worker whose job was reclaimed cannot overwrite the new owner's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The claimed job.
    pub job_id: i64,
    /// The attempt number the claim set.
    pub attempt: i32,
}

/// Serializes `value` as JSON text; `what` names it in the error ("payload", "output").
pub(crate) fn to_json(what: &'static str, value: &impl Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Json { what, source })
}

/// A job to enqueue. Build with [`NewJob::new`] (typed payload) or [`NewJob::from_json`]
/// (JSON text, validated), then adjust with the builder methods.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub(crate) queue: String,
    pub(crate) payload: String,
    pub(crate) priority: i32,
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) max_attempts: i32,
    pub(crate) unique_key: Option<String>,
    pub(crate) timeout: Option<std::time::Duration>,
}

/// Default attempts before a job is `dead`.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;
/// Default largest payload accepted, in bytes of JSON.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

impl NewJob {
    /// A job on `queue` whose payload is `payload` serialized as JSON.
    pub fn new(queue: impl Into<String>, payload: &impl Serialize) -> Result<NewJob> {
        Ok(NewJob::with_raw(queue.into(), to_json("payload", payload)?))
    }

    /// A job whose payload is JSON text, checked to be valid JSON (stored as given).
    pub fn from_json(queue: impl Into<String>, json: &str) -> Result<NewJob> {
        serde_json::from_str::<serde::de::IgnoredAny>(json).map_err(|source| Error::Json {
            what: "payload",
            source,
        })?;
        Ok(NewJob::with_raw(queue.into(), json.to_owned()))
    }

    fn with_raw(queue: String, payload: String) -> NewJob {
        NewJob {
            queue,
            payload,
            priority: 0,
            run_at: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            timeout: None,
        }
    }

    /// Lower runs first (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Not claimable before `at` (default: now).
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        // Kept as every backend stores it (microseconds, no leap second), so the value
        // checked, stored and copied is one value.
        self.run_at = Some(crate::timestamp::normalize(at));
        self
    }

    /// Attempts before the job is `dead` (default 5; must be at least 1).
    pub fn max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// At most one live (queued or running) job of this queue may have `key`: enqueueing a
    /// duplicate returns the existing job's id instead of a new job. Race-free: a unique
    /// index decides, not a lookup first. The key is freed when the job finishes.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Limits each attempt to `timeout` (at least 1 ms): past it the handler is told to stop
    /// (`--exec` kills the command's process group) and the attempt is failed ("timed out
    /// after …") and retried with the normal backoff. Overrides the worker's
    /// [`crate::WorkerConfig::job_timeout`].
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The timeout in whole milliseconds, as stored.
    pub(crate) fn timeout_ms(&self) -> Option<i64> {
        self.timeout
            .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
    }

    /// The queue name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The payload JSON text.
    pub fn payload_json(&self) -> &str {
        &self.payload
    }

    /// Checks the job against everything the queue accepts (queue name, attempts, unique key,
    /// run_at, timeout, payload size and text), without writing: what enqueue would refuse,
    /// as the same typed error. For callers that check a whole batch before writing any of it.
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        validate_queue_name(&self.queue)?;
        if self.max_attempts < 1 {
            return Err(Error::InvalidArgument {
                field: "max_attempts",
                reason: format!("{} is less than 1", self.max_attempts),
            });
        }
        if let Some(key) = &self.unique_key {
            if key.is_empty() || key.len() > 1024 || key.contains('\0') {
                return Err(Error::InvalidArgument {
                    field: "unique_key",
                    reason: format!(
                        "must be 1 to 1024 bytes with no NUL character (got {} bytes)",
                        key.len()
                    ),
                });
            }
        }
        if let Some(at) = self.run_at {
            crate::timestamp::check("run_at", at)?;
        }
        check_json("payload", &self.payload)?;
        if let Some(t) = self.timeout {
            if t < std::time::Duration::from_millis(1) {
                return Err(Error::InvalidArgument {
                    field: "timeout",
                    reason: format!("{t:?} is shorter than 1 ms"),
                });
            }
            // Its deadline must be a storable time, like a lease's.
            crate::timestamp::from_now("timeout", t)?;
        }
        if self.payload.len() > max_payload_bytes {
            return Err(Error::InvalidArgument {
                field: "payload",
                reason: format!(
                    "{} bytes is over the limit of {max_payload_bytes} bytes",
                    self.payload.len()
                ),
            });
        }
        Ok(())
    }
}

/// Deepest nesting of arrays and objects accepted in a payload or an output, on both backends
/// (serde_json's own default, so a handler can always read its payload into a `Value`).
/// SQLite's `json_valid` allows 1000, PostgreSQL's parser its stack; one limit for both, and a
/// typed error instead of a CHECK failure or "stack depth limit exceeded".
pub const MAX_JSON_DEPTH: usize = 128;

/// [`Error::InvalidArgument`] naming `field` if `json` nests deeper than [`MAX_JSON_DEPTH`],
/// or holds text one backend cannot store: the escape `\u0000` (PostgreSQL's text and JSONB
/// have no NUL) or a lone UTF-16 surrogate such as `\ud800` (no Unicode scalar value: JSONB
/// refuses it). One policy for both backends, checked before anything is written; SQLite would
/// have taken both, PostgreSQL refused them with an untyped error. A scan of the text, no parse.
pub(crate) fn check_json(field: &'static str, json: &str) -> Result<()> {
    let refuse = |reason: String| Err(Error::InvalidArgument { field, reason });
    let bytes = json.as_bytes();
    let (mut depth, mut in_string, mut i) = (0usize, false, 0usize);
    // A high surrogate just seen, waiting for its low half.
    let mut pending_high = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                    let unit = std::str::from_utf8(bytes.get(i + 2..i + 6).unwrap_or_default())
                        .ok()
                        .and_then(|h| u16::from_str_radix(h, 16).ok());
                    match unit {
                        Some(0) => {
                            return refuse(
                                "JSON text contains \\u0000 (NUL), which PostgreSQL \
                                           cannot store; jobdb refuses it on every backend"
                                    .into(),
                            )
                        }
                        Some(0xD800..=0xDBFF) if !pending_high => pending_high = true,
                        Some(0xDC00..=0xDFFF) if pending_high => pending_high = false,
                        Some(0xD800..=0xDFFF) => return refuse(lone_surrogate()),
                        _ if pending_high => return refuse(lone_surrogate()),
                        _ => {}
                    }
                    i += 6;
                    continue;
                }
                _ if pending_high => return refuse(lone_surrogate()),
                b'\\' => i += 1, // skip the escaped character
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return refuse(format!("JSON nested deeper than {MAX_JSON_DEPTH} levels"));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn lone_surrogate() -> String {
    "JSON text contains a lone UTF-16 surrogate (e.g. \\ud800 without its pair), which is no \
     character and which PostgreSQL cannot store; jobdb refuses it on every backend"
        .into()
}

/// Error text as both backends can store it: a NUL (PostgreSQL's TEXT has none) is written
/// `\0`, so a failure with such bytes in its message is still recorded, not lost.
pub(crate) fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\\0"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Queue names: 1 to 255 bytes, no NUL (stored verbatim, always bound as parameters).
pub fn validate_queue_name(queue: &str) -> Result<()> {
    if queue.is_empty() || queue.len() > 255 || queue.contains('\0') {
        return Err(Error::InvalidArgument {
            field: "queue",
            reason: format!("{queue:?} must be 1 to 255 bytes with no NUL character"),
        });
    }
    Ok(())
}

/// A row of `results`, as Diesel reads it.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = results, check_for_backend(diesel::sqlite::Sqlite))]
#[allow(missing_docs)] // the columns are documented in the migration
pub struct ResultRow {
    pub id: i64,
    pub job_id: i64,
    pub attempt: i32,
    pub outcome: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub created_at: NaiveDateTime,
    pub duration_ms: i64,
    pub worker_id: Option<String>,
}

/// A row of `schedules`: a periodic schedule's last tick enqueued (read by `jobdb copy`).
#[derive(Debug, Clone, PartialEq, QueryableByName)]
#[allow(missing_docs)] // the columns are documented in the migration
pub struct ScheduleRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    pub last_tick: NaiveDateTime,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    pub updated_at: NaiveDateTime,
}

/// A row of `paused_queues` (read by `jobdb copy`).
#[derive(Debug, Clone, PartialEq, QueryableByName)]
#[allow(missing_docs)] // the columns are documented in the migration
pub struct PausedRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub queue: String,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    pub paused_at: NaiveDateTime,
}

/// A row to insert into `results`.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = results)]
#[allow(missing_docs)] // the columns are documented in the migration
pub struct NewResultRow<'a> {
    pub job_id: i64,
    pub attempt: i32,
    pub outcome: &'a str,
    pub output: Option<&'a str>,
    pub error: Option<&'a str>,
    pub created_at: NaiveDateTime,
    pub duration_ms: i64,
}

/// One finished attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobResult {
    /// Row id.
    pub id: i64,
    /// The job.
    pub job_id: i64,
    /// Which attempt this was (1-based).
    pub attempt: i32,
    /// How it ended.
    pub outcome: Outcome,
    /// The handler's output as JSON text (succeeded attempts).
    pub output_json: Option<String>,
    /// Why it failed (failed attempts).
    pub error: Option<String>,
    /// When the attempt finished.
    pub created_at: DateTime<Utc>,
    /// How long the handler ran, in milliseconds.
    pub duration_ms: i64,
    /// The worker that held the attempt's lease (`None`: recorded before jobdb kept it).
    pub worker_id: Option<String>,
}

impl JobResult {
    /// Deserializes the output into the caller's type (`None` when there is no output).
    pub fn output<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.output_json
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|source| Error::Json {
                what: "output",
                source,
            })
    }
}

impl TryFrom<ResultRow> for JobResult {
    type Error = Error;

    fn try_from(r: ResultRow) -> Result<JobResult> {
        let outcome = match r.outcome.as_str() {
            "succeeded" => Outcome::Succeeded,
            "failed" => Outcome::Failed,
            other => {
                return Err(Error::CorruptRow {
                    table: "results",
                    reason: format!("result {} has unknown outcome {other:?}", r.id),
                })
            }
        };
        Ok(JobResult {
            id: r.id,
            job_id: r.job_id,
            attempt: r.attempt,
            outcome,
            output_json: r.output,
            error: r.error,
            created_at: r.created_at.and_utc(),
            duration_ms: r.duration_ms,
            worker_id: r.worker_id,
        })
    }
}
