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
use super::ice::{self, IceConfig};
use super::messages::Messages;
use super::presence::Presence;
use super::protocol::{self, ChatError, Dispatch, Reply, event};
use super::rules::{INTERNAL, MAX_ROOMS, valid_room};
use super::throttle::{Spend, Throttle};
use crate::bus::{Adapter, Hearing};
use crate::session::{Claims, Sessions, TokenError};
use crate::store::Store;

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

/// Who guests are across reconnections and workers: the tokens issued and believed, Redis's copy
/// of them, and what comes with a session (the ICE servers for calls).
pub(super) struct Identity {
    /// This worker's name in its cluster, told to joining guests.
    instance: Option<Arc<str>>,
    tokens: Sessions,
    /// Redis, which keeps sessions for every host, when the app has `REDIS_URL`.
    store: Option<Store>,
    pub(super) ice: Arc<IceConfig>,
}

impl Identity {
    pub(super) fn new(instance: Option<&str>, tokens: Sessions, store: Option<Store>, ice: IceConfig) -> Identity {
        Identity { instance: instance.map(Into::into), tokens, store, ice: Arc::new(ice) }
    }

    /// Sends the guest a fresh token for who it is and its rooms now (and its ICE servers when they
    /// are due); returns the token.
    pub(super) fn send_session(&self, socket: &SocketRef<Adapter>) -> Option<String> {
        let guest = socket.extensions.get::<Guest>()?;
        ice::send(socket, &self.ice);
        let rooms: Vec<String> =
            socket.rooms().into_iter().filter(|r| !r.starts_with(INTERNAL)).map(|r| r.to_string()).collect();
        let token = self.tokens.issue(&guest.id, &guest.name, rooms.clone());
        if let Some(store) = &self.store {
            store.put_session(&guest.id, &guest.name, &rooms, &token);
        }
        let _ = socket.emit(event::SESSION, &json!({ "token": token, "guest": guest }));
        Some(token)
    }

    /// Who a returning client's token says it is (see [`crate::store::believe`]).
    async fn resume(&self, token: &str) -> Result<Claims, TokenError> {
        crate::store::believe(&self.tokens, self.store.as_ref(), token).await
    }

    /// A guest's socket went away: the session Redis keeps lives on from now.
    pub(super) fn touch(&self, guest: &Guest) {
        if let Some(store) = &self.store {
            store.touch(&guest.id);
        }
    }
}

/// What arriving and returning use: who guests are, what they may spend, who is in a room and
/// what was said there.
pub(super) struct SessionEvents {
    pub(super) identity: Arc<Identity>,
    pub(super) throttle: Arc<Throttle>,
    pub(super) presence: Arc<Presence>,
    pub(super) messages: Arc<Messages>,
    pub(super) hearing: Hearing,
}

impl SessionEvents {
    pub(super) fn register(self: &Arc<Self>, table: &mut Dispatch) {
        table.on(self, event::GUEST_JOIN, join);
    }
}

/// `guest:join {name}` → `{ok, guest, instance, token}`; `instance` tells the client (and tests)
/// which worker of a cluster serves it.
async fn join(socket: SocketRef<Adapter>, ev: Arc<SessionEvents>, data: Result<JoinGuest, ParserError>) -> Reply {
    ev.throttle.spend(&socket, Spend::Join)?;
    let guest = join_guest(&socket, &ev.hearing, protocol::payload(data, "{name}")?).await?;
    let token = ev.identity.send_session(&socket);
    Ok(json!({ "ok": true, "guest": guest, "instance": ev.identity.instance.as_deref(), "token": token }))
}

/// Settles who a connecting client is, before it is told it is connected (see `register`): a
/// returning guest's token is checked and the guest put back in its rooms, or a new one joins by
/// the name in its `auth`. What there is to tell is left in the socket's extensions for
/// [`welcome`].
pub(super) async fn admit(socket: &SocketRef<Adapter>, ev: &SessionEvents, auth: Auth) {
    if let Some(token) = auth.token.as_deref() {
        match ev.identity.resume(token).await {
            Ok(claims) => {
                socket.extensions.insert(resume_rooms(socket, claims, ev).await);
            }
            Err(e) => {
                tracing::debug!(sid = %socket.id, error = %e, "session refused");
                socket.extensions.insert(Refused(e.to_string()));
            }
        }
    }
    if let (Some(name), None) = (auth.name, socket.extensions.get::<Guest>()) {
        // A bad name in `auth` is ignored here; the client can still `guest:join`.
        if join_guest(socket, &ev.hearing, JoinGuest { name }).await.is_ok() {
            socket.extensions.insert(Restored::default());
        }
    }
}

/// Tells a connected client what [`admit`] settled: a refused token, or (for a returning guest)
/// its rooms that it is back and the guest what it missed, then its session.
pub(super) async fn welcome(socket: &SocketRef<Adapter>, ev: &SessionEvents, since: &HashMap<String, String>) {
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
            ev.presence.changed(socket, &room, &guest, true).await;
        }
        if let Some(last) = since.get(&room) {
            let page = ev.messages.page(&room, Some(last), None).await;
            let sent =
                socket.emit(event::HISTORY, &json!({ "room": room, "messages": page.messages, "more": page.more }));
            if protocol::unread(socket, sent) {
                return;
            }
        }
    }
    ev.identity.send_session(socket);
}

/// Puts a returning guest back: who it is and its rooms (within the restore budget).
async fn resume_rooms(socket: &SocketRef<Adapter>, claims: Claims, ev: &SessionEvents) -> Restored {
    let guest = Guest { id: claims.id, name: claims.name };
    tracing::debug!(sid = %socket.id, guest = %guest.id, rooms = claims.rooms.len(), "session restored");
    let mut rooms: Vec<String> = claims.rooms.into_iter().filter(|r| valid_room(r)).take(MAX_ROOMS).collect();
    let granted = ev.throttle.restores(&guest.id, rooms.len());
    let skipped = rooms.split_off(granted.min(rooms.len()));
    let mut heard = vec![guest_room(&guest.id)];
    heard.extend(rooms.iter().cloned());
    ev.hearing.join(socket, &heard).await;
    socket.join(who_room(&guest));
    socket.extensions.insert(guest.clone());
    Restored { rooms, skipped }
}
