//! The control socket's accept loop: one task per connection, handshake first, then requests
//! forwarded to the daemon task one at a time.

use std::time::Duration;

use std::sync::Arc;

use chat_shared::ipc::{
    self, Call, ErrorKind, Event, Hello, LogRecord, LogStream, LogTail, MAX_TAIL_LINES, PROTOCOL_VERSION, Request,
    Response, Rollout, Subscription, Welcome,
};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::daemon::msg::Msg;

/// A client that connects and says nothing is dropped after this long.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A client that sends no request for this long (outside a subscription, where it only listens) is
/// dropped: each connection holds a task and a descriptor, and a forgotten one holds them forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Overrides [`IDLE_TIMEOUT`], in milliseconds (tests use a short one).
pub(crate) const IDLE_TIMEOUT_VAR: &str = "CHATCTL_IPC_IDLE_TIMEOUT_MS";

fn idle_timeout() -> Duration {
    match std::env::var(IDLE_TIMEOUT_VAR).map(|v| v.parse::<u64>()) {
        Ok(Ok(ms)) if ms > 0 => Duration::from_millis(ms),
        Ok(_) => {
            tracing::warn!(var = IDLE_TIMEOUT_VAR, "not a positive number of milliseconds: using the default");
            IDLE_TIMEOUT
        }
        Err(_) => IDLE_TIMEOUT,
    }
}

/// Whether the peer may control this daemon: the daemon's own user, or root. The socket is 0600 in
/// a 0700 home, but a socket file's mode is not honoured everywhere, and a home can be created
/// with looser modes by hand; the kernel's record of the peer (`SO_PEERCRED`) cannot be faked.
fn peer_allowed(stream: &UnixStream) -> bool {
    let own = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == own || cred.uid() == 0 => true,
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a control connection from another user");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "refused a control connection whose peer cannot be identified");
            false
        }
    }
}

/// Lets the daemon wait, as it exits, for the answers its connections still owe (the kill's own
/// among them). A connection holds a strong sender, upgraded from its [`Owed`], from reading a
/// request until its answer is written; the daemon drops its own and waits for the channel to close.
pub(crate) struct Answers {
    owing: mpsc::Sender<()>,
    written: mpsc::Receiver<()>,
}

/// What a connection upgrades to hold an answer open (see [`Answers`]).
type Owed = mpsc::WeakSender<()>;

impl Answers {
    pub(crate) fn new() -> Answers {
        let (owing, written) = mpsc::channel(1);
        Answers { owing, written }
    }

    /// For the connections: weak, so that an idle connection does not hold the daemon up.
    pub(crate) fn owed(&self) -> Owed {
        self.owing.downgrade()
    }

    /// Returns once every answer owed is written, or after `bound`.
    pub(crate) async fn written(self, bound: Duration) {
        let Answers { owing, mut written } = self;
        drop(owing);
        // Nothing is ever sent: `recv` returns `None` once the last connection's sender is gone.
        let _ = tokio::time::timeout(bound, written.recv()).await;
    }
}

pub(crate) async fn serve(listener: UnixListener, tx: mpsc::UnboundedSender<Msg>, owed: Owed) {
    let idle = idle_timeout();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if peer_allowed(&stream) {
                    tokio::spawn(connection(stream, tx.clone(), owed.clone(), idle));
                }
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a control connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, tx: mpsc::UnboundedSender<Msg>, owed: Owed, idle: Duration) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut buf = Vec::new();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, ipc::read_frame::<_, Hello>(&mut read, &mut buf)).await;
    let version = crate::handover::version();
    let pid = std::process::id();
    match hello {
        Ok(Ok(Some(hello))) if hello.protocol == PROTOCOL_VERSION => {
            let welcome = Welcome::Accepted { protocol: PROTOCOL_VERSION, version, pid };
            if ipc::write_frame(&mut write, &welcome).await.is_err() {
                return;
            }
        }
        Ok(Ok(Some(hello))) => {
            tracing::warn!(
                client_protocol = hello.protocol,
                client_version = hello.version,
                "refused a client of another version"
            );
            let _ = ipc::write_frame(&mut write, &Welcome::Refused { protocol: PROTOCOL_VERSION, version, pid }).await;
            return;
        }
        // Not our protocol at all (or an older Hello shape): say who we are and hang up.
        Ok(Err(_)) => {
            let _ = ipc::write_frame(&mut write, &Welcome::Refused { protocol: PROTOCOL_VERSION, version, pid }).await;
            return;
        }
        Ok(Ok(None)) | Err(_) => return,
    }
    loop {
        let Ok(next) = tokio::time::timeout(idle, ipc::read_frame(&mut read, &mut buf)).await else {
            tracing::debug!(idle_ms = idle.as_millis() as u64, "closed an idle control connection");
            return;
        };
        let request: Request = match next {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                let _ =
                    ipc::write_frame(&mut write, &Response::error(ErrorKind::BadRequest, format!("bad request: {e}")))
                        .await;
                return;
            }
        };
        // How a request is carried is decided here, once, by its part.
        let going_on = match request {
            Request::Call(request) => {
                let Some(_owing) = owed.upgrade() else { return };
                call(&mut write, &tx, request).await
            }
            Request::Rollout(rollout) => {
                let Some(_owing) = owed.upgrade() else { return };
                reload(&mut write, &tx, rollout).await
            }
            Request::Subscribe(Subscription::Logs { app, lines, stream, follow }) => {
                logs(&mut read, &mut write, &tx, app, lines, stream, follow).await
            }
            Request::Subscribe(Subscription::Monitor { every_ms }) => {
                monitor(&mut read, &mut write, &tx, every_ms).await;
                false
            }
        };
        if !going_on {
            return;
        }
    }
}

/// The answer of a request whose reply the daemon dropped: it went away first.
fn stopped() -> Response {
    Response::error(ErrorKind::Stopped, "the daemon stopped")
}

/// One request, one answer. False when the connection or the daemon is gone.
async fn call(write: &mut tokio::net::unix::OwnedWriteHalf, tx: &mpsc::UnboundedSender<Msg>, call: Call) -> bool {
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send(Msg::Call(call, reply_tx)).is_err() {
        return false;
    }
    let response = reply_rx.await.unwrap_or_else(|_| stopped());
    ipc::write_frame(write, &response).await.is_ok()
}

/// `chatctl logs`: the tail as [`Event::Tail`] frames, then [`Response::Logs`], then with `follow`
/// every new line until the client hangs up. The daemon only names the files; they are read here,
/// off its thread. False when the connection is done.
async fn logs(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    tx: &mpsc::UnboundedSender<Msg>,
    app: Option<String>,
    lines: usize,
    stream: Option<LogStream>,
    follow: bool,
) -> bool {
    // Subscribe before the tail is read: a line may then be shown twice, but none is missed.
    let subscription = if follow {
        let (sub_tx, sub_rx) = oneshot::channel();
        if tx.send(Msg::Follow(sub_tx)).is_err() {
            return false;
        }
        match sub_rx.await {
            Ok(receiver) => Some(receiver),
            Err(_) => return false,
        }
    } else {
        None
    };
    let (files_tx, files_rx) = oneshot::channel();
    if tx.send(Msg::LogFiles { app: app.clone(), stream, reply: files_tx }).is_err() {
        return false;
    }
    let files = match files_rx.await {
        Ok(Ok(files)) => files,
        Ok(Err(refused)) => return ipc::write_frame(write, &refused).await.is_ok(),
        Err(_) => return false,
    };
    let per_file = lines.min(MAX_TAIL_LINES);
    if per_file > 0 && !tail(write, files, per_file).await {
        return false;
    }
    if ipc::write_frame(write, &Response::Logs { per_file }).await.is_err() {
        return false;
    }
    match subscription {
        Some(receiver) => {
            stream_logs(read, write, receiver, app, stream).await;
            false
        }
        None => true,
    }
}

/// Chunks of a tail queued between the reading thread and the connection: a client that reads
/// slowly holds the reader back by this much, and never the daemon.
const TAIL_QUEUE: usize = 4;

/// Reads the last `per_file` lines of each of `files` on the blocking pool and writes them as
/// [`Event::Tail`] frames. False when the client went away (the reader then stops too).
async fn tail(write: &mut tokio::net::unix::OwnedWriteHalf, files: Vec<LogTail>, per_file: usize) -> bool {
    let (chunks_tx, mut chunks) = mpsc::channel::<LogTail>(TAIL_QUEUE);
    let reader = tokio::task::spawn_blocking(move || {
        for file in files {
            let path = std::path::PathBuf::from(&file.path);
            let read = crate::logs::stream_tail(&path, per_file, |lines| {
                chunks_tx.blocking_send(LogTail { lines, ..file.clone() }).is_ok()
            });
            if let Err(e) = read {
                let line = format!("(cannot read {}: {e})", file.path);
                if chunks_tx.blocking_send(LogTail { lines: vec![line], ..file }).is_err() {
                    return;
                }
            }
            if chunks_tx.is_closed() {
                return;
            }
        }
    });
    while let Some(chunk) = chunks.recv().await {
        if ipc::write_frame(write, &Event::Tail(chunk)).await.is_err() {
            return false;
        }
    }
    if let Err(e) = reader.await {
        tracing::warn!(error = %e, "reading a log tail failed");
    }
    true
}

/// `chatctl monit`: a snapshot now, then one every `every_ms` (at least 200 ms), until the client
/// hangs up. Each is built from what the daemon already sampled; nothing is polled per client.
async fn monitor(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    tx: &mpsc::UnboundedSender<Msg>,
    every_ms: u64,
) {
    let every = Duration::from_millis(every_ms.max(200));
    let mut first = true;
    let mut probe = [0u8; 1];
    loop {
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send(Msg::Call(Call::Snapshot, reply_tx)).is_err() {
            return;
        }
        let Ok(Response::Snapshot(snapshot)) = reply_rx.await else { return };
        let written = if first {
            ipc::write_frame(write, &Response::Snapshot(snapshot)).await
        } else {
            ipc::write_frame(write, &Event::Snapshot(snapshot)).await
        };
        if written.is_err() {
            return;
        }
        first = false;
        tokio::select! {
            // The client sends nothing more; a read returning means it closed the connection.
            _ = read.read(&mut probe) => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Runs a reload or scale: progress events as they come, then the response. False when the
/// connection or the daemon is gone.
async fn reload(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    tx: &mpsc::UnboundedSender<Msg>,
    rollout: Rollout,
) -> bool {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (reply_tx, mut reply) = oneshot::channel();
    if tx.send(Msg::Rollout { rollout, events: events_tx, reply: reply_tx }).is_err() {
        return false;
    }
    loop {
        tokio::select! {
            biased;
            Some(event) = events.recv() => {
                if ipc::write_frame(write, &event).await.is_err() {
                    return false;
                }
            }
            response = &mut reply => {
                // Events sent before the response are still queued: deliver them first.
                while let Ok(event) = events.try_recv() {
                    if ipc::write_frame(write, &event).await.is_err() {
                        return false;
                    }
                }
                let response = response.unwrap_or_else(|_| stopped());
                return ipc::write_frame(write, &response).await.is_ok();
            }
        }
    }
}

/// Forwards captured lines of `app` (every app when `None`) until the client hangs up.
async fn stream_logs(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    mut lines: broadcast::Receiver<Arc<LogRecord>>,
    app: Option<String>,
    stream: Option<LogStream>,
) {
    let mut probe = [0u8; 1];
    loop {
        let event = tokio::select! {
            // The client sends nothing more; a read returning means it closed the connection.
            _ = read.read(&mut probe) => return,
            received = lines.recv() => match received {
                Ok(record) => {
                    let wanted = app.as_deref().is_none_or(|a| a == record.app) && stream.is_none_or(|s| s == record.stream);
                    if !wanted {
                        continue;
                    }
                    Event::Log(LogRecord::clone(&record))
                }
                Err(broadcast::error::RecvError::Lagged(count)) => Event::Skipped { count },
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if ipc::write_frame(write, &event).await.is_err() {
            return;
        }
    }
}
