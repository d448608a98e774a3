//! Periodic jobs: a [`Schedule`] (fixed interval or cron expression) and a [`Scheduler`] that
//! enqueues one job per tick.
//!
//! Exactly once per tick with any number of schedulers and no leader: ticks are instants
//! every process computes the same way (interval ticks are multiples of the interval since
//! the Unix epoch; cron ticks are the expression's fire times, UTC), and a tick's job is
//! enqueued in the same transaction as a compare-and-set on the `schedules` row
//! (`last_tick` only moves forward). The process whose CAS wins enqueues; the others see
//! the tick already taken. The job also carries the unique key `schedule:<name>:<tick>`.
//! A tick that passes while no scheduler runs is skipped, not caught up.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::NewJob;
use crate::worker::ShutdownHandle;
use crate::{Queue, QueueConnection};

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Every {
    /// Every `Duration`, at multiples of it since the Unix epoch (UTC).
    Interval(Duration),
    /// A cron expression, UTC (see [`Schedule::cron`]).
    Cron(Box<CronExpression>),
}

/// A parsed cron expression: crontab(5)'s five fields, or Quartz's six or seven.
#[derive(Debug, Clone)]
pub struct CronExpression(CronDialect);

#[derive(Debug, Clone)]
enum CronDialect {
    Crontab(crate::crontab::Crontab),
    Quartz(cron::Schedule),
}

/// A periodic job: on each tick, a job on `queue` with `payload`.
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    every: Every,
    job: NewJob,
}

impl Schedule {
    /// Fires every `every` (at least 1 s, whole milliseconds).
    pub fn interval(name: impl Into<String>, every: Duration, job: NewJob) -> Result<Schedule> {
        if every < Duration::from_secs(1) {
            return Err(Error::InvalidArgument {
                field: "every",
                reason: format!("{every:?} is shorter than the 1 s minimum"),
            });
        }
        // Its first tick must be a storable time (the tick is the job's unique key and the
        // schedule row's `last_tick`).
        crate::timestamp::from_now("every", every)?;
        Schedule::new(name.into(), Every::Interval(every), job)
    }

    /// Fires at a cron expression's times (UTC). Five fields (`minute hour day-of-month month
    /// day-of-week`) or an `@daily`-style nickname are read exactly as crontab(5) reads them:
    /// weekday 0 and 7 are Sunday and 1 is Monday, names (`mon`, `jan`) work, and when both
    /// day fields are restricted a day matches either. Six or seven fields (seconds first, a
    /// year last) are Quartz's dialect, as the `cron` crate reads it: there weekday 1 is
    /// Sunday. (jobdb before this read the five-field form in Quartz's dialect too, so a
    /// five-field schedule that numbered weekdays fired a day early; it now fires as written.)
    pub fn cron(name: impl Into<String>, expression: &str, job: NewJob) -> Result<Schedule> {
        let invalid = |reason: String| Error::InvalidArgument {
            field: "cron",
            reason: format!("{expression:?}: {reason}"),
        };
        let fields = expression.split_whitespace().count();
        let dialect = if fields == 5 || expression.trim_start().starts_with('@') {
            CronDialect::Crontab(crate::crontab::Crontab::parse(expression).map_err(invalid)?)
        } else {
            CronDialect::Quartz(
                cron::Schedule::from_str(expression).map_err(|e| invalid(e.to_string()))?,
            )
        };
        Schedule::new(
            name.into(),
            Every::Cron(Box::new(CronExpression(dialect))),
            job,
        )
    }

    fn new(name: String, every: Every, job: NewJob) -> Result<Schedule> {
        if name.is_empty() || name.len() > 255 || name.contains('\0') {
            return Err(Error::InvalidArgument {
                field: "schedule name",
                reason: format!("{name:?} must be 1 to 255 bytes with no NUL character"),
            });
        }
        // A template the queue would refuse (an empty queue name, max_attempts 0, …) would
        // start, warn on every tick and enqueue nothing: refuse it now.
        job.validate(crate::models::DEFAULT_MAX_PAYLOAD_BYTES)?;
        let schedule = Schedule { name, every, job };
        if schedule.next_tick_after(chrono::Utc::now()).is_none() {
            return Err(Error::InvalidArgument {
                field: "cron",
                reason: "the expression never fires again (e.g. 30 February)".into(),
            });
        }
        Ok(schedule)
    }

    /// The schedule's name (its row in `schedules`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first tick strictly after `t` (`None` if a cron expression never fires again).
    pub fn next_tick_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.every {
            Every::Interval(every) => {
                let step = TimeDelta::from_std(*every).ok()?;
                let floor = t.duration_trunc(step).ok()?;
                floor.checked_add_signed(step)
            }
            Every::Cron(c) => match &c.0 {
                CronDialect::Crontab(c) => c.next_after(t),
                CronDialect::Quartz(s) => s.after(&t).next(),
            },
        }
    }

    /// The job for `tick`: the template with the tick's unique key.
    pub(crate) fn job_for(&self, tick: DateTime<Utc>) -> NewJob {
        self.job.clone().unique_key(format!(
            "schedule:{}:{}",
            self.name,
            tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ))
    }
}

/// Runs schedules: sleeps until the next tick of any of them, enqueues what is due (exactly
/// once across processes), repeats until shut down.
#[derive(Debug)]
pub struct Scheduler<C: QueueConnection = diesel::SqliteConnection> {
    queue: Queue<C>,
    schedules: Vec<Schedule>,
    shutdown: ShutdownHandle,
}

/// What a [`Scheduler`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SchedulerReport {
    /// Ticks this process enqueued.
    pub enqueued: u64,
    /// Ticks another scheduler had already enqueued.
    pub taken_elsewhere: u64,
    /// Ticks that could not be enqueued (an error, logged).
    pub failed: u64,
}

impl<C: QueueConnection> Scheduler<C> {
    /// A scheduler for `schedules` on `queue`'s database.
    pub fn new(queue: Queue<C>, schedules: Vec<Schedule>) -> Scheduler<C> {
        Scheduler {
            queue,
            schedules,
            shutdown: ShutdownHandle::default(),
        }
    }

    /// A handle that stops [`Scheduler::run`] from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Runs until shut down or, with `until`, until that moment.
    pub fn run(&self, until: Option<DateTime<Utc>>) -> SchedulerReport {
        let mut report = SchedulerReport::default();
        let mut next: Vec<Option<DateTime<Utc>>> = self
            .schedules
            .iter()
            .map(|s| s.next_tick_after(Utc::now()))
            .collect();
        loop {
            let Some(soonest) = next.iter().flatten().min().copied() else {
                return report; // no schedule fires again
            };
            if until.is_some_and(|u| soonest > u) {
                return report;
            }
            // Sleep in short steps so a shutdown request is noticed quickly.
            while Utc::now() < soonest {
                if self.shutdown.is_requested() {
                    return report;
                }
                let left = (soonest - Utc::now()).to_std().unwrap_or_default();
                std::thread::sleep(left.min(Duration::from_millis(100)));
            }
            for (s, tick) in self.schedules.iter().zip(next.iter_mut()) {
                let Some(t) = *tick else { continue };
                if t > soonest {
                    continue;
                }
                match self.queue.enqueue_tick(s, t) {
                    Ok(Some(id)) => {
                        report.enqueued += 1;
                        tracing::debug!(schedule = s.name(), %t, id, "tick enqueued");
                    }
                    Ok(None) => report.taken_elsewhere += 1,
                    Err(e) => {
                        report.failed += 1;
                        tracing::warn!(schedule = s.name(), %t, error = %e, "tick not enqueued");
                    }
                }
                *tick = s.next_tick_after(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job() -> NewJob {
        NewJob::from_json("q", "{}").unwrap()
    }

    #[test]
    fn ticks_are_the_same_instants_in_every_process() {
        let s = Schedule::interval("s", Duration::from_secs(10), job()).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 7).unwrap();
        assert_eq!(
            s.next_tick_after(t),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap())
        );
        let on_tick = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap();
        assert_eq!(
            s.next_tick_after(on_tick),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 20).unwrap())
        );
        let c = Schedule::cron("c", "*/15 * * * *", job()).unwrap();
        assert_eq!(
            c.next_tick_after(t),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 15, 0).unwrap())
        );
    }

    #[test]
    fn bad_schedules_are_typed_errors() {
        assert!(Schedule::cron("c", "every tuesday", job())
            .unwrap_err()
            .is_invalid_input());
        assert!(Schedule::interval("s", Duration::from_millis(10), job())
            .unwrap_err()
            .is_invalid_input());
        assert!(Schedule::interval("", Duration::from_secs(1), job())
            .unwrap_err()
            .is_invalid_input());
    }
}
