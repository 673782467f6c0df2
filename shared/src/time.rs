//! Moments as both programs show and store them: RFC 3339 text in local time, to the precision its
//! maker chose (seconds for a save, milliseconds for events, probes and log lines). The text is
//! what travels and what earlier releases wrote, so it is kept as made; but a [`Timestamp`] is made
//! only from a real time, and read back as one on demand.

use std::fmt;

use chrono::{DateTime, FixedOffset, Local, SecondsFormat};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(String);

/// Milliseconds since the Unix epoch: the chat's message times, expiries kept in Redis, file
/// deadlines (numbers that travel between hosts, unlike [`std::time::Instant`]). 0 for a clock set
/// before 1970.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Timestamp {
    /// Now, to the second.
    pub fn now_secs() -> Timestamp {
        Timestamp::at(Local::now(), SecondsFormat::Secs)
    }

    /// Now, to the millisecond.
    pub fn now_millis() -> Timestamp {
        Timestamp::at(Local::now(), SecondsFormat::Millis)
    }

    /// `time`, to the millisecond.
    pub fn millis(time: DateTime<Local>) -> Timestamp {
        Timestamp::at(time, SecondsFormat::Millis)
    }

    fn at(time: DateTime<Local>, precision: SecondsFormat) -> Timestamp {
        Timestamp(time.to_rfc3339_opts(precision, false))
    }

    /// The moment; `None` for text that is not RFC 3339 (a file edited by hand).
    pub fn time(&self) -> Option<DateTime<FixedOffset>> {
        DateTime::parse_from_rfc3339(&self.0).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_from_a_time_read_back_as_one_and_the_same_text_on_the_wire() {
        let now = Local::now();
        let stamp = Timestamp::millis(now);
        assert_eq!(stamp.time().map(|t| t.timestamp_millis()), Some(now.timestamp_millis()));
        let json = serde_json::to_string(&stamp).expect("json");
        assert_eq!(json, format!("\"{stamp}\""), "plain RFC 3339 text, as earlier releases wrote");
        let back: Timestamp = serde_json::from_str(&json).expect("back");
        assert_eq!(back, stamp);
        assert!(Timestamp::now_secs().time().is_some());
        let edited: Timestamp = serde_json::from_str("\"yesterday\"").expect("any text reads");
        assert_eq!(edited.time(), None);
    }
}
