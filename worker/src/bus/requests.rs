//! What this worker reads in socketioxide's adapter requests without decoding them whole: the
//! room a broadcast is for (to send it on that room's channel, on a Redis Cluster: see `rooms`), and
//! whether this worker's own adapter sent it.
//!
//! The bus brings a worker's publications back to it (Redis delivers to every subscriber, the
//! publisher too, and a bus of one delivers to itself), and the adapter decodes each request only to
//! drop its own (socketioxide-core's `recv_req` compares the sender's id with its own). A worker
//! alone paid that for every broadcast: an encode, a task wake-up and a decode per room message,
//! for nothing. The driver now drops them before they reach the adapter: the adapter's id is learnt
//! from the one channel only it follows (`{requests}{id}#`, for requests aimed at it), and every
//! request begins with its sender's id.

use serde::Deserialize;
use serde::de::IgnoredAny;

/// The room an adapter request sent on `chan` is for, if it is a broadcast to exactly one room:
/// then it may go on that room's channel instead. Requests that expect an answer from every
/// worker, or go to several rooms or to all, stay on the namespace's channel.
pub(super) fn room_of(request: &[u8]) -> Option<String> {
    /// socketioxide-core's `RequestOut`, as MessagePack writes it (an array in field order):
    /// node id, request id, type, packet, rooms, options, and sometimes an ack timeout.
    #[derive(Deserialize)]
    struct Request(IgnoredAny, IgnoredAny, u8, IgnoredAny, IgnoredAny, Option<Options>, #[serde(default)] IgnoredAny);
    /// `BroadcastOptions`: flags, rooms, except, sid, server id.
    #[derive(Deserialize)]
    struct Options(IgnoredAny, Vec<String>, IgnoredAny, IgnoredAny, Option<IgnoredAny>);
    /// `RequestTypeOut::Broadcast` (no acknowledgement: no answer expected).
    const BROADCAST: u8 = 0;

    let Request(_, _, kind, _, _, options, _) = rmp_serde::from_slice(request).ok()?;
    let Options(_, mut rooms, _, _, server) = options?;
    // A broadcast aimed at one worker (`server_id`) goes to that worker's channel.
    if kind != BROADCAST || rooms.len() != 1 || server.is_some() {
        return None;
    }
    rooms.pop()
}

/// The adapter's own id, as its requests begin with it (MessagePack, after the array's header), if
/// `chan` is the channel only that adapter follows: `requests` (the namespace's request channel)
/// followed by its id and `#`.
pub(super) fn sender_of_channel(requests: &str, chan: &str) -> Option<Vec<u8>> {
    let id = chan.strip_prefix(requests)?.strip_suffix('#')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    rmp_serde::to_vec(id).ok()
}

/// Whether `request` was sent by the adapter whose id encodes to `sender`.
pub(super) fn sent_by(request: &[u8], sender: &[u8]) -> bool {
    // A request is an array of 6 or 7 fields: a one-byte header (fixarray), then the sender's id.
    request.first().is_some_and(|header| header & 0xf0 == 0x90) && request[1..].starts_with(sender)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use socketioxide_core::Uid;
    use socketioxide_core::adapter::BroadcastOptions;
    use socketioxide_core::adapter::remote_packet::{RequestOut, RequestTypeOut};
    use socketioxide_core::packet::Packet;

    use super::*;

    fn encoded(kind: RequestTypeOut<'_>, rooms: &[&'static str]) -> Vec<u8> {
        let mut opts = BroadcastOptions::default();
        opts.rooms = rooms.iter().map(|r| Cow::Borrowed(*r)).collect();
        let request = RequestOut::new(Uid::new(), kind, &opts);
        rmp_serde::to_vec(&request).expect("encode")
    }

    #[test]
    fn a_broadcast_to_one_room_is_read_as_that_rooms_and_nothing_else_is() {
        let packet = Packet::event("/", socketioxide_core::Value::Str("hi".into(), None));
        assert_eq!(room_of(&encoded(RequestTypeOut::Broadcast(&packet), &["lobby"])).as_deref(), Some("lobby"));
        assert_eq!(room_of(&encoded(RequestTypeOut::Broadcast(&packet), &["a", "b"])), None, "a direct message");
        assert_eq!(room_of(&encoded(RequestTypeOut::Broadcast(&packet), &[])), None, "to everyone");
        assert_eq!(room_of(&encoded(RequestTypeOut::BroadcastWithAck(&packet), &["lobby"])), None, "answers expected");
        assert_eq!(room_of(&encoded(RequestTypeOut::AllRooms, &["lobby"])), None, "a member list");
        assert_eq!(room_of(&encoded(RequestTypeOut::FetchSockets, &["lobby"])), None);
        assert_eq!(room_of(b"not msgpack"), None);
    }

    #[test]
    fn a_request_is_told_apart_by_its_senders_id_as_the_adapters_own_channel_names_it() {
        let packet = Packet::event("/", socketioxide_core::Value::Str("hi".into(), None));
        let opts = BroadcastOptions::default();
        let (mine, theirs) = (Uid::new(), Uid::new());
        let own =
            sender_of_channel("app-request#/#", &format!("app-request#/#{mine}#")).expect("the adapter's channel");
        let kind = |i: usize| match i {
            0 => RequestTypeOut::Broadcast(&packet),
            1 => RequestTypeOut::AllRooms,
            _ => RequestTypeOut::FetchSockets,
        };
        for i in 0..3 {
            let sent = |by: Uid| rmp_serde::to_vec(&RequestOut::new(by, kind(i), &opts)).expect("encode");
            assert!(sent_by(&sent(mine), &own), "{:?} sent by this adapter", kind(i));
            assert!(!sent_by(&sent(theirs), &own), "{:?} sent by another", kind(i));
        }
        assert!(!sent_by(b"", &own));
        assert_eq!(sender_of_channel("app-request#/#", "app-request#/#"), None, "the namespace's channel");
        assert_eq!(sender_of_channel("app-request#/#", "app-request#/#{lobby}"), None, "a room's channel");
        assert_eq!(sender_of_channel("app-request#/#", "app-response#/#x#"), None);
    }
}
