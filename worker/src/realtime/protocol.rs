//! The chat's Socket.IO protocol as the code sees it: the event names, the one error type every
//! refusal is (sent as today's text with a stable machine-readable code beside it, so clients that
//! compare the text keep working and new ones branch on the code), and how an acknowledged event
//! is registered and answered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use socketioxide::ParserError;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};

use crate::bus::Adapter;

/// Event names, both ways.
pub(super) mod event {
    pub(crate) const GUEST_JOIN: &str = "guest:join";
    pub(crate) const SESSION: &str = "session";
    pub(crate) const SESSION_ERROR: &str = "session:error";
    pub(crate) const ICE_SERVERS: &str = "ice:servers";
    pub(crate) const ROOM_JOIN: &str = "room:join";
    pub(crate) const ROOM_LEAVE: &str = "room:leave";
    pub(crate) const ROOM_HISTORY: &str = "room:history";
    pub(crate) const ROOM_PRESENCE: &str = "room:presence";
    pub(crate) const ROOM_MEMBERS: &str = "room:members";
    pub(crate) const HISTORY: &str = "history";
    pub(crate) const MESSAGE: &str = "message";
    pub(crate) const TYPING: &str = "typing";
    pub(crate) const DM: &str = "dm";
    pub(crate) const CHAT_ERROR: &str = "chat:error";
    pub(crate) const CALL_INVITE: &str = "call:invite";
    pub(crate) const CALL_ACCEPT: &str = "call:accept";
    pub(crate) const CALL_REJECT: &str = "call:reject";
    pub(crate) const CALL_END: &str = "call:end";
    pub(crate) const CALL_LEAVE: &str = "call:leave";
    /// Relayed between a call's participants as they are.
    pub(crate) const SIGNALS: [&str; 3] = ["offer", "answer", "ice-candidate"];
}

/// Why an event was refused. The text is what clients have always been sent; [`ChatError::code`]
/// is what they should branch on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("rate limited")]
    RateLimited,
    #[error("join as a guest first (guest:join {{name}})")]
    NotAGuest,
    /// The payload is not the event's shape.
    #[error("expected {expected}: {why}")]
    Malformed { expected: &'static str, why: String },
    #[error("a name is 1-{max} printable characters")]
    BadName { max: usize },
    #[error("a room name is 1-{max} visible characters, not starting with '@'")]
    BadRoom { max: usize },
    #[error("a guest is in at most {max} rooms at once: leave one first")]
    TooManyRooms { max: usize },
    #[error("join room {room:?} before sending to it")]
    NotInRoomToSend { room: String },
    #[error("join room {room:?} first")]
    NotInRoom { room: String },
    #[error("a message is 1-{max} characters")]
    BadText { max: usize },
    #[error("files are not shared here")]
    NoFiles,
    #[error("no file {0:?} (expired, or never uploaded here)")]
    NoSuchFile(String),
    #[error("guest {0:?} is not connected")]
    NotConnected(String),
    #[error("delivery failed: {0}")]
    Undelivered(String),
    #[error("broadcast failed: {0}")]
    NotBroadcast(String),
    #[error("invite at least one other guest")]
    NoInvitee,
    #[error("a call has at most {max} participants")]
    CallTooLarge { max: usize },
    #[error("a guest starts at most {max} calls at once: end one first")]
    TooManyCalls { max: usize },
    #[error("too many calls on this server: try again later")]
    ServerBusy,
    #[error("media is \"audio\" or \"video\"")]
    BadMedia,
    #[error("no call {0:?}")]
    NoSuchCall(String),
    #[error("not a participant of this call")]
    NotInCall,
    #[error("{0:?} is not in this call")]
    PeerNotInCall(String),
    #[error("the caller cannot accept its own call")]
    OwnCall,
}

impl ChatError {
    /// Stable across releases, unlike the text.
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::RateLimited => "rate_limited",
            ChatError::NotAGuest => "not_a_guest",
            ChatError::Malformed { .. } => "malformed",
            ChatError::BadName { .. } => "bad_name",
            ChatError::BadRoom { .. } => "bad_room",
            ChatError::TooManyRooms { .. } => "too_many_rooms",
            ChatError::NotInRoomToSend { .. } | ChatError::NotInRoom { .. } => "not_in_room",
            ChatError::BadText { .. } => "bad_text",
            ChatError::NoFiles => "no_files",
            ChatError::NoSuchFile(_) => "no_such_file",
            ChatError::NotConnected(_) => "not_connected",
            ChatError::Undelivered(_) | ChatError::NotBroadcast(_) => "undelivered",
            ChatError::NoInvitee => "no_invitee",
            ChatError::CallTooLarge { .. } => "call_too_large",
            ChatError::TooManyCalls { .. } => "too_many_calls",
            ChatError::ServerBusy => "server_busy",
            ChatError::BadMedia => "bad_media",
            ChatError::NoSuchCall(_) => "no_such_call",
            ChatError::NotInCall => "not_in_call",
            ChatError::PeerNotInCall(_) => "peer_not_in_call",
            ChatError::OwnCall => "own_call",
        }
    }

    /// What the acknowledgement carries.
    pub fn reply(&self) -> Value {
        json!({ "ok": false, "error": self.to_string(), "code": self.code() })
    }
}

/// An event's answer: `{ok: true, ...}`, or the refusal.
pub(super) type Reply = Result<Value, ChatError>;

/// The payload, or why it is not the event's `expected` shape.
pub(super) fn payload<T>(data: Result<T, ParserError>, expected: &'static str) -> Result<T, ChatError> {
    data.map_err(|e| ChatError::Malformed { expected, why: e.to_string() })
}

/// Every event a socket may send and what handles it: one table for the worker, built once by the
/// features (`register`), and one handler per socket that looks its events up here ([`attach`]).
/// socketioxide keeps a map of boxed handlers per socket, one entry an event: 13 events cost
/// each connection about 0.6 KiB (heaptrack, 3,000 idle connections), for a table that never
/// differs between sockets.
///
/// [`attach`]: Dispatch::attach
#[derive(Default)]
pub(super) struct Dispatch {
    handlers: HashMap<&'static str, Handler>,
}

/// An event's handler: the socket, the event's data (decoded as JSON, or why not), the
/// acknowledgement.
type Handler = Box<
    dyn Fn(SocketRef<Adapter>, Result<Value, ParserError>, AckSender<Adapter>) -> BoxFuture<'static, ()> + Send + Sync,
>;

impl Dispatch {
    /// Has `handle` handle `event`, handing it the feature's services `ev`: its reply goes back
    /// through the acknowledgement, when the client asked for one. (Written once here; each
    /// feature's module only says what an event does, with only the services it uses.)
    pub(super) fn on<Ev, T, F, Fut>(&mut self, ev: &Arc<Ev>, event: &'static str, handle: F)
    where
        Ev: Send + Sync + 'static,
        T: DeserializeOwned + Send + Sync + 'static,
        F: Fn(SocketRef<Adapter>, Arc<Ev>, Result<T, ParserError>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let ev = ev.clone();
        let handler: Handler = Box::new(move |socket, data, ack| {
            let data = data.and_then(|value| serde_json::from_value::<T>(value).map_err(ParserError::new));
            let reply = handle(socket.clone(), ev.clone(), data);
            Box::pin(async move { answer(&socket, ack, reply.await) })
        });
        self.handlers.insert(event, handler);
    }

    /// Hands every event `socket` sends to its handler (an event nobody handles is ignored, as
    /// socketioxide does).
    pub(super) fn attach(self: &Arc<Self>, socket: &SocketRef<Adapter>) {
        let table = self.clone();
        socket.on_fallback(
            move |socket: SocketRef<Adapter>,
                  Event(event): Event,
                  TryData(data): TryData<Value>,
                  ack: AckSender<Adapter>| {
                let handled = table.handlers.get(event.as_str()).map(|handle| handle(socket, data, ack));
                async move {
                    if let Some(handled) = handled {
                        handled.await;
                    }
                }
            },
        );
    }
}

fn answer(socket: &SocketRef<Adapter>, ack: AckSender<Adapter>, reply: Reply) {
    let body = match reply {
        Ok(value) => value,
        Err(error) => error.reply(),
    };
    // The client may not have asked for an acknowledgement; then there is nobody to tell.
    unread(socket, ack.send(&body));
}

/// Answers in a row that found a socket's queue full before it is cut off.
const UNREAD_LIMIT: u32 = 8;

/// A socket's answers that found its queue full, in a row.
#[derive(Clone, Default)]
pub(super) struct Unread(Arc<std::sync::atomic::AtomicU32>);

/// Whether `sent` failed because the socket's queue is full; after [`UNREAD_LIMIT`] such failures in
/// a row the socket is disconnected.
///
/// A socket's queue (engine.io's, 128 packets) stays full only when its client stops reading while
/// it keeps asking: what it asked for would wait in this worker's memory for as long as the client
/// likes. A client that reads but was slow for a moment (a busy room's broadcasts filled its queue)
/// sees its queue drain, and the next answer resets the count; one that never reads is cut off, as
/// Node's `ws` does past its send buffer. (Broadcasts to a full queue are dropped for that socket.)
pub(super) fn unread(socket: &SocketRef<Adapter>, sent: Result<(), socketioxide::SendError>) -> bool {
    use socketioxide::{SendError, SocketError};
    let full = matches!(sent, Err(SendError::Socket(SocketError::InternalChannelFull)));
    let Some(unread) = socket.extensions.get::<Unread>() else { return full };
    if !full {
        unread.0.store(0, Ordering::Relaxed);
        return false;
    }
    if unread.0.fetch_add(1, Ordering::Relaxed) + 1 >= UNREAD_LIMIT {
        tracing::warn!(sid = %socket.id, "disconnecting a socket that does not read what it asks for");
        let _ = socket.clone().disconnect();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_text_and_carry_a_code() {
        let limited = ChatError::RateLimited.reply();
        assert_eq!(limited, json!({ "ok": false, "error": "rate limited", "code": "rate_limited" }));
        let room = ChatError::NotInRoomToSend { room: "lobby".into() };
        assert_eq!(room.to_string(), "join room \"lobby\" before sending to it");
        assert_eq!(room.code(), ChatError::NotInRoom { room: "x".into() }.code());
        assert_eq!(ChatError::NotAGuest.to_string(), "join as a guest first (guest:join {name})");
        assert_eq!(ChatError::BadMedia.to_string(), "media is \"audio\" or \"video\"");
        let bad = ParserError::new(std::io::Error::other("missing field `room`"));
        let malformed: Result<u8, ChatError> = payload(Err(bad), "{room}");
        assert!(malformed.is_err_and(|e| e.code() == "malformed" && e.to_string().starts_with("expected {room}: ")));
    }
}
