//! socketioxide-redis's `Driver` over the daemon's local bus (`CHATCTL_BUS`), so that the workers of
//! one host share rooms without Redis; the same adapter talks to Redis across hosts. Run on its own
//! (no bus), the driver is a bus of one: publications come straight back, so the adapter behaves
//! as a single server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use chat_shared::bus::{OP_MSG, OP_NUMSUB, OP_NUMSUB_REPLY, OP_PUB, OP_SUB, OP_UNSUB, frame, put_str, take_str};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the local bus is gone")]
    Gone,
}

#[derive(Clone)]
pub struct BusDriver {
    inner: Arc<Inner>,
}

struct Inner {
    /// Frames to the bus; `None` for a bus of one.
    out: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// `std::sync::Mutex`: held for an insert or a lookup, never across an await.
    subscriptions: Mutex<HashMap<String, mpsc::Sender<ChanItem>>>,
    pending: Mutex<HashMap<u32, oneshot::Sender<u16>>>,
    next_request: AtomicU32,
}

impl BusDriver {
    /// A bus of one, for a worker run without chatctl.
    pub fn solo() -> BusDriver {
        BusDriver { inner: Arc::new(Inner::new(None)) }
    }

    /// Connects to the daemon's bus at `path`.
    pub async fn connect(path: &std::path::Path) -> std::io::Result<BusDriver> {
        let stream = UnixStream::connect(path).await?;
        let (read, mut write) = stream.into_split();
        let (out, mut frames) = mpsc::unbounded_channel::<Vec<u8>>();
        let inner = Arc::new(Inner::new(Some(out)));
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                if write.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        let reader = inner.clone();
        tokio::spawn(async move {
            let mut read = BufReader::new(read);
            while let Ok(len) = read.read_u32().await {
                let mut frame = vec![0; (len as usize).min(chat_shared::bus::MAX_FRAME)];
                if len as usize > chat_shared::bus::MAX_FRAME || read.read_exact(&mut frame).await.is_err() {
                    break;
                }
                reader.received(&frame);
            }
            // Fail the requests still waiting for an answer rather than leave them hanging.
            if let Ok(mut pending) = reader.pending.lock() {
                pending.clear();
            }
            // The daemon is gone; it takes its workers with it, so there is nothing to reconnect to.
            tracing::error!("the local bus closed: rooms are no longer shared with the other workers");
        });
        Ok(BusDriver { inner })
    }
}

impl BusDriver {
    /// Publishes without awaiting: the frame is queued for the bus (or delivered at once in a bus of
    /// one), so code holding a lock or outside an async context can publish too.
    pub fn publish_now(&self, chan: String, val: Vec<u8>) -> Result<(), BusError> {
        if self.inner.out.is_none() {
            self.inner.deliver(chan, val);
            return Ok(());
        }
        let mut body = Vec::with_capacity(2 + chan.len() + val.len());
        put_str(&mut body, &chan);
        body.extend_from_slice(&val);
        self.inner.send(OP_PUB, &body)
    }
}

impl Inner {
    fn new(out: Option<mpsc::UnboundedSender<Vec<u8>>>) -> Inner {
        Inner {
            out,
            subscriptions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU32::new(1),
        }
    }

    fn send(&self, op: u8, body: &[u8]) -> Result<(), BusError> {
        match &self.out {
            Some(out) => out.send(frame(op, body)).map_err(|_| BusError::Gone),
            None => Ok(()),
        }
    }

    fn deliver(&self, chan: String, data: Vec<u8>) {
        let sender = self.subscriptions.lock().ok().and_then(|s| s.get(&chan).cloned());
        if let Some(sender) = sender
            && sender.try_send((chan, data)).is_err()
        {
            tracing::warn!("an adapter subscription fell behind: a cluster message was dropped");
        }
    }

    fn received(&self, frame: &[u8]) {
        let Some((&op, rest)) = frame.split_first() else { return };
        match op {
            OP_MSG => {
                if let Some((chan, data)) = take_str(rest) {
                    self.deliver(chan, data.to_vec());
                }
            }
            OP_NUMSUB_REPLY if rest.len() >= 6 => {
                let id = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let count = u16::from_be_bytes([rest[4], rest[5]]);
                if let Some(reply) = self.pending.lock().ok().and_then(|mut p| p.remove(&id)) {
                    let _ = reply.send(count);
                }
            }
            _ => {}
        }
    }
}

impl Driver for BusDriver {
    type Error = BusError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), BusError> {
        self.publish_now(chan, val)
    }

    async fn subscribe(&self, chan: String, size: usize) -> Result<MessageStream<ChanItem>, BusError> {
        let (tx, rx) = mpsc::channel(size.max(1));
        if let Ok(mut subscriptions) = self.inner.subscriptions.lock() {
            subscriptions.insert(chan.clone(), tx);
        }
        let mut body = Vec::new();
        put_str(&mut body, &chan);
        self.inner.send(OP_SUB, &body)?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), BusError> {
        if let Ok(mut subscriptions) = self.inner.subscriptions.lock() {
            subscriptions.remove(&chan);
        }
        let mut body = Vec::new();
        put_str(&mut body, &chan);
        self.inner.send(OP_UNSUB, &body)
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, BusError> {
        if self.inner.out.is_none() {
            let subscribed = self.inner.subscriptions.lock().is_ok_and(|s| s.contains_key(chan));
            return Ok(u16::from(subscribed));
        }
        let id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.insert(id, tx);
        }
        let mut body = id.to_be_bytes().to_vec();
        put_str(&mut body, chan);
        self.inner.send(OP_NUMSUB, &body)?;
        rx.await.map_err(|_| BusError::Gone)
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

    /// No other worker listens: a bus of one.
    pub fn is_solo(&self) -> bool {
        self.driver.inner.out.is_none()
    }

    /// How many workers follow this channel (this one included once it does).
    pub async fn listeners(&self) -> u16 {
        self.driver.num_serv(&self.name).await.unwrap_or(0)
    }

    pub fn tell<T: serde::Serialize>(&self, value: &T) {
        match serde_json::to_vec(value) {
            Ok(data) => {
                if let Err(e) = self.driver.publish_now(self.name.clone(), data) {
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

    /// [`Channel::follow`], calling `subscribed` once the bus has the subscription (what is told
    /// after that reaches this worker).
    pub async fn follow_then<T: serde::de::DeserializeOwned>(
        &self,
        size: usize,
        subscribed: impl FnOnce(),
        mut apply: impl FnMut(T),
    ) {
        let mut stream = match self.driver.subscribe(self.name.clone(), size).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(channel = %self.name, error = %e, "cannot follow the other workers");
                return;
            }
        };
        // Frames leave in order on one connection: the broker registers the subscription first.
        subscribed();
        while let Some((_, data)) = futures_util::StreamExt::next(&mut stream).await {
            match serde_json::from_slice::<T>(&data) {
                Ok(value) => apply(value),
                Err(e) => tracing::debug!(channel = %self.name, error = %e, "a malformed value was ignored"),
            }
        }
    }
}
