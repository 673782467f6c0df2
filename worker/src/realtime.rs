//! Socket.IO: guests, rooms and room messages on the default namespace.
//!
//! Events (client → server, each answered through the acknowledgement callback when the client
//! passes one: `{ ok: true, ... }` or `{ ok: false, error }`):
//! - `guest:join {name}` → `{ok, guest: {id, name}, instance, token}`. A client may instead connect
//!   with `auth: {name}`, which joins it at once.
//! - Sessions: the server sends `session {token, guest}` whenever who the guest is or which rooms it
//!   is in changes. A client that keeps the latest token in its `auth` (`socket.on("session", s =>
//!   socket.auth = { token: s.token })`) reconnects — to any instance — with the same identity and is
//!   put back into its rooms without user action. A bad token gets `session:error {error}` with the
//!   reason (malformed, forged, expired) and the connection goes on as a new visitor.
//! - `room:join {room}` / `room:leave {room}` → `{ok, room, members}`; every member of the room then
//!   receives `room:members {room, members}`.
//! - `message {room, text}` → `{ok, id, time}`; every member of the room, the sender included,
//!   receives `message {id, room, from: {id, name}, text, time}`.
//!
//! Rooms are local to this worker for now: sharing them across workers is the local bus / Redis work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::socket::DisconnectReason;
use socketioxide::{ParserError, SocketIo};

use crate::session::{Claims, Sessions};

const MAX_NAME_CHARS: usize = 32;
const MAX_ROOM_CHARS: usize = 64;
const MAX_TEXT_CHARS: usize = 4000;

/// A guest: who a socket is, once it has joined with a display name.
#[derive(Clone, Debug, Serialize)]
pub struct Guest {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
struct JoinGuest {
    name: String,
}

/// What a client may pass as `auth` when it connects.
#[derive(Debug, Default, Deserialize)]
struct Auth {
    name: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RoomRef {
    room: String,
}

#[derive(Debug, Deserialize)]
struct SendMessage {
    room: String,
    text: String,
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    id: String,
    room: &'a str,
    from: &'a Guest,
    text: &'a str,
    time: u64,
}

/// Message ids: unique per worker process and sortable; `instance-pid-seq` keeps them unique across a
/// cluster without coordination.
struct MessageIds {
    prefix: String,
    next: AtomicU64,
}

impl MessageIds {
    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Registers the handlers on the default namespace.
pub fn register(io: &SocketIo, instance: Option<&str>, sessions: Sessions, delivered: std::sync::Arc<AtomicU64>) {
    let instance: Option<std::sync::Arc<str>> = instance.map(Into::into);
    let ids = std::sync::Arc::new(MessageIds {
        prefix: format!("{}.{}", instance.as_deref().unwrap_or("0"), std::process::id()),
        next: AtomicU64::new(1),
    });
    io.ns("/", move |socket: SocketRef, TryData(auth): TryData<Auth>| {
        let ids = ids.clone();
        let delivered = delivered.clone();
        let instance = instance.clone();
        let sessions = sessions.clone();
        async move {
            tracing::debug!(sid = %socket.id, "socket connected");
            let auth = auth.unwrap_or_default();
            match auth.token.as_deref().map(|t| sessions.verify(t)) {
                Some(Ok(claims)) => restore(&socket, claims, &sessions).await,
                Some(Err(e)) => {
                    tracing::debug!(sid = %socket.id, error = %e, "session refused");
                    let _ = socket.emit("session:error", &json!({ "error": e.to_string() }));
                }
                None => {}
            }
            if let (Some(name), None) = (auth.name, socket.extensions.get::<Guest>()) {
                // A bad name in `auth` is ignored here; the client can still `guest:join`.
                if join_guest(&socket, JoinGuest { name }).is_ok() {
                    send_session(&socket, &sessions);
                }
            }
            let on_join = sessions.clone();
            socket.on("guest:join", move |socket: SocketRef, TryData(data): TryData<JoinGuest>, ack: AckSender| {
                let instance = instance.clone();
                let sessions = on_join.clone();
                async move {
                    let reply = match data {
                        // `instance` tells the client (and tests) which worker of a cluster serves it.
                        Ok(join) => join_guest(&socket, join).map(|g| {
                            let token = send_session(&socket, &sessions);
                            json!({ "ok": true, "guest": g, "instance": instance.as_deref(), "token": token })
                        }),
                        Err(e) => Err(format!("expected {{name}}: {e}")),
                    };
                    answer(ack, reply);
                }
            });
            for (event, join) in [("room:join", true), ("room:leave", false)] {
                let sessions = sessions.clone();
                socket.on(event, move |socket: SocketRef, TryData(data): TryData<RoomRef>, ack: AckSender| {
                    let sessions = sessions.clone();
                    async move {
                        let reply = match room_change(&socket, data, join) {
                            Ok(room) => {
                                send_session(&socket, &sessions);
                                room_members_changed(&socket, &room).await
                            }
                            Err(e) => Err(e),
                        };
                        answer(ack, reply);
                    }
                });
            }
            socket.on("message", move |socket: SocketRef, TryData(data): TryData<SendMessage>, ack: AckSender| {
                let (ids, delivered) = (ids.clone(), delivered.clone());
                async move {
                    let reply = send_message(&socket, data, &ids).await;
                    if reply.is_ok() {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    answer(ack, reply)
                }
            });
            socket.on_disconnect(async |socket: SocketRef, reason: DisconnectReason| {
                tracing::debug!(sid = %socket.id, ?reason, "socket disconnected");
                for room in socket.rooms() {
                    let members = members(&socket, &room);
                    let _ = socket
                        .to(room.clone())
                        .emit("room:members", &json!({ "room": room, "members": members }))
                        .await;
                }
            });
        }
    });
}

/// A returning guest: same identity, back in its rooms (the rooms are told).
async fn restore(socket: &SocketRef, claims: Claims, sessions: &Sessions) {
    let guest = Guest { id: claims.id, name: claims.name };
    tracing::debug!(sid = %socket.id, guest = %guest.id, rooms = claims.rooms.len(), "session restored");
    socket.extensions.insert(guest);
    for room in claims.rooms.into_iter().filter(|r| valid_room(r)) {
        socket.join(room.clone());
        let _ = room_members_changed(socket, &room).await;
    }
    send_session(socket, sessions);
}

/// Sends the guest a fresh token for who it is and its rooms now; returns it.
fn send_session(socket: &SocketRef, sessions: &Sessions) -> Option<String> {
    let guest = socket.extensions.get::<Guest>()?;
    let rooms = socket.rooms().into_iter().map(|r| r.to_string()).collect();
    let token = sessions.issue(&guest.id, &guest.name, rooms);
    let _ = socket.emit("session", &json!({ "token": token, "guest": guest }));
    Some(token)
}

fn answer(ack: AckSender, reply: Result<Value, String>) {
    let body = match reply {
        Ok(value) => value,
        Err(error) => json!({ "ok": false, "error": error }),
    };
    // The client may not have asked for an acknowledgement; then there is nobody to tell.
    let _ = ack.send(&body);
}

fn join_guest(socket: &SocketRef, join: JoinGuest) -> Result<Guest, String> {
    let name = join.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(format!("a name is 1-{MAX_NAME_CHARS} printable characters"));
    }
    let guest = match socket.extensions.get::<Guest>() {
        // Renaming keeps the id: the guest is the same person.
        Some(existing) => Guest { id: existing.id, name: name.to_owned() },
        None => Guest { id: format!("g_{}", socket.id), name: name.to_owned() },
    };
    socket.extensions.insert(guest.clone());
    Ok(guest)
}

fn guest_of(socket: &SocketRef) -> Result<Guest, String> {
    socket.extensions.get::<Guest>().ok_or_else(|| "join as a guest first (guest:join {name})".to_owned())
}

fn room_change(socket: &SocketRef, data: Result<RoomRef, ParserError>, join: bool) -> Result<String, String> {
    guest_of(socket)?;
    let room = data.map_err(|e| format!("expected {{room}}: {e}"))?.room;
    let room = room.trim().to_owned();
    if !valid_room(&room) {
        return Err(format!("a room name is 1-{MAX_ROOM_CHARS} characters"));
    }
    if join {
        socket.join(room.clone());
    } else {
        socket.leave(room.clone());
    }
    Ok(room)
}

fn valid_room(room: &str) -> bool {
    !room.is_empty() && room.chars().count() <= MAX_ROOM_CHARS
}

/// Tells the room its new member list and answers the caller with it.
async fn room_members_changed(socket: &SocketRef, room: &str) -> Result<Value, String> {
    let members = members(socket, room);
    let update = json!({ "room": room, "members": members });
    if let Err(e) = socket.within(room.to_owned()).emit("room:members", &update).await {
        tracing::warn!(room, error = %e, "member list broadcast failed");
    }
    // The caller may have just left: it gets the list too, though it is no longer in the room.
    Ok(json!({ "ok": true, "room": room, "members": members }))
}

/// Guests connected to `room` on this worker, excluding sockets that are disconnecting.
fn members(socket: &SocketRef, room: &str) -> Vec<Guest> {
    socket
        .within(room.to_owned())
        .sockets()
        .into_iter()
        .filter(|s| s.connected())
        .filter_map(|s| s.extensions.get::<Guest>())
        .collect()
}

async fn send_message(
    socket: &SocketRef,
    data: Result<SendMessage, ParserError>,
    ids: &MessageIds,
) -> Result<Value, String> {
    let guest = guest_of(socket)?;
    let SendMessage { room, text } = data.map_err(|e| format!("expected {{room, text}}: {e}"))?;
    if !socket.rooms().iter().any(|r| r == &room) {
        return Err(format!("join room {room:?} before sending to it"));
    }
    if text.is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return Err(format!("a message is 1-{MAX_TEXT_CHARS} characters"));
    }
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let message = Message { id: ids.next(), room: &room, from: &guest, text: &text, time };
    socket.within(room.clone()).emit("message", &message).await.map_err(|e| format!("broadcast failed: {e}"))?;
    Ok(json!({ "ok": true, "id": message.id, "time": time }))
}
