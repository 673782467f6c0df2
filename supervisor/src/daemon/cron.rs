//! `cron_restart`: each app with an expression is reloaded when it fires, through the same rolling
//! reload as `chatctl reload` (each successor ready before its predecessor stops), so a scheduled
//! restart costs no downtime. The main loop sleeps until the nearest fire time like any deadline.
//!
//! This module keeps the table of fire times; `state` reloads the apps whose time came.
//!
//! Fire times are computed on the wall clock (an expression names local times) and kept as
//! `Instant`s for the loop: each is recomputed from the wall clock after it fires, so a clock
//! change moves at most one fire time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat_shared::cron::CronSchedule;
use chrono::{DateTime, Local};

use super::msg::AppId;

/// The next fire time of every app that has a `cron_restart`, by app id.
#[derive(Default)]
pub(super) struct Crons {
    entries: HashMap<AppId, Entry>,
}

struct Entry {
    /// The expression the fire time was computed from: a reload may change it.
    expression: String,
    schedule: CronSchedule,
    /// `None`: it never fires again.
    due: Option<Instant>,
}

impl Crons {
    /// Brings the table in line with `apps` (id and expression): new or changed expressions get
    /// their next fire time, apps gone or without one are dropped.
    pub(super) fn sync<'a>(
        &mut self,
        apps: impl Iterator<Item = (AppId, Option<&'a str>)>,
        now: Instant,
        wall: DateTime<Local>,
    ) {
        let mut seen = Vec::new();
        for (id, expression) in apps {
            let Some(expression) = expression else { continue };
            seen.push(id);
            if self.entries.get(&id).is_some_and(|e| e.expression == expression) {
                continue;
            }
            // Specs are validated before the daemon takes them; an expression that still fails to
            // parse only means no schedule, which the log says.
            match CronSchedule::parse(expression) {
                Ok(schedule) => {
                    let due = next_instant(&schedule, now, wall);
                    self.entries.insert(id, Entry { expression: expression.to_owned(), schedule, due });
                }
                Err(why) => {
                    tracing::error!(app_id = %id, why, "cron_restart not scheduled");
                    self.entries.remove(&id);
                }
            }
        }
        self.entries.retain(|id, _| seen.contains(id));
    }

    /// The nearest fire time, for the main loop's sleep.
    pub(super) fn next(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.due).min()
    }

    /// The apps whose time has come, each given its next fire time.
    pub(super) fn take_due(&mut self, now: Instant, wall: DateTime<Local>) -> Vec<AppId> {
        let mut due = Vec::new();
        for (id, entry) in &mut self.entries {
            if entry.due.is_some_and(|d| d <= now) {
                due.push(*id);
                entry.due = next_instant(&entry.schedule, now, wall);
            }
        }
        due.sort_unstable();
        due
    }
}

/// The schedule's next fire time after `wall`, as an `Instant` on the loop's clock.
fn next_instant(schedule: &CronSchedule, now: Instant, wall: DateTime<Local>) -> Option<Instant> {
    let next = schedule.next_after(&wall)?;
    let wait = (next - wall).to_std().unwrap_or(Duration::ZERO);
    now.checked_add(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn fire_times_follow_the_expression_and_the_apps() {
        let wall = Local.with_ymd_and_hms(2026, 3, 10, 10, 0, 0).single().expect("UNWRAP: a plain local time");
        let start = Instant::now();
        let mut crons = Crons::default();
        crons.sync(
            [(AppId(1), Some("*/2 * * * * *")), (AppId(2), None), (AppId(3), Some("0 4 * * *"))].into_iter(),
            start,
            wall,
        );
        assert_eq!(crons.next(), Some(start + Duration::from_secs(2)));
        assert!(crons.take_due(start + Duration::from_secs(1), wall).is_empty(), "not yet");

        // Fired: app 1 is due, and its next time is two seconds after the wall time it fired at.
        let later = start + Duration::from_secs(2);
        let wall_later = wall + chrono::Duration::seconds(2);
        assert_eq!(crons.take_due(later, wall_later), [AppId(1)]);
        assert_eq!(crons.next(), Some(later + Duration::from_secs(2)));
        assert!(crons.take_due(later, wall_later).is_empty(), "fires once per time");

        // A changed expression is rescheduled; an app gone is forgotten.
        crons.sync([(AppId(1), Some("0 11 * * *")), (AppId(3), Some("0 4 * * *"))].into_iter(), later, wall_later);
        assert_eq!(crons.next(), Some(later + Duration::from_secs(3600 - 2)));
        crons.sync([(AppId(3), Some("0 4 * * *"))].into_iter(), later, wall_later);
        assert_eq!(crons.next(), Some(later + Duration::from_secs(18 * 3600 - 2)));
        crons.sync(std::iter::empty(), later, wall_later);
        assert_eq!(crons.next(), None);
    }
}
