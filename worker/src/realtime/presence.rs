//! Presence: who is in a room, told to the room when guests join and leave.
//!
//! Knowing a room's members means asking every worker (one cluster-wide question whose answer
//! grows with the room). Asked once per join or leave, a crowd arriving or leaving at once (a
//! worker's clients reconnecting elsewhere during a reload, 1,000 members of one room) cost one
//! question each: 1,000 questions whose answers hold 1,000 members, from every worker. So changes
//! to one room go in rounds: while a question about the room is out, the changes that come in wait
//! for the next one, which then serves them all (group commit). There is at most one question per
//! room in flight, and no fixed delay: a lone change is asked at once. The rounds of a room run in
//! a task of their own, so a change's caller waits for its round only, however busy the room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chat_shared::sync::Locked;
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use tokio::sync::oneshot;

use super::guests::Guest;
use super::protocol::event;
use super::rules::INTERNAL;
use crate::bus::Adapter;

/// Rooms up to this many members also get the whole member list on every change.
const FULL_LISTS_UP_TO: usize = 100;

/// The rounds of the rooms with changes in flight.
#[derive(Default)]
pub(super) struct Presence {
    rooms: Mutex<HashMap<String, Round>>,
}

/// A room's changes waiting for the next question (the current one, if any, is out).
#[derive(Default)]
struct Round {
    waiting: Vec<Change>,
}

struct Change {
    guest: Guest,
    joined: bool,
    members: oneshot::Sender<Vec<Guest>>,
}

impl Presence {
    /// [`Presence::changed`], answered as `{ok, room, members}`; the caller may have just left,
    /// and gets the list too, though it is no longer in the room.
    pub(super) async fn announce(
        self: &Arc<Self>,
        socket: &SocketRef<Adapter>,
        room: &str,
        guest: &Guest,
        joined: bool,
    ) -> Value {
        let members = self.changed(socket, room, guest, joined).await;
        json!({ "ok": true, "room": room, "members": members })
    }

    /// Tells the room that `guest` joined or left, and returns its members (on every worker) after
    /// the change. `socket` asks the question; it may be one that just disconnected.
    pub(super) async fn changed(
        self: &Arc<Self>,
        socket: &SocketRef<Adapter>,
        room: &str,
        guest: &Guest,
        joined: bool,
    ) -> Vec<Guest> {
        let (tx, rx) = oneshot::channel();
        let change = Change { guest: guest.clone(), joined, members: tx };
        let drives = {
            let mut rooms = self.rooms.locked();
            match rooms.get_mut(room) {
                // A round is out: this change waits for the next one, which that round's driver asks.
                Some(round) => {
                    round.waiting.push(change);
                    false
                }
                None => {
                    rooms.insert(room.to_owned(), Round { waiting: vec![change] });
                    true
                }
            }
        };
        if drives {
            tokio::spawn(self.clone().drive(socket.clone(), room.to_owned()));
        }
        rx.await.unwrap_or_default()
    }

    /// Asks about `room` for every change waiting, again while new ones came in meanwhile.
    async fn drive(self: Arc<Self>, socket: SocketRef<Adapter>, room: String) {
        let (socket, room) = (&socket, room.as_str());
        loop {
            let batch = {
                let mut rooms = self.rooms.locked();
                let Some(round) = rooms.get_mut(room) else { return };
                if round.waiting.is_empty() {
                    rooms.remove(room);
                    return;
                }
                std::mem::take(&mut round.waiting)
            };
            let members = members(socket, room).await;
            tell(socket, room, &batch, &members).await;
            for change in batch {
                let _ = change.members.send(members.clone());
            }
        }
    }
}

/// `room:presence {room, guest, joined, count}` for each change (a few bytes to each member), and
/// the whole list (`room:members`) once, while the room is small. Whole lists to everyone on every
/// change cost O(members²) bytes per join: 60 MB for one join to a room of 1,000.
///
/// Past [`FULL_LISTS_UP_TO`] members, the changes of one round are told together: one
/// `room:presence` whose `guest` and `joined` are the round's last change and whose `changes` lists
/// them all, in order (`[{guest, joined}]`). A crowd filling a room of 1,000 was told to the room
/// one join at a time: 500,000 deliveries, which alone made the fill 2.3 times as long as Node's
/// (which tells nothing).
async fn tell(socket: &SocketRef<Adapter>, room: &str, batch: &[Change], members: &[Guest]) {
    // A guest with another tab still in the room has not left it.
    let told: Vec<&Change> = batch.iter().filter(|c| c.joined || !members.iter().any(|m| m.id == c.guest.id)).collect();
    let small = members.len() <= FULL_LISTS_UP_TO;
    let presences: Vec<Value> = match told.split_last() {
        None => Vec::new(),
        Some((last, _)) if !small && told.len() > 1 => {
            let changes: Vec<Value> = told.iter().map(|c| json!({ "guest": c.guest, "joined": c.joined })).collect();
            vec![json!({
                "room": room, "guest": last.guest, "joined": last.joined, "count": members.len(), "changes": changes
            })]
        }
        Some(_) => told
            .iter()
            .map(|c| json!({ "room": room, "guest": c.guest, "joined": c.joined, "count": members.len() }))
            .collect(),
    };
    for presence in presences {
        if let Err(e) = socket.within(room.to_owned()).emit(event::ROOM_PRESENCE, &presence).await {
            tracing::warn!(room, error = %e, "presence broadcast failed");
        }
    }
    if small {
        let update = json!({ "room": room, "members": members });
        if let Err(e) = socket.within(room.to_owned()).emit(event::ROOM_MEMBERS, &update).await {
            tracing::warn!(room, error = %e, "member list broadcast failed");
        }
    }
}

/// Whether the socket is in `room`, a room of the chat's (not one of its internal rooms).
pub(super) fn is_member(socket: &SocketRef<Adapter>, room: &str) -> bool {
    !room.starts_with(INTERNAL) && socket.rooms().iter().any(|r| r == room)
}

/// Guests in `room` on every worker (a worker that does not answer in time is left out).
async fn members(socket: &SocketRef<Adapter>, room: &str) -> Vec<Guest> {
    let rooms = socket.within(room.to_owned()).rooms().await.unwrap_or_else(|e| {
        tracing::warn!(room, error = %e, "listing members across workers failed");
        Vec::new()
    });
    let who = format!("{INTERNAL}who:");
    let mut guests: Vec<Guest> = rooms
        .iter()
        .filter_map(|r| r.strip_prefix(who.as_str()))
        .filter_map(|rest| rest.split_once(':'))
        .map(|(id, name)| Guest { id: id.to_owned(), name: name.to_owned() })
        .collect();
    guests.sort_by(|a, b| a.id.cmp(&b.id));
    guests.dedup_by(|a, b| a.id == b.id);
    guests
}
