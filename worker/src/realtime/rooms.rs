//! Rooms: joining and leaving (`room:join`, `room:leave`), who is in them (told through
//! `presence`), and typing. A guest leaves every room when its socket goes.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::ParserError;
use socketioxide::extract::SocketRef;

use super::guests::{Guest, guest_of};
use super::messages::Messages;
use super::presence::{Presence, is_member};
use super::protocol::{self, ChatError, Dispatch, Reply, event};
use super::rules::{INTERNAL, MAX_ROOM_CHARS, MAX_ROOMS, valid_room};
use super::sessions::Identity;
use super::throttle::{Spend, Throttle};
use crate::bus::{Adapter, Hearing};

#[derive(Debug, Deserialize)]
struct RoomChange {
    room: String,
    /// `room:join`: recover what came after this message.
    since: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Typing {
    room: String,
    typing: bool,
}

/// What joining, leaving and typing use: what a socket may spend, who is in a room, what was said
/// there (a join gets what it missed), and the session a change of rooms renews.
pub(super) struct RoomEvents {
    pub(super) throttle: Arc<Throttle>,
    pub(super) presence: Arc<Presence>,
    pub(super) messages: Arc<Messages>,
    pub(super) identity: Arc<Identity>,
    pub(super) hearing: Hearing,
}

impl RoomEvents {
    pub(super) fn register(self: &Arc<Self>, table: &mut Dispatch) {
        table.on(self, event::ROOM_JOIN, |socket, ev, data| change(socket, ev, data, true));
        table.on(self, event::ROOM_LEAVE, |socket, ev, data| change(socket, ev, data, false));
        table.on(self, event::TYPING, typing);
    }
}

/// `room:join {room, since?}` / `room:leave {room}` → `{ok, room, members}`, a join also `missed`
/// and `more`; the room is told.
async fn change(
    socket: SocketRef<Adapter>,
    ev: Arc<RoomEvents>,
    data: Result<RoomChange, ParserError>,
    join: bool,
) -> Reply {
    ev.throttle.spend(&socket, Spend::Join)?;
    let guest = guest_of(&socket)?;
    let RoomChange { room, since } = protocol::payload(data, "{room}")?;
    let room = room.trim().to_owned();
    if !valid_room(&room) {
        return Err(ChatError::BadRoom { max: MAX_ROOM_CHARS });
    }
    if join {
        let mine = socket.rooms().iter().filter(|r| !r.starts_with(INTERNAL) && **r != room).count();
        if mine >= MAX_ROOMS {
            return Err(ChatError::TooManyRooms { max: MAX_ROOMS });
        }
        ev.hearing.join(&socket, std::slice::from_ref(&room)).await;
    } else {
        socket.leave(room.clone());
    }
    ev.identity.send_session(&socket);
    let mut reply = ev.presence.announce(&socket, &room, &guest, join).await;
    if join {
        let page = ev.messages.page(&room, since.as_deref(), None).await;
        reply["missed"] = Value::from(page.messages);
        reply["more"] = Value::from(page.more);
    }
    Ok(reply)
}

/// `typing {room, typing}`: the other members get `typing {room, guest, typing}`.
async fn typing(socket: SocketRef<Adapter>, ev: Arc<RoomEvents>, data: Result<Typing, ParserError>) -> Reply {
    ev.throttle.spend(&socket, Spend::Message)?;
    let guest = guest_of(&socket)?;
    let Typing { room, typing } = protocol::payload(data, "{room, typing}")?;
    if !is_member(&socket, &room) {
        return Err(ChatError::NotInRoom { room });
    }
    let _ =
        socket.to(room.clone()).emit(event::TYPING, &json!({ "room": room, "guest": guest, "typing": typing })).await;
    Ok(json!({ "ok": true }))
}

/// The chat rooms `socket` is in (not its internal ones), for [`leave_all`].
///
/// Read as soon as a socket is gone, before anything is awaited: socket.io removes a socket from
/// every room without waiting for its disconnect handler when the socket is closed a second time
/// (its transport closing right after the client's DISCONNECT), and a handler that read them after
/// an await found none, and told no one that the guest left.
pub(super) fn joined(socket: &SocketRef<Adapter>) -> Vec<String> {
    socket.rooms().into_iter().filter(|r| !r.starts_with(INTERNAL)).map(|r| r.to_string()).collect()
}

/// A socket going away leaves all its rooms; they are told once it no longer counts.
pub(super) async fn leave_all(
    socket: &SocketRef<Adapter>,
    presence: &Arc<Presence>,
    guest: Option<&Guest>,
    rooms: Vec<String>,
) {
    // Leave first, so that the member lists (asked of every worker) no longer count us.
    socket.leave_all();
    if let Some(guest) = guest {
        for room in rooms {
            presence.changed(socket, &room, guest, false).await;
        }
    }
}
