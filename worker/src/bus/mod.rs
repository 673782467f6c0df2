//! socketioxide-redis's `Driver` over whatever links this worker to the others: Redis
//! (`REDIS_URL`, every worker of every host), else the daemon's local bus (`CHATCTL_BUS`, the workers
//! of this host), else nothing — a bus of one, where publications come straight back, so the
//! adapter behaves as a single server. One adapter, one set of channels, whatever the link.
//!
//! A link that goes down (Redis stopped, the daemon gone) turns the driver into a bus of one until
//! it comes back: this worker keeps serving its own clients, and `/health` says it is degraded.
//! Under chatctl a worker on Redis also keeps the daemon's local bus as a fallback: while Redis is
//! away it publishes there, so the workers of one host keep sharing rooms (the hosts are split
//! until Redis is back). It follows both all along, and publishes on one at a time (Redis whenever
//! it is up), so nothing arrives twice.
//!
//! On a Redis Cluster, each room's traffic has channels of its own, on one shard (see `rooms`).

mod local;
mod redis_link;
mod requests;
mod rooms;

use redis_link::Kind;
pub(crate) use redis_link::RedisLink;
pub use rooms::Hearing;
pub(crate) use rooms::SWEEP_EVERY;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_shared::health::ClusterHealth;
use chat_shared::sync::Locked;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

/// The Socket.IO adapter: rooms shared through Redis, the daemon's bus, or a bus of one.
pub type Adapter = socketioxide_redis::CustomRedisAdapter<socketioxide::adapter::Emitter, BusDriver>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the local bus is gone")]
    Gone,
    #[error("{bytes} bytes for channel {channel}: more than a bus frame holds")]
    TooBig { channel: String, bytes: usize },
}

#[derive(Clone)]
pub struct BusDriver {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    table: Arc<Table>,
    state: Arc<LinkState>,
}

enum Link {
    Solo,
    Local(local::Local),
    Redis(RedisLink, Option<Fallback>),
}

/// The local bus beside Redis, with its own state (it comes and goes on its own).
struct Fallback {
    local: local::Local,
    state: Arc<LinkState>,
}

impl Fallback {
    /// The local bus, when it is there to carry what Redis cannot.
    fn up(&self) -> Option<&local::Local> {
        self.state.is_up().then_some(&self.local)
    }
}

/// The channels this worker follows, and where their messages go.
#[derive(Default)]
struct Table {
    /// `std::sync::Mutex`: held for an insert or a lookup, never across an await.
    subscriptions: Mutex<HashMap<String, mpsc::Sender<ChanItem>>>,
    /// The rooms with channels of their own (on a Redis Cluster), whose messages go to their
    /// family's follower.
    rooms: rooms::Rooms,
    /// Messages dropped because a follower fell behind (shown on `/health`).
    dropped: std::sync::atomic::AtomicU64,
    /// This worker's adapter's id, as its requests begin with it: they are dropped on their way
    /// back (see `requests`).
    adapter: std::sync::OnceLock<Vec<u8>>,
}

impl Table {
    fn deliver(&self, chan: String, data: Vec<u8>) {
        if self.adapter.get().is_some_and(|me| requests::sent_by(&data, me)) && self.rooms.carries_requests(&chan) {
            return;
        }
        let sender = {
            let subscriptions = self.subscriptions.locked();
            match subscriptions.get(&chan) {
                Some(sender) => Some(sender.clone()),
                None => self.rooms.family_of(&chan).and_then(|family| subscriptions.get(&family).cloned()),
            }
        };
        if let Some(sender) = sender
            && sender.try_send((chan, data)).is_err()
        {
            // The first, then one line per thousand: an overloaded worker must not also flood its log.
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped % 1000 == 1 {
                tracing::warn!(dropped, "a follower of the bus fell behind: cluster messages were dropped");
            }
        }
    }

    fn follows(&self, chan: &str) -> bool {
        self.subscriptions.locked().contains_key(chan)
    }

    /// The channels followed: the classic ones, and the rooms' (sharded).
    fn channels(&self) -> (Vec<String>, Vec<String>) {
        let classic = self.subscriptions.locked().keys().cloned().collect();
        (classic, self.rooms.channels(self.rooms.followed.locked().iter()))
    }
}

/// Whether the link is up, for the driver (a down link is a bus of one) and for `/health`.
struct LinkState {
    via: &'static str,
    up: AtomicBool,
    /// Why the link is down, and since when.
    down: Mutex<Option<(String, Instant)>>,
    /// Commands Redis refused while up (out of memory, a key of another node's slot...): what it
    /// keeps for the chat (sessions, history streams, files) was not kept, which must never pass
    /// in silence. Counted, the latest kept for `/health`, logged at most every [`REFUSALS_LOGGED`].
    refused: AtomicU64,
    refusal: Mutex<Option<(String, Instant)>>,
    logged: Mutex<Option<(Instant, u64)>>,
}

/// A refusal shows on `/health` (which then says `degraded`) for this long.
const REFUSAL_SHOWN: Duration = Duration::from_secs(10);
/// Refusals are logged at most this often (with how many there were meanwhile).
const REFUSALS_LOGGED: Duration = Duration::from_secs(10);

impl LinkState {
    fn new(via: &'static str, up: bool) -> LinkState {
        LinkState {
            via,
            up: AtomicBool::new(up),
            down: Mutex::new(None),
            refused: AtomicU64::new(0),
            refusal: Mutex::new(None),
            logged: Mutex::new(None),
        }
    }

    /// Notes that Redis refused `command`. `/health` (public) shows the command and the error's
    /// code only (a MOVED error names an internal node); the log has the whole error.
    fn refused(&self, command: &str, error: &redis::RedisError) {
        let count = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let code = error.code().unwrap_or("ERR");
        *self.refusal.locked() = Some((format!("{command}: {code}"), Instant::now()));
        let mut logged = self.logged.locked();
        if logged.is_some_and(|(at, _)| at.elapsed() < REFUSALS_LOGGED) {
            return;
        }
        let since = count.saturating_sub(logged.map_or(0, |(_, at_count)| at_count));
        *logged = Some((Instant::now(), count));
        drop(logged);
        let why = match code {
            "MOVED" | "ASK" | "CROSSSLOT" | "CLUSTERDOWN" => {
                "the Redis Cluster did not take a key (resharding, or a master down): it is not kept"
            }
            "OOM" => "Redis is out of memory (maxmemory, noeviction): guest sessions and room history are not kept",
            _ => "what the chat keeps in Redis (guest sessions, room history) was not kept",
        };
        tracing::warn!(command, error = %error, refused = since, "Redis refused a command: {why}");
    }

    /// The latest refusal, while recent.
    fn recent_refusal(&self) -> Option<String> {
        self.refusal.locked().as_ref().filter(|(_, at)| at.elapsed() < REFUSAL_SHOWN).map(|(what, _)| what.clone())
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    fn set_up(&self) {
        self.up.store(true, Ordering::SeqCst);
        *self.down.locked() = None;
    }

    fn down_for(&self) -> Option<std::time::Duration> {
        self.down.locked().as_ref().map(|(_, since)| since.elapsed())
    }

    /// Returns whether the link was up until now.
    fn set_down(&self, why: String) -> bool {
        let was_up = self.up.swap(false, Ordering::SeqCst);
        let mut down = self.down.locked();
        match down.as_mut() {
            Some((reason, _)) => *reason = why,
            None => *down = Some((why, Instant::now())),
        }
        was_up
    }
}

impl BusDriver {
    /// A bus of one, for a worker run without chatctl or Redis.
    pub fn solo() -> BusDriver {
        BusDriver::with(Link::Solo, Arc::default(), Arc::new(LinkState::new("none", true)))
    }

    /// Connects to the daemon's bus at `path`.
    pub async fn connect(path: &std::path::Path) -> std::io::Result<BusDriver> {
        let table = Arc::new(Table::default());
        let state = Arc::new(LinkState::new("local", true));
        let local = local::Local::connect(path, table.clone(), state.clone()).await?;
        Ok(BusDriver::with(Link::Local(local), table, state))
    }

    /// Links to Redis at `url` (checked by the configuration). Waits at most `first_try` for the
    /// first connection; without it the worker starts degraded and keeps trying in the background.
    /// With `local` (under chatctl), the daemon's bus carries this host's share while Redis is away.
    pub async fn redis(url: &str, first_try: std::time::Duration, local: Option<&std::path::Path>) -> BusDriver {
        let table = Arc::new(Table::default());
        let fallback = match local {
            Some(path) => {
                let state = Arc::new(LinkState::new("local", true));
                match local::Local::connect(path, table.clone(), state.clone()).await {
                    Ok(local) => Some(Fallback { local, state }),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "no local bus to fall back on while Redis is away");
                        None
                    }
                }
            }
            None => None,
        };
        let state = Arc::new(LinkState::new("redis", false));
        let link = RedisLink::start(url, table.clone(), state.clone(), first_try).await;
        BusDriver::with(Link::Redis(link, fallback), table, state)
    }

    /// The local bus standing in for Redis, while Redis is down.
    fn fallback(&self) -> Option<&local::Local> {
        match &self.inner.link {
            Link::Redis(_, Some(fallback)) if !self.inner.state.is_up() => fallback.up(),
            _ => None,
        }
    }

    fn with(link: Link, table: Arc<Table>, state: Arc<LinkState>) -> BusDriver {
        BusDriver { inner: Arc::new(Inner { link, table, state }) }
    }

    /// Names the channels whose rooms get channels of their own on a Redis Cluster: the adapter's
    /// broadcast channel first (its requests are read to find their room), then the others.
    pub fn shard_rooms_of(&self, families: Vec<String>) {
        *self.inner.table.rooms.families.locked() = families;
    }

    /// The Redis link, when it is up and to a cluster: rooms then have channels of their own.
    fn cluster(&self) -> Option<&RedisLink> {
        match &self.inner.link {
            Link::Redis(link, _) if self.inner.state.is_up() && link.is_cluster() => Some(link),
            _ => None,
        }
    }

    /// Makes sure this worker hears `rooms` before a socket of its own joins them: on a Redis
    /// Cluster, subscribes to their channels (and waits for Redis to confirm); elsewhere, nothing
    /// to do. Hold the guard until the socket has joined (see `rooms::Rooms::gate`).
    pub async fn follow(&self, rooms: &[String]) -> tokio::sync::MutexGuard<'_, ()> {
        let noted = &self.inner.table.rooms;
        let gate = noted.gate.lock().await;
        let Link::Redis(redis, _) = &self.inner.link else { return gate };
        if redis.kind() == Kind::Single {
            return gate;
        }
        let new: Vec<String> = {
            let mut followed = noted.followed.locked();
            rooms.iter().filter(|room| followed.insert((*room).clone())).cloned().collect()
        };
        // After noting them: a link coming up as a cluster meanwhile subscribes them either in its
        // list or here. A link that is down subscribes them once it is back.
        if !new.is_empty() && redis.is_cluster() {
            redis.ssubscribe(&noted.channels(&new)).await;
        }
        gate
    }

    /// Drops the rooms no socket of this worker is in, and follows the rooms its sockets are in
    /// but it does not follow yet (a single Redis turned into a cluster). `local`: the rooms they
    /// are in, asked once no socket can be joining one, and only where rooms are followed.
    pub async fn sweep(&self, local: impl Future<Output = HashSet<String>>) {
        let noted = &self.inner.table.rooms;
        let _gate = noted.gate.lock().await;
        let Link::Redis(redis, _) = &self.inner.link else { return };
        if redis.kind() == Kind::Single {
            // Noted while the link's kind was being learnt.
            *noted.followed.locked() = HashSet::new();
            return;
        }
        let local = local.await;
        let (gone, new) = {
            let mut followed = noted.followed.locked();
            let gone: Vec<String> = followed.iter().filter(|room| !local.contains(*room)).cloned().collect();
            followed.retain(|room| local.contains(room));
            let new: Vec<String> = local.iter().filter(|room| followed.insert((*room).clone())).cloned().collect();
            (gone, new)
        };
        if redis.is_cluster() {
            if !gone.is_empty() {
                redis.sunsubscribe(&noted.channels(&gone)).await;
            }
            if !new.is_empty() {
                tracing::info!(rooms = new.len(), "following the rooms of this worker on the Redis Cluster");
                redis.ssubscribe(&noted.channels(&new)).await;
            }
        }
    }

    /// Waits until the rooms this worker follows must be swept at once (see `rooms::Rooms::resync`).
    pub async fn resync(&self) {
        self.inner.table.rooms.resync.notified().await;
    }

    /// The rooms this worker hears on channels of their own.
    pub fn followed(&self) -> Vec<String> {
        self.inner.table.rooms.followed.locked().iter().cloned().collect()
    }

    /// Publishes on `family`'s channel, or on a cluster on `room`'s channel of that family.
    pub fn publish_in(&self, family: &str, room: &str, val: Vec<u8>) -> Result<(), BusError> {
        match self.cluster() {
            Some(redis) if self.fallback().is_none() => {
                redis.spublish(rooms::channel(family, room), val);
                Ok(())
            }
            _ => self.publish_now(family.to_owned(), val),
        }
    }

    /// No other worker can hear this one: run alone, or every link is down.
    pub fn is_solo(&self) -> bool {
        matches!(self.inner.link, Link::Solo) || (!self.inner.state.is_up() && self.fallback().is_none())
    }

    /// What `/health` says about the link.
    pub fn health(&self) -> ClusterHealth {
        let state = &self.inner.state;
        let down = state.down.locked().clone();
        ClusterHealth {
            via: state.via.to_owned(),
            connected: state.is_up(),
            error: down.as_ref().map(|(why, _)| why.clone()),
            down_ms: down.map(|(_, since)| since.elapsed().as_millis() as u64),
            dropped: self.inner.table.dropped.load(Ordering::Relaxed),
            refused: state.refused.load(Ordering::Relaxed),
            refusal: state.recent_refusal(),
        }
    }

    /// The Redis link, for what is kept in Redis itself (sessions, history streams).
    pub(crate) fn store(&self) -> Option<&RedisLink> {
        match &self.inner.link {
            Link::Redis(link, _) if self.inner.state.is_up() => Some(link),
            _ => None,
        }
    }

    /// Publishes without awaiting: the message is queued for the link (or delivered at once in a
    /// bus of one), so code holding a lock or outside an async context can publish too.
    pub fn publish_now(&self, chan: String, val: Vec<u8>) -> Result<(), BusError> {
        if self.is_solo() {
            self.inner.table.deliver(chan, val);
            return Ok(());
        }
        if let Some(local) = self.fallback() {
            return local.publish(&chan, &val);
        }
        match &self.inner.link {
            Link::Solo => Ok(()),
            Link::Local(local) => local.publish(&chan, &val),
            Link::Redis(redis, _) => {
                redis.publish(chan, val);
                Ok(())
            }
        }
    }
}

impl Driver for BusDriver {
    type Error = BusError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), BusError> {
        // On a cluster, a broadcast to one room goes on that room's channel.
        if self.cluster().is_some()
            && self.inner.table.rooms.families.locked().first() == Some(&chan)
            && let Some(room) = requests::room_of(&val)
        {
            return self.publish_in(&chan, &room, val);
        }
        self.publish_now(chan, val)
    }

    async fn subscribe(&self, chan: String, size: usize) -> Result<MessageStream<ChanItem>, BusError> {
        let (tx, rx) = mpsc::channel(size.max(1));
        let requests = self.inner.table.rooms.families.locked().first().cloned();
        if let Some(me) = requests.and_then(|requests| requests::sender_of_channel(&requests, &chan)) {
            tracing::debug!(channel = %chan, "the adapter's own requests are dropped on their way back");
            let _ = self.inner.table.adapter.set(me);
        }
        self.inner.table.subscriptions.locked().insert(chan.clone(), tx);
        match &self.inner.link {
            Link::Solo => {}
            Link::Local(local) => local.subscribe(&chan)?,
            // Registered above first: a link coming up subscribes to everything in the table.
            Link::Redis(redis, fallback) => {
                if let Some(fallback) = fallback {
                    fallback.local.subscribe(&chan)?;
                }
                redis.subscribe(chan).await
            }
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), BusError> {
        self.inner.table.subscriptions.locked().remove(&chan);
        match &self.inner.link {
            Link::Solo => Ok(()),
            Link::Local(local) => local.unsubscribe(&chan),
            Link::Redis(redis, fallback) => {
                if let Some(fallback) = fallback {
                    fallback.local.unsubscribe(&chan)?;
                }
                redis.unsubscribe(chan).await;
                Ok(())
            }
        }
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, BusError> {
        let solo = || Ok(u16::from(self.inner.table.follows(chan)));
        if self.is_solo() {
            return solo();
        }
        if let Some(local) = self.fallback() {
            return local.listeners(chan).await;
        }
        match &self.inner.link {
            Link::Solo => solo(),
            Link::Local(local) => local.listeners(chan).await,
            // A failed count (the link just went down) counts this worker alone: requests then
            // expect no answer rather than wait for the timeout.
            Link::Redis(redis, _) => {
                Ok(redis.listeners(chan).await.unwrap_or_else(|| u16::from(self.inner.table.follows(chan))))
            }
        }
    }
}

/// One named channel of the bus, for state the workers keep copies of (the call registry, the
/// recovery history): values are JSON, told to every worker of the app, the teller included.
#[derive(Clone)]
pub struct Channel {
    driver: BusDriver,
    name: String,
}

impl Channel {
    pub fn new(driver: BusDriver, name: String) -> Channel {
        Channel { driver, name }
    }

    /// No other worker can hear this one (run alone, or the link is down).
    pub fn is_solo(&self) -> bool {
        self.driver.is_solo()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another channel on the same link.
    pub fn named(&self, name: &str) -> Channel {
        Channel { driver: self.driver.clone(), name: name.to_owned() }
    }

    /// How many workers follow this channel (this one included once it does).
    pub async fn listeners(&self) -> u16 {
        self.driver.num_serv(&self.name).await.unwrap_or(0)
    }

    pub fn tell<T: serde::Serialize>(&self, value: &T) {
        self.tell_with(value, |data| self.driver.publish_now(self.name.clone(), data));
    }

    /// [`Channel::tell`] what concerns `room` only: on a Redis Cluster it goes on the room's own
    /// channel (the workers with a member there hear it, see `rooms`), elsewhere to every worker.
    pub fn tell_in<T: serde::Serialize>(&self, room: &str, value: &T) {
        self.tell_with(value, |data| self.driver.publish_in(&self.name, room, data));
    }

    fn tell_with<T: serde::Serialize>(&self, value: &T, publish: impl FnOnce(Vec<u8>) -> Result<(), BusError>) {
        match serde_json::to_vec(value) {
            Ok(data) => {
                if let Err(e) = publish(data) {
                    tracing::warn!(channel = %self.name, error = %e, "cannot tell the other workers");
                }
            }
            Err(e) => tracing::warn!(channel = %self.name, error = %e, "cannot encode for the other workers"),
        }
    }

    /// Hands every value told on the channel to `apply` until the worker stops.
    pub async fn follow<T: serde::de::DeserializeOwned>(&self, size: usize, apply: impl FnMut(T)) {
        self.follow_then(size, || {}, apply).await;
    }

    /// [`Channel::follow`] for work that awaits: each value's future is run to its end before the
    /// next value is taken, so values are handled in the order they were told.
    pub async fn follow_each<T, F>(&self, size: usize, mut apply: impl FnMut(T) -> F)
    where
        T: serde::de::DeserializeOwned,
        F: Future<Output = ()>,
    {
        let Some(mut stream) = self.subscription(size).await else { return };
        while let Some((_, data)) = futures_util::StreamExt::next(&mut stream).await {
            if let Some(value) = self.decode(&data) {
                apply(value).await;
            }
        }
    }

    /// [`Channel::follow`], calling `subscribed` once the link has the subscription (what is told
    /// after that reaches this worker).
    pub async fn follow_then<T: serde::de::DeserializeOwned>(
        &self,
        size: usize,
        subscribed: impl FnOnce(),
        mut apply: impl FnMut(T),
    ) {
        let Some(mut stream) = self.subscription(size).await else { return };
        // The local bus: frames leave in order on one connection, so the broker registers the
        // subscription first. Redis: `subscribe` returned once Redis confirmed it.
        subscribed();
        while let Some((_, data)) = futures_util::StreamExt::next(&mut stream).await {
            if let Some(value) = self.decode(&data) {
                apply(value);
            }
        }
    }

    async fn subscription(&self, size: usize) -> Option<MessageStream<ChanItem>> {
        match self.driver.subscribe(self.name.clone(), size).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(channel = %self.name, error = %e, "cannot follow the other workers");
                None
            }
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, data: &[u8]) -> Option<T> {
        serde_json::from_slice(data)
            .map_err(|e| tracing::debug!(channel = %self.name, error = %e, "a malformed value was ignored"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bus_of_one_echoes_and_counts_what_a_slow_follower_misses() {
        let bus = BusDriver::solo();
        let mut stream = bus.subscribe("room".into(), 1).await.expect("subscribe");
        assert_eq!(bus.num_serv("room").await.expect("count"), 1, "this worker follows it");
        assert_eq!(bus.num_serv("other").await.expect("count"), 0);
        for i in 0..3u8 {
            bus.publish_now("room".into(), vec![i]).expect("publish");
        }
        let first = futures_util::StreamExt::next(&mut stream).await.expect("one message");
        assert_eq!(first, ("room".to_owned(), vec![0]));
        let health = bus.health();
        assert_eq!((health.via.as_str(), health.connected, health.dropped), ("none", true, 2), "{health:?}");
        assert!(bus.is_solo());
    }
}
