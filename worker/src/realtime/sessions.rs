//! Sessions: a guest joins (`guest:join`, or `auth: {name}`), and comes back as the same guest with
//! the token of its last `session` event, put back in its rooms with what it missed. Settled
//! before the client is told it is connected (see `register`). The session also brings the ICE
//! servers for calls (`ice:servers`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use socketioxide::ParserError;
use socketioxide::extract::SocketRef;

use super::guests::{Guest, JoinGuest, guest_room, join_guest, who_room};
use super::protocol::{self, ChatError, Reply, event};
use super::rules::{MAX_ROOMS, valid_room};
use super::throttle::Spend;
use super::{Chat, INTERNAL, now_ms};
use crate::bus::Adapter;
use crate::session::Claims;

/// What a client may pass as `auth` when it connects.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Auth {
    name: Option<String>,
    token: Option<String>,
    /// Last message id seen per room, to receive what was missed.
    #[serde(default)]
    pub(super) since: HashMap<String, String>,
}

/// A session settled before the client is told it is connected: the rooms it was put back in
/// (those past the restore budget skipped), announced once it is connected. Empty for a guest that
/// joined by the name in its `auth`.
#[derive(Clone, Default)]
pub(super) struct Restored {
    rooms: Vec<String>,
    skipped: Vec<String>,
}

/// Why a returning client's token was refused, told once it is connected.
#[derive(Clone)]
pub(super) struct Refused(String);

/// When the TURN credentials a socket's client was last sent expire (unix seconds).
#[derive(Clone)]
struct IceFor {
    expires: u64,
}

pub(super) fn handlers(socket: &SocketRef<Adapter>, chat: &Arc<Chat>) {
    protocol::on(socket, chat, event::GUEST_JOIN, join);
}

/// `guest:join {name}` → `{ok, guest, instance, token}`; `instance` tells the client (and tests)
/// which worker of a cluster serves it.
async fn join(socket: SocketRef<Adapter>, chat: Arc<Chat>, data: Result<JoinGuest, ParserError>) -> Reply {
    chat.throttle.spend(&socket, Spend::Join)?;
    let guest = join_guest(&socket, protocol::payload(data, "{name}")?)?;
    let token = send_session(&socket, &chat);
    Ok(json!({ "ok": true, "guest": guest, "instance": chat.instance.as_deref(), "token": token }))
}

/// Settles who a connecting client is, before it is told it is connected (see `register`): a
/// returning guest's token is checked and the guest put back in its rooms, or a new one joins by
/// the name in its `auth`. What there is to tell is left in the socket's extensions for
/// [`welcome`].
pub(super) async fn admit(socket: &SocketRef<Adapter>, chat: &Chat, auth: Auth) {
    if let Some(token) = auth.token.as_deref() {
        match chat.resume(token).await {
            Ok(claims) => {
                socket.extensions.insert(resume_rooms(socket, claims, chat));
            }
            Err(e) => {
                tracing::debug!(sid = %socket.id, error = %e, "session refused");
                socket.extensions.insert(Refused(e.to_string()));
            }
        }
    }
    if let (Some(name), None) = (auth.name, socket.extensions.get::<Guest>()) {
        // A bad name in `auth` is ignored here; the client can still `guest:join`.
        if join_guest(socket, JoinGuest { name }).is_ok() {
            socket.extensions.insert(Restored::default());
        }
    }
}

/// Tells a connected client what [`admit`] settled: a refused token, or (for a returning guest)
/// its rooms that it is back and the guest what it missed, then its session.
pub(super) async fn welcome(socket: &SocketRef<Adapter>, chat: &Chat, since: &HashMap<String, String>) {
    if let Some(Refused(error)) = socket.extensions.remove::<Refused>() {
        let _ = socket.emit(event::SESSION_ERROR, &json!({ "error": error }));
    }
    let Some(restored) = socket.extensions.remove::<Restored>() else { return };
    if !restored.skipped.is_empty() {
        let guest = socket.extensions.get::<Guest>().map(|g| g.id).unwrap_or_default();
        let asked = restored.rooms.len() + restored.skipped.len();
        tracing::info!(sid = %socket.id, guest = %guest, granted = restored.rooms.len(), asked, "restore budget spent");
        let refusal = ChatError::RateLimited;
        let _ = socket.emit(
            event::CHAT_ERROR,
            &json!({ "error": refusal.to_string(), "code": refusal.code(), "limit": "restores", "rooms": restored.skipped }),
        );
    }
    for room in restored.rooms {
        if let Some(guest) = socket.extensions.get::<Guest>() {
            chat.presence.changed(socket, &room, &guest, true).await;
        }
        if let Some(last) = since.get(&room) {
            let page = chat.messages.page(&room, Some(last), None).await;
            let sent =
                socket.emit(event::HISTORY, &json!({ "room": room, "messages": page.messages, "more": page.more }));
            if protocol::unread(socket, sent) {
                return;
            }
        }
    }
    send_session(socket, chat);
}

/// Puts a returning guest back: who it is and its rooms (within the restore budget).
fn resume_rooms(socket: &SocketRef<Adapter>, claims: Claims, chat: &Chat) -> Restored {
    let guest = Guest { id: claims.id, name: claims.name };
    tracing::debug!(sid = %socket.id, guest = %guest.id, rooms = claims.rooms.len(), "session restored");
    socket.join(guest_room(&guest.id));
    socket.join(who_room(&guest));
    socket.extensions.insert(guest.clone());
    let mut rooms: Vec<String> = claims.rooms.into_iter().filter(|r| valid_room(r)).take(MAX_ROOMS).collect();
    let granted = chat.throttle.restores(&guest.id, rooms.len());
    let skipped = rooms.split_off(granted.min(rooms.len()));
    for room in &rooms {
        socket.join(room.clone());
    }
    Restored { rooms, skipped }
}

/// Sends the guest a fresh token for who it is and its rooms now; returns it.
pub(super) fn send_session(socket: &SocketRef<Adapter>, chat: &Chat) -> Option<String> {
    let guest = socket.extensions.get::<Guest>()?;
    send_ice(socket, chat);
    let rooms: Vec<String> =
        socket.rooms().into_iter().filter(|r| !r.starts_with(INTERNAL)).map(|r| r.to_string()).collect();
    let token = chat.sessions.issue(&guest.id, &guest.name, rooms.clone());
    if let Some(store) = &chat.store {
        store.put_session(&guest.id, &guest.name, &rooms, &token);
    }
    let _ = socket.emit(event::SESSION, &json!({ "token": token, "guest": guest }));
    Some(token)
}

/// Sends the guest's client its ICE servers when it has none yet, or when its TURN credentials are
/// past half their life: a connection that lives for hours still starts a call with credentials
/// the TURN server takes (the first ones were resent unchanged, expired, on every session).
pub(super) fn send_ice(socket: &SocketRef<Adapter>, chat: &Chat) {
    let Some(guest) = socket.extensions.get::<Guest>() else { return };
    let now = now_ms() / 1000;
    let ttl = chat.ice.turn_ttl.as_secs();
    if socket.extensions.get::<IceFor>().is_some_and(|ice| now + ttl / 2 < ice.expires) {
        return;
    }
    let expires = if chat.ice.turn_secret.is_some() { now + ttl } else { u64::MAX };
    socket.extensions.insert(IceFor { expires });
    let _ = socket.emit(event::ICE_SERVERS, &chat.ice.for_guest(&guest.id, now));
}
