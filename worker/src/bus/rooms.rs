//! Rooms with channels of their own, on a Redis Cluster.
//!
//! socketioxide-redis publishes every broadcast of a namespace on one channel, and this app every
//! room message on one more: on a cluster, classic pub/sub is forwarded to every node, so each node
//! would carry every room, and adding shards would add no capacity. There, a room's traffic goes
//! instead on channels of its own, through sharded pub/sub (`SPUBLISH`): one per *family* (the
//! adapter's broadcasts, the room messages), named `{family}{room}` with the room as the hash
//! tag, so that a room's channels live on one shard and rooms spread over the shards. A worker
//! subscribes to a room's channels (`SSUBSCRIBE`) before its first socket joins the room, and drops
//! them once no socket of its own is in it (a sweep, [`SWEEP_EVERY`]): a worker hears only the
//! rooms its clients are in.
//!
//! What still goes on the namespace's channel: broadcasts to several rooms at once (a direct
//! message: the two guests' rooms), to everyone, and the adapter's requests that expect answers
//! from every worker (member lists, `fetch_sockets`): a receiver must answer them whether or not it
//! has a member.
//!
//! Elsewhere (a single Redis, the local bus, a bus of one) nothing changes: rooms share their
//! namespace's channel, and nothing is noted per room. Every guest has a room of its own, so a note
//! per room is a note per connection: when a single Redis kept them too, an idle guest cost 8.2 KiB
//! through it instead of 7.4-7.7. On a cluster a note is the room's name only (its channels are
//! derived from it). Until the first connection says which kind of Redis it is, rooms are noted as
//! for a cluster. When a link that was to a single Redis comes back to a cluster (the single server
//! gone, a cluster node next in `REDIS_URL`), a sweep follows the rooms its sockets are in at once.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use chat_shared::sync::Locked;
use socketioxide::extract::SocketRef;

use super::{Adapter, BusDriver};

/// How often rooms no socket of this worker is in any more are dropped.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// This worker's link to the others, which must hear a room before a socket of its own joins it:
/// on a Redis Cluster each room has channels of its own, subscribed to on the first join (see
/// this module). Without a link (a worker of its own), joining is just joining.
#[derive(Clone, Default)]
pub struct Hearing(pub Option<BusDriver>);

impl Hearing {
    /// Puts `socket` in `rooms`, once this worker hears them.
    pub async fn join(&self, socket: &SocketRef<Adapter>, rooms: &[String]) {
        let _gate = match &self.0 {
            Some(bus) => Some(bus.follow(rooms).await),
            None => None,
        };
        for room in rooms {
            socket.join(room.clone());
        }
    }
}

/// What follows a family's name in a room's channel: `{room}`.
fn is_room_suffix(rest: &str) -> bool {
    rest.len() >= 2 && rest.starts_with('{') && rest.ends_with('}')
}

/// The channel of `room` in `family` (the hash tag: the room's channels share a shard).
pub(super) fn channel(family: &str, room: &str) -> String {
    format!("{family}{{{room}}}")
}

/// What this worker follows.
#[derive(Default)]
pub(super) struct Rooms {
    /// The channels whose rooms have channels of their own: the adapter's broadcasts (set first:
    /// its requests are read to find their room) and the room messages.
    pub(super) families: Mutex<Vec<String>>,
    /// The rooms whose channels this worker is subscribed to (on a cluster), or will be once its
    /// link says it is one. A room's channels are not kept apart: they are `families` × these.
    pub(super) followed: Mutex<HashSet<String>>,
    /// Held while a socket joins a room (from before the subscription until the join) and while
    /// the sweep runs, so that the sweep never drops a room a socket is joining.
    pub(super) gate: tokio::sync::Mutex<()>,
    /// Told when the link turns out to be a cluster after it was not: sweep now, rather than within
    /// [`SWEEP_EVERY`], to follow the rooms this worker's sockets are in.
    pub(super) resync: tokio::sync::Notify,
}

impl Rooms {
    /// The channels of `rooms`, in every family.
    pub(super) fn channels<'a>(&self, rooms: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let families = self.families.locked();
        rooms.into_iter().flat_map(|room| families.iter().map(move |family| channel(family, room))).collect()
    }

    /// Whether `chan` carries the adapter's requests: its namespace's channel, or a room's of it.
    pub(super) fn carries_requests(&self, chan: &str) -> bool {
        let families = self.families.locked();
        families.first().is_some_and(|requests| {
            chan.strip_prefix(requests.as_str()).is_some_and(|rest| rest.is_empty() || is_room_suffix(rest))
        })
    }

    /// The family of a room's channel (`{family}{room}`), if `chan` is one.
    pub(super) fn family_of(&self, chan: &str) -> Option<String> {
        let families = self.families.locked();
        families.iter().find(|family| chan.strip_prefix(family.as_str()).is_some_and(is_room_suffix)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_channel_is_read_back_as_its_family_and_nothing_else_is() {
        let rooms = Rooms::default();
        *rooms.families.locked() = vec!["app-request#/#".to_owned(), "app-history".to_owned()];
        let lobby = String::from("lobby");
        let braces = String::from("a{b}");
        let channels = rooms.channels([&lobby, &braces]);
        assert_eq!(
            channels,
            ["app-request#/#{lobby}", "app-history{lobby}", "app-request#/#{a{b}}", "app-history{a{b}}"]
        );
        assert_eq!(rooms.family_of(&channels[1]).as_deref(), Some("app-history"));
        assert_eq!(rooms.family_of(&channels[2]).as_deref(), Some("app-request#/#"), "braces in a room's name");
        assert_eq!(rooms.family_of("app-request#/#"), None, "the family's own channel");
        assert_eq!(rooms.family_of("app-response#/#{x}"), None, "another channel");
        assert_eq!(rooms.family_of("app-history{lobby"), None);
    }

    #[test]
    fn a_rooms_channels_share_its_hash_tag() {
        assert_eq!(channel("socket.io/chat-request#/#", "lobby"), "socket.io/chat-request#/#{lobby}");
        let slot = |c: &str| redis::cluster_routing::Slot::for_key(c);
        assert_eq!(slot(&channel("a-request#/#", "lobby")), slot(&channel("a-messages", "lobby")));
    }
}
