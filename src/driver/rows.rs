//! Row types (and one statement) the drivers share: what their SQL returns is the same on
//! every backend, so it is read into the same types.

use diesel::sql_types::BigInt;
use diesel::QueryableByName;

use crate::queue::Audit;

/// One count, named `n`.
#[derive(QueryableByName)]
pub(crate) struct Count {
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// The exactly-once audit's row (see [`Audit`]).
#[derive(QueryableByName)]
pub(crate) struct AuditRow {
    #[diesel(sql_type = BigInt)]
    jobs: i64,
    #[diesel(sql_type = BigInt)]
    not_succeeded: i64,
    #[diesel(sql_type = BigInt)]
    duplicated: i64,
}

impl From<AuditRow> for Audit {
    fn from(r: AuditRow) -> Audit {
        Audit {
            jobs: r.jobs,
            not_succeeded: r.not_succeeded,
            duplicated: r.duplicated,
        }
    }
}

/// The audit of the queue bound to `?`, in the SQL SQLite and MySQL both run as it is (a
/// comparison is 0 or 1 there, so summing one counts; PostgreSQL uses `FILTER`): jobs, jobs
/// not succeeded, jobs with more than one succeeded results row.
pub(crate) const AUDIT_BY_SUMS: &str = "SELECT count(*) AS jobs, \
        coalesce(sum(state <> 'succeeded'), 0) AS not_succeeded, \
        coalesce(sum((SELECT count(*) FROM results r WHERE r.job_id = j.id \
                      AND r.outcome = 'succeeded') > 1), 0) AS duplicated \
     FROM jobs j WHERE queue = ?";
