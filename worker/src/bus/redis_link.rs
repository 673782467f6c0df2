//! The link to Redis: pub/sub for the adapter and the shared channels, plus the few keys this app
//! keeps there (sessions, history streams).
//!
//! socketioxide-redis ships a Redis driver, but it takes one connection at start and has no way back
//! when it drops: a worker could neither start while Redis is down nor rejoin when it returns, which
//! the chat needs. Here one task owns the connection: it connects (RESP3, so subscriptions and
//! commands share one multiplexed connection), subscribes to every channel in the table, watches
//! the connection (the library's disconnection notice, and a PING a second), and on loss marks the
//! link down and reconnects with a backoff up to 2 s. While down, the driver is a bus of one.
//!
//! Writes leave through one queue, pipelined in batches: a worker's publications reach Redis in the
//! order it made them, and a burst costs one round trip instead of one each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_shared::sync::Locked;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::{Notify, mpsc, watch};

use super::{LinkState, Table};

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
    conn: Arc<Mutex<Option<MultiplexedConnection>>>,
    writes: mpsc::UnboundedSender<Write>,
    state: Arc<LinkState>,
}

enum Write {
    /// Kept apart from other commands: a publication that may not have reached Redis is still
    /// delivered to this worker's own followers, as in a bus of one.
    Publish(String, Vec<u8>),
    Command(redis::Cmd),
}

impl RedisLink {
    pub(super) async fn start(url: &str, table: Arc<Table>, state: Arc<LinkState>, first_try: Duration) -> RedisLink {
        let conn: Arc<Mutex<Option<MultiplexedConnection>>> = Arc::default();
        let (writes, queue) = mpsc::unbounded_channel();
        // `None` until the first attempt is over, then whether the link is up.
        let (up_tx, mut up_rx) = watch::channel(None);
        let write_failed = Arc::new(Notify::new());
        tokio::spawn(write(queue, conn.clone(), table.clone(), state.clone(), write_failed.clone()));
        match client(url) {
            Ok(client) => {
                tokio::spawn(supervise(client, conn.clone(), table, state.clone(), write_failed, up_tx));
                // Refused or not connected in time: start anyway, degraded; the task keeps trying.
                let _ = tokio::time::timeout(first_try, up_rx.wait_for(Option::is_some)).await;
            }
            // The configuration checked the URL; this is only reached if RESP3 cannot be set.
            Err(e) => {
                state.set_down(e.to_string());
                tracing::error!(error = %e, "cannot use REDIS_URL: rooms stay on this worker");
            }
        }
        RedisLink { conn, writes, state }
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.locked().clone()
    }

    pub(super) fn publish(&self, chan: String, val: Vec<u8>) {
        let _ = self.writes.send(Write::Publish(chan, val));
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
        if let Err(e) = conn.subscribe(&chan).await {
            // The supervising task resubscribes every channel when the connection comes back.
            tracing::debug!(channel = %chan, error = %e, "subscribing failed");
        }
    }

    pub(super) async fn unsubscribe(&self, chan: String) {
        let Some(mut conn) = self.connection() else { return };
        let _ = conn.unsubscribe(&chan).await;
    }

    pub(super) async fn listeners(&self, chan: &str) -> Option<u16> {
        let (_, count): (String, u16) = self.query(redis::cmd("PUBSUB").arg("NUMSUB").arg(chan).clone()).await?;
        Some(count)
    }
}

fn client(url: &str) -> redis::RedisResult<Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(settings))
}

/// Owns the connection: connects, resubscribes, watches, and reconnects when it is lost.
async fn supervise(
    client: Client,
    slot: Arc<Mutex<Option<MultiplexedConnection>>>,
    table: Arc<Table>,
    state: Arc<LinkState>,
    write_failed: Arc<Notify>,
    up: watch::Sender<Option<bool>>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut attempts: u32 = 0;
    let address = client.get_connection_info().addr().to_string();
    loop {
        let closed = Arc::new(Notify::new());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(pushes(table.clone(), closed.clone()));
        let connected = match client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(mut conn) => {
                *slot.locked() = Some(conn.clone());
                // After the slot is set: a subscription made meanwhile is either in this list or
                // made on the new connection by `subscribe` itself.
                let channels = table.channels();
                match if channels.is_empty() { Ok(()) } else { conn.subscribe(&channels).await } {
                    Ok(()) => Ok(conn),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match connected {
            Ok(mut conn) => {
                let was_down = state.down_for();
                state.set_up();
                let _ = up.send(Some(true));
                match was_down {
                    Some(down) if attempts > 0 => tracing::info!(
                        redis = %address,
                        down_ms = down.as_millis() as u64,
                        "Redis is back: rooms are shared with the other workers again"
                    ),
                    _ => tracing::info!(redis = %address, "connected to Redis: rooms are shared through it"),
                }
                attempts = 0;
                backoff = Duration::from_millis(100);
                let why = watch_connection(&mut conn, &closed, &write_failed).await;
                *slot.locked() = None;
                state.set_down(why.clone());
                let _ = up.send(Some(false));
                tracing::warn!(
                    redis = %address,
                    reason = %why,
                    "lost Redis: serving this worker's own clients only until it is back"
                );
            }
            Err(e) => {
                *slot.locked() = None;
                state.set_down(e.to_string());
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
async fn watch_connection(conn: &mut MultiplexedConnection, closed: &Notify, write_failed: &Notify) -> String {
    loop {
        tokio::select! {
            () = closed.notified() => return "the connection closed".into(),
            () = write_failed.notified() => {}
            () = tokio::time::sleep(PING_EVERY) => {}
        }
        if let Err(e) = redis::cmd("PING").query_async::<()>(conn).await {
            return e.to_string();
        }
    }
}

/// Where the connection's push messages go: publications to the table, the library's disconnection
/// notice to the supervising task.
fn pushes(table: Arc<Table>, closed: Arc<Notify>) -> impl Fn(PushInfo) -> Result<(), std::convert::Infallible> {
    move |push: PushInfo| {
        match push.kind {
            PushKind::Message => {
                let mut data = push.data.into_iter();
                if let (Some(chan), Some(message)) = (data.next(), data.next())
                    && let (Ok(chan), Ok(message)) =
                        (String::from_redis_value(chan), Vec::<u8>::from_redis_value(message))
                {
                    table.deliver(chan, message);
                }
            }
            PushKind::Disconnection => closed.notify_one(),
            _ => {}
        }
        Ok(())
    }
}

/// Sends queued writes in order, pipelined in batches. A command Redis refuses is noted (see
/// `LinkState::refused`) and the others of its batch still count; a publication Redis refused is
/// delivered here, as when the link is down.
async fn write(
    mut queue: mpsc::UnboundedReceiver<Write>,
    slot: Arc<Mutex<Option<MultiplexedConnection>>>,
    table: Arc<Table>,
    state: Arc<LinkState>,
    failed: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let conn = slot.locked().clone();
        let result = match conn {
            Some(mut conn) => {
                let mut pipe = redis::pipe();
                // One result per command, refusals among them, rather than one error for all.
                pipe.ignore_errors();
                for write in &batch {
                    match write {
                        Write::Publish(chan, data) => pipe.cmd("PUBLISH").arg(chan).arg(data.as_slice()),
                        Write::Command(cmd) => pipe.add_command(cmd.clone()),
                    };
                }
                pipe.query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut conn).await.map_err(|e| e.to_string())
            }
            None => Err("not connected".to_owned()),
        };
        match result {
            Ok(results) => {
                for (write, result) in batch.drain(..).zip(results) {
                    let Err(e) = result else { continue };
                    match write {
                        Write::Publish(chan, data) => {
                            state.refused("PUBLISH", &e);
                            table.deliver(chan, data);
                        }
                        Write::Command(cmd) => state.refused(&command_name(&cmd), &e),
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, writes = batch.len(), "writes to Redis failed");
                failed.notify_one();
                for write in batch.drain(..) {
                    if let Write::Publish(chan, data) = write {
                        table.deliver(chan, data);
                    }
                }
            }
        }
        batch.clear();
    }
}

/// A command's name, for what a refusal says.
fn command_name(cmd: &redis::Cmd) -> String {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).into_owned(),
        _ => "a command".to_owned(),
    }
}
