//! The one error type of the crate, and the one place that decides which database errors are
//! "busy" (safe to retry) and which are not.

use std::time::Duration;

use diesel::result::Error as DieselError;

/// Everything jobdb can fail with.
///
/// Callers branch on the predicates ([`Error::is_busy`], [`Error::is_lease_lost`],
/// [`Error::is_not_found`], …) rather than on message text. The enum is `#[non_exhaustive]`
/// so new failure kinds can be added without breaking matches.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database stayed locked by other writers past the retry deadline. Nothing was
    /// written by the attempt that gave up; it is safe to try again later.
    #[error("the database stayed busy (locked by other writers) for {waited:?} over {attempts} attempts; nothing was written, try again later or raise the retry deadline")]
    Busy {
        /// How many times the whole transaction was tried.
        attempts: u32,
        /// How long was spent trying, sleeps included.
        waited: Duration,
    },

    /// Another jobdb writer held the write gate for the whole retry deadline (a process
    /// stopped or wedged while it wrote): nothing was written, and `holder` names it where the
    /// system tells. Safe to try again; [`Error::is_busy`] is true.
    #[error("the database stayed busy: {holder} (waited {waited:?})")]
    GateHeld {
        /// Who holds the gate, in words ("process 1234 holds the write gate (…)").
        holder: String,
        /// How long this writer waited.
        waited: Duration,
    },

    /// The lease on a job is no longer ours: it expired and the job was reaped or claimed by
    /// another worker, or the job left the `running` state. Nothing was written.
    #[error("lease lost on job {job_id} (attempt {attempt}): the job was reclaimed or is no longer running; the result was not recorded")]
    LeaseLost {
        /// The job whose lease was lost.
        job_id: i64,
        /// The attempt (fencing token) the caller held.
        attempt: i32,
    },

    /// The job was cancelled while it ran: whatever its handler reported was recorded as a
    /// cancelled attempt, never as success. From a heartbeat it means a cancel was requested
    /// (the lease was still extended, so the handler can wind down).
    #[error("job {job_id} was cancelled; its result is not recorded as success")]
    Cancelled {
        /// The cancelled job.
        job_id: i64,
    },

    /// The job is not in a state the operation applies to (retrying a job that is not dead
    /// or cancelled, cancelling a finished one). Nothing was changed.
    #[error("job {job_id} is {state}; {operation} needs {wanted}")]
    WrongState {
        /// The job.
        job_id: i64,
        /// Its state now.
        state: crate::models::JobState,
        /// What was asked: "cancel", "retry", …
        operation: &'static str,
        /// The states it applies to, in words.
        wanted: &'static str,
    },

    /// Waiting for a job to finish took longer than the timeout. The job is unaffected.
    #[error("job {job_id} did not finish within {waited:?} (it is {state})")]
    Timeout {
        /// The job waited for.
        job_id: i64,
        /// Its state when the wait gave up.
        state: crate::models::JobState,
        /// How long was waited.
        waited: Duration,
    },

    /// No job has this id.
    #[error("no job with id {job_id}")]
    NotFound {
        /// The id that was asked for.
        job_id: i64,
    },

    /// A payload or output that is not valid JSON, or that could not be (de)serialized into
    /// the requested type.
    #[error("invalid JSON {what}: {source}")]
    Json {
        /// Which value: "payload", "output", …
        what: &'static str,
        /// The serde_json error (line and column included).
        #[source]
        source: serde_json::Error,
    },

    /// A caller-supplied value is out of range or malformed (queue name, max_attempts, size
    /// limits, configuration values, …).
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The name of the argument or setting.
        field: &'static str,
        /// What is wrong with it and what is accepted.
        reason: String,
    },

    /// The database URL or path cannot be used.
    #[error("cannot use database {url:?}: {reason}", url = crate::pool::redact(.url))]
    InvalidDatabaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// SQLite did not switch to WAL journal mode (an in-memory database, or a filesystem
    /// without shared-memory support). jobdb needs WAL for concurrent readers and a writer.
    #[error("journal_mode=WAL could not be enabled (SQLite answered {answered:?}); jobdb needs a database file on a local filesystem, not an in-memory database")]
    WalUnavailable {
        /// What `PRAGMA journal_mode=WAL` answered.
        answered: String,
    },

    /// The SQLite library linked into this process has the WAL-reset bug (3.7.0 through
    /// 3.51.2, but for the 3.44.6 and 3.50.7 backports): with several connections in WAL mode
    /// it can corrupt the database or lose commits, so jobdb will not open one with it. Link
    /// a newer SQLite (jobdb's default `libsqlite3-sys` build bundles one).
    #[error("the linked SQLite {linked} has the WAL-reset bug (several connections in WAL mode can corrupt the database or lose commits): jobdb needs SQLite {floor}, and so does every other process that opens the file")]
    UnsafeSqlite {
        /// The linked library's version.
        linked: String,
        /// The oldest safe version(s), in words.
        floor: &'static str,
    },

    /// Inside jobdb only: the app's closure returned its own error, which rolled its writes
    /// back and goes to the caller as it was ([`crate::Db::write`]). Never retried, never
    /// returned to an app.
    #[doc(hidden)]
    #[error("the app's transaction returned an error of its own and was rolled back")]
    AppRollback,

    /// Opening a connection failed (file not found, permissions, not a database, …).
    #[error("cannot open database {url:?}: {source}", url = crate::pool::redact(.url))]
    Connection {
        /// The URL or path that was opened.
        url: String,
        /// Diesel's connection error.
        #[source]
        source: diesel::ConnectionError,
    },

    /// The connection pool could not hand out a connection.
    #[error("connection pool: {0}")]
    Pool(#[source] r2d2::Error),

    /// Running the embedded migrations failed.
    #[error("running migrations failed: {0}")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),

    /// A value read from the database is not what the schema allows (e.g. an unknown state).
    #[error("corrupt row in {table}: {reason}")]
    CorruptRow {
        /// The table the row came from.
        table: &'static str,
        /// What was wrong.
        reason: String,
    },

    /// Another live job (queued or running) of the same queue holds the job's unique key, so
    /// the operation (e.g. `retry`) would make two live jobs with one key. Nothing changed.
    #[error(
        "job {job_id} cannot be {operation}: a live job of its queue holds the same unique key"
    )]
    UniqueConflict {
        /// The job the operation was for.
        job_id: i64,
        /// What was asked: "retried", …
        operation: &'static str,
    },

    /// `jobdb copy` would not start, or not commit: the target is not empty (without
    /// `merge`), jobs are still running on the source (without `allow_running`), or the
    /// verification after the copy found a table that differs. Nothing was written to the
    /// target (the copy is one transaction there, rolled back).
    #[error("copy refused: {reason}")]
    CopyRefused {
        /// Why, with the counts that made it so.
        reason: String,
    },

    /// `jobdb archive` could not write or read its Parquet file (the Arrow or Parquet
    /// crate's error is the source). Nothing was deleted from the database.
    #[error("archive: {what}")]
    Archive {
        /// What was being done, with the file's name.
        what: String,
        /// The Parquet or Arrow error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A bug in jobdb: an invariant the code relies on did not hold. Never caused by the
    /// caller's input (that is [`Error::InvalidArgument`] and friends), so it is not
    /// [`Error::is_invalid_input`]; the CLI exits 70 (EX_SOFTWARE) for it.
    #[error("internal error in {what}: {reason} (a bug in jobdb; please report it)")]
    Internal {
        /// The component whose invariant failed ("group commit", …).
        what: &'static str,
        /// What was found.
        reason: String,
    },

    /// A commit was made but could not be synced to disk (`fdatasync` of the WAL failed), so
    /// a power loss could still undo it. The operating system's own error is the source.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Any other database error, kept whole (never stringified).
    #[error("database error: {0}")]
    Database(#[source] DieselError),

    /// The group commit this operation was part of failed with this error (every operation of
    /// the group receives it). The predicates look through it.
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),
}

/// Shorthand for `Result<T, jobdb::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when the error is SQLite's "database is locked" (SQLITE_BUSY and its extended
    /// codes), or the retry wrapper gave up on it ([`Error::Busy`]). Busy errors are
    /// transient: the whole transaction may be re-run.
    pub fn is_busy(&self) -> bool {
        match self.root() {
            Error::Busy { .. } | Error::GateHeld { .. } => true,
            Error::Database(e) => is_busy_diesel(e),
            _ => false,
        }
    }

    /// True when SQLite reported the database or disk full (SQLITE_FULL). The transaction
    /// was rolled back; the queue works again once space is freed.
    pub fn is_storage_full(&self) -> bool {
        matches!(self.root(), Error::Database(e) if db_message(e) == Some(SQLITE_FULL_MESSAGE))
    }

    /// True when trying again cannot help until someone changes the database: its file is
    /// corrupt or is not a database (SQLite's SQLITE_CORRUPT, SQLITE_NOTADB), or its schema
    /// lacks a table or a column jobdb's statement needs (SQLite's "no such table / column",
    /// PostgreSQL's 42P01 / 42703, MySQL's 1146 / 1054), as after a hand edit or on a schema
    /// newer or older than this build. A worker stops on these instead of retrying for ever.
    pub fn is_permanent(&self) -> bool {
        match self.root() {
            // A row without a column jobdb's model reads (the query selected every column):
            // the schema lacks it.
            Error::Database(DieselError::DeserializationError(e)) => {
                e.to_string().contains("was not present in query")
            }
            Error::Database(e) => db_message(e).is_some_and(permanent_message),
            _ => false,
        }
    }

    /// True for [`Error::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self.root(), Error::LeaseLost { .. })
    }

    /// True for [`Error::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self.root(), Error::Cancelled { .. })
    }

    /// True for [`Error::WrongState`].
    pub fn is_wrong_state(&self) -> bool {
        matches!(self.root(), Error::WrongState { .. })
    }

    /// True for [`Error::CopyRefused`].
    pub fn is_copy_refused(&self) -> bool {
        matches!(self.root(), Error::CopyRefused { .. })
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self.root(), Error::Timeout { .. })
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self.root(), Error::NotFound { .. })
    }

    /// True for [`Error::UniqueConflict`].
    pub fn is_unique_conflict(&self) -> bool {
        matches!(self.root(), Error::UniqueConflict { .. })
    }

    /// True for [`Error::Internal`]: a bug in jobdb, not a bad input.
    pub fn is_internal(&self) -> bool {
        matches!(self.root(), Error::Internal { .. })
    }

    /// True when the database refused a row because it would break a unique index
    /// (SQLite's SQLITE_CONSTRAINT_UNIQUE / PRIMARYKEY, PostgreSQL's 23505): Diesel maps both
    /// codes to `UniqueViolation`.
    pub(crate) fn is_unique_violation(&self) -> bool {
        matches!(
            self.root(),
            Error::Database(DieselError::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }

    /// True when the caller passed a bad value: invalid JSON, an out-of-range argument or an
    /// unusable database URL (including one where WAL cannot be enabled, such as `:memory:`).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self.root(),
            Error::Json { .. }
                | Error::InvalidArgument { .. }
                | Error::InvalidDatabaseUrl { .. }
                | Error::WalUnavailable { .. }
                | Error::UnsafeSqlite { .. }
        )
    }

    /// The error itself, or the one inside [`Error::Shared`].
    pub fn root(&self) -> &Error {
        match self {
            Error::Shared(e) => e.root(),
            e => e,
        }
    }

    /// True when a raw retryable error is inside (not the final [`Error::Busy`]): SQLite's
    /// busy, PostgreSQL's serialization failure or deadlock (the server rolled the whole
    /// transaction back, so re-running it is safe), or MySQL's deadlock (1213) or lock wait
    /// timeout (1205; the retry loop rolls the transaction back before it re-runs it). This
    /// is what the retry loop retries on.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Error::Database(e) if is_busy_diesel(e) || is_server_transient(e))
    }

    /// True when the connection to a database server was lost (a PostgreSQL or MySQL restart). What
    /// the statement did is unknown, so it is not retried; the connection is replaced.
    pub fn is_connection_lost(&self) -> bool {
        match self.root() {
            Error::Database(DieselError::DatabaseError(kind, info)) => {
                matches!(kind, diesel::result::DatabaseErrorKind::ClosedConnection)
                    || CONNECTION_LOST_MESSAGES
                        .iter()
                        .any(|m| info.message().contains(m))
            }
            _ => false,
        }
    }
}

/// The client libraries' and servers' words for a connection that is gone.
///
/// PostgreSQL: libpq's and the server's words. Diesel maps SQLSTATE class
/// 08 and a dead libpq connection to `ClosedConnection`; these cover what it leaves as
/// `Unknown` with only a text: the server's admin_shutdown / crash_shutdown (57P01, 57P02:
/// "terminating connection …", in English once the pool has set `lc_messages = 'C'`) and
/// libpq's own client-side messages, which are never translated in our libpq (pq-sys builds
/// it without NLS).
///
/// MySQL / MariaDB: Diesel maps no client error code to a kind, so CR_SERVER_GONE_ERROR
/// (2006, "MySQL server has gone away", or MariaDB Connector/C's "Server has gone away":
/// matched without its first word), CR_SERVER_LOST (2013, "Lost connection to [MySQL] server
/// during query"), ER_SERVER_SHUTDOWN (1053) and ER_CONNECTION_KILLED (1927) are matched by
/// their texts, which the client library never translates (the server's are English unless
/// `lc_messages` was changed).
const CONNECTION_LOST_MESSAGES: [&str; 10] = [
    "server closed the connection",
    "no connection to the server",
    "terminating connection",
    "could not receive data from server",
    "could not send data to server",
    "connection to server was lost",
    "has gone away",
    "Lost connection to",
    "Server shutdown in progress",
    "Connection was killed",
];

/// PostgreSQL errors that roll back the whole transaction and go away when it is re-run:
/// serialization_failure (40001, by Diesel's kind, i.e. by code) and deadlock_detected
/// (40P01). Diesel 2.3 gives 40P01 no kind and does not expose the SQLSTATE, so it is matched
/// by its primary message, which is English because the pool sets `lc_messages = 'C'` on
/// every connection it may (src/pool/postgres.rs).
///
/// MySQL / MariaDB: ER_LOCK_DEADLOCK (1213) is `SerializationFailure` by Diesel's kind (by
/// code; the server rolled the transaction back); ER_LOCK_WAIT_TIMEOUT (1205) has no kind and
/// is matched by its fixed English text (the server rolls back only the statement, and the
/// retry loop rolls back the rest before it re-runs the whole transaction).
fn is_server_transient(e: &DieselError) -> bool {
    match e {
        DieselError::DatabaseError(diesel::result::DatabaseErrorKind::SerializationFailure, _) => {
            true
        }
        DieselError::DatabaseError(_, info) => {
            info.message().starts_with("deadlock detected")
                || info.message().starts_with(MYSQL_LOCK_WAIT_TIMEOUT)
        }
        _ => false,
    }
}

/// MySQL's and MariaDB's message for ER_LOCK_WAIT_TIMEOUT (1205).
const MYSQL_LOCK_WAIT_TIMEOUT: &str = "Lock wait timeout exceeded";

/// SQLite's message for SQLITE_BUSY. Diesel 2.3 hands over only constraint codes as kinds;
/// BUSY arrives as `DatabaseError(Unknown, info)` with `sqlite3_errmsg`'s text and no code.
/// That text is `sqlite3_errstr(code & 0xff)`, a fixed, never-translated string per primary
/// result code, so matching it exactly is matching the code: BUSY, BUSY_RECOVERY,
/// BUSY_SNAPSHOT and BUSY_TIMEOUT all report it, SQLITE_LOCKED ("database table is locked")
/// does not.
const SQLITE_BUSY_MESSAGE: &str = "database is locked";

/// SQLite's message for SQLITE_FULL (also what `PRAGMA max_page_count` produces).
const SQLITE_FULL_MESSAGE: &str = "database or disk is full";

/// Whether a database's error text says no retry cures it (see [`Error::is_permanent`]):
/// SQLite's corrupt or foreign file and missing table or column; PostgreSQL's missing
/// relation or column (English: the pool sets `lc_messages = 'C'`; not its missing prepared
/// statements, cursors or savepoints, which a pooler or a failed transaction can cause);
/// MySQL's / MariaDB's missing table (1146) or column (1054).
fn permanent_message(m: &str) -> bool {
    const SQLITE: [&str; 5] = [
        "database disk image is malformed",
        "file is not a database",
        "malformed database schema",
        "no such table:",
        "no such column:",
    ];
    SQLITE.iter().any(|p| m.starts_with(p))
        || (m.starts_with("relation \"") && m.ends_with("does not exist"))
        || (m.starts_with("column ") && m.ends_with("does not exist"))
        || (m.starts_with("Table '") && m.ends_with("doesn't exist"))
        || m.starts_with("Unknown column '")
}

fn db_message(e: &DieselError) -> Option<&str> {
    match e {
        DieselError::DatabaseError(_, info) => Some(info.message()),
        _ => None,
    }
}

/// The classification, in one place. Only SQLITE_BUSY is busy. SQLITE_LOCKED ("database table
/// is locked") is a conflict inside one connection, a programming error that waiting cannot
/// cure, so it is deliberately not matched.
pub(crate) fn is_busy_diesel(e: &DieselError) -> bool {
    db_message(e) == Some(SQLITE_BUSY_MESSAGE)
}

impl From<DieselError> for Error {
    fn from(e: DieselError) -> Self {
        Error::Database(e)
    }
}

impl From<r2d2::Error> for Error {
    fn from(e: r2d2::Error) -> Self {
        Error::Pool(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind};

    struct Info(&'static str);
    impl DatabaseErrorInformation for Info {
        fn message(&self) -> &str {
            self.0
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    fn db_error(msg: &'static str) -> Error {
        Error::Database(DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(Info(msg)),
        ))
    }

    #[test]
    fn permanent_errors_are_the_schema_s_and_the_file_s_only() {
        for permanent in [
            "no such table: jobs",
            "no such column: progress",
            "database disk image is malformed",
            "file is not a database",
            "relation \"jobs\" does not exist",
            "column \"progress\" does not exist",
            "column jobs.progress does not exist",
            "Table 'test.jobs' doesn't exist",
            "Unknown column 'progress' in 'field list'",
        ] {
            assert!(db_error(permanent).is_permanent(), "{permanent}");
        }
        for transient in [
            "database is locked",
            "prepared statement \"__diesel_stmt_3\" does not exist",
            "savepoint \"diesel_savepoint_1\" does not exist",
            "cursor \"c\" does not exist",
            "SAVEPOINT diesel_savepoint_1 does not exist",
            "server closed the connection unexpectedly",
            "Deadlock found when trying to get lock; try restarting transaction",
        ] {
            assert!(!db_error(transient).is_permanent(), "{transient}");
        }
        assert!(!Error::Busy {
            attempts: 3,
            waited: std::time::Duration::ZERO
        }
        .is_permanent());
    }

    #[test]
    fn busy_is_busy_and_locked_is_not() {
        assert!(db_error("database is locked").is_busy());
        assert!(db_error("database is locked").is_retryable());
        assert!(!db_error("database table is locked").is_busy());
        assert!(!db_error("database table is locked").is_retryable());
        assert!(!db_error("no such table: jobs").is_busy());
        let gave_up = Error::Busy {
            attempts: 3,
            waited: Duration::from_millis(10),
        };
        assert!(gave_up.is_busy());
        assert!(
            !gave_up.is_retryable(),
            "the final Busy is never retried again"
        );
    }
}
