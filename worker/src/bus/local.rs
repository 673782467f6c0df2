//! The link to the daemon's local bus (`chatctl`'s `bus` module is the broker; frames in
//! `chat_shared::bus`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use chat_shared::bus::{OP_MSG, OP_NUMSUB, OP_NUMSUB_REPLY, OP_PUB, OP_SUB, OP_UNSUB, frame, put_str, take_str};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::{BusError, LinkState, Table};

pub(super) struct Local {
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// `PUBSUB NUMSUB` questions waiting for the broker's answer, by request id.
    pending: Arc<Mutex<HashMap<u32, oneshot::Sender<u16>>>>,
    next_request: AtomicU32,
}

impl Local {
    pub(super) async fn connect(
        path: &std::path::Path,
        table: Arc<Table>,
        state: Arc<LinkState>,
    ) -> std::io::Result<Local> {
        let stream = UnixStream::connect(path).await?;
        let (read, mut write) = stream.into_split();
        let (out, mut frames) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Arc<Mutex<HashMap<u32, oneshot::Sender<u16>>>> = Arc::default();
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                if write.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        let waiting = pending.clone();
        tokio::spawn(async move {
            let mut read = BufReader::new(read);
            while let Ok(len) = read.read_u32().await {
                let mut frame = vec![0; (len as usize).min(chat_shared::bus::MAX_FRAME)];
                if len as usize > chat_shared::bus::MAX_FRAME || read.read_exact(&mut frame).await.is_err() {
                    break;
                }
                received(&frame, &table, &waiting);
            }
            // Fail the requests still waiting for an answer rather than leave them hanging.
            if let Ok(mut pending) = waiting.lock() {
                pending.clear();
            }
            // The daemon is gone; it takes its workers with it, so there is nothing to reconnect to.
            state.set_down("the daemon's bus closed".into());
            tracing::error!("the local bus closed: rooms are no longer shared with the other workers");
        });
        Ok(Local { out, pending, next_request: AtomicU32::new(1) })
    }

    fn send(&self, op: u8, body: &[u8]) -> Result<(), BusError> {
        self.out.send(frame(op, body)).map_err(|_| BusError::Gone)
    }

    pub(super) fn publish(&self, chan: &str, val: &[u8]) -> Result<(), BusError> {
        let mut body = Vec::with_capacity(2 + chan.len() + val.len());
        put_str(&mut body, chan);
        body.extend_from_slice(val);
        self.send(OP_PUB, &body)
    }

    pub(super) fn subscribe(&self, chan: &str) -> Result<(), BusError> {
        let mut body = Vec::new();
        put_str(&mut body, chan);
        self.send(OP_SUB, &body)
    }

    pub(super) fn unsubscribe(&self, chan: &str) -> Result<(), BusError> {
        let mut body = Vec::new();
        put_str(&mut body, chan);
        self.send(OP_UNSUB, &body)
    }

    /// How many connections of the bus follow `chan`.
    pub(super) async fn listeners(&self, chan: &str) -> Result<u16, BusError> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, tx);
        }
        let mut body = id.to_be_bytes().to_vec();
        put_str(&mut body, chan);
        self.send(OP_NUMSUB, &body)?;
        rx.await.map_err(|_| BusError::Gone)
    }
}

fn received(frame: &[u8], table: &Table, pending: &Mutex<HashMap<u32, oneshot::Sender<u16>>>) {
    let Some((&op, rest)) = frame.split_first() else { return };
    match op {
        OP_MSG => {
            if let Some((chan, data)) = take_str(rest) {
                table.deliver(chan, data.to_vec());
            }
        }
        OP_NUMSUB_REPLY if rest.len() >= 6 => {
            let id = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let count = u16::from_be_bytes([rest[4], rest[5]]);
            if let Some(reply) = pending.lock().ok().and_then(|mut p| p.remove(&id)) {
                let _ = reply.send(count);
            }
        }
        _ => {}
    }
}
