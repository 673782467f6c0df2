//! The local bus: a small publish/subscribe broker on `$CHATCTL_HOME/bus.sock`, so that the
//! workers of one host share rooms without Redis. Workers plug it into socketioxide-redis's
//! `Driver` (see `chat-worker`'s `bus` module), the same adapter that talks to Redis across hosts.
//!
//! The broker runs in a process of its own, `chatctl __bus`, which the daemon starts with the
//! listening socket it bound (so the path never changes hands) and starts again if it dies: a busy
//! room's publications never wait behind the daemon's supervision (probes, restarts, the CLI's
//! requests) nor the other way round. With the broker on the daemon's thread, a flood of
//! publications made `chatctl list` five times slower (`tests/bus.rs`). The process dies with
//! the daemon (`PR_SET_PDEATHSIG`); the workers reconnect to a new one by themselves.
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
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use chat_shared::bus::{
    MAX_FRAME, OP_MSG, OP_NUMSUB, OP_NUMSUB_REPLY, OP_PUB, OP_SUB, OP_UNSUB, STR_LEN_BYTES, frame, put_str, take_str,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Frames queued per subscriber before it is cut off.
const QUEUE: usize = 8192;

/// A bus process that lived this long had not been failing: the next one starts at once.
const STABLE: Duration = Duration::from_secs(10);
/// The longest wait before a failing bus process is started again.
const MOST_BACKOFF: Duration = Duration::from_secs(5);

/// Runs the broker in a process of its own (`chatctl __bus`) on `listener`, starting it again when
/// it dies, until this future is dropped (the daemon stopping), which kills it. `pid` tells the
/// daemon which process it is now; `adopted` is the one a previous image of the daemon started
/// (`chatctl update`), which goes on serving. Must run on the daemon's thread, which
/// `PR_SET_PDEATHSIG` needs (see `spawn`).
pub(crate) async fn supervise(
    listener: std::os::unix::net::UnixListener,
    pid: std::sync::Arc<std::sync::atomic::AtomicU32>,
    adopted: Option<crate::handover::Pidfd>,
) {
    use std::sync::atomic::Ordering;
    if let Some(bus) = adopted {
        // Killed if the daemon stops while it serves, as a spawned one is.
        struct KillOnDrop(Option<crate::handover::Pidfd>);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                if let Some(bus) = self.0.take() {
                    bus.kill();
                }
            }
        }
        pid.store(bus.pid(), Ordering::Relaxed);
        let mut bus = KillOnDrop(Some(bus));
        let status = match &bus.0 {
            Some(adopted) => adopted.wait().await,
            None => chat_shared::status::ExitKind::Unknown,
        };
        bus.0 = None;
        tracing::warn!(?status, "the bus process exited: starting another (workers reconnect)");
    }
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        match start(&listener) {
            Ok(mut child) => {
                tracing::info!(pid = child.id(), "bus started");
                pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
                let status = child.wait().await;
                tracing::warn!(?status, "the bus process exited: starting another (workers reconnect)");
            }
            Err(e) => tracing::error!(error = %e, "cannot start the bus process: workers do not share rooms"),
        }
        pid.store(0, Ordering::Relaxed);
        failures = if started.elapsed() > STABLE { 0 } else { failures.saturating_add(1) };
        let backoff = Duration::from_millis(100).saturating_mul(1 << failures.min(6)).min(MOST_BACKOFF);
        tokio::time::sleep(if failures == 0 { Duration::ZERO } else { backoff }).await;
    }
}

/// `chatctl __bus` with `listener` as its stdin.
fn start(listener: &std::os::unix::net::UnixListener) -> io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .arg("__bus")
        .stdin(Stdio::from(OwnedFd::from(listener.try_clone()?)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    #[allow(unsafe_code)]
    // SAFETY: `die_with` makes only async-signal-safe calls and allocates nothing.
    unsafe {
        command.pre_exec(move || crate::spawn::die_with(parent));
    }
    command.spawn()
}

/// `chatctl __bus`: the broker, on the listening socket that is its stdin, until killed.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHATCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    #[allow(unsafe_code)]
    // SAFETY: the daemon starts this process with its listening socket as fd 0, owned by nobody else.
    let listener = std::os::unix::net::UnixListener::from(unsafe { OwnedFd::from_raw_fd(0) });
    let served = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
        listener.set_nonblocking(true)?;
        runtime.block_on(async { serve(UnixListener::from_std(listener)?).await })
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "bus: cannot serve");
            ExitCode::FAILURE
        }
    }
}

enum Cmd {
    Connected(u64, mpsc::Sender<Vec<u8>>),
    Gone(u64),
    Sub(u64, String),
    Unsub(u64, String),
    Pub(String, Vec<u8>),
    NumSub(u64, u32, String),
}

/// Serves the bus on `listener`, for ever.
async fn serve(listener: UnixListener) -> io::Result<()> {
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
