//! The one range of timestamps jobdb stores, and checked arithmetic into it.
//!
//! SQLite keeps timestamps as text (`YYYY-MM-DD HH:MM:SS.f`, Diesel's format) and compares
//! them as strings, which orders them correctly only while the year has four digits: chrono
//! writes year 10000 as `+10000-…`, which sorts before today, so a job delayed past 9999 ran
//! at once and a lease that long looked expired. PostgreSQL's TIMESTAMPTZ goes further (to
//! 294276 AD) and refused such values only as an untyped error. So both backends accept the
//! same range, years 1 through 9999 (every value of which is fixed-width text), and anything
//! outside it, or a duration that would leave it, is [`Error::InvalidArgument`] before a
//! statement runs: never a panic, never a database error.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDateTime, TimeDelta, Timelike, Utc};

use crate::error::{Error, Result};

/// The first year jobdb stores.
pub const MIN_YEAR: i32 = 1;
/// The last year jobdb stores (the last one SQLite's text timestamps order correctly).
pub const MAX_YEAR: i32 = 9999;

fn out_of_range(field: &'static str, what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument {
        field,
        reason: format!(
            "{what} is outside the timestamps jobdb stores (years {MIN_YEAR} to {MAX_YEAR}, UTC)"
        ),
    }
}

/// `t` as every backend stores it: whole microseconds (PostgreSQL's precision; further
/// digits are dropped, never rounded, so the last instant of 9999 cannot carry into 10000) and
/// no leap second (`23:59:60.x` is the next minute's first second, as PostgreSQL reads it). A
/// value given with seven fractional digits or a leap second was kept as given on SQLite and
/// then differed from PostgreSQL's copy of it.
pub fn normalize(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.timestamp_subsec_nanos();
    let (base, nanos) = if nanos >= 1_000_000_000 {
        // chrono keeps a leap second as the 59th second with nanoseconds past one second.
        match t
            .with_nanosecond(0)
            .and_then(|s| s.checked_add_signed(TimeDelta::seconds(1)))
        {
            Some(next) => (next, nanos - 1_000_000_000),
            None => return t,
        }
    } else {
        (t, nanos)
    };
    base.with_nanosecond(nanos - nanos % 1000).unwrap_or(base)
}

/// `t` if it lies in the stored range, else [`Error::InvalidArgument`] naming `field`.
/// Sub-microsecond digits are dropped (PostgreSQL keeps microseconds; rounding them up could
/// carry the last instant of 9999 into year 10000).
pub fn check(field: &'static str, t: DateTime<Utc>) -> Result<DateTime<Utc>> {
    // The range is checked on the value as it will be stored (a leap second in the last
    // minute of 9999 is year 10000).
    let t = normalize(t);
    if (MIN_YEAR..=MAX_YEAR).contains(&t.year()) {
        Ok(t)
    } else {
        Err(out_of_range(field, t))
    }
}

/// `t + d`, checked: [`Error::InvalidArgument`] naming `field` if it leaves the range.
pub fn after(field: &'static str, t: NaiveDateTime, d: Duration) -> Result<NaiveDateTime> {
    let sum = TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .ok_or_else(|| out_of_range(field, format_args!("{t} + {d:?}")))?;
    Ok(check(field, sum.and_utc())?.naive_utc())
}

/// `t - d`, checked like [`after`].
pub fn before(field: &'static str, t: NaiveDateTime, d: Duration) -> Result<NaiveDateTime> {
    let diff = TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .ok_or_else(|| out_of_range(field, format_args!("{t} - {d:?}")))?;
    Ok(check(field, diff.and_utc())?.naive_utc())
}

/// The last instant jobdb stores (9999-12-31 23:59:59.999999 UTC).
pub fn latest() -> NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(MAX_YEAR, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .unwrap_or(NaiveDateTime::MAX)
}

/// The current time as jobdb stores it: UTC, whole microseconds (PostgreSQL's precision, so
/// both backends hand back exactly the instants they were given).
pub fn now() -> NaiveDateTime {
    let t = Utc::now().naive_utc();
    t.checked_sub_signed(TimeDelta::nanoseconds(i64::from(
        t.and_utc().timestamp_subsec_nanos() % 1000,
    )))
    .unwrap_or(t)
}

/// Now plus `d`, checked like [`after`] (the CLI's `--delay`, `--for`; a worker's lease).
pub fn from_now(field: &'static str, d: Duration) -> Result<DateTime<Utc>> {
    Ok(after(field, now(), d)?.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_range_is_years_1_to_9999_and_everything_else_is_invalid_input() {
        let last = Utc
            .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
            .single()
            .expect("a valid date")
            + TimeDelta::nanoseconds(999_999_999);
        let kept = check("run_at", last).expect("the last instant of 9999 is stored");
        assert_eq!(kept.timestamp_subsec_nanos(), 999_999_000);
        let next = Utc
            .with_ymd_and_hms(10000, 1, 1, 0, 0, 0)
            .single()
            .expect("a valid date");
        assert!(check("run_at", next).unwrap_err().is_invalid_input());
        let now = Utc::now().naive_utc();
        for d in [
            Duration::from_secs(3_000_000 * 86_400),
            Duration::from_secs(100_000_000 * 86_400),
            Duration::MAX,
        ] {
            assert!(after("lease", now, d).unwrap_err().is_invalid_input());
            assert!(before("older_than", now, d).unwrap_err().is_invalid_input());
        }
        assert!(after("lease", now, Duration::from_secs(3600)).is_ok());
        assert_eq!(
            check("t", latest().and_utc()).unwrap().naive_utc(),
            latest()
        );
    }
}
