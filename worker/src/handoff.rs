//! Long-polling across the instances of one shared port, without sticky sessions.
//!
//! A Socket.IO session lives in one worker, but every new TCP connection to a shared port lands on
//! any of them. A websocket client makes one connection per session, so that is fine. A polling
//! client makes a request per poll and per send, and its upgrade to websocket is a new connection
//! too: each lands on the wrong worker N-1 times in N ("Session ID unknown"). That is why Node's
//! cluster needs a sticky balancer in front, and why PM2's cluster mode cannot do polling.
//!
//! Here a worker peeks (`MSG_PEEK`: nothing is consumed) at the request line of each connection it
//! accepts. When the request names an engine.io session (`sid=`) this worker does not have, it
//! offers the connection itself (its descriptor, over `SCM_RIGHTS`) to the other workers of the app
//! through their Unix sockets in the app's handoff directory. The owner takes it and serves it as if
//! it had accepted it, request still unread; the others decline. Nothing is proxied, so a handed
//! websocket costs nothing after its upgrade. Polling responses carry `Connection: close`, so each
//! poll is a new connection and is routed again (a kept-alive connection could next carry another
//! tab's session, or a proxy's pooled connection another client's).
//!
//! One host only: descriptors do not cross machines, so a balancer in front of several hosts still
//! needs stickiness for polling clients (websocket clients need none).

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use chat_shared::sync::Locked;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use socketioxide::SocketIo;
use socketioxide::socket::Sid;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::admission::{Admission, Conn, FIRST_LINE};
use crate::bus::Adapter;

/// Where socketioxide serves engine.io (its default).
const ENGINE_PATH: &str = "/socket.io";

/// How long a session opened by a polling handshake counts as ours before it connects to a
/// namespace (then socketioxide knows it): engine.io's connect timeout is 45 s.
const OPEN_WINDOW: Duration = Duration::from_secs(60);

/// How long the offering worker waits for a sibling's answer. On no answer it cannot know whether
/// the sibling took the connection, so it closes its copy rather than risk two servers on one.
const ANSWER: Duration = Duration::from_secs(2);

/// After how long a remembered session owner is stale (longer than engine.io's ping interval plus
/// timeout: the session is gone).
const OWNER_HINT: Duration = Duration::from_secs(120);

/// Sessions noted with the time they were noted, forgotten once older than `max_age`. Stale entries
/// are swept when the table has doubled since the last sweep: O(1) a note, however many sessions.
struct Noted<V> {
    entries: HashMap<Sid, (V, Instant)>,
    max_age: Duration,
    sweep_at: usize,
}

impl<V> Noted<V> {
    fn new(max_age: Duration) -> Noted<V> {
        Noted { entries: HashMap::new(), max_age, sweep_at: 1024 }
    }

    fn note(&mut self, sid: Sid, value: V) {
        if self.entries.len() >= self.sweep_at {
            let max_age = self.max_age;
            self.entries.retain(|_, (_, at)| at.elapsed() < max_age);
            self.sweep_at = (self.entries.len() * 2).max(1024);
        }
        self.entries.insert(sid, (value, Instant::now()));
    }

    fn get(&self, sid: &Sid) -> Option<&V> {
        self.entries.get(sid).filter(|(_, at)| at.elapsed() < self.max_age).map(|(value, _)| value)
    }

    fn forget(&mut self, sid: &Sid) {
        self.entries.remove(sid);
    }
}

/// Connections waiting to be served by this worker: accepted and routed here, or handed in.
type Incoming = (Conn, SocketAddr);

/// This worker's end of the handoff: its Unix socket in the app's directory and the sessions it has.
pub struct Handoff {
    dir: PathBuf,
    own: PathBuf,
    io: SocketIo<Adapter>,
    /// Sessions opened here by a polling handshake and not yet connected to a namespace.
    opened: Mutex<Noted<()>>,
    /// Which worker took a session's connections from here: a polling session sends a request
    /// every few seconds, and with many instances asking each in turn every time adds up.
    owners: Mutex<Noted<PathBuf>>,
    /// Set when draining: connections are no longer taken in.
    closed: AtomicBool,
    /// Connections taken in count against this worker's cap too.
    admission: Admission,
    handed: AtomicU64,
    taken: AtomicU64,
    lost: AtomicU64,
}

impl Handoff {
    /// Binds `DIR/INSTANCE-PID.sock` (a reload's successor runs beside its predecessor), and takes
    /// in connections offered there for as long as the worker runs.
    pub fn start(
        dir: &Path,
        instance: &str,
        io: SocketIo<Adapter>,
        admission: Admission,
    ) -> io::Result<(Arc<Handoff>, Incomings)> {
        // Whoever can connect there can hand this worker connections: the app's user only.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(dir)?;
        let own = dir.join(format!("{instance}-{}.sock", std::process::id()));
        // A file of that name can only be a leftover of a process that had our pid.
        let _ = std::fs::remove_file(&own);
        let listener = UnixListener::bind(&own)?;
        let handoff = Arc::new(Handoff {
            dir: dir.to_owned(),
            own,
            io,
            opened: Mutex::new(Noted::new(OPEN_WINDOW)),
            owners: Mutex::new(Noted::new(OWNER_HINT)),
            closed: AtomicBool::new(false),
            admission,
            handed: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        });
        let incomings = Incomings::new(Some(handoff.clone()));
        tokio::spawn(handoff.clone().take_in(listener, incomings.tx.clone()));
        tracing::debug!(path = %handoff.own.display(), "taking polling sessions' connections from the other instances");
        Ok((handoff, incomings))
    }

    /// Stops taking connections in (draining: sessions here are about to close).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.own);
    }

    /// What was handed out, taken in and lost since the worker started (for `/health`).
    pub fn figures(&self) -> chat_shared::health::HandoffHealth {
        chat_shared::health::HandoffHealth {
            handed: self.handed.load(Ordering::Relaxed),
            taken: self.taken.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }

    /// Whether the engine.io session `sid` lives in this worker.
    fn owns(&self, sid: Sid) -> bool {
        if self.io.get_socket(sid).is_some() {
            return true;
        }
        self.opened.locked().get(&sid).is_some()
    }

    fn opened(&self, sid: Sid) {
        self.opened.locked().note(sid, ());
    }

    async fn take_in(self: Arc<Self>, listener: UnixListener, tx: mpsc::Sender<Incoming>) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (this, tx) = (self.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Err(e) = this.take(stream, tx).await {
                            tracing::debug!(error = %e, "a connection offered by another instance was not taken");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "handoff socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Answers one offer: `1` and the connection is ours, or `0` and our copy is closed.
    async fn take(&self, mut stream: UnixStream, tx: mpsc::Sender<Incoming>) -> io::Result<()> {
        let (sid, fd) = tokio::time::timeout(ANSWER, receive(&stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no offer"))??;
        let tcp = std::net::TcpStream::from(fd);
        // Only a connected TCP socket has an internet peer address.
        let peer = tcp.peer_addr()?;
        let mine = !self.closed.load(Ordering::SeqCst) && self.owns(sid);
        stream.write_all(if mine { b"1" } else { b"0" }).await?;
        if mine {
            tcp.set_nonblocking(true)?;
            let conn = self.admission.admit(TcpStream::from_std(tcp)?);
            self.taken.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%peer, sid = %sid, "took a connection for a session of ours");
            let _ = tx.send((conn, peer)).await;
        }
        Ok(())
    }

    /// Offers `tcp` to the other workers of the app until one takes it: first to the one that took
    /// this session's last connection from here, then to each in turn.
    async fn pass(&self, tcp: &TcpStream, sid: Sid) -> Passed {
        let hint = self.lock_owners().get(&sid).cloned();
        if let Some(path) = &hint {
            if let Some(passed) = self.offer_to(path, tcp, sid).await {
                self.lock_owners().note(sid, path.clone());
                return passed;
            }
            self.lock_owners().forget(&sid);
        }
        // A handful of entries on a local directory: cheaper read at once than through a thread.
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Passed::Nobody };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path == self.own || hint.as_ref() == Some(&path) || path.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            if let Some(passed) = self.offer_to(&path, tcp, sid).await {
                if matches!(passed, Passed::Taken) {
                    self.lock_owners().note(sid, path);
                }
                return passed;
            }
        }
        Passed::Nobody
    }

    /// Offers `tcp` to the worker at `path`: `None` when it did not take it (and nothing is lost).
    async fn offer_to(&self, path: &Path, tcp: &TcpStream, sid: Sid) -> Option<Passed> {
        match offer(path, tcp, sid).await {
            Ok(true) => Some(Passed::Taken),
            Ok(false) => None,
            Err(Offer::Unreachable(e)) => {
                // Nobody listens there any more: a worker that was killed before it could clean up.
                if matches!(e.kind(), io::ErrorKind::ConnectionRefused) {
                    let _ = std::fs::remove_file(path);
                }
                tracing::debug!(path = %path.display(), error = %e, "cannot offer a connection");
                None
            }
            Err(Offer::Unanswered(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "an instance did not answer a handoff; closing the connection");
                Some(Passed::Lost)
            }
        }
    }

    fn lock_owners(&self) -> std::sync::MutexGuard<'_, Noted<PathBuf>> {
        self.owners.locked()
    }
}

enum Passed {
    Taken,
    /// Offered, but we cannot know whether it was taken: closed.
    Lost,
    Nobody,
}

enum Offer {
    /// Nothing was sent: the connection is still only ours.
    Unreachable(io::Error),
    /// Sent, and no answer.
    Unanswered(io::Error),
}

/// Sends `sid` with a copy of `tcp`'s descriptor to the worker listening at `path`; `true` if it took it.
async fn offer(path: &Path, tcp: &TcpStream, sid: Sid) -> Result<bool, Offer> {
    let mut stream = UnixStream::connect(path).await.map_err(Offer::Unreachable)?;
    let fds = [tcp.as_raw_fd()];
    stream
        .async_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(sid.as_str().as_bytes())];
            let rights = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(stream.as_raw_fd(), &iov, &rights, MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
        })
        .await
        .map_err(Offer::Unreachable)?;
    let mut answer = [0u8];
    match tokio::time::timeout(ANSWER, stream.read_exact(&mut answer)).await {
        Ok(Ok(_)) => Ok(answer[0] == b'1'),
        Ok(Err(e)) => Err(Offer::Unanswered(e)),
        Err(_) => Err(Offer::Unanswered(io::Error::new(io::ErrorKind::TimedOut, "no answer"))),
    }
}

/// Receives one offer: a session id and one descriptor.
async fn receive(stream: &UnixStream) -> io::Result<(Sid, OwnedFd)> {
    stream
        .async_io(Interest::READABLE, || {
            let mut buf = [0u8; 64];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(std::os::fd::RawFd);
            let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(io::Error::from)?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    fds.extend(received);
                }
            }
            let len = msg.bytes;
            #[allow(unsafe_code)]
            // SAFETY: the kernel just installed these descriptors in this process for us (SCM_RIGHTS);
            // nothing else refers to them, and each is owned exactly once here.
            let mut owned: Vec<OwnedFd> = fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
            let sid = std::str::from_utf8(&buf[..len]).ok().and_then(|s| Sid::from_str(s).ok());
            match (sid, owned.len()) {
                (Some(sid), 1) => Ok((sid, owned.remove(0))),
                _ => Err(io::Error::new(io::ErrorKind::InvalidData, "an offer is one session id and one descriptor")),
            }
        })
        .await
}

/// The connections this worker serves once routed: its listener's that are its own, and those
/// handed in by the other workers.
pub struct Incomings {
    tx: mpsc::Sender<Incoming>,
    rx: mpsc::Receiver<Incoming>,
    /// `None`: no other instance to hand connections to (fork mode, or a worker on its own).
    handoff: Option<Arc<Handoff>>,
}

impl Incomings {
    /// Connections that stay with this worker: none is handed in or out.
    pub fn local() -> Incomings {
        Incomings::new(None)
    }

    fn new(handoff: Option<Arc<Handoff>>) -> Incomings {
        let (tx, rx) = mpsc::channel(1024);
        Incomings { tx, rx, handoff }
    }
}

/// A listener whose connections are served once their request line has come (a connection silent
/// for [`FIRST_LINE`] is closed), by the worker that owns their session when one is named and there
/// are other workers to hand it to.
pub struct Routed<L> {
    inner: L,
    incomings: Incomings,
}

impl<L> Routed<L> {
    pub fn new(inner: L, incomings: Incomings) -> Routed<L> {
        Routed { inner, incomings }
    }
}

impl<L: Listener<Io = Conn, Addr = SocketAddr>> Listener for Routed<L> {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> Incoming {
        let incomings = &mut self.incomings;
        loop {
            tokio::select! {
                // Both are cancel-safe: a connection is only taken when its branch completes.
                Some(incoming) = incomings.rx.recv() => return incoming,
                (conn, peer) = self.inner.accept() => {
                    tokio::spawn(route(incomings.handoff.clone(), conn, peer, incomings.tx.clone()));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Serves `conn` here once its request line has come, unless that line names a session another
/// worker has.
async fn route(handoff: Option<Arc<Handoff>>, conn: Conn, peer: SocketAddr, tx: mpsc::Sender<Incoming>) {
    match (first_request_sid(&conn.tcp).await, handoff) {
        // Gone, or silent for too long: nothing to serve.
        (Peeked::Closed, _) => return,
        (Peeked::Sid(sid), Some(handoff)) if !handoff.owns(sid) => match handoff.pass(&conn.tcp, sid).await {
            Passed::Taken => {
                handoff.handed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Passed::Lost => {
                handoff.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Nobody has it: here engine.io says so ("Session ID unknown"), as a lone worker would.
            Passed::Nobody => {}
        },
        (Peeked::Sid(_) | Peeked::Other, _) => {}
    }
    let _ = tx.send((conn, peer)).await;
}

enum Peeked {
    Sid(Sid),
    Other,
    Closed,
}

/// The session named by the connection's first request line, read without consuming it.
async fn first_request_sid(tcp: &TcpStream) -> Peeked {
    let deadline = tokio::time::Instant::now() + FIRST_LINE;
    let mut buf = [0u8; 1024];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return Peeked::Closed,
            Ok(Ok(n)) => n,
        };
        if let Some(end) = buf[..n].iter().position(|&b| b == b'\n') {
            return request_line_sid(&buf[..end]).map_or(Peeked::Other, Peeked::Sid);
        }
        if n == buf.len() {
            return Peeked::Other;
        }
        // Part of a line: peeking again at once would return the same bytes, so wait a little.
        if tokio::time::Instant::now() + pause > deadline {
            return Peeked::Closed;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// `GET /socket.io/?EIO=4&transport=polling&sid=ID HTTP/1.1` → `ID`.
fn request_line_sid(line: &[u8]) -> Option<Sid> {
    let line = std::str::from_utf8(line).ok()?;
    let target = line.split(' ').nth(1)?;
    let (path, query) = target.split_once('?')?;
    if !path.starts_with(ENGINE_PATH) {
        return None;
    }
    query.split('&').find_map(|pair| pair.strip_prefix("sid=")).and_then(|sid| Sid::from_str(sid).ok())
}

/// Middleware on the engine.io path: polling responses close their connection (so the next poll
/// is routed again), and a polling handshake's session is noted as this worker's.
pub async fn observe(State(handoff): State<Arc<Handoff>>, req: Request, next: Next) -> Response {
    let query = req.uri().path().starts_with(ENGINE_PATH).then(|| req.uri().query()).flatten().unwrap_or("");
    let polling = query.split('&').any(|pair| pair == "transport=polling");
    let handshake = polling && !query.split('&').any(|pair| pair.starts_with("sid="));
    let mut response = next.run(req).await;
    if !polling {
        return response;
    }
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    if handshake && response.status() == StatusCode::OK {
        let (parts, body) = response.into_parts();
        // The open packet: `0{"sid":"…","upgrades":[…],…}`, a few hundred bytes.
        let Ok(bytes) = axum::body::to_bytes(body, 16 << 10).await else {
            tracing::warn!("unreadable engine.io handshake response");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        match open_packet_sid(&bytes) {
            Some(sid) => handoff.opened(sid),
            None => tracing::warn!("no session id in an engine.io handshake response"),
        }
        response = Response::from_parts(parts, Body::from(bytes));
    }
    response
}

fn open_packet_sid(packet: &[u8]) -> Option<Sid> {
    #[derive(serde::Deserialize)]
    struct Open<'a> {
        sid: &'a str,
    }
    let json = packet.strip_prefix(b"0")?;
    let open: Open<'_> = serde_json::from_slice(json).ok()?;
    Sid::from_str(open.sid).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_of_a_request_line() {
        let sid = |line: &str| request_line_sid(line.as_bytes()).map(|s| s.as_str().to_owned());
        let id = "AbCdEfGhIjKl_-12";
        assert_eq!(sid(&format!("GET /socket.io/?EIO=4&transport=polling&sid={id} HTTP/1.1\r")), Some(id.into()));
        assert_eq!(sid(&format!("POST /socket.io/?sid={id}&EIO=4 HTTP/1.1")), Some(id.into()));
        assert_eq!(sid("GET /socket.io/?EIO=4&transport=polling&t=x HTTP/1.1"), None, "a handshake");
        assert_eq!(sid(&format!("GET /health?sid={id} HTTP/1.1")), None, "another path");
        assert_eq!(sid("GET /socket.io/?sid=short HTTP/1.1"), None, "not a session id");
        assert_eq!(sid("\u{0}\u{1}garbage"), None);
    }

    #[test]
    fn noted_sessions_expire_and_stale_ones_are_swept_as_the_table_doubles() {
        let sid = |i: u32| Sid::from_str(&format!("{i:0>16}")).expect("sid");
        let mut noted = Noted::new(Duration::from_millis(30));
        noted.note(sid(1), "a");
        assert_eq!(noted.get(&sid(1)), Some(&"a"));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(noted.get(&sid(1)), None, "too old");
        for i in 2..1026 {
            noted.note(sid(i), "b");
        }
        assert!(noted.entries.len() <= 1025, "swept at 1024 entries: {}", noted.entries.len());
        assert!(!noted.entries.contains_key(&sid(1)), "the stale entry went with the sweep");
        assert_eq!(noted.sweep_at, 2 * 1023, "1023 fresh entries left: the next sweep at twice as many");
        noted.forget(&sid(2));
        assert_eq!(noted.get(&sid(2)), None);
    }

    #[test]
    fn the_session_of_an_open_packet() {
        let packet = br#"0{"sid":"AbCdEfGhIjKl_-12","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(open_packet_sid(packet).map(|s| s.as_str().to_owned()), Some("AbCdEfGhIjKl_-12".into()));
        assert!(open_packet_sid(b"4hello").is_none());
    }
}
