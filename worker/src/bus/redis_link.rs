//! The link to Redis (one server or a Redis Cluster, see `redis_conn`): pub/sub for the adapter and
//! the shared channels, plus the few keys this app keeps there (sessions, history streams).
//!
//! socketioxide-redis ships a Redis driver, but it takes one connection at start and has no way back
//! when it drops: a worker could neither start while Redis is down nor rejoin when it returns, which
//! the chat needs. Here one task owns the connection: it connects (RESP3, so subscriptions and
//! commands share one multiplexed connection), subscribes to every channel in the table (a room's
//! channels with sharded pub/sub on a cluster), watches the connection (the library's disconnection
//! notice, and a PING a second, to every master of a cluster), and on loss marks the link down and
//! reconnects with a backoff up to 2 s. While down, the driver is a bus of one. A cluster's master
//! that fails is such a loss until its replica takes over: the same rules as a Redis outage.
//!
//! Writes leave through one queue, pipelined in batches: a worker's publications reach Redis in the
//! order it made them, and a burst costs one round trip instead of one each (on a cluster, one per
//! slot of the batch, sent together: the order holds within each channel and key).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_shared::sync::Locked;
use redis::{FromRedisValue, PushInfo, PushKind};
use tokio::sync::{Notify, mpsc, watch};

use super::{LinkState, Table};
use crate::redis_conn::{Conn, Settings, Target, slot_of};

/// Longest wait for a connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for an answer before the connection counts as lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle connection is checked.
const PING_EVERY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Most writes sent in one pipeline.
const BATCH: usize = 512;

pub(crate) struct RedisLink {
    conn: Slot,
    writes: mpsc::UnboundedSender<Write>,
    state: Arc<LinkState>,
    /// What the last connection was to (rooms have channels of their own on a cluster).
    kind: Arc<AtomicU8>,
}

/// What a link connects to, as its last connection found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    /// Not connected yet.
    Unknown,
    Single,
    Cluster,
}

impl Kind {
    fn of(conn: &Conn) -> Kind {
        if conn.is_cluster() { Kind::Cluster } else { Kind::Single }
    }

    fn load(cell: &AtomicU8) -> Kind {
        match cell.load(Ordering::Relaxed) {
            1 => Kind::Single,
            2 => Kind::Cluster,
            _ => Kind::Unknown,
        }
    }
}

type Slot = Arc<Mutex<Option<Conn>>>;

enum Write {
    /// Kept apart from other commands: a publication that may not have reached Redis is still
    /// delivered to this worker's own followers, as in a bus of one. `true`: sharded (`SPUBLISH`).
    Publish(String, Vec<u8>, bool),
    Command(redis::Cmd),
}

impl Write {
    fn command(&self) -> redis::Cmd {
        match self {
            Write::Publish(chan, data, sharded) => {
                redis::cmd(if *sharded { "SPUBLISH" } else { "PUBLISH" }).arg(chan).arg(data.as_slice()).clone()
            }
            Write::Command(cmd) => cmd.clone(),
        }
    }

    /// The cluster slot it goes to (`None`: any node).
    fn slot(&self) -> Option<redis::cluster_routing::Slot> {
        match self {
            Write::Publish(chan, _, true) => Some(redis::cluster_routing::Slot::for_key(chan)),
            Write::Publish(_, _, false) => None,
            Write::Command(cmd) => slot_of(cmd),
        }
    }
}

impl RedisLink {
    pub(super) async fn start(url: &str, table: Arc<Table>, state: Arc<LinkState>, first_try: Duration) -> RedisLink {
        let conn: Slot = Arc::default();
        let kind = Arc::new(AtomicU8::new(Kind::Unknown as u8));
        let (writes, queue) = mpsc::unbounded_channel();
        // `None` until the first attempt is over, then whether the link is up.
        let (up_tx, mut up_rx) = watch::channel(None);
        let write_failed = Arc::new(Notify::new());
        tokio::spawn(write(queue, conn.clone(), table.clone(), state.clone(), write_failed.clone()));
        match Target::parse(url) {
            Ok(target) => {
                let link = Link { slot: conn.clone(), kind: kind.clone(), table, state: state.clone() };
                tokio::spawn(supervise(target, link, write_failed, up_tx));
                // Refused or not connected in time: start anyway, degraded; the task keeps trying.
                let _ = tokio::time::timeout(first_try, up_rx.wait_for(Option::is_some)).await;
            }
            // The configuration checked the URL; this is only reached if RESP3 cannot be set.
            Err(e) => {
                state.set_down(e.to_string());
                tracing::error!(error = %e, "cannot use REDIS_URL: rooms stay on this worker");
            }
        }
        RedisLink { conn, writes, state, kind }
    }

    fn connection(&self) -> Option<Conn> {
        self.conn.locked().clone()
    }

    /// What the link is to, as its last connection found.
    pub(super) fn kind(&self) -> Kind {
        Kind::load(&self.kind)
    }

    /// Whether the link is to a Redis Cluster: rooms then have channels of their own.
    pub(super) fn is_cluster(&self) -> bool {
        self.kind() == Kind::Cluster
    }

    pub(super) fn publish(&self, chan: String, val: Vec<u8>) {
        let _ = self.writes.send(Write::Publish(chan, val, false));
    }

    /// Publishes on a room's channel of a cluster, which only its shard carries.
    pub(super) fn spublish(&self, chan: String, val: Vec<u8>) {
        let _ = self.writes.send(Write::Publish(chan, val, true));
    }

    /// Queues a command after every write queued before it; its answer is ignored and a failure
    /// only logged (what is kept in Redis is a copy; the source of truth stays in the workers).
    pub(crate) fn send(&self, cmd: redis::Cmd) {
        let _ = self.writes.send(Write::Command(cmd));
    }

    /// Runs a query now; `None` when Redis is down or refuses it (a refusal is noted).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let mut conn = self.connection()?;
        match cmd.query_async(&mut conn).await {
            Ok(value) => Some(value),
            // Refused by Redis itself (a server error); anything else is the link's or ours.
            Err(e) if e.code().is_some() => {
                self.state.refused(&command_name(&cmd), &e);
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "a Redis query failed");
                None
            }
        }
    }

    pub(super) async fn subscribe(&self, chan: String) {
        let Some(mut conn) = self.connection() else { return };
        if let Err(e) = conn.subscribe(std::slice::from_ref(&chan)).await {
            // The supervising task resubscribes every channel when the connection comes back.
            tracing::debug!(channel = %chan, error = %e, "subscribing failed");
        }
    }

    pub(super) async fn unsubscribe(&self, chan: String) {
        let Some(mut conn) = self.connection() else { return };
        let _ = conn.unsubscribe(&[chan]).await;
    }

    /// Follows a room's channels (a cluster's sharded pub/sub; nothing on a single Redis, where
    /// rooms share their namespace's channel). Returns once Redis confirmed, or failed: then the
    /// supervising task subscribes them with everything else when the connection comes back.
    pub(super) async fn ssubscribe(&self, channels: &[String]) {
        let Some(mut conn) = self.connection() else { return };
        if let Err(e) = conn.ssubscribe(channels).await {
            tracing::debug!(?channels, error = %e, "subscribing to a room's channels failed");
        }
    }

    pub(super) async fn sunsubscribe(&self, channels: &[String]) {
        let Some(mut conn) = self.connection() else { return };
        let _ = conn.sunsubscribe(channels).await;
    }

    pub(super) async fn listeners(&self, chan: &str) -> Option<u16> {
        let (_, count): (String, u16) = self.query(redis::cmd("PUBSUB").arg("NUMSUB").arg(chan).clone()).await?;
        Some(count)
    }
}

/// What the supervising task keeps up to date.
struct Link {
    slot: Slot,
    kind: Arc<AtomicU8>,
    table: Arc<Table>,
    state: Arc<LinkState>,
}

impl Link {
    /// Subscribes a new connection to every channel of the table, each room's on its shard.
    async fn subscribe_all(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        let (classic, sharded) = self.table.channels();
        if !classic.is_empty() {
            conn.subscribe(&classic).await?;
        }
        if !sharded.is_empty() {
            conn.ssubscribe(&sharded).await?;
        }
        Ok(())
    }
}

/// Owns the connection: connects, resubscribes, watches, and reconnects when it is lost.
async fn supervise(target: Target, link: Link, write_failed: Arc<Notify>, up: watch::Sender<Option<bool>>) {
    let mut backoff = Duration::from_millis(100);
    let mut attempts: u32 = 0;
    let address = target.address();
    loop {
        let closed = Arc::new(Notify::new());
        let settings = Settings {
            connect_timeout: CONNECT_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
            pushes: Some(pushes(link.table.clone(), closed.clone())),
        };
        let connected = match target.connect(&settings).await {
            Ok(mut conn) => {
                let kind = Kind::of(&conn);
                let was = Kind::load(&link.kind);
                link.kind.store(kind as u8, Ordering::Relaxed);
                match kind {
                    // Rooms noted before the link knew (see `rooms`): a single Redis needs none.
                    Kind::Single => *link.table.rooms.followed.locked() = std::collections::HashSet::new(),
                    // Rooms joined meanwhile were not noted: follow them (they are not in the list
                    // `subscribe_all` is about to send).
                    Kind::Cluster if was == Kind::Single => link.table.rooms.resync.notify_one(),
                    _ => {}
                }
                *link.slot.locked() = Some(conn.clone());
                // After the slot is set: a subscription made meanwhile is either in this list or
                // made on the new connection by `subscribe` itself.
                match link.subscribe_all(&mut conn).await {
                    // A cluster with a master down is not up yet (its replica has not taken over).
                    Ok(()) => conn.check().await.map(|()| conn),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok(mut conn) => {
                let was_down = link.state.down_for();
                link.state.set_up();
                let _ = up.send(Some(true));
                let kind = if conn.is_cluster() { "a Redis Cluster" } else { "Redis" };
                match was_down {
                    Some(down) if attempts > 0 => tracing::info!(
                        redis = %address,
                        down_ms = down.as_millis() as u64,
                        "{kind} is back: rooms are shared with the other workers again"
                    ),
                    _ => tracing::info!(redis = %address, "connected to {kind}: rooms are shared through it"),
                }
                attempts = 0;
                backoff = Duration::from_millis(100);
                let why = watch_connection(&mut conn, &closed, &write_failed).await;
                *link.slot.locked() = None;
                link.state.set_down(why.clone());
                let _ = up.send(Some(false));
                tracing::warn!(
                    redis = %address,
                    reason = %why,
                    "lost Redis: serving this worker's own clients only until it is back"
                );
            }
            Err(e) => {
                *link.slot.locked() = None;
                link.state.set_down(e.clone());
                let _ = up.send(Some(false));
                // The first failure, then one line every ~minute: a long outage must not flood the log.
                if attempts.is_multiple_of(30) {
                    tracing::warn!(redis = %address, error = %e, attempts, "cannot reach Redis: degraded, retrying");
                }
                attempts += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        attempts = attempts.max(1);
    }
}

/// Returns why the connection is no longer usable.
async fn watch_connection(conn: &mut Conn, closed: &Notify, write_failed: &Notify) -> String {
    loop {
        tokio::select! {
            () = closed.notified() => return "the connection closed".into(),
            () = write_failed.notified() => {}
            () = tokio::time::sleep(PING_EVERY) => {}
        }
        if let Err(why) = conn.check().await {
            return why;
        }
    }
}

/// Where the connection's push messages go: publications (sharded ones too) to the table, the
/// library's disconnection notice to the supervising task.
fn pushes(table: Arc<Table>, closed: Arc<Notify>) -> crate::redis_conn::Pushes {
    Arc::new(move |push: PushInfo| match push.kind {
        PushKind::Message | PushKind::SMessage => {
            let mut data = push.data.into_iter();
            if let (Some(chan), Some(message)) = (data.next(), data.next())
                && let (Ok(chan), Ok(message)) = (String::from_redis_value(chan), Vec::<u8>::from_redis_value(message))
            {
                table.deliver(chan, message);
            }
        }
        PushKind::Disconnection => closed.notify_one(),
        _ => {}
    })
}

/// What became of one write.
enum Outcome {
    Done,
    /// Redis answered with an error (out of memory, ...).
    Refused(redis::RedisError),
    /// No answer: the connection failed (or there is none).
    Lost(String),
}

/// Sends queued writes in order, pipelined in batches. A command Redis refuses is noted (see
/// `LinkState::refused`) and the others of its batch still count; a publication that did not reach
/// Redis is delivered here, as when the link is down.
async fn write(
    mut queue: mpsc::UnboundedReceiver<Write>,
    slot: Slot,
    table: Arc<Table>,
    state: Arc<LinkState>,
    failed: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let conn = slot.locked().clone();
        let outcomes = match conn {
            Some(conn) => send(conn, &batch).await,
            None => batch.iter().map(|_| Outcome::Lost("not connected".to_owned())).collect(),
        };
        let mut lost = 0;
        for (write, outcome) in batch.drain(..).zip(outcomes) {
            match outcome {
                Outcome::Done => continue,
                Outcome::Refused(e) => state.refused(&command_name(&write.command()), &e),
                Outcome::Lost(why) => {
                    if lost == 0 {
                        tracing::debug!(error = %why, "writes to Redis failed");
                    }
                    lost += 1;
                }
            }
            if let Write::Publish(chan, data, _) = write {
                table.deliver(chan, data);
            }
        }
        if lost > 0 {
            failed.notify_one();
        }
    }
}

/// Sends a batch as one pipeline, or on a cluster one pipeline per slot (sent together): each
/// write's outcome, in the batch's order.
async fn send(conn: Conn, batch: &[Write]) -> Vec<Outcome> {
    let mut groups: Vec<(Option<redis::cluster_routing::Slot>, Vec<usize>)> = Vec::new();
    for (i, write) in batch.iter().enumerate() {
        let slot = if conn.is_cluster() { write.slot() } else { None };
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    let sent = futures_util::future::join_all(groups.iter().map(|(_, members)| {
        let mut conn = conn.clone();
        let mut pipe = redis::pipe();
        // One result per command, refusals among them, rather than one error for all.
        pipe.ignore_errors();
        for &i in members {
            pipe.add_command(batch[i].command());
        }
        async move { pipe.query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut conn).await }
    }))
    .await;
    let mut outcomes: Vec<Outcome> = batch.iter().map(|_| Outcome::Done).collect();
    for ((_, members), result) in groups.iter().zip(sent) {
        match result {
            Ok(results) => {
                for (&i, result) in members.iter().zip(results) {
                    if let Err(e) = result {
                        outcomes[i] = Outcome::Refused(e);
                    }
                }
            }
            Err(e) => {
                for &i in members {
                    outcomes[i] = Outcome::Lost(e.to_string());
                }
            }
        }
    }
    outcomes
}

/// A command's name, for what a refusal says.
fn command_name(cmd: &redis::Cmd) -> String {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).into_owned(),
        _ => "a command".to_owned(),
    }
}
