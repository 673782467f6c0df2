//! Recent messages per room, so that a client that joins or comes back with the id of the last
//! message it saw gets what it missed. Bounded by count and age. Every worker of a host keeps its
//! own copy, fed through the bus (see `Chat::record`); Redis Streams across hosts are to come.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct History {
    /// `std::sync::Mutex`: held for a push or a copy, never across an await.
    rooms: Mutex<HashMap<String, VecDeque<Entry>>>,
    max_count: usize,
    max_age: Duration,
}

struct Entry {
    id: String,
    at: Instant,
    message: Value,
}

impl History {
    pub fn new(max_count: usize, max_age: Duration) -> History {
        History { rooms: Mutex::new(HashMap::new()), max_count, max_age }
    }

    pub fn push(&self, room: &str, id: &str, message: Value) {
        let Ok(mut rooms) = self.rooms.lock() else { return };
        let entries = rooms.entry(room.to_owned()).or_default();
        entries.push_back(Entry { id: id.to_owned(), at: Instant::now(), message });
        while entries.len() > self.max_count {
            entries.pop_front();
        }
    }

    /// Messages of `room` after the one with id `since`, oldest first; every retained one when
    /// `since` is unknown here (too old, or never seen) or not given.
    pub fn since(&self, room: &str, since: Option<&str>) -> Vec<Value> {
        let Ok(mut rooms) = self.rooms.lock() else { return Vec::new() };
        let Some(entries) = rooms.get_mut(room) else { return Vec::new() };
        let now = Instant::now();
        while entries.front().is_some_and(|e| now.duration_since(e.at) > self.max_age) {
            entries.pop_front();
        }
        let start = since.and_then(|id| entries.iter().position(|e| e.id == id)).map_or(0, |i| i + 1);
        entries.iter().skip(start).map(|e| e.message.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounded_and_resumes_after_the_last_seen() {
        let history = History::new(3, Duration::from_secs(60));
        for i in 0..5 {
            history.push("lobby", &format!("m{i}"), json!(i));
        }
        assert_eq!(history.since("lobby", None), vec![json!(2), json!(3), json!(4)]);
        assert_eq!(history.since("lobby", Some("m3")), vec![json!(4)]);
        assert_eq!(history.since("lobby", Some("m4")), Vec::<Value>::new());
        assert_eq!(history.since("lobby", Some("m0")), vec![json!(2), json!(3), json!(4)], "unknown: all retained");
        assert!(history.since("other", None).is_empty());
        let old = History::new(10, Duration::ZERO);
        old.push("r", "a", json!(1));
        std::thread::sleep(Duration::from_millis(2));
        assert!(old.since("r", None).is_empty(), "too old");
    }
}
