//! The link to the daemon's local bus (`chatctl`'s `bus` module is the broker; frames in
//! `chat_shared::bus`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_shared::bus::{
    OP_MSG, OP_NUMSUB, OP_NUMSUB_REPLY, OP_PUB, OP_SUB, OP_UNSUB, STR_LEN_BYTES, frame, put_str, take_str,
};
use chat_shared::sync::Locked;
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
    /// Connects to the daemon's bus at `path` (the first connection must succeed), then keeps the
    /// link: a link that closes while the daemon lives (it drops a connection that sent a frame it
    /// refuses) is reconnected, and every channel of `table` followed again.
    pub(super) async fn connect(
        path: &std::path::Path,
        table: Arc<Table>,
        state: Arc<LinkState>,
    ) -> std::io::Result<Local> {
        let stream = UnixStream::connect(path).await?;
        let (out, frames) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Arc<Mutex<HashMap<u32, oneshot::Sender<u16>>>> = Arc::default();
        tokio::spawn(keep(path.to_owned(), stream, frames, table, state, pending.clone()));
        Ok(Local { out, pending, next_request: AtomicU32::new(1) })
    }

    fn send(&self, op: u8, body: &[u8]) -> Result<(), BusError> {
        self.out.send(frame(op, body)).map_err(|_| BusError::Gone)
    }

    pub(super) fn publish(&self, chan: &str, val: &[u8]) -> Result<(), BusError> {
        // The broker drops a connection that sends a larger frame: refused here, it costs one
        // publication instead of the link.
        if 1 + STR_LEN_BYTES + chan.len() + val.len() > chat_shared::bus::MAX_FRAME {
            return Err(BusError::TooBig { channel: chan.to_owned(), bytes: val.len() });
        }
        let mut body = Vec::with_capacity(STR_LEN_BYTES + chan.len() + val.len());
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
        self.pending.locked().insert(id, tx);
        let mut body = id.to_be_bytes().to_vec();
        put_str(&mut body, chan);
        self.send(OP_NUMSUB, &body)?;
        rx.await.map_err(|_| BusError::Gone)
    }
}

/// The longest wait between two tries to reconnect.
const RECONNECT_AT_MOST: Duration = Duration::from_secs(2);

/// Runs the link: frames from `frames` to the broker, the broker's to `table`; reconnects when the
/// connection closes, for as long as the worker holds its `Local`.
async fn keep(
    path: PathBuf,
    mut stream: UnixStream,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    table: Arc<Table>,
    state: Arc<LinkState>,
    pending: Arc<Mutex<HashMap<u32, oneshot::Sender<u16>>>>,
) {
    loop {
        let (read, mut write) = stream.into_split();
        let mut reader = tokio::spawn(read_frames(read, table.clone(), pending.clone()));
        let closed = loop {
            tokio::select! {
                frame = frames.recv() => match frame {
                    // The worker is done with the link.
                    None => { reader.abort(); return; }
                    Some(frame) => if write.write_all(&frame).await.is_err() { break "the daemon's bus refused a write" },
                },
                _ = &mut reader => break "the daemon's bus closed",
            }
        };
        reader.abort();
        // Fail the requests still waiting for an answer rather than leave them hanging.
        pending.locked().clear();
        state.set_down(closed.into());
        tracing::error!(
            reason = closed,
            "the local bus link is down: rooms are not shared with the other workers until it is back"
        );
        let mut pause = Duration::from_millis(50);
        stream = loop {
            tokio::time::sleep(pause).await;
            match UnixStream::connect(&path).await {
                Ok(stream) => break stream,
                Err(e) => {
                    tracing::debug!(error = %e, "the local bus is not back yet");
                    pause = (pause * 2).min(RECONNECT_AT_MOST);
                }
            }
        };
        // Follow again everything this worker follows, before anything else is sent.
        for chan in table.channels().0 {
            let mut body = Vec::new();
            put_str(&mut body, &chan);
            if stream.write_all(&frame(OP_SUB, &body)).await.is_err() {
                break;
            }
        }
        state.set_up();
        tracing::info!("the local bus link is back");
    }
}

async fn read_frames(
    read: tokio::net::unix::OwnedReadHalf,
    table: Arc<Table>,
    pending: Arc<Mutex<HashMap<u32, oneshot::Sender<u16>>>>,
) {
    let mut read = BufReader::new(read);
    while let Ok(len) = read.read_u32().await {
        if len as usize > chat_shared::bus::MAX_FRAME {
            return;
        }
        let mut frame = vec![0; len as usize];
        if read.read_exact(&mut frame).await.is_err() {
            return;
        }
        received(&frame, &table, &pending);
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
            if let Some(reply) = pending.locked().remove(&id) {
                let _ = reply.send(count);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// Reads one frame as the broker does.
    async fn read_frame(stream: &mut UnixStream) -> Vec<u8> {
        let len = stream.read_u32().await.expect("a frame's length");
        let mut frame = vec![0; len as usize];
        stream.read_exact(&mut frame).await.expect("a frame");
        frame
    }

    #[tokio::test]
    async fn a_closed_link_comes_back_and_follows_its_channels_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bus.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let table = Arc::new(Table::default());
        let state = Arc::new(LinkState::new("local", true));
        let local = Local::connect(&path, table.clone(), state.clone()).await.expect("connect");
        let (mut first, _) = listener.accept().await.expect("first connection");
        table.subscriptions.lock().expect("table").insert("room".into(), mpsc::channel(1).0);
        local.subscribe("room").expect("subscribe");
        assert_eq!(read_frame(&mut first).await[0], OP_SUB);
        // The broker drops the connection (as it does one that sent a frame it refuses).
        drop(first);
        let (mut second, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("reconnected within 5 s")
            .expect("second connection");
        let again = read_frame(&mut second).await;
        assert_eq!(again[0], OP_SUB);
        assert_eq!(take_str(&again[1..]).map(|(chan, _)| chan), Some("room".to_owned()));
        for _ in 0..100 {
            if state.is_up() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(state.is_up(), "the link is up again");
        let too_big = vec![0u8; chat_shared::bus::MAX_FRAME];
        assert!(matches!(local.publish("room", &too_big), Err(BusError::TooBig { .. })), "refused, not sent");
    }
}
