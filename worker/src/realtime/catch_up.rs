//! A starting worker (a reload's successor, a new instance) takes in what the running ones know
//! before it serves: their calls and the rooms' recent messages. It says hello on the sync
//! channel; whoever hears it sends a snapshot on the starter's own channel; the first snapshot
//! wins. A starter with nobody to ask, or nobody answering in time, serves with what it has.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::calls::{Calls, Detail};
use super::history::{History, RoomDump};
use crate::bus::Channel;

/// A snapshot's history stays under this much JSON, well inside one bus frame.
const SNAPSHOT_BYTES: usize = 8 << 20;
/// Snapshots queued for this worker (it takes in one).
const SNAPSHOTS_QUEUED: usize = 4;
/// Hellos queued for this worker (a reload starts a few workers at once).
const HELLOS_QUEUED: usize = 16;

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Said {
    /// A worker just started: whoever hears it answers with what it knows.
    Hello { from: String },
    /// The first answer wins; a worker takes in one snapshot in its life. `details`: each call's
    /// caller, age and state, apart from `calls` so that earlier releases still read the snapshot
    /// (and default to none from them).
    Snapshot {
        to: String,
        calls: Vec<(String, BTreeSet<String>)>,
        #[serde(default)]
        details: Vec<Detail>,
        history: Vec<RoomDump>,
    },
}

pub(super) struct CatchUp {
    bus: Option<Channel>,
    /// A snapshot was taken in.
    synced: AtomicBool,
    /// The hello was said a second time (see `follow`).
    asked_again: AtomicBool,
    /// Permits (`Notify` keeps one for a late waiter): the hello is out; a snapshot is in.
    said_hello: Notify,
    caught_up: Notify,
}

impl CatchUp {
    pub(super) fn new(bus: Option<Channel>) -> CatchUp {
        CatchUp {
            bus,
            synced: AtomicBool::new(false),
            asked_again: AtomicBool::new(false),
            said_hello: Notify::new(),
            caught_up: Notify::new(),
        }
    }

    /// Says hello, takes in the first snapshot, and answers the hellos of workers that start
    /// later, until the worker stops. `me` names this worker on the channel.
    pub(super) async fn follow(&self, me: &str, calls: &Calls, history: &History) {
        let Some(bus) = &self.bus else { return };
        if bus.is_solo() {
            return;
        }
        // Snapshots come on a channel of this worker's own: a broadcast would bring every
        // snapshot to every worker, N·(N-1) of up to 8 MiB each when N workers are reloaded.
        let mine = bus.named(&format!("{}:{me}", bus.name()));
        let take = |said: Said| {
            if let Said::Snapshot { to, calls: called, details, history: rooms } = said
                && to == me
                && !self.synced.swap(true, Ordering::SeqCst)
            {
                tracing::info!(calls = called.len(), rooms = rooms.len(), "took in what the other workers know");
                calls.merge(called, details);
                history.merge(rooms);
                self.caught_up.notify_one();
            }
        };
        let listening = Notify::new();
        let snapshots = mine.follow_then(SNAPSHOTS_QUEUED, || listening.notify_one(), take);
        let hellos = async {
            listening.notified().await;
            let hello = || {
                bus.tell(&Said::Hello { from: me.to_owned() });
                self.said_hello.notify_one();
            };
            bus.follow_then(HELLOS_QUEUED, hello, |said: Said| match said {
                Said::Hello { from } if from != me => {
                    let (called, details) = calls.dump();
                    bus.named(&format!("{}:{from}", bus.name())).tell(&Said::Snapshot {
                        to: from,
                        calls: called,
                        details,
                        history: history.dump(SNAPSHOT_BYTES),
                    });
                    // Two workers starting together: the other may have subscribed after our
                    // hello but before we counted it, so ask once more rather than wait in vain.
                    if !self.synced.load(Ordering::SeqCst) && !self.asked_again.swap(true, Ordering::SeqCst) {
                        bus.tell(&Said::Hello { from: me.to_owned() });
                    }
                }
                // From a worker of the previous release, which answered on the shared channel.
                snapshot @ Said::Snapshot { .. } => take(snapshot),
                Said::Hello { .. } => {}
            })
            .await;
        };
        tokio::join!(snapshots, hellos);
    }

    /// Waits, at most `within`, for the snapshot of the other workers' calls and history, so that a
    /// reload's successor is not ready (and gets no guest) before it knows them. Returns at once
    /// when no other worker runs.
    pub(super) async fn wait(&self, within: Duration) {
        let Some(bus) = &self.bus else { return };
        if bus.is_solo() {
            return;
        }
        let begun = Instant::now();
        let waited = tokio::time::timeout(within, async {
            self.said_hello.notified().await;
            // Asked after our own subscription went out on the same connection: it counts us.
            if bus.listeners().await > 1 {
                self.caught_up.notified().await;
            }
        })
        .await;
        match waited {
            Ok(()) => tracing::debug!(elapsed_ms = begun.elapsed().as_millis() as u64, "caught up"),
            Err(_) => tracing::warn!(
                within_ms = within.as_millis() as u64,
                "no other worker sent its calls and history in time: serving with what this worker has"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_stays_what_earlier_releases_read() {
        let hello = serde_json::to_value(Said::Hello { from: "w1".into() }).expect("json");
        assert_eq!(hello, serde_json::json!({ "op": "hello", "from": "w1" }));
        let snapshot: Said = serde_json::from_value(serde_json::json!({
            "op": "snapshot", "to": "w2", "calls": [["c1", ["a", "b"]]], "history": []
        }))
        .expect("a snapshot");
        assert!(matches!(snapshot, Said::Snapshot { to, calls, .. } if to == "w2" && calls.len() == 1));
    }

    #[tokio::test]
    async fn alone_a_worker_waits_for_nobody() {
        let catch_up = CatchUp::new(None);
        tokio::time::timeout(Duration::from_millis(100), catch_up.wait(Duration::from_secs(10)))
            .await
            .expect("returns at once");
    }
}
