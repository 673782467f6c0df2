//! Socket.IO: guests, rooms, messages, typing, direct messages, and recovery of missed messages,
//! on the default namespace.
//!
//! Events (client → server, each answered through the acknowledgement callback when the client
//! passes one: `{ ok: true, ... }` or `{ ok: false, error }`):
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

mod calls;
mod history;
mod limits;
mod presence;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::socket::DisconnectReason;
use socketioxide::{ParserError, SocketIo};

use crate::Adapter;
use crate::bus::Channel;
use crate::session::{Claims, Sessions, TokenError};
use crate::store::Store;
use calls::Calls;
pub use calls::{CALL_RING, IceConfig};
pub use history::{History, MAX_BYTES as HISTORY_BYTES, MAX_ROOMS as HISTORY_ROOMS};
pub use limits::Rate;
use limits::{Bucket, PerAddress, Restores};
use presence::{Presence, who_room};

const MAX_NAME_CHARS: usize = 32;
const MAX_ROOM_CHARS: usize = 64;
const MAX_TEXT_CHARS: usize = 4000;
/// Rooms the server uses itself start with this; clients cannot name one so.
const INTERNAL: char = '@';
/// Messages, typing and DMs per socket, unless configured (`MESSAGE_RATE`).
pub const SOCKET_RATE: Rate = Rate { per_second: 10.0, burst: 20.0 };
/// The same, per client address (several tabs, a NAT), unless configured (`ADDRESS_RATE`).
pub const ADDRESS_RATE: Rate = Rate { per_second: 50.0, burst: 100.0 };
/// Joins (`guest:join`, `room:join`, `room:leave`) per socket, unless configured (`JOIN_RATE`): each
/// asks every worker for the member list and tells the whole room. They also count against the
/// address's bucket.
pub const JOIN_RATE: Rate = Rate { per_second: 5.0, burst: 10.0 };
/// Call signals (`offer`, `answer`, `ice-candidate`, `call:accept|reject|end`) per socket, unless
/// configured (`SIGNAL_RATE`): a call's setup trickles a few dozen ICE candidates within a second,
/// a relay loop must not go unbounded (500 offers of 2 KB were relayed in 51 ms).
pub const SIGNAL_RATE: Rate = Rate { per_second: 50.0, burst: 100.0 };
/// Rooms one socket may be in (its own internal rooms aside).
const MAX_ROOMS: usize = 20;
/// Rooms a session token restores per guest: two full restores at once, then 20 a minute.
const RESTORE_RATE: Rate = Rate { per_second: MAX_ROOMS as f64 / 60.0, burst: 2.0 * MAX_ROOMS as f64 };

/// Who may send how much; `None` rates are off.
#[derive(Clone, Debug)]
pub struct Limits {
    pub socket: Option<Rate>,
    pub joins: Option<Rate>,
    pub signals: Option<Rate>,
    pub address: Option<Rate>,
    /// Peers whose `X-Forwarded-For` / `CF-Connecting-IP` name the client (a reverse proxy, a CDN).
    pub trusted_proxies: Vec<IpAddr>,
    /// How long a call nobody accepted rings (see `calls`).
    pub call_ring: Duration,
}
/// Refusals in a row after which a socket is disconnected.
const ABUSE: u32 = 50;

/// A guest: who a socket is, once it has joined with a display name.
#[derive(Clone, Debug, Serialize)]
pub struct Guest {
    pub id: String,
    pub name: String,
}

/// What every handler shares.
pub struct Chat {
    pub instance: Option<Arc<str>>,
    pub sessions: Sessions,
    /// Room messages delivered (reported on `/health`).
    pub delivered: Arc<AtomicU64>,
    pub history: History,
    ids: MessageIds,
    socket_rate: Option<Rate>,
    join_rate: Option<Rate>,
    signal_rate: Option<Rate>,
    per_address: Option<PerAddress>,
    restores: Restores,
    trusted_proxies: Vec<IpAddr>,
    calls: Calls,
    /// Where room messages travel to every worker (its members and its copy of the history).
    history_bus: Option<Channel>,
    sync_bus: Option<Channel>,
    rates_bus: Option<Channel>,
    /// Messages of this worker's senders waiting to come back from the bus, by id (see `share`).
    ordering: Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    presence: Arc<Presence>,
    synced: std::sync::atomic::AtomicBool,
    asked_again: std::sync::atomic::AtomicBool,
    /// Permits (`Notify` keeps one for a late waiter): the hello is out; a snapshot is in.
    said_hello: tokio::sync::Notify,
    caught_up: tokio::sync::Notify,
    ice: IceConfig,
    /// Redis itself (sessions, history streams), when the app has `REDIS_URL`.
    store: Option<Store>,
    /// Shared files, which a message may carry.
    files: Option<Arc<crate::files::Files>>,
}

/// The bus channels a worker copies state through.
pub struct Shared {
    pub calls: Channel,
    pub history: Channel,
    /// Where a starting worker asks the others for the calls and history they keep.
    pub sync: Channel,
    /// Where workers tell each other what busy client addresses spent (see `limits`).
    pub rates: Channel,
    /// Redis itself (sessions, history streams), when the app has `REDIS_URL`.
    pub store: Option<Store>,
    /// Shared files, which a message may carry.
    pub files: Option<Arc<crate::files::Files>>,
}

/// A snapshot's history stays under this much JSON, well inside one bus frame.
const SNAPSHOT_BYTES: usize = 8 << 20;

#[derive(serde::Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum CatchUp {
    /// A worker just started: whoever hears it answers with what it knows.
    Hello { from: String },
    /// The first answer wins; a worker takes in one snapshot in its life.
    Snapshot { to: String, calls: Vec<(String, std::collections::BTreeSet<String>)>, history: Vec<history::RoomDump> },
}

/// The longest a sender waits for its message to come back from the bus before it is acknowledged
/// anyway (a link going down meanwhile).
const ORDERED_WITHIN: Duration = Duration::from_secs(2);

/// How often a worker tells the others what busy addresses spent: the lag, and so the slack, of a
/// cluster-wide address limit.
const RATE_REPORTS: std::time::Duration = std::time::Duration::from_millis(100);

/// What busy client addresses spent on one worker since its last report.
#[derive(serde::Serialize, Deserialize)]
struct Spent {
    from: String,
    spent: Vec<(IpAddr, u32)>,
}

#[derive(serde::Serialize, Deserialize)]
struct ToldMessage {
    room: String,
    id: String,
    message: Value,
}

impl Chat {
    /// Follows the other workers' calls and messages until the worker stops. Room messages reach
    /// this worker's members from here (see [`Chat::share`]).
    pub async fn follow(self: Arc<Self>, io: SocketIo<Adapter>) {
        let history = async {
            let Some(bus) = &self.history_bus else { return };
            bus.follow_each(8192, |told: ToldMessage| {
                self.history.push(&told.room, &told.id, told.message.clone());
                if let Some(ordered) = self.lock_ordering().remove(&told.id) {
                    let _ = ordered.send(());
                }
                let room = io.of("/").map(|ns| ns.to(told.room).local());
                async move {
                    // Before the namespace exists nobody here can be in the room.
                    if let Some(room) = room
                        && let Err(e) = room.emit("message", &told.message).await
                    {
                        tracing::warn!(error = %e, "a room message could not be delivered here");
                    }
                }
            })
            .await;
        };
        // Polled in this order, so the calls and history subscriptions are in place before the
        // hello below asks the other workers for what they know.
        let sync = async {
            let Some(bus) = &self.sync_bus else { return };
            if bus.is_solo() {
                return;
            }
            let me = self.calls.origin();
            // Snapshots come on a channel of this worker's own: a broadcast would bring every
            // snapshot to every worker, N·(N-1) of up to 8 MiB each when N workers are reloaded.
            let mine = bus.named(&format!("{}:{me}", bus.name()));
            let take = |message: CatchUp| {
                if let CatchUp::Snapshot { to, calls, history } = message
                    && to == me
                    && !self.synced.swap(true, Ordering::SeqCst)
                {
                    tracing::info!(calls = calls.len(), rooms = history.len(), "took in what the other workers know");
                    self.calls.merge(calls);
                    self.history.merge(history);
                    self.caught_up.notify_one();
                }
            };
            let listening = tokio::sync::Notify::new();
            let snapshots = mine.follow_then(4, || listening.notify_one(), take);
            let hellos = async {
                listening.notified().await;
                let hello = || {
                    bus.tell(&CatchUp::Hello { from: me.to_owned() });
                    self.said_hello.notify_one();
                };
                bus.follow_then(16, hello, |message: CatchUp| match message {
                    CatchUp::Hello { from } if from != me => {
                        bus.named(&format!("{}:{from}", bus.name())).tell(&CatchUp::Snapshot {
                            to: from,
                            calls: self.calls.dump(),
                            history: self.history.dump(SNAPSHOT_BYTES),
                        });
                        // Two workers starting together: the other may have subscribed after our
                        // hello but before we counted it, so ask once more rather than wait in vain.
                        if !self.synced.load(Ordering::SeqCst) && !self.asked_again.swap(true, Ordering::SeqCst) {
                            bus.tell(&CatchUp::Hello { from: me.to_owned() });
                        }
                    }
                    // From a worker of the previous release, which answered on the shared channel.
                    snapshot @ CatchUp::Snapshot { .. } => take(snapshot),
                    CatchUp::Hello { .. } => {}
                })
                .await;
            };
            tokio::join!(snapshots, hellos);
        };
        tokio::join!(self.calls.listen(), history, sync, self.share_rates(), self.end_calls(&io));
    }

    /// Tells the other workers what busy addresses spent here, and takes what they tell out of
    /// this worker's buckets, so an address gets its rate once in the cluster (see `limits`).
    /// Ends the calls that rang unanswered or lasted too long, telling their participants.
    async fn end_calls(&self, io: &SocketIo<Adapter>) {
        let mut ticks = tokio::time::interval(self.calls.sweep_every());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            for (call, participants, expiry) in self.calls.expire(Instant::now()) {
                tracing::debug!(call, reason = expiry.reason(), "call ended by itself");
                let body = json!({ "call": call, "reason": expiry.reason() });
                for id in participants {
                    let _ = io.to(guest_room(&id)).emit("call:end", &body).await;
                }
            }
        }
    }

    async fn share_rates(&self) {
        let (Some(bus), Some(per_address)) = (&self.rates_bus, &self.per_address) else { return };
        let me = self.calls.origin();
        let tell = async {
            let mut ticks = tokio::time::interval(RATE_REPORTS);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let spent = per_address.report();
                // Alone (or cut off) nobody would hear it.
                if !spent.is_empty() && !bus.is_solo() {
                    bus.tell(&Spent { from: me.to_owned(), spent });
                }
            }
        };
        let hear = bus.follow(64, |told: Spent| {
            if told.from != me {
                per_address.debit(&told.spent);
            }
        });
        tokio::join!(tell, hear);
    }

    /// Waits, at most `within`, for the snapshot of the other workers' calls and history, so that a
    /// reload's successor is not ready (and gets no guest) before it knows them. Returns at once
    /// when no other worker runs.
    pub async fn catch_up(&self, within: std::time::Duration) {
        let Some(bus) = &self.sync_bus else { return };
        if bus.is_solo() {
            return;
        }
        let begun = std::time::Instant::now();
        let waited = tokio::time::timeout(within, async {
            self.said_hello.notified().await;
            // Asked after our own subscription went out on the same connection: it counts us.
            if bus.listeners().await > 1 {
                self.caught_up.notified().await;
            }
        })
        .await;
        match waited {
            Ok(()) => tracing::debug!(elapsed_ms = begun.elapsed().as_millis() as u64, "caught up"),
            Err(_) => tracing::warn!(
                within_ms = within.as_millis() as u64,
                "no other worker sent its calls and history in time: serving with what this worker has"
            ),
        }
    }

    /// Delivers a room message to its members on every worker and keeps it for recovery, with one
    /// publication: each worker (this one included) takes it from the bus, keeps it, and emits it
    /// to its own members, so every worker keeps and delivers a room's messages in the same order
    /// (the bus's). Telling the copies apart from the adapter's broadcast cost two publications and
    /// three deliveries per message. With Redis, the room's stream has the message first, so an
    /// answer to it is always recorded after it, whichever host it was sent to.
    async fn share(&self, socket: &SocketRef<Adapter>, room: &str, id: &str, message: Value) -> Result<(), String> {
        if let Some(store) = &self.store {
            store.append(room, &message).await;
        }
        match &self.history_bus {
            Some(bus) if !bus.is_solo() => {
                // Acknowledged once the bus has it in its order (it came back here): a reply sent
                // after the acknowledgement, from any worker, is then after it in every worker's
                // history. Acknowledged when the publication was only queued, a reply on another
                // worker could reach the bus first (a late joiner recovered the two the wrong way round).
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.lock_ordering().insert(id.to_owned(), tx);
                bus.tell(&ToldMessage { room: room.to_owned(), id: id.to_owned(), message });
                if tokio::time::timeout(ORDERED_WITHIN, rx).await.is_err() {
                    self.lock_ordering().remove(id);
                    tracing::debug!(room, id, "a message did not come back from the bus in time: acknowledged anyway");
                }
                Ok(())
            }
            _ => {
                self.history.push(room, id, message.clone());
                let delivery = socket.within(room.to_owned()).emit("message", &message).await;
                delivery.map_err(|e| format!("broadcast failed: {e}"))
            }
        }
    }

    pub fn new(
        instance: Option<&str>,
        sessions: Sessions,
        delivered: Arc<AtomicU64>,
        history: History,
        limits: Limits,
        ice: IceConfig,
        shared: Option<Shared>,
    ) -> Chat {
        Chat {
            instance: instance.map(Into::into),
            sessions,
            delivered,
            history,
            ids: MessageIds::new(instance),
            socket_rate: limits.socket,
            join_rate: limits.joins,
            signal_rate: limits.signals,
            per_address: limits.address.map(PerAddress::new),
            restores: Restores::new(RESTORE_RATE),
            trusted_proxies: limits.trusted_proxies,
            calls: Calls::shared(shared.as_ref().map(|s| s.calls.clone()), limits.call_ring),
            history_bus: shared.as_ref().map(|s| s.history.clone()),
            sync_bus: shared.as_ref().map(|s| s.sync.clone()),
            rates_bus: shared.as_ref().map(|s| s.rates.clone()),
            ordering: Mutex::default(),
            presence: Arc::default(),
            synced: std::sync::atomic::AtomicBool::new(false),
            asked_again: std::sync::atomic::AtomicBool::new(false),
            said_hello: tokio::sync::Notify::new(),
            caught_up: tokio::sync::Notify::new(),
            ice,
            files: shared.as_ref().and_then(|s| s.files.clone()),
            store: shared.and_then(|s| s.store),
        }
    }

    fn lock_ordering(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>> {
        self.ordering.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A room's messages after `since` (all retained if unknown): Redis's stream when Redis is
    /// there, this worker's copy otherwise.
    /// One page of `room`'s history: after `since` (recovery: the earliest first), or before
    /// `before`, or the latest (a plain join).
    async fn history(&self, room: &str, since: Option<&str>, before: Option<&str>) -> history::Page {
        let retained = match &self.store {
            Some(store) => match store.since(room, since).await {
                Some(messages) => messages,
                None => self.history.since(room, since),
            },
            None => self.history.since(room, since),
        };
        match (since, before) {
            (Some(_), _) => history::page(retained, history::End::Oldest),
            (None, Some(before)) => {
                // An id this worker does not know (too old) has nothing before it here.
                let cut = retained.iter().position(|m| m["id"] == before).unwrap_or(0);
                history::page(retained.into_iter().take(cut).collect(), history::End::Newest)
            }
            (None, None) => history::page(retained, history::End::Newest),
        }
    }

    /// Who a returning client's token says it is (see [`crate::store::believe`]).
    async fn resume(&self, token: &str) -> Result<Claims, TokenError> {
        crate::store::believe(&self.sessions, self.store.as_ref(), token).await
    }
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
    /// Last message id seen per room, to receive what was missed.
    #[serde(default)]
    since: std::collections::HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RoomRef {
    room: String,
    /// `room:join`: recover what came after this message; `room:history`: the page after it.
    since: Option<String>,
    /// `room:history`: the page before this message.
    #[serde(default)]
    before: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SendMessage {
    room: String,
    /// May be empty when the message carries a file.
    #[serde(default)]
    text: String,
    /// The id of a shared file (`POST /api/files`) the message carries.
    #[serde(default)]
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Typing {
    room: String,
    typing: bool,
}

#[derive(Debug, Deserialize)]
struct Direct {
    to: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    file: Option<String>,
}

/// Message ids: `instance.pid.random-seq`, unique across a cluster and its hosts without
/// coordination (two hosts' workers may well have the same instance and pid, in containers).
struct MessageIds {
    prefix: String,
    next: AtomicU64,
}

impl MessageIds {
    fn new(instance: Option<&str>) -> MessageIds {
        let random = crate::session::random_secret().map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let prefix = format!("{}.{}.{random:08x}", instance.unwrap_or("0"), std::process::id());
        MessageIds { prefix, next: AtomicU64::new(1) }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// When the TURN credentials a socket's client was last sent expire (unix seconds).
#[derive(Clone)]
struct IceFor {
    expires: u64,
}

/// A socket's own rate limits (`None`: off).
#[derive(Clone)]
struct Limit {
    messages: Option<Arc<Mutex<Bucket>>>,
    joins: Option<Arc<Mutex<Bucket>>>,
    signals: Option<Arc<Mutex<Bucket>>>,
    /// When the socket was last sent `chat:error` for a refusal.
    told: Arc<Mutex<Option<Instant>>>,
}

/// A socket whose events are refused hears so (`chat:error`) at most this often: an event sent
/// without an acknowledgement (`typing`, say) has no other way to learn it, and a flood must not
/// be answered with a flood.
const REFUSALS_TOLD_EVERY: Duration = Duration::from_secs(1);

/// What an event spends.
#[derive(Clone, Copy)]
enum Spend {
    Message,
    Join,
    Signal,
}

/// The client address a socket counts against.
#[derive(Clone, Copy)]
struct Address(IpAddr);

/// Registers the handlers on the default namespace; with `origins`, a connection from a page of
/// another origin is refused (`connect_error` "origin not allowed").
pub async fn register(
    io: &SocketIo<Adapter>,
    chat: Arc<Chat>,
    origins: Option<crate::origins::Origins>,
) -> Result<(), String> {
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
    // Who the client is is settled in a middleware, before socket.io tells the client it is
    // connected: the connect handler runs only after the CONNECT packet went out, so whatever it
    // awaited before registering the event handlers let the client's first events through to no
    // handler at all (a message sent the moment a page reconnected after a reload was lost: the
    // restore awaited the cluster's member list first).
    let c = chat.clone();
    let admit = move |socket: SocketRef<Adapter>, TryData(auth): TryData<Auth>| {
        let chat = c.clone();
        async move {
            let address = client_address(&socket, &chat.trusted_proxies);
            let bucket = |rate: Option<Rate>| rate.map(|r| Arc::new(Mutex::new(Bucket::new(r))));
            socket.extensions.insert(Limit {
                messages: bucket(chat.socket_rate),
                joins: bucket(chat.join_rate),
                signals: bucket(chat.signal_rate),
                told: Arc::default(),
            });
            socket.extensions.insert(Address(address));
            socket.extensions.insert(Unread::default());
            let auth = auth.unwrap_or_default();
            let resumed = match auth.token.as_deref() {
                Some(token) => Some(chat.resume(token).await),
                None => None,
            };
            match resumed {
                Some(Ok(claims)) => {
                    socket.extensions.insert(resume_rooms(&socket, claims, &chat));
                }
                Some(Err(e)) => {
                    tracing::debug!(sid = %socket.id, error = %e, "session refused");
                    socket.extensions.insert(Refused(e.to_string()));
                }
                None => {}
            }
            if let (Some(name), None) = (auth.name, socket.extensions.get::<Guest>()) {
                // A bad name in `auth` is ignored here; the client can still `guest:join`.
                if join_guest(&socket, JoinGuest { name }).is_ok() {
                    socket.extensions.insert(Restored::default());
                }
            }
            Ok::<(), std::convert::Infallible>(())
        }
    };
    let connect = move |socket: SocketRef<Adapter>, TryData(auth): TryData<Auth>| {
        let chat = chat.clone();
        async move {
            tracing::debug!(sid = %socket.id, "socket connected");
            handlers(&socket, &chat);
            if let Some(Refused(error)) = socket.extensions.remove::<Refused>() {
                let _ = socket.emit("session:error", &json!({ "error": error }));
            }
            if let Some(restored) = socket.extensions.remove::<Restored>() {
                let since = auth.map(|a| a.since).unwrap_or_default();
                announce(&socket, restored, &since, &chat).await;
            }
        }
    };
    io.ns("/", connect.with(admit).with(origin_check)).await.map_err(|e| format!("cannot start the namespace: {e}"))
}

fn handlers(socket: &SocketRef<Adapter>, chat: &Arc<Chat>) {
    let c = chat.clone();
    socket.on(
        "guest:join",
        move |socket: SocketRef<Adapter>, TryData(data): TryData<JoinGuest>, ack: AckSender<Adapter>| {
            let chat = c.clone();
            async move {
                let reply = match (limited_for(&socket, &chat, Spend::Join), data) {
                    (Err(e), _) => Err(e),
                    // `instance` tells the client (and tests) which worker of a cluster serves it.
                    (Ok(()), Ok(join)) => join_guest(&socket, join).map(|g| {
                        let token = send_session(&socket, &chat);
                        json!({ "ok": true, "guest": g, "instance": chat.instance.as_deref(), "token": token })
                    }),
                    (Ok(()), Err(e)) => Err(format!("expected {{name}}: {e}")),
                };
                answer(&socket, ack, reply);
            }
        },
    );
    for (event, join) in [("room:join", true), ("room:leave", false)] {
        let c = chat.clone();
        socket.on(
            event,
            move |socket: SocketRef<Adapter>, TryData(data): TryData<RoomRef>, ack: AckSender<Adapter>| {
                let chat = c.clone();
                async move {
                    let since = data.as_ref().ok().and_then(|d| d.since.clone());
                    let change =
                        limited_for(&socket, &chat, Spend::Join).and_then(|()| room_change(&socket, data, join));
                    let reply = match change {
                        Ok(room) => {
                            send_session(&socket, &chat);
                            match room_members_changed(&socket, &chat, &room, join).await {
                                Ok(mut reply) if join => {
                                    let page = chat.history(&room, since.as_deref(), None).await;
                                    reply["missed"] = Value::from(page.messages);
                                    reply["more"] = Value::from(page.more);
                                    Ok(reply)
                                }
                                other => other,
                            }
                        }
                        Err(e) => Err(e),
                    };
                    answer(&socket, ack, reply);
                }
            },
        );
    }
    let c = chat.clone();
    socket.on(
        "room:history",
        move |socket: SocketRef<Adapter>, TryData(data): TryData<RoomRef>, ack: AckSender<Adapter>| {
            let chat = c.clone();
            async move {
                let reply = match (limited(&socket, &chat), data) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Err(e)) => Err(format!("expected {{room, since?, before?}}: {e}")),
                    (Ok(()), Ok(RoomRef { room, .. })) if !socket.rooms().iter().any(|r| r == &room) => {
                        Err(format!("join room {room:?} first"))
                    }
                    (Ok(()), Ok(RoomRef { room, since, before })) => {
                        let page = chat.history(&room, since.as_deref(), before.as_deref()).await;
                        Ok(json!({ "ok": true, "room": room, "messages": page.messages, "more": page.more }))
                    }
                };
                answer(&socket, ack, reply);
            }
        },
    );
    let c = chat.clone();
    socket.on(
        "message",
        move |socket: SocketRef<Adapter>, TryData(data): TryData<SendMessage>, ack: AckSender<Adapter>| {
            let chat = c.clone();
            async move {
                let reply = match limited(&socket, &chat) {
                    Err(e) => Err(e),
                    Ok(()) => send_message(&socket, data, &chat).await,
                };
                answer(&socket, ack, reply);
            }
        },
    );
    let c = chat.clone();
    socket.on("typing", move |socket: SocketRef<Adapter>, TryData(data): TryData<Typing>, ack: AckSender<Adapter>| {
        let chat = c.clone();
        async move {
            let reply = match (limited(&socket, &chat), guest_of(&socket), data) {
                (Err(e), _, _) | (_, Err(e), _) => Err(e),
                (_, _, Err(e)) => Err(format!("expected {{room, typing}}: {e}")),
                (Ok(()), Ok(guest), Ok(Typing { room, typing }))
                    if !room.starts_with(INTERNAL) && socket.rooms().iter().any(|r| r == &room) =>
                {
                    let _ = socket
                        .to(room.clone())
                        .emit("typing", &json!({ "room": room, "guest": guest, "typing": typing }))
                        .await;
                    Ok(json!({ "ok": true }))
                }
                (Ok(()), Ok(_), Ok(Typing { room, .. })) => Err(format!("join room {room:?} first")),
            };
            answer(&socket, ack, reply);
        }
    });
    let c = chat.clone();
    socket.on("dm", move |socket: SocketRef<Adapter>, TryData(data): TryData<Direct>, ack: AckSender<Adapter>| {
        let chat = c.clone();
        async move {
            let reply = match limited(&socket, &chat) {
                Err(e) => Err(e),
                Ok(()) => direct_message(&socket, data, &chat).await,
            };
            answer(&socket, ack, reply);
        }
    });
    calls::handlers(socket, chat);
    let c = chat.clone();
    socket.on_disconnect(move |socket: SocketRef<Adapter>, reason: DisconnectReason| {
        let chat = c.clone();
        async move {
            tracing::debug!(sid = %socket.id, ?reason, "socket disconnected");
            if let Some(guest) = socket.extensions.get::<Guest>() {
                if let Some(store) = &chat.store {
                    store.touch(&guest.id);
                }
                // The guest's last socket anywhere leaves its calls: another tab may be on another
                // worker (asked cluster-wide, after this socket left the guest's room). Asked only
                // for a guest in a call: a cluster-wide question per disconnect flooded the bus when
                // 10,000 clients left at once (the benchmark's idle round).
                socket.leave(guest_room(&guest.id));
                let calls = chat.calls.of_guest(&guest.id);
                if !calls.is_empty() && !connected(&socket, &guest.id).await {
                    for call in calls {
                        if let Some((left, over)) = chat.calls.leave(&call, &guest.id) {
                            let event = if over { "call:end" } else { "call:leave" };
                            for id in left {
                                let _ = socket
                                    .within(guest_room(&id))
                                    .emit(event, &json!({ "call": call, "by": guest, "guest": guest }))
                                    .await;
                            }
                        }
                    }
                }
            }
            // Leave first, so that the member lists (asked of every worker) no longer count us.
            let rooms: Vec<String> =
                socket.rooms().into_iter().filter(|r| !r.starts_with(INTERNAL)).map(|r| r.to_string()).collect();
            socket.leave_all();
            if let Some(guest) = socket.extensions.get::<Guest>() {
                for room in rooms {
                    chat.presence.changed(&socket, &room, &guest, false).await;
                }
            }
        }
    });
}

/// The client's address: the peer, or what a trusted proxy in front says the client was.
fn client_address(socket: &SocketRef<Adapter>, trusted: &[IpAddr]) -> IpAddr {
    let parts = socket.req_parts();
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<crate::drain::PeerAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.0.ip());
    if !trusted.contains(&peer) {
        return peer;
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    header("cf-connecting-ip")
        .and_then(|v| v.trim().parse().ok())
        // The proxy appends the address it saw last.
        .or_else(|| header("x-forwarded-for").and_then(|v| v.rsplit(',').next()).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(peer)
}

/// Takes a token for a message (or typing, a DM, a call signal) from the socket's and its address's
/// buckets; disconnects an abusive socket.
fn limited(socket: &SocketRef<Adapter>, chat: &Chat) -> Result<(), String> {
    limited_for(socket, chat, Spend::Message)
}

fn limited_for(socket: &SocketRef<Adapter>, chat: &Chat, spend: Spend) -> Result<(), String> {
    let address = socket.extensions.get::<Address>().map(|a| a.0);
    // Call signals come in bursts per call (a few dozen ICE candidates): many calls behind one NAT
    // would spend the address's whole bucket, so they count against the socket's own only.
    let by_address = || match (&chat.per_address, address, spend) {
        (_, _, Spend::Signal) => true,
        (Some(per_address), Some(address), _) => per_address.take(address),
        _ => true,
    };
    let limit = socket.extensions.get::<Limit>();
    let (rate, bucket) = match (spend, &limit) {
        (Spend::Message, Some(limit)) => (chat.socket_rate, limit.messages.clone()),
        (Spend::Join, Some(limit)) => (chat.join_rate, limit.joins.clone()),
        (Spend::Signal, Some(limit)) => (chat.signal_rate, limit.signals.clone()),
        (_, None) => (None, None),
    };
    let (allowed, abusive) = match (rate, bucket) {
        (Some(rate), Some(bucket)) => match bucket.lock() {
            Ok(mut bucket) => {
                let allowed = bucket.take(rate, Instant::now()) && by_address();
                (allowed, bucket.refused_in_a_row() >= ABUSE)
            }
            Err(_) => (true, false),
        },
        _ => (by_address(), false),
    };
    if abusive {
        tracing::warn!(sid = %socket.id, address = ?address, "disconnecting a socket that keeps exceeding its rate limit");
        let _ = socket.clone().disconnect();
    }
    if allowed {
        return Ok(());
    }
    if let Some(limit) = limit
        && let Ok(mut told) = limit.told.lock()
        && told.is_none_or(|at| at.elapsed() >= REFUSALS_TOLD_EVERY)
    {
        *told = Some(Instant::now());
        let what = match spend {
            Spend::Message => "messages",
            Spend::Join => "joins",
            Spend::Signal => "signals",
        };
        let _ = socket.emit("chat:error", &json!({ "error": "rate limited", "limit": what }));
    }
    Err("rate limited".into())
}

/// A returning guest: same identity, back in its rooms (the rooms are told), missed messages sent.
/// A session settled before the client is told it is connected: the rooms it was put back in
/// (those past the restore budget skipped), announced once it is connected. Empty for a guest that
/// joined by the name in its `auth`.
#[derive(Clone, Default)]
struct Restored {
    rooms: Vec<String>,
    skipped: Vec<String>,
}

/// Why a returning client's token was refused, told once it is connected.
#[derive(Clone)]
struct Refused(String);

/// Puts a returning guest back: who it is and its rooms (within the restore budget).
fn resume_rooms(socket: &SocketRef<Adapter>, claims: Claims, chat: &Chat) -> Restored {
    let guest = Guest { id: claims.id, name: claims.name };
    tracing::debug!(sid = %socket.id, guest = %guest.id, rooms = claims.rooms.len(), "session restored");
    socket.join(guest_room(&guest.id));
    socket.join(who_room(&guest));
    socket.extensions.insert(guest.clone());
    let mut rooms: Vec<String> = claims.rooms.into_iter().filter(|r| valid_room(r)).take(MAX_ROOMS).collect();
    let granted = chat.restores.take(&guest.id, rooms.len());
    let skipped = rooms.split_off(granted.min(rooms.len()));
    for room in &rooms {
        socket.join(room.clone());
    }
    Restored { rooms, skipped }
}

/// Tells a restored guest's rooms it is back and the guest what it missed, then sends its session.
async fn announce(
    socket: &SocketRef<Adapter>,
    restored: Restored,
    since: &std::collections::HashMap<String, String>,
    chat: &Chat,
) {
    if !restored.skipped.is_empty() {
        let guest = socket.extensions.get::<Guest>().map(|g| g.id).unwrap_or_default();
        tracing::info!(sid = %socket.id, guest = %guest, granted = restored.rooms.len(), asked = restored.rooms.len() + restored.skipped.len(), "restore budget spent");
        let _ = socket
            .emit("chat:error", &json!({ "error": "rate limited", "limit": "restores", "rooms": restored.skipped }));
    }
    for room in restored.rooms {
        let _ = room_members_changed(socket, chat, &room, true).await;
        if let Some(last) = since.get(&room) {
            let page = chat.history(&room, Some(last), None).await;
            let sent = socket.emit("history", &json!({ "room": room, "messages": page.messages, "more": page.more }));
            if unread(socket, sent) {
                return;
            }
        }
    }
    send_session(socket, chat);
}

/// Sends the guest a fresh token for who it is and its rooms now; returns it.
fn send_session(socket: &SocketRef<Adapter>, chat: &Chat) -> Option<String> {
    let guest = socket.extensions.get::<Guest>()?;
    send_ice(socket, chat);
    let rooms: Vec<String> =
        socket.rooms().into_iter().filter(|r| !r.starts_with(INTERNAL)).map(|r| r.to_string()).collect();
    let token = chat.sessions.issue(&guest.id, &guest.name, rooms.clone());
    if let Some(store) = &chat.store {
        store.put_session(&guest.id, &guest.name, &rooms, &token);
    }
    let _ = socket.emit("session", &json!({ "token": token, "guest": guest }));
    Some(token)
}

/// Sends the guest's client its ICE servers when it has none yet, or when its TURN credentials are
/// past half their life: a connection that lives for hours still starts a call with credentials
/// the TURN server takes (the first ones were resent unchanged, expired, on every session).
fn send_ice(socket: &SocketRef<Adapter>, chat: &Chat) {
    let Some(guest) = socket.extensions.get::<Guest>() else { return };
    let now = now_ms() / 1000;
    let ttl = chat.ice.turn_ttl.as_secs();
    if socket.extensions.get::<IceFor>().is_some_and(|ice| now + ttl / 2 < ice.expires) {
        return;
    }
    let expires = if chat.ice.turn_secret.is_some() { now + ttl } else { u64::MAX };
    socket.extensions.insert(IceFor { expires });
    let _ = socket.emit("ice:servers", &chat.ice.for_guest(&guest.id, now));
}

fn answer(socket: &SocketRef<Adapter>, ack: AckSender<Adapter>, reply: Result<Value, String>) {
    let body = match reply {
        Ok(value) => value,
        Err(error) => json!({ "ok": false, "error": error }),
    };
    // The client may not have asked for an acknowledgement; then there is nobody to tell.
    unread(socket, ack.send(&body));
}

/// Whether `sent` failed because the socket's queue is full; after [`UNREAD_LIMIT`] such failures in
/// a row the socket is disconnected.
///
/// A socket's queue (engine.io's, 128 packets) stays full only when its client stops reading while
/// it keeps asking: what it asked for would wait in this worker's memory for as long as the client
/// likes. A client that reads but was slow for a moment (a busy room's broadcasts filled its queue)
/// sees its queue drain, and the next answer resets the count; one that never reads is cut off, as
/// Node's `ws` does past its send buffer. (Broadcasts to a full queue are dropped for that socket.)
fn unread(socket: &SocketRef<Adapter>, sent: Result<(), socketioxide::SendError>) -> bool {
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

/// Answers in a row that found a socket's queue full before it is cut off.
const UNREAD_LIMIT: u32 = 8;

/// A socket's answers that found its queue full, in a row.
#[derive(Clone, Default)]
struct Unread(Arc<std::sync::atomic::AtomicU32>);

/// The room every socket of a guest is in, for direct messages.
fn guest_room(id: &str) -> String {
    format!("{INTERNAL}guest:{id}")
}

fn join_guest(socket: &SocketRef<Adapter>, join: JoinGuest) -> Result<Guest, String> {
    let name = join.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(unseen) {
        return Err(format!("a name is 1-{MAX_NAME_CHARS} printable characters"));
    }
    let guest = match socket.extensions.get::<Guest>() {
        // Renaming keeps the id: the guest is the same person.
        Some(existing) => {
            socket.leave(who_room(&existing));
            Guest { id: existing.id, name: name.to_owned() }
        }
        None => Guest { id: format!("g_{}", socket.id), name: name.to_owned() },
    };
    socket.join(guest_room(&guest.id));
    socket.join(who_room(&guest));
    socket.extensions.insert(guest.clone());
    Ok(guest)
}

fn guest_of(socket: &SocketRef<Adapter>) -> Result<Guest, String> {
    socket.extensions.get::<Guest>().ok_or_else(|| "join as a guest first (guest:join {name})".to_owned())
}

fn room_change(socket: &SocketRef<Adapter>, data: Result<RoomRef, ParserError>, join: bool) -> Result<String, String> {
    guest_of(socket)?;
    let room = data.map_err(|e| format!("expected {{room}}: {e}"))?.room;
    let room = room.trim().to_owned();
    if !valid_room(&room) {
        return Err(format!("a room name is 1-{MAX_ROOM_CHARS} visible characters, not starting with '{INTERNAL}'"));
    }
    if join {
        let mine = socket.rooms().iter().filter(|r| !r.starts_with(INTERNAL) && **r != room).count();
        if mine >= MAX_ROOMS {
            return Err(format!("a guest is in at most {MAX_ROOMS} rooms at once: leave one first"));
        }
        socket.join(room.clone());
    } else {
        socket.leave(room.clone());
    }
    Ok(room)
}

fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.chars().count() <= MAX_ROOM_CHARS
        && !room.starts_with(INTERNAL)
        && !room.chars().any(unseen)
}

/// Characters that are not shown but change what is: control characters, bidi controls (a room
/// named "\u{202E}nimda" reads "admin") and zero-width ones. Refused in names, never in message text.
fn unseen(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Tells the room who came or went and answers the caller with the member list.
async fn room_members_changed(
    socket: &SocketRef<Adapter>,
    chat: &Chat,
    room: &str,
    joined: bool,
) -> Result<Value, String> {
    let guest = guest_of(socket)?;
    let members = chat.presence.changed(socket, room, &guest, joined).await;
    // The caller may have just left: it gets the list too, though it is no longer in the room.
    Ok(json!({ "ok": true, "room": room, "members": members }))
}

/// Whether any socket of guest `id` is connected, on any worker.
async fn connected(socket: &SocketRef<Adapter>, id: &str) -> bool {
    socket.within(guest_room(id)).fetch_sockets().await.is_ok_and(|sockets| !sockets.is_empty())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn checked_text(text: &str) -> Result<(), String> {
    if text.is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return Err(format!("a message is 1-{MAX_TEXT_CHARS} characters"));
    }
    Ok(())
}

/// The shared file a message carries, checked to exist; the text may then be empty.
async fn attached(chat: &Chat, file: Option<&str>, text: &str) -> Result<Option<Value>, String> {
    let Some(id) = file else {
        checked_text(text)?;
        return Ok(None);
    };
    if !text.is_empty() {
        checked_text(text)?;
    }
    let files = chat.files.as_ref().ok_or("files are not shared here")?;
    match files.attachment(id).await {
        Some(file) => Ok(Some(file)),
        None => Err(format!("no file {id:?} (expired, or never uploaded here)")),
    }
}

async fn send_message(
    socket: &SocketRef<Adapter>,
    data: Result<SendMessage, ParserError>,
    chat: &Chat,
) -> Result<Value, String> {
    let guest = guest_of(socket)?;
    let SendMessage { room, text, file } = data.map_err(|e| format!("expected {{room, text, file?}}: {e}"))?;
    // A socket is in its guest's own internal room too: not a room to send (and store) messages in.
    if room.starts_with(INTERNAL) || !socket.rooms().iter().any(|r| r == &room) {
        return Err(format!("join room {room:?} before sending to it"));
    }
    let file = attached(chat, file.as_deref(), &text).await?;
    let (id, time) = (chat.ids.next(), now_ms());
    let mut message = json!({ "id": id, "room": room, "from": guest, "text": text, "time": time });
    if let Some(file) = file {
        message["file"] = file;
    }
    chat.share(socket, &room, &id, message).await?;
    chat.delivered.fetch_add(1, Ordering::Relaxed);
    Ok(json!({ "ok": true, "id": id, "time": time }))
}

async fn direct_message(
    socket: &SocketRef<Adapter>,
    data: Result<Direct, ParserError>,
    chat: &Chat,
) -> Result<Value, String> {
    let guest = guest_of(socket)?;
    let Direct { to, text, file } = data.map_err(|e| format!("expected {{to, text, file?}}: {e}"))?;
    let file = attached(chat, file.as_deref(), &text).await?;
    if !connected(socket, &to).await {
        return Err(format!("guest {to:?} is not connected"));
    }
    let (id, time) = (chat.ids.next(), now_ms());
    let mut message = json!({ "id": id, "from": guest, "to": to, "text": text, "time": time });
    if let Some(file) = file {
        message["file"] = file;
    }
    // The addressee, and the sender's other tabs.
    socket
        .within(guest_room(&to))
        .within(guest_room(&guest.id))
        .emit("dm", &message)
        .await
        .map_err(|e| format!("delivery failed: {e}"))?;
    chat.delivered.fetch_add(1, Ordering::Relaxed);
    Ok(json!({ "ok": true, "id": id, "time": time }))
}

/// Default bounds of the recovery history.
pub const HISTORY_COUNT: usize = 200;
pub const HISTORY_AGE: Duration = Duration::from_secs(3600);
