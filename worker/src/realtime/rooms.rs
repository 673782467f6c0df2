//! Rooms: joining and leaving (`room:join`, `room:leave`), who is in them (told through
//! `presence`), and typing. A guest leaves every room when its socket goes.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::ParserError;
use socketioxide::extract::SocketRef;

use super::guests::{Guest, guest_of, send_session};
use super::protocol::{self, ChatError, Reply, event};
use super::throttle::Spend;
use super::{Chat, INTERNAL, unseen};
use crate::bus::Adapter;

/// Rooms one socket may be in (its own internal rooms aside).
pub(super) const MAX_ROOMS: usize = 20;
const MAX_ROOM_CHARS: usize = 64;

#[derive(Debug, Deserialize)]
pub(super) struct RoomRef {
    pub(super) room: String,
    /// `room:join`: recover what came after this message; `room:history`: the page after it.
    pub(super) since: Option<String>,
    /// `room:history`: the page before this message.
    #[serde(default)]
    pub(super) before: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Typing {
    room: String,
    typing: bool,
}

pub(super) fn handlers(socket: &SocketRef<Adapter>, chat: &Arc<Chat>) {
    protocol::on(socket, chat, event::ROOM_JOIN, |socket, chat, data| change(socket, chat, data, true));
    protocol::on(socket, chat, event::ROOM_LEAVE, |socket, chat, data| change(socket, chat, data, false));
    protocol::on(socket, chat, event::TYPING, typing);
}

/// `room:join {room, since?}` / `room:leave {room}` → `{ok, room, members}`, a join also `missed`
/// and `more`; the room is told.
async fn change(socket: SocketRef<Adapter>, chat: Arc<Chat>, data: Result<RoomRef, ParserError>, join: bool) -> Reply {
    chat.throttle.spend(&socket, Spend::Join)?;
    guest_of(&socket)?;
    let RoomRef { room, since, .. } = protocol::payload(data, "{room}")?;
    let room = room.trim().to_owned();
    if !valid(&room) {
        return Err(ChatError::BadRoom { max: MAX_ROOM_CHARS });
    }
    if join {
        let mine = socket.rooms().iter().filter(|r| !r.starts_with(INTERNAL) && **r != room).count();
        if mine >= MAX_ROOMS {
            return Err(ChatError::TooManyRooms { max: MAX_ROOMS });
        }
        socket.join(room.clone());
    } else {
        socket.leave(room.clone());
    }
    send_session(&socket, &chat);
    let mut reply = members_changed(&socket, &chat, &room, join).await?;
    if join {
        let page = chat.messages.page(&room, since.as_deref(), None).await;
        reply["missed"] = Value::from(page.messages);
        reply["more"] = Value::from(page.more);
    }
    Ok(reply)
}

/// `typing {room, typing}`: the other members get `typing {room, guest, typing}`.
async fn typing(socket: SocketRef<Adapter>, chat: Arc<Chat>, data: Result<Typing, ParserError>) -> Reply {
    chat.throttle.spend(&socket, Spend::Message)?;
    let guest = guest_of(&socket)?;
    let Typing { room, typing } = protocol::payload(data, "{room, typing}")?;
    if !is_member(&socket, &room) {
        return Err(ChatError::NotInRoom { room });
    }
    let _ =
        socket.to(room.clone()).emit(event::TYPING, &json!({ "room": room, "guest": guest, "typing": typing })).await;
    Ok(json!({ "ok": true }))
}

/// Whether the socket is in `room`, a room of the chat's (not one of its internal rooms).
pub(super) fn is_member(socket: &SocketRef<Adapter>, room: &str) -> bool {
    !room.starts_with(INTERNAL) && socket.rooms().iter().any(|r| r == room)
}

/// Whether `room` may be a room's name.
pub(super) fn valid(room: &str) -> bool {
    !room.is_empty()
        && room.chars().count() <= MAX_ROOM_CHARS
        && !room.starts_with(INTERNAL)
        && !room.chars().any(unseen)
}

/// Tells the room who came or went and answers the caller with the member list.
pub(super) async fn members_changed(socket: &SocketRef<Adapter>, chat: &Chat, room: &str, joined: bool) -> Reply {
    let guest = guest_of(socket)?;
    let members = chat.presence.changed(socket, room, &guest, joined).await;
    // The caller may have just left: it gets the list too, though it is no longer in the room.
    Ok(json!({ "ok": true, "room": room, "members": members }))
}

/// A socket going away leaves all its rooms; they are told once it no longer counts.
pub(super) async fn leave_all(socket: &SocketRef<Adapter>, chat: &Chat, guest: Option<&Guest>) {
    // Leave first, so that the member lists (asked of every worker) no longer count us.
    let rooms: Vec<String> =
        socket.rooms().into_iter().filter(|r| !r.starts_with(INTERNAL)).map(|r| r.to_string()).collect();
    socket.leave_all();
    if let Some(guest) = guest {
        for room in rooms {
            chat.presence.changed(socket, &room, guest, false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_visible_and_not_internal() {
        assert!(valid("lobby") && valid("café ☕"));
        assert!(!valid("") && !valid("@guest:g_1") && !valid(&"r".repeat(MAX_ROOM_CHARS + 1)));
        assert!(!valid("lob\u{0007}by") && !valid("\u{FEFF}lobby"));
    }
}
