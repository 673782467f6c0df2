//! Recent messages per room, so that a client that joins or comes back with the id of the last
//! message it saw gets what it missed. Bounded by count and age. Every worker of a host keeps its
//! own copy, fed through the bus (see `Chat::record`). With Redis, recovery reads the room's stream
//! there first (`store`); this copy serves while Redis is down.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chat_shared::sync::Locked;
use serde_json::Value;

pub struct History {
    /// `std::sync::Mutex`: held for a push or a copy, never across an await.
    rooms: Mutex<Rooms>,
    max_count: usize,
    max_age: Duration,
    /// Rooms kept at most, and JSON bytes over all of them: a room is a name anyone may make up,
    /// so without these bounds a client writing one message into each of a million rooms would
    /// keep them all for the history's age (and the whole copy is what a new worker is sent).
    max_rooms: usize,
    max_bytes: usize,
}

/// Rooms kept by default (`HISTORY_ROOMS`).
pub const MAX_ROOMS: usize = 10_000;
/// JSON bytes kept by default over every room (`HISTORY_BYTES`).
pub const MAX_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Rooms {
    map: HashMap<String, VecDeque<Entry>>,
    /// The sum of every entry's `size`.
    bytes: usize,
}

struct Entry {
    id: String,
    at: Instant,
    message: Value,
    /// The message's JSON length, counted against the history's byte bound.
    size: usize,
}

impl Rooms {
    fn pop_front(&mut self, room: &str) {
        if let Some(entry) = self.map.get_mut(room).and_then(VecDeque::pop_front) {
            self.bytes -= entry.size;
        }
    }

    /// Forgets the least recently active rooms (never `keep`) until both bounds have a tenth to
    /// spare, so that a full history pays for a sort once per tenth of its rooms, not per push.
    fn evict(&mut self, keep: &str, max_rooms: usize, max_bytes: usize) {
        let (room_goal, byte_goal) = (max_rooms - max_rooms / 10, max_bytes - max_bytes / 10);
        let mut by_activity: Vec<(Option<Instant>, String)> = self
            .map
            .iter()
            .filter(|(name, _)| *name != keep)
            .map(|(name, e)| (e.back().map(|e| e.at), name.clone()))
            .collect();
        by_activity.sort_unstable();
        for (_, room) in by_activity {
            if self.map.len() <= room_goal && self.bytes <= byte_goal {
                break;
            }
            if let Some(entries) = self.map.remove(&room) {
                self.bytes -= entries.iter().map(|e| e.size).sum::<usize>();
            }
        }
    }
}

impl History {
    pub fn new(max_count: usize, max_age: Duration) -> History {
        History::bounded(max_count, max_age, MAX_ROOMS, MAX_BYTES)
    }

    pub fn bounded(max_count: usize, max_age: Duration, max_rooms: usize, max_bytes: usize) -> History {
        History {
            rooms: Mutex::default(),
            max_count,
            max_age,
            max_rooms: max_rooms.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    pub fn push(&self, room: &str, id: &str, message: Value) {
        let mut rooms = self.rooms.locked();
        let size = message.to_string().len();
        rooms.bytes += size;
        let entries = rooms.map.entry(room.to_owned()).or_default();
        entries.push_back(Entry { id: id.to_owned(), at: Instant::now(), message, size });
        let excess = entries.len().saturating_sub(self.max_count);
        for _ in 0..excess {
            rooms.pop_front(room);
        }
        if rooms.map.len() > self.max_rooms || rooms.bytes > self.max_bytes {
            rooms.evict(room, self.max_rooms, self.max_bytes);
        }
    }

    /// Messages of `room` after the one with id `since`, oldest first; every retained one when
    /// `since` is unknown here (too old, or never seen) or not given.
    pub fn since(&self, room: &str, since: Option<&str>) -> Vec<Value> {
        let mut rooms = self.rooms.locked();
        let now = Instant::now();
        while rooms.map.get(room).and_then(|e| e.front()).is_some_and(|e| now.duration_since(e.at) > self.max_age) {
            rooms.pop_front(room);
        }
        let Some(entries) = rooms.map.get(room) else { return Vec::new() };
        let start = since.and_then(|id| entries.iter().position(|e| e.id == id)).map_or(0, |i| i + 1);
        entries.iter().skip(start).map(|e| e.message.clone()).collect()
    }
}

/// Messages one answer carries at most (a join's `missed`, a `history` event, a `room:history`
/// page): a client asks for the next page when it wants it. Whole pages of the history (200
/// messages of 4,000 characters) in every join's acknowledgement let a client that never reads
/// queue megabytes in the worker with a few bytes sent (30 joins: 37 MB).
pub(super) const PAGE_COUNT: usize = 50;
/// ... and JSON bytes at most (one message always fits, whatever its size).
pub(super) const PAGE_BYTES: usize = 16 << 10;

/// One page of a room's history, oldest first.
#[derive(Debug, PartialEq)]
pub(super) struct Page {
    pub(super) messages: Vec<Value>,
    /// More messages lie beyond the page: after its last one when it was cut from the oldest, before
    /// its first when cut from the newest.
    pub(super) more: bool,
}

/// Which end of a run of messages a page keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Recovery (`since`): the earliest, so the client can ask again from the page's last message.
    Oldest,
    /// A plain join (`before`, or nothing): the latest, so the newest messages show first.
    Newest,
}

/// Cuts `messages` (oldest first) to one page of at most [`PAGE_COUNT`] messages and [`PAGE_BYTES`].
pub(super) fn page(mut messages: Vec<Value>, end: End) -> Page {
    let total = messages.len();
    if end == End::Newest {
        messages.reverse();
    }
    let mut bytes = 0;
    let mut keep = 0;
    for message in messages.iter().take(PAGE_COUNT) {
        bytes += message.to_string().len();
        if keep > 0 && bytes > PAGE_BYTES {
            break;
        }
        keep += 1;
    }
    messages.truncate(keep);
    if end == End::Newest {
        messages.reverse();
    }
    Page { more: keep < total, messages }
}

/// A room's retained messages as one worker tells them to a worker that starts later.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RoomDump {
    pub room: String,
    /// `(id, age in ms, message)`, oldest first.
    pub entries: Vec<(String, u64, Value)>,
}

impl History {
    /// Every room's retained messages, up to about `max_bytes` of JSON (whole rooms, most recently
    /// active first), so that a snapshot always fits in one bus frame.
    pub fn dump(&self, max_bytes: usize) -> Vec<RoomDump> {
        let rooms = self.rooms.locked();
        let now = Instant::now();
        let mut by_activity: Vec<(&String, &VecDeque<Entry>)> = rooms.map.iter().collect();
        by_activity.sort_by_key(|(_, entries)| std::cmp::Reverse(entries.back().map(|e| e.at)));
        let mut dump = Vec::new();
        let mut bytes = 0;
        for (room, entries) in by_activity {
            let entries: Vec<(String, u64, Value)> = entries
                .iter()
                .filter(|e| now.duration_since(e.at) <= self.max_age)
                .map(|e| (e.id.clone(), now.duration_since(e.at).as_millis() as u64, e.message.clone()))
                .collect();
            let size = room.len() + entries.iter().map(|(id, _, m)| id.len() + 24 + m.to_string().len()).sum::<usize>();
            if bytes + size > max_bytes {
                continue;
            }
            bytes += size;
            dump.push(RoomDump { room: room.clone(), entries });
        }
        dump
    }

    /// Takes in another worker's dump: its messages come first, then those this worker already
    /// kept that the dump does not have.
    pub fn merge(&self, dump: Vec<RoomDump>) {
        let mut rooms = self.rooms.locked();
        let now = Instant::now();
        for RoomDump { room, entries } in dump {
            let mine = rooms.map.remove(&room).unwrap_or_default();
            rooms.bytes -= mine.iter().map(|e| e.size).sum::<usize>();
            let mut merged: VecDeque<Entry> = entries
                .into_iter()
                .map(|(id, age, message)| Entry {
                    id,
                    at: now.checked_sub(Duration::from_millis(age)).unwrap_or(now),
                    size: message.to_string().len(),
                    message,
                })
                .collect();
            for entry in mine {
                if !merged.iter().any(|e| e.id == entry.id) {
                    merged.push_back(entry);
                }
            }
            while merged.len() > self.max_count {
                merged.pop_front();
            }
            rooms.bytes += merged.iter().map(|e| e.size).sum::<usize>();
            rooms.map.insert(room.clone(), merged);
            if rooms.map.len() > self.max_rooms || rooms.bytes > self.max_bytes {
                rooms.evict(&room, self.max_rooms, self.max_bytes);
            }
        }
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

    #[test]
    fn rooms_and_bytes_are_bounded_the_least_recently_active_go_first() {
        let history = History::bounded(10, Duration::from_secs(60), 10, 1 << 20);
        for i in 0..25 {
            history.push(&format!("room-{i}"), "m", json!(i));
        }
        let kept = |h: &History| h.rooms.lock().expect("unpoisoned").map.len();
        assert!(kept(&history) <= 10, "at most 10 rooms: {}", kept(&history));
        assert_eq!(history.since("room-24", None), vec![json!(24)], "the newest stays");
        assert!(history.since("room-0", None).is_empty(), "the oldest went first");
        let by_bytes = History::bounded(200, Duration::from_secs(60), 100, 10_000);
        for i in 0..20 {
            by_bytes.push(&format!("r{i}"), &format!("m{i}"), json!("x".repeat(1000)));
        }
        let rooms = by_bytes.rooms.lock().expect("unpoisoned");
        assert!(rooms.bytes <= 10_000, "{} bytes kept", rooms.bytes);
        assert_eq!(rooms.bytes, rooms.map.values().flatten().map(|e| e.size).sum::<usize>(), "the count is exact");
    }

    #[test]
    fn a_page_keeps_one_end_within_its_count_and_bytes() {
        let all: Vec<Value> = (0..120).map(|i| json!(i)).collect();
        let first = page(all.clone(), End::Oldest);
        assert_eq!((first.messages.len(), first.more), (PAGE_COUNT, true));
        assert_eq!(first.messages[0], json!(0));
        let last = page(all.clone(), End::Newest);
        assert_eq!(last.messages.first(), Some(&json!(70)));
        assert_eq!(last.messages.last(), Some(&json!(119)), "the newest, oldest first");
        assert_eq!(page(all[..3].to_vec(), End::Newest), Page { messages: all[..3].to_vec(), more: false });
        let long: Vec<Value> = (0..10).map(|i| json!({ "id": i, "text": "x".repeat(4000) })).collect();
        let cut = page(long.clone(), End::Oldest);
        assert_eq!((cut.messages.len(), cut.more), (4, true), "16 KiB hold four messages of 4,000 characters");
        let huge = vec![json!("y".repeat(PAGE_BYTES * 2))];
        assert_eq!(page(huge.clone(), End::Oldest), Page { messages: huge, more: false }, "one always fits");
    }

    #[test]
    fn a_later_worker_takes_in_a_dump_before_what_it_saw_itself() {
        let (early, late) = (History::new(3, Duration::from_secs(60)), History::new(3, Duration::from_secs(60)));
        for i in 0..3 {
            early.push("lobby", &format!("m{i}"), json!(i));
        }
        late.push("lobby", "m2", json!(2));
        late.push("lobby", "m3", json!(3));
        late.merge(early.dump(1 << 20));
        assert_eq!(late.since("lobby", Some("m1")), vec![json!(2), json!(3)], "bounded, no duplicate");
        assert_eq!(late.since("lobby", None), vec![json!(1), json!(2), json!(3)]);
        assert!(early.dump(3).is_empty(), "a room over the byte budget is left out");
    }
}
