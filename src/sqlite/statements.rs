//! How long SQLite statements take, by kind, over every protected connection of the process
//! (jobdb's and the app's): the histograms `jobdb serve` and a worker's `--metrics-listen`
//! export as `jobdb_sqlite_statement_duration_seconds{kind=…}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::metrics::{Histogram, HistogramSnapshot};

/// What a statement does, by its first keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// `SELECT`, `WITH … SELECT`, `VALUES`.
    Select,
    /// `INSERT`, `REPLACE`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`.
    Transaction,
    /// `PRAGMA`.
    Pragma,
    /// Anything else (DDL, `VACUUM`, `ANALYZE`, …).
    Other,
}

impl StatementKind {
    /// Every kind, in the order `/metrics` lists them.
    pub const ALL: [StatementKind; 7] = [
        StatementKind::Select,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Transaction,
        StatementKind::Pragma,
        StatementKind::Other,
    ];

    /// The label value: `select`, `insert`, …
    pub fn label(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Transaction => "transaction",
            StatementKind::Pragma => "pragma",
            StatementKind::Other => "other",
        }
    }

    /// The kind of a statement's SQL text (leading blanks and comments skipped). A `WITH`
    /// statement counts as a select: its CTE may precede any verb, and reading on to find
    /// it would cost more than the distinction is worth.
    pub fn of(sql: &[u8]) -> StatementKind {
        let word = first_word(sql);
        let is = |w: &str| word.eq_ignore_ascii_case(w.as_bytes());
        if is("select") || is("with") || is("values") {
            StatementKind::Select
        } else if is("insert") || is("replace") {
            StatementKind::Insert
        } else if is("update") {
            StatementKind::Update
        } else if is("delete") {
            StatementKind::Delete
        } else if ["begin", "commit", "end", "rollback", "savepoint", "release"]
            .iter()
            .any(|w| is(w))
        {
            StatementKind::Transaction
        } else if is("pragma") {
            StatementKind::Pragma
        } else {
            StatementKind::Other
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn first_word(mut sql: &[u8]) -> &[u8] {
    loop {
        sql = sql.trim_ascii_start();
        if let Some(rest) = sql.strip_prefix(b"--") {
            sql = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(&[], |i| &rest[i..]);
        } else if let Some(rest) = sql.strip_prefix(b"/*") {
            sql = rest
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(&[], |i| &rest[i + 2..]);
        } else {
            break;
        }
    }
    let end = sql
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(sql.len());
    &sql[..end]
}

fn histograms() -> &'static [Histogram; 7] {
    static ALL: OnceLock<[Histogram; 7]> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

static SLOW: AtomicU64 = AtomicU64::new(0);
static REFUSED_UPGRADES: AtomicU64 = AtomicU64::new(0);
static COMMIT_SYNCS: AtomicU64 = AtomicU64::new(0);

/// Counts a WAL sync a guarded connection ran after its commit.
pub(crate) fn count_commit_sync() {
    COMMIT_SYNCS.fetch_add(1, Ordering::Relaxed);
}

/// `fdatasync`s of the WAL that jobdb's pool connections ran after their own commits, outside
/// the write lock (see `GuardSettings::sync_commits`), over every such connection of this
/// process: one per commit that wrote, on connections of a handle at the default durability.
pub fn commit_syncs() -> u64 {
    COMMIT_SYNCS.load(Ordering::Relaxed)
}

/// Counts a statement logged as slow.
pub(crate) fn count_slow() {
    SLOW.fetch_add(1, Ordering::Relaxed);
}

/// Counts a DEFERRED transaction's write that SQLite refused at once.
pub(crate) fn count_refused_upgrade() {
    REFUSED_UPGRADES.fetch_add(1, Ordering::Relaxed);
}

/// Statements logged as slower than the threshold, over every guarded connection of this
/// process.
pub fn slow_statements() -> u64 {
    SLOW.load(Ordering::Relaxed)
}

/// Writes of DEFERRED transactions that SQLite refused at once, without a busy wait: the
/// transaction read first, then another connection wrote (`SQLITE_BUSY`) or had committed
/// since its snapshot (`SQLITE_BUSY_SNAPSHOT`). Over every guarded connection of this process.
pub fn refused_upgrades() -> u64 {
    REFUSED_UPGRADES.load(Ordering::Relaxed)
}

/// Records one statement's duration under its kind.
pub(crate) fn record(sql: &[u8], took: Duration) {
    histograms()[StatementKind::of(sql).index()].record(took);
}

/// The histogram of one kind, for the Prometheus text format.
pub(crate) fn histogram(kind: StatementKind) -> &'static Histogram {
    &histograms()[kind.index()]
}

/// Each kind's statements so far, over every protected connection of this process.
pub fn statement_durations() -> Vec<(StatementKind, HistogramSnapshot)> {
    StatementKind::ALL
        .iter()
        .map(|&k| (k, histogram(k).snapshot()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::StatementKind::{self, *};

    #[test]
    fn kinds_by_first_keyword_past_blanks_and_comments() {
        for (sql, kind) in [
            ("SELECT 1", Select),
            ("  with x as (select 1) select * from x", Select),
            ("-- a comment\n  insert into t values (1)", Insert),
            ("/* c */UPDATE jobs SET state = ?", Update),
            ("delete from jobs", Delete),
            ("BEGIN IMMEDIATE", Transaction),
            ("COMMIT", Transaction),
            ("SAVEPOINT diesel_savepoint_1", Transaction),
            ("PRAGMA busy_timeout = 5", Pragma),
            ("CREATE TABLE t (x)", Other),
            ("", Other),
            ("/* never closed", Other),
        ] {
            assert_eq!(StatementKind::of(sql.as_bytes()), kind, "{sql:?}");
        }
    }
}
