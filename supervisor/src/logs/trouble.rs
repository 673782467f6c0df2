//! What to say, and when, about a log file that cannot be written or rotated. A full disk used to
//! put one ERROR line in `daemon.log` per dropped chunk (50 to 130 a second, into a file on the
//! same full disk); now each kind of failure of each file is said once when it starts, then at
//! most once per [`REPORT_EVERY`] with what it cost since, and once when it ends. Pure (the clock
//! is a parameter), so the rule is tested without waiting.

use std::time::{Duration, Instant};

/// At most one line per file and kind of failure in `daemon.log` per this long.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One kind of failure of one file (writing it, or rotating it).
#[derive(Debug, Default)]
pub(crate) struct Trouble {
    failing: Option<Failing>,
}

#[derive(Debug)]
struct Failing {
    /// Local time the failure began, for operators.
    since: String,
    error: String,
    /// Lines dropped since it began.
    dropped: u64,
    /// Failures and lines dropped since the last report.
    failures_unreported: u64,
    dropped_unreported: u64,
    last_report: Instant,
}

/// What the caller logs now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// It just began.
    Began,
    /// Still failing: `failures` more times and `dropped` lines since the last report.
    Still { failures: u64, dropped: u64 },
    /// It ended after `dropped` lines in all.
    Ended { dropped: u64 },
}

impl Trouble {
    /// A failure with `error` that cost `dropped` lines; what to log, if anything.
    pub(crate) fn failed(&mut self, error: &std::io::Error, dropped: u64, now: Instant) -> Option<Report> {
        let Some(failing) = self.failing.as_mut() else {
            self.failing = Some(Failing {
                since: chrono::Local::now().format("%H:%M:%S").to_string(),
                error: error.to_string(),
                dropped,
                failures_unreported: 0,
                dropped_unreported: 0,
                last_report: now,
            });
            return Some(Report::Began);
        };
        failing.error = error.to_string();
        failing.dropped += dropped;
        failing.failures_unreported += 1;
        failing.dropped_unreported += dropped;
        if now.saturating_duration_since(failing.last_report) < REPORT_EVERY {
            return None;
        }
        let report = Report::Still { failures: failing.failures_unreported, dropped: failing.dropped_unreported };
        failing.failures_unreported = 0;
        failing.dropped_unreported = 0;
        failing.last_report = now;
        Some(report)
    }

    /// It worked: the end of a failure, if one was under way.
    pub(crate) fn succeeded(&mut self) -> Option<Report> {
        self.failing.take().map(|f| Report::Ended { dropped: f.dropped })
    }

    /// `(error, lines dropped, since)` while failing.
    pub(crate) fn current(&self) -> Option<(&str, u64, &str)> {
        self.failing.as_ref().map(|f| (f.error.as_str(), f.dropped, f.since.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn said_once_then_every_ten_seconds_with_the_cost_then_once_at_the_end() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let full = std::io::Error::from_raw_os_error(28);
        let mut trouble = Trouble::default();
        assert_eq!(trouble.succeeded(), None, "nothing to end");
        // (time in ms, lines dropped by this failure, expected report)
        let rows = [
            (0, 5, Some(Report::Began)),
            (10, 3, None),
            (9_000, 2, None),
            (10_000, 1, Some(Report::Still { failures: 3, dropped: 6 })),
            (15_000, 4, None),
            (20_000, 0, Some(Report::Still { failures: 2, dropped: 4 })),
        ];
        for (ms, dropped, expected) in rows {
            assert_eq!(trouble.failed(&full, dropped, at(ms)), expected, "at {ms} ms");
        }
        let (error, dropped, _) = trouble.current().expect("failing");
        assert!(error.contains("No space left"), "{error}");
        assert_eq!(dropped, 15);
        assert_eq!(trouble.succeeded(), Some(Report::Ended { dropped: 15 }));
        assert!(trouble.current().is_none());
        assert_eq!(trouble.failed(&full, 1, at(20_001)), Some(Report::Began), "a new failure is said at once");
    }
}
