//! Five-field cron expressions exactly as crontab(5) reads them (Vixie cron, cronie):
//! `minute hour day-of-month month day-of-week`, each field `*`, a number, a range `a-b`, a
//! step `*/n` or `a-b/n`, or a comma list of those; months and weekdays also by name (`jan`,
//! `mon`, any case); weekday 0 and 7 are both Sunday; `@yearly`, `@annually`, `@monthly`,
//! `@weekly`, `@daily`, `@midnight` and `@hourly`. When both day fields are restricted (neither
//! starts with `*`), a day matches if *either* does (`0 0 1,15 * mon`: the 1st, the 15th and
//! every Monday); otherwise only the restricted one counts.
//!
//! Why not the `cron` crate for this form: it reads Quartz's dialect, where weekday 1 is
//! Sunday and 0 is refused, so `0 9 * * 1-5` fired Sunday to Thursday.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeDelta, Timelike, Utc};

/// A parsed five-field expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crontab {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Crontab {
    /// Parses `expression`; the error says which field is wrong and why.
    pub(crate) fn parse(expression: &str) -> Result<Crontab, String> {
        let expanded = match expression.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("{other:?} is not one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "{} fields; crontab's form has 5: minute hour day-of-month month day-of-week",
                fields.len()
            ));
        };
        let mut weekdays = field(weekday, "day of week", 0, 7, &WEEKDAYS)?;
        // 7 is Sunday as 0 is.
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Crontab {
            minutes: field(minute, "minute", 0, 59, &[])?,
            hours: field(hour, "hour", 0, 23, &[])?,
            days: field(day, "day of month", 1, 31, &[])?,
            months: field(month, "month", 1, 12, &MONTHS)?,
            weekdays,
            days_restricted: !day.starts_with('*'),
            weekdays_restricted: !weekday.starts_with('*'),
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let by_day = self.days & (1 << date.day()) != 0;
        let by_weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            (true, false) => by_day,
            (false, true) => by_weekday,
            (false, false) => true,
        }
    }

    /// The first fire time strictly after `t` (whole minutes, UTC), or `None` if there is
    /// none within the next 28 years (the calendar repeats after that: `0 0 30 2 *` never
    /// fires).
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The next whole minute after t.
        let start = t
            .with_second(0)?
            .with_nanosecond(0)?
            .checked_add_signed(TimeDelta::minutes(1))?;
        let mut date = start.date_naive();
        let mut from = Some(start.time());
        for _ in 0..(366 * 28) {
            if self.months & (1 << date.month()) != 0 && self.day_matches(date) {
                if let Some(time) = self.first_time(from) {
                    return Some(date.and_time(time).and_utc());
                }
            }
            date = date.succ_opt()?;
            from = None;
        }
        None
    }

    /// The first matching time of day at or after `from` (the day's start if `None`).
    fn first_time(&self, from: Option<NaiveTime>) -> Option<NaiveTime> {
        let (h0, m0) = from.map_or((0, 0), |t| (t.hour(), t.minute()));
        for hour in h0..24 {
            if self.hours & (1 << hour) == 0 {
                continue;
            }
            let first_minute = if hour == h0 { m0 } else { 0 };
            for minute in first_minute..60 {
                if self.minutes & (1 << minute) != 0 {
                    return NaiveTime::from_hms_opt(hour, minute, 0);
                }
            }
        }
        None
    }
}

/// One field as a bit set of the values it allows.
fn field(text: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let bad = |why: String| format!("{what} field {text:?}: {why}");
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            // Months are named from 1, weekdays from 0.
            return Ok(i as u32 + u32::from(names.len() == 12));
        }
        let n: u32 = v
            .parse()
            .map_err(|_| bad(format!("{v:?} is not a number{}", name_hint(names))))?;
        if n < min || n > max {
            return Err(bad(format!("{n} is outside {min}-{max}")));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| bad(format!("step {s:?} is not a number")))?;
                if step == 0 {
                    return Err(bad("a step of 0".into()));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(bad(format!("the range {a}-{b} runs backwards")));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `5/10` is `5-max/10`, as cronie reads it.
            (a, if part.contains('/') { max } else { a })
        };
        let mut v = from;
        while v <= to {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

fn name_hint(names: &[&str]) -> String {
    match names.len() {
        0 => String::new(),
        _ => format!(" or a name ({}…)", names[..3].join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::Crontab;
    use chrono::{DateTime, Utc};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Known next fire times, as crontab(5) (cronie) fires them. 2026-12-04 is a Friday.
    #[test]
    fn next_fire_times_follow_crontab() {
        for (expr, after, next) in [
            // Weekdays: 1-5 is Monday to Friday; 0 and 7 are Sunday.
            (
                "0 9 * * 1-5",
                "2026-12-04T09:00:00Z",
                "2026-12-07T09:00:00Z",
            ),
            (
                "0 9 * * 1-5",
                "2026-12-04T08:59:59Z",
                "2026-12-04T09:00:00Z",
            ),
            ("0 9 * * 0", "2026-12-04T10:00:00Z", "2026-12-06T09:00:00Z"),
            ("0 9 * * 7", "2026-12-04T10:00:00Z", "2026-12-06T09:00:00Z"),
            (
                "0 9 * * sun",
                "2026-12-04T10:00:00Z",
                "2026-12-06T09:00:00Z",
            ),
            (
                "0 9 * * Mon-Wed",
                "2026-12-04T10:00:00Z",
                "2026-12-07T09:00:00Z",
            ),
            ("0 9 * * 6", "2026-12-04T10:00:00Z", "2026-12-05T09:00:00Z"),
            // Steps and lists.
            (
                "*/15 * * * *",
                "2026-12-04T10:07:30Z",
                "2026-12-04T10:15:00Z",
            ),
            (
                "5/20 * * * *",
                "2026-12-04T10:26:00Z",
                "2026-12-04T10:45:00Z",
            ),
            (
                "0 8-18/4 * * *",
                "2026-12-04T12:30:00Z",
                "2026-12-04T16:00:00Z",
            ),
            (
                "0 0,12 * * *",
                "2026-12-04T12:00:00Z",
                "2026-12-05T00:00:00Z",
            ),
            // The day-of-month / day-of-week OR rule: the 1st, the 15th, and every Monday.
            (
                "0 0 1,15 * mon",
                "2026-12-04T00:00:00Z",
                "2026-12-07T00:00:00Z",
            ),
            (
                "0 0 1,15 * mon",
                "2026-12-07T00:00:00Z",
                "2026-12-14T00:00:00Z",
            ),
            (
                "0 0 1,15 * mon",
                "2026-12-14T00:00:00Z",
                "2026-12-15T00:00:00Z",
            ),
            // With one day field `*` (even `*/2`), only the other counts.
            ("0 0 13 * *", "2026-12-04T00:00:00Z", "2026-12-13T00:00:00Z"),
            (
                "0 0 */2 * fri",
                "2026-12-04T00:00:00Z",
                "2026-12-11T00:00:00Z",
            ),
            // Months by name, across a year.
            (
                "30 6 1 jan *",
                "2026-12-04T00:00:00Z",
                "2027-01-01T06:30:00Z",
            ),
            ("0 0 29 2 *", "2026-12-04T00:00:00Z", "2028-02-29T00:00:00Z"),
            // The nicknames.
            ("@hourly", "2026-12-04T10:00:00Z", "2026-12-04T11:00:00Z"),
            ("@daily", "2026-12-04T10:00:00Z", "2026-12-05T00:00:00Z"),
            ("@weekly", "2026-12-04T10:00:00Z", "2026-12-06T00:00:00Z"),
            ("@monthly", "2026-12-04T10:00:00Z", "2027-01-01T00:00:00Z"),
            ("@yearly", "2026-12-04T10:00:00Z", "2027-01-01T00:00:00Z"),
        ] {
            let c = Crontab::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(
                c.next_after(at(after)),
                Some(at(next)),
                "{expr} after {after}"
            );
        }
    }

    #[test]
    fn impossible_and_malformed_expressions() {
        assert_eq!(
            Crontab::parse("0 0 30 2 *")
                .unwrap()
                .next_after(at("2026-12-04T00:00:00Z")),
            None
        );
        for bad in [
            "0 9 * *",
            "0 9 * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "* * * * funday",
            "@reboot",
        ] {
            assert!(Crontab::parse(bad).is_err(), "{bad}");
        }
    }
}
