//! The local bus: a small publish/subscribe broker the daemon serves on `$CHATCTL_HOME/bus.sock`,
//! so that the workers of one host share rooms without Redis. Workers plug it into
//! socketioxide-redis's `Driver` (see `chat-worker`'s `bus` module), the same adapter that talks to
//! Redis across hosts.
//!
//! Frames, both ways: a big-endian `u32` length, then an op byte, then fields:
//! - `SUB chan` / `UNSUB chan` (client): start or stop receiving `chan`;
//! - `PUB chan data` (client): deliver `data` to every subscriber of `chan`, the sender included;
//! - `NUMSUB id chan` (client) → `NUMSUB_REPLY id count`: how many connections subscribe to `chan`;
//! - `MSG chan data` (broker): a publication.
//!
//! Strings are a big-endian `u16` length and UTF-8 bytes; `data` is the rest of the frame. A
//! subscriber that cannot keep up (its queue of [`QUEUE`] frames is full) misses publications, with
//! a warning, rather than slowing every worker down; it stays connected, because a worker has no
//! other way to share rooms.

use std::collections::{HashMap, HashSet};
use std::io;

use chat_shared::bus::{
    MAX_FRAME, OP_MSG, OP_NUMSUB, OP_NUMSUB_REPLY, OP_PUB, OP_SUB, OP_UNSUB, STR_LEN_BYTES, frame, put_str, take_str,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Frames queued per subscriber before it is cut off.
const QUEUE: usize = 8192;

enum Cmd {
    Connected(u64, mpsc::Sender<Vec<u8>>),
    Gone(u64),
    Sub(u64, String),
    Unsub(u64, String),
    Pub(String, Vec<u8>),
    NumSub(u64, u32, String),
}

/// Serves the bus on `listener` until the daemon stops.
pub(crate) async fn serve(listener: UnixListener) {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(broker(rx));
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accepting a bus connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        tokio::spawn(connection(next_id, stream, tx.clone()));
    }
}

async fn connection(id: u64, stream: UnixStream, broker: mpsc::UnboundedSender<Cmd>) {
    let (read, mut write) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    if broker.send(Cmd::Connected(id, out_tx)).is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut read = BufReader::new(read);
    while let Ok(frame) = read_frame(&mut read).await {
        let Some(cmd) = decode(id, &frame) else { break };
        if broker.send(cmd).is_err() {
            break;
        }
    }
    let _ = broker.send(Cmd::Gone(id));
    writer.abort();
}

async fn read_frame(read: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Vec<u8>> {
    let len = read.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bus frame too large"));
    }
    let mut frame = vec![0; len];
    read.read_exact(&mut frame).await?;
    Ok(frame)
}

fn decode(id: u64, frame: &[u8]) -> Option<Cmd> {
    let (&op, rest) = frame.split_first()?;
    match op {
        OP_SUB => take_str(rest).map(|(chan, _)| Cmd::Sub(id, chan)),
        OP_UNSUB => take_str(rest).map(|(chan, _)| Cmd::Unsub(id, chan)),
        OP_PUB => take_str(rest).map(|(chan, data)| Cmd::Pub(chan, data.to_vec())),
        OP_NUMSUB => {
            let request = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
            take_str(&rest[4..]).map(|(chan, _)| Cmd::NumSub(id, request, chan))
        }
        _ => None,
    }
}

/// The one task that owns the subscriptions.
async fn broker(mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut connections: HashMap<u64, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut channels: HashMap<String, HashSet<u64>> = HashMap::new();
    let mut dropped = 0u64;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Connected(id, tx) => {
                connections.insert(id, tx);
            }
            Cmd::Gone(id) => {
                connections.remove(&id);
                channels.retain(|_, subscribers| {
                    subscribers.remove(&id);
                    !subscribers.is_empty()
                });
            }
            Cmd::Sub(id, chan) => {
                channels.entry(chan).or_default().insert(id);
            }
            Cmd::Unsub(id, chan) => {
                if let Some(subscribers) = channels.get_mut(&chan) {
                    subscribers.remove(&id);
                    if subscribers.is_empty() {
                        channels.remove(&chan);
                    }
                }
            }
            Cmd::Pub(chan, data) => {
                let Some(subscribers) = channels.get(&chan) else { continue };
                let mut body = Vec::with_capacity(STR_LEN_BYTES + chan.len() + data.len());
                put_str(&mut body, &chan);
                body.extend_from_slice(&data);
                let message = frame(OP_MSG, &body);
                for id in subscribers {
                    let Some(tx) = connections.get(id) else { continue };
                    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(message.clone()) {
                        dropped += 1;
                        // One warning per power of two: a stuck worker must not flood the log.
                        if dropped.is_power_of_two() {
                            tracing::warn!(
                                connection = id,
                                dropped,
                                "a bus subscriber fell behind: publications dropped"
                            );
                        }
                    }
                }
            }
            Cmd::NumSub(id, request, chan) => {
                let count = channels.get(&chan).map_or(0, HashSet::len);
                let mut body = request.to_be_bytes().to_vec();
                body.extend_from_slice(&u16::try_from(count).unwrap_or(u16::MAX).to_be_bytes());
                if let Some(tx) = connections.get(&id) {
                    let _ = tx.try_send(frame(OP_NUMSUB_REPLY, &body));
                }
            }
        }
    }
}
