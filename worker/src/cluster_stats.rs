//! Live figures summed over the cluster. Every worker publishes its own (users, rooms, messages
//! per second) on the bus each interval and keeps the latest report of every worker it hears;
//! the cluster figures are the sum of the reports that are fresh. Nobody asks anybody: a slow or
//! dead worker only stops contributing (its report ages out after [`STALE_AFTER`] intervals), it
//! never delays the answer. Rooms are reported by name so a room spanning workers counts once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chat_shared::sync::Locked;
use serde::{Deserialize, Serialize};

use crate::bus::Channel;

/// A report older than this many intervals is left out of the sum.
const STALE_AFTER: u32 = 3;
/// At most this many room names per report; beyond, rooms are undercounted rather than the bus
/// carrying megabytes every few seconds.
const MAX_ROOM_NAMES: usize = 10_000;

/// One worker's figures, as published.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Unique per process (the instance number is not: two hosts both have an instance 0).
    pub worker: String,
    pub users: usize,
    pub rooms: Vec<String>,
    pub messages_per_second: f64,
}

/// The figures of every worker heard from.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Figures {
    pub workers: usize,
    pub users: usize,
    pub rooms: usize,
    pub messages_per_second: f64,
}

pub struct ClusterStats {
    channel: Option<Channel>,
    interval: Duration,
    reports: Mutex<HashMap<String, (Report, Instant)>>,
}

impl ClusterStats {
    /// Without a channel, only this worker's own reports count.
    pub fn new(channel: Option<Channel>, interval: Duration) -> ClusterStats {
        ClusterStats { channel, interval, reports: Mutex::new(HashMap::new()) }
    }

    /// Listens for the workers' reports (this one's included) until the worker stops.
    pub async fn listen(self: std::sync::Arc<Self>) {
        if let Some(channel) = &self.channel {
            channel.follow(64, |report: Report| self.heard(report)).await;
        }
    }

    /// Publishes this worker's report; the bus brings it back to this worker too.
    pub fn publish(&self, mut report: Report) {
        report.rooms.truncate(MAX_ROOM_NAMES);
        match &self.channel {
            Some(channel) => channel.tell(&report),
            None => self.heard(report),
        }
    }

    fn heard(&self, report: Report) {
        self.reports.locked().insert(report.worker.clone(), (report, Instant::now()));
    }

    /// The sum over fresh reports; stale ones are forgotten.
    pub fn figures(&self) -> Figures {
        let mut reports = self.reports.locked();
        let horizon = self.interval * STALE_AFTER;
        reports.retain(|_, (_, at)| at.elapsed() <= horizon);
        let mut rooms = BTreeSet::new();
        let mut figures = Figures::default();
        for (report, _) in reports.values() {
            figures.workers += 1;
            figures.users += report.users;
            figures.messages_per_second += report.messages_per_second;
            rooms.extend(report.rooms.iter().map(String::as_str));
        }
        figures.rooms = rooms.len();
        figures.messages_per_second = (figures.messages_per_second * 10.0).round() / 10.0;
        figures
    }
}

/// Every `every`, publishes this worker's figures to the others and tells every local client
/// (volatile: a slow client just misses one) the cluster's connected users, rooms and messages per
/// second, with this worker's own under `local`.
pub async fn broadcast(
    io: socketioxide::SocketIo<crate::bus::Adapter>,
    cluster: std::sync::Arc<ClusterStats>,
    delivered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    instance: Option<String>,
    every: Duration,
) {
    // Unique across hosts too (pids are not): the pid and when this worker started.
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let worker = format!("{}-{}", std::process::id(), since_epoch.as_nanos());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = (delivered.load(std::sync::atomic::Ordering::Relaxed), Instant::now());
    loop {
        ticks.tick().await;
        let (messages, now) = (delivered.load(std::sync::atomic::Ordering::Relaxed), Instant::now());
        let rate = messages.saturating_sub(last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(0.001);
        last = (messages, now);
        let rooms: Vec<String> = io.local().rooms().await.map_or_else(
            |_| Vec::new(),
            |rooms| rooms.into_iter().filter(|r| !r.starts_with('@')).map(|r| r.to_string()).collect(),
        );
        let report = Report {
            worker: worker.clone(),
            users: io.sockets().len(),
            rooms,
            messages_per_second: (rate * 10.0).round() / 10.0,
        };
        let local = serde_json::json!({
            "users": report.users,
            "rooms": report.rooms.len(),
            "messages_per_second": report.messages_per_second,
        });
        cluster.publish(report);
        let cluster = cluster.figures();
        let stats = serde_json::json!({
            "scope": "cluster",
            "instance": instance,
            "workers": cluster.workers,
            "users": cluster.users,
            "rooms": cluster.rooms,
            "messages_per_second": cluster.messages_per_second,
            "local": local,
        });
        let _ = io.local().volatile().emit("stats", &stats).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(worker: &str, users: usize, rooms: &[&str], rate: f64) -> Report {
        Report {
            worker: worker.to_owned(),
            users,
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            messages_per_second: rate,
        }
    }

    #[test]
    fn sums_workers_and_counts_a_shared_room_once() {
        let stats = ClusterStats::new(None, Duration::from_secs(5));
        stats.heard(report("a", 3, &["lobby", "dev"], 1.5));
        stats.heard(report("b", 2, &["lobby"], 0.5));
        stats.heard(report("a", 4, &["lobby", "dev"], 1.0));
        assert_eq!(stats.figures(), Figures { workers: 2, users: 6, rooms: 2, messages_per_second: 1.5 });
    }

    #[test]
    fn a_silent_worker_ages_out() {
        let stats = ClusterStats::new(None, Duration::from_millis(10));
        stats.heard(report("a", 3, &[], 0.0));
        std::thread::sleep(Duration::from_millis(40));
        stats.heard(report("b", 1, &[], 0.0));
        assert_eq!(stats.figures().workers, 1);
    }
}
