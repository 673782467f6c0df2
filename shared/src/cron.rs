//! `cron_restart`: when an app is reloaded on a schedule.
//!
//! Expressions are parsed by `croner`, the Rust port (same author) of the JavaScript library PM2
//! itself uses for `cron_restart`, so an expression means in `ecosystem.toml` what it meant in an
//! `ecosystem.config.js`: five fields (`0 4 * * *`), or six with seconds first (`*/30 * * * * *`),
//! names (`MON`, `JAN`), `L`, `#`, `W` and the `@daily` nicknames, in the local time zone.

use chrono::{DateTime, Local};

/// A parsed `cron_restart` expression.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: croner::Cron,
}

impl CronSchedule {
    /// Parses `expression`; the error says what is wrong in croner's words, with an example.
    pub fn parse(expression: &str) -> Result<CronSchedule, String> {
        let cron = croner::parser::CronParser::new().parse(expression).map_err(|e| {
            format!("invalid cron expression {expression:?}: {e} (e.g. \"0 4 * * *\": every day at 04:00)")
        })?;
        Ok(CronSchedule { cron })
    }

    /// The first time strictly after `after` that the expression matches; `None` when it never
    /// matches again (`0 0 30 2 *`: February 30th).
    pub fn next_after(&self, after: &DateTime<Local>) -> Option<DateTime<Local>> {
        self.cron.find_next_occurrence(after, false).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Local> {
        Local.with_ymd_and_hms(2026, 3, 10, h, m, s).single().expect("UNWRAP: a plain local time in March")
    }

    #[test]
    fn next_fire_times() {
        for (expression, after, next) in [
            ("* * * * *", at(10, 0, 0), at(10, 1, 0)),
            ("* * * * *", at(10, 0, 59), at(10, 1, 0)),
            ("0 4 * * *", at(10, 0, 0), at(4, 0, 0) + chrono::Duration::days(1)),
            ("*/2 * * * * *", at(10, 0, 0), at(10, 0, 2)),
            ("*/2 * * * * *", at(10, 0, 1), at(10, 0, 2)),
            ("30 */15 * * *", at(10, 14, 0), at(15, 30, 0)),
            ("30 */15 * * * *", at(10, 14, 0), at(10, 15, 30)),
            ("@hourly", at(10, 0, 0), at(11, 0, 0)),
        ] {
            let schedule = CronSchedule::parse(expression).expect(expression);
            assert_eq!(schedule.next_after(&after), Some(next), "{expression} after {after}");
        }
    }

    #[test]
    fn bad_expressions_are_refused_with_an_example() {
        for bad in ["", "* * *", "61 * * * *", "* 25 * * *", "every minute", "* * * * * * * *"] {
            let error = CronSchedule::parse(bad).expect_err(bad);
            assert!(error.contains("invalid cron expression") && error.contains("0 4 * * *"), "{bad}: {error}");
        }
    }
}
