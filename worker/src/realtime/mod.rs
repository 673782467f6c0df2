//! Socket.IO: guests, rooms, messages, typing, direct messages, and recovery of missed messages,
//! on the default namespace.
//!
//! Events (client → server, each answered through the acknowledgement callback when the client
//! passes one: `{ ok: true, ... }` or `{ ok: false, error, code }`, `code` being stable and `error`
//! the text clients have always been sent; see `protocol`):
//! - `guest:join {name}` → `{ok, guest: {id, name}, instance, token}`. A client may instead connect
//!   with `auth: {name}`, which joins it at once.
//! - Sessions: the server sends `session {token, guest}` whenever who the guest is or which rooms it
//!   is in changes. A client that keeps the latest token in its `auth` (`socket.on("session", s =>
//!   socket.auth = { token: s.token })`) reconnects — to any instance — with the same identity and is
//!   put back into its rooms without user action; with `auth.since = {room: last message id}` it
//!   also receives `history {room, messages}` with what it missed. A bad token gets
//!   `session:error {error}` with the reason (malformed, forged, expired) and the connection goes on
//!   as a new visitor.
//! - `room:join {room, since?}` / `room:leave {room}` → `{ok, room, members}` (a join also
//!   `missed`: the room's recent messages after `since`, or all retained); every member of the room
//!   then receives `room:presence {room, guest, joined, count}`, and `room:members {room, members}`
//!   (the whole list) while the room has at most 100 members. Disconnecting leaves every room; a
//!   guest leaves a room when its last tab there does (see `presence`).
//! - `message {room, text}` → `{ok, id, time}`; every member of the room, the sender included,
//!   receives `message {id, room, from: {id, name}, text, time}`.
//! - `typing {room, typing}`: the other members receive `typing {room, guest, typing}`.
//! - `dm {to, text}` → `{ok, id, time}`; the addressee's sockets (and the sender's) receive
//!   `dm {id, from, to, text, time}`.
//!
//! Messages, typing and direct messages are rate limited per socket and per client address; a
//! refused event is answered `{ok: false, error: "rate limited"}` (and, at most once a second, the
//! socket gets `chat:error {error, limit}`, for events sent without an acknowledgement), and a socket
//! that keeps going is disconnected. Text is data: it is relayed as JSON strings, never interpreted.
//!
//! Rooms span every worker linked to this one (see `bus`): the daemon's local bus on one host, Redis
//! across hosts. With Redis, sessions and each room's recent messages are also kept there (`store`).
//!
//! One module per feature, each owning its state as a small service that [`Chat`] holds, and
//! registering its events with only the services they use (`RoomEvents`, `SessionEvents`, ...:
//! no feature imports `Chat`): `guests` (who a socket is), `sessions` (joining, and coming back as
//! the same guest; `Identity`: tokens and Redis's copy), `ice` (ICE servers for calls), `rooms`
//! (joins and leaves, typing), `presence` (who is in a room), `rules` (what may be named and
//! joined), `messages` (room messages, their order and history), `direct` (DMs), `calls` (WebRTC
//! signalling), `throttle` (rate limits as sockets meet them), `catch_up` (what a starting worker
//! takes in from the others); `protocol` holds the event names, the error type and the handler
//! helper they share.

mod calls;
mod catch_up;
mod direct;
mod guests;
mod history;
mod ice;
mod messages;
mod presence;
mod protocol;
mod rooms;
mod rules;
mod sessions;
mod throttle;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::socket::DisconnectReason;

use crate::bus::Adapter;
use crate::bus::Channel;
pub use crate::limits::Rate;
use crate::session::Sessions;
use crate::store::Store;
pub use calls::CALL_RING;
use calls::{CallEvents, Calls};
pub use guests::Guest;
pub use history::{History, MAX_BYTES as HISTORY_BYTES, MAX_ROOMS as HISTORY_ROOMS};
pub use ice::IceConfig;
pub use messages::{HISTORY_AGE, HISTORY_COUNT};
use messages::{MessageEvents, Messages};
use presence::Presence;
pub use protocol::ChatError;
use protocol::Dispatch;
use rooms::RoomEvents;
use sessions::{Identity, SessionEvents};
use throttle::Throttle;
pub use throttle::{ADDRESS_RATE, JOIN_RATE, Limits, SIGNAL_RATE, SOCKET_RATE};

/// The features' services, each held once here and handed to the features whose events use it.
pub struct Chat {
    throttle: Arc<Throttle>,
    messages: Arc<Messages>,
    calls: Arc<Calls>,
    presence: Arc<Presence>,
    identity: Arc<Identity>,
    catch_up: catch_up::CatchUp,
    /// Arriving and returning, which the connection itself settles (`admit`, `welcome`).
    sessions: Arc<SessionEvents>,
    /// Every feature's events with the services they use, which every socket's events go through.
    dispatch: Arc<Dispatch>,
}

/// The bus channels a worker copies state through, and what Redis and the file store keep.
pub struct Shared {
    pub calls: Channel,
    pub history: Channel,
    /// Where a starting worker asks the others for the calls and history they keep.
    pub sync: Channel,
    /// Where workers tell each other what busy client addresses spent (see `limits`).
    pub rates: Channel,
    /// The link itself, which must hear a room before a socket of this worker joins it.
    pub link: Option<crate::bus::BusDriver>,
    /// Redis itself (sessions, history streams), when the app has `REDIS_URL`.
    pub store: Option<Store>,
    /// Shared files, which a message may carry.
    pub files: Option<Arc<crate::files::Files>>,
}

impl Chat {
    /// `delivered` counts room messages and DMs (reported on `/health`).
    pub fn new(
        instance: Option<&str>,
        sessions: Sessions,
        delivered: Arc<AtomicU64>,
        history: History,
        limits: Limits,
        ice: IceConfig,
        shared: Option<Shared>,
    ) -> Chat {
        let (calls_bus, history_bus, sync_bus, rates_bus, link, store, files) = match shared {
            Some(Shared { calls, history, sync, rates, link, store, files }) => {
                (Some(calls), Some(history), Some(sync), Some(rates), link, store, files)
            }
            None => (None, None, None, None, None, None, None),
        };
        let hearing = crate::bus::Hearing(link);
        let throttle = Arc::new(Throttle::new(&limits, rates_bus));
        let messages = Arc::new(Messages::new(instance, history, history_bus, store.clone(), files, delivered));
        let calls = Arc::new(Calls::shared(calls_bus, limits.call_ring));
        let presence = Arc::new(Presence::default());
        let identity = Arc::new(Identity::new(instance, sessions, store, ice));
        let sessions = Arc::new(SessionEvents {
            identity: identity.clone(),
            throttle: throttle.clone(),
            presence: presence.clone(),
            messages: messages.clone(),
            hearing: hearing.clone(),
        });
        let rooms = Arc::new(RoomEvents {
            throttle: throttle.clone(),
            presence: presence.clone(),
            messages: messages.clone(),
            identity: identity.clone(),
            hearing,
        });
        let posts = Arc::new(MessageEvents { throttle: throttle.clone(), messages: messages.clone() });
        let calling = Arc::new(CallEvents {
            throttle: throttle.clone(),
            calls: calls.clone(),
            ice: identity.ice.clone(),
            messages: messages.clone(),
        });
        let mut dispatch = Dispatch::default();
        sessions.register(&mut dispatch);
        rooms.register(&mut dispatch);
        posts.register(&mut dispatch);
        direct::register(&mut dispatch, &posts);
        calling.register(&mut dispatch);
        Chat {
            sessions,
            dispatch: Arc::new(dispatch),
            catch_up: catch_up::CatchUp::new(sync_bus),
            throttle,
            messages,
            calls,
            presence,
            identity,
        }
    }

    /// Follows the other workers (their calls, room messages, catch-up questions and rate reports)
    /// and ends the calls that ring or last too long, until the worker stops.
    pub async fn follow(self: Arc<Self>, io: SocketIo<Adapter>) {
        let me = self.calls.origin();
        tokio::join!(
            self.calls.listen(),
            self.messages.follow(&io),
            self.catch_up.follow(me, &self.calls, &self.messages.history),
            self.throttle.share(me),
            calls::end_expired(&self.calls, &io),
        );
    }

    /// Waits, at most `within`, for what the other workers know (see `catch_up`).
    pub async fn catch_up(&self, within: Duration) {
        self.catch_up.wait(within).await;
    }

    /// Hands a connected socket's events to the features, and what its going away undoes.
    fn register(self: &Arc<Self>, socket: &SocketRef<Adapter>) {
        self.dispatch.attach(socket);
        let chat = self.clone();
        socket.on_disconnect(move |socket: SocketRef<Adapter>, reason: DisconnectReason| {
            let chat = chat.clone();
            async move { chat.gone(&socket, reason).await }
        });
    }

    /// A socket went away: it leaves its guest's calls (when it was the guest's last socket) and
    /// its rooms, which are told.
    async fn gone(&self, socket: &SocketRef<Adapter>, reason: DisconnectReason) {
        tracing::debug!(sid = %socket.id, ?reason, "socket disconnected");
        let rooms = rooms::joined(socket);
        let guest = socket.extensions.get::<Guest>();
        if let Some(guest) = &guest {
            self.identity.touch(guest);
            socket.leave(guests::guest_room(&guest.id));
            calls::left(socket, &self.calls, guest).await;
        }
        rooms::leave_all(socket, &self.presence, guest.as_ref(), rooms).await;
    }
}

/// Registers the handlers on the default namespace; with `origins`, a connection from a page of
/// another origin is refused (`connect_error` "origin not allowed").
pub async fn register(
    io: &SocketIo<Adapter>,
    chat: Arc<Chat>,
    origins: Option<crate::origins::Origins>,
) -> std::io::Result<()> {
    use socketioxide::handler::ConnectHandler;
    let origin_check = move |socket: SocketRef<Adapter>| {
        let origins = origins.clone();
        async move {
            let Some(origins) = origins else { return Ok(()) };
            let origin = socket.req_parts().headers.get("origin").and_then(|o| o.to_str().ok());
            match origin {
                // Not a browser (no Origin header): CORS does not apply.
                None => Ok(()),
                Some(o) if origins.allows(o) => Ok(()),
                Some(o) => {
                    tracing::info!(sid = %socket.id, origin = o, "connection from a disallowed origin refused");
                    Err("origin not allowed")
                }
            }
        }
    };
    // Who the client is is settled, and its events handed to the features, in a middleware (the
    // last to run: a middleware added later runs first, and the origin check may refuse), before
    // socket.io tells the client it is connected. The connect handler runs only after the CONNECT
    // packet went out, in a task of its own: events registered there let the client's first
    // events through to no handler at all whenever the client answered the CONNECT before that
    // task ran (a message sent the moment a client reconnected was lost: the restore awaited the
    // cluster's member list first; later, a `room:join` sent the moment a guest connected, with
    // the socket's one task reading while it writes).
    let c = chat.clone();
    let admit = move |socket: SocketRef<Adapter>, TryData(auth): TryData<sessions::Auth>| {
        let chat = c.clone();
        async move {
            chat.throttle.admit(&socket);
            socket.extensions.insert(protocol::Unread::default());
            sessions::admit(&socket, &chat.sessions, auth.unwrap_or_default()).await;
            chat.register(&socket);
            Ok::<(), std::convert::Infallible>(())
        }
    };
    let connect = move |socket: SocketRef<Adapter>, TryData(auth): TryData<sessions::Auth>| {
        let chat = chat.clone();
        async move {
            tracing::debug!(sid = %socket.id, "socket connected");
            let since = auth.map(|a| a.since).unwrap_or_default();
            sessions::welcome(&socket, &chat.sessions, &since).await;
        }
    };
    io.ns("/", connect.with(admit).with(origin_check))
        .await
        .map_err(|e| std::io::Error::other(format!("cannot start the namespace: {e}")))
}
