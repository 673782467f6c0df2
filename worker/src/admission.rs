//! Which connections a worker takes, so that no crowd of them can take the worker down with it.
//!
//! Every open connection costs a descriptor, and so do the admin listener's probes, the bus, Redis
//! and the handoff sockets. A worker that lets its public connections use the last descriptor
//! cannot accept the supervisor's probe either (`EMFILE`): the probe times out and the supervisor
//! restarts a worker that was merely busy, dropping every user on it (3,000 idle connections did
//! that to a whole cluster under the usual soft limit of 1024). So:
//!
//! - at start the worker raises its soft `RLIMIT_NOFILE` to the hard limit, as nginx
//!   (`worker_rlimit_nofile`) and systemd (for itself) do: the soft default of 1024 is a relic
//!   of `select()`, which nothing here uses;
//! - public connections are capped at the limit less a reserve ([`RESERVE`]): at the cap the worker
//!   stops accepting until one closes, so new connections wait in the shared accept queue (or go to
//!   another instance) while the admin listener, the bus and the logs still get their descriptors;
//! - a connection that sends no request line within [`FIRST_LINE`] is closed (see `handoff`'s
//!   router, which waits for that line anyway).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept out of the public connections' reach: the admin listener and its probes, the
/// bus or Redis, the handoff sockets, files, and a margin.
pub const RESERVE: u64 = 64;

/// The fewest public connections a worker takes, however low its descriptor limit.
const FLOOR: u64 = 16;

/// How long a new connection may take to send its request line before it is closed. A browser's
/// speculative connection may wait a few seconds for a request to carry; a connection that says
/// nothing for longer is holding a descriptor for no one (or for a slowloris).
pub const FIRST_LINE: Duration = Duration::from_secs(10);

/// Raises this process's soft descriptor limit to its hard limit; returns the limits before and
/// after. Called before the runtime starts, so no other thread is opening descriptors meanwhile.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok((soft, hard.max(soft)))
}

/// This process's soft descriptor limit (1024 when it cannot be read: the usual default).
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Public connections allowed with `fd_limit` descriptors: all but the reserve.
pub fn cap_for(fd_limit: u64) -> usize {
    usize::try_from(fd_limit.saturating_sub(RESERVE).max(FLOOR)).unwrap_or(usize::MAX)
}

/// Places for public connections: one permit per open connection.
#[derive(Clone, Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    cap: usize,
}

impl Admission {
    pub fn new(cap: usize) -> Admission {
        let cap = cap.clamp(1, Semaphore::MAX_PERMITS);
        Admission { permits: Arc::new(Semaphore::new(cap)), cap }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.cap - self.permits.available_permits()
    }

    /// A place for a connection that is already here (handed in by another instance): counted when
    /// there is room, served all the same when there is not (its descriptor is open already, and the
    /// instance that accepted it had room).
    pub fn admit(&self, tcp: TcpStream) -> Conn {
        Conn { tcp, _place: self.permits.clone().try_acquire_owned().ok() }
    }
}

/// A public connection holding its place under the cap until it is dropped.
#[derive(Debug)]
pub struct Conn {
    pub tcp: TcpStream,
    _place: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A listener that accepts only while there is a place under the cap.
pub struct Capped<L> {
    inner: L,
    admission: Admission,
}

impl<L> Capped<L> {
    pub fn new(inner: L, admission: Admission) -> Capped<L> {
        Capped { inner, admission }
    }
}

impl<L: Listener<Io = TcpStream>> Listener for Capped<L> {
    type Io = Conn;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Conn, L::Addr) {
        // The place first: at the cap, connections stay in the kernel's queue (where the other
        // instances of a shared port take them) instead of costing this worker a descriptor.
        // Cancel-safe: a place taken and dropped with the future is given back.
        // An error means the semaphore was closed, which nothing does: accept uncounted then.
        let place = self.admission.permits.clone().acquire_owned().await.ok();
        let (tcp, addr) = self.inner.accept().await;
        (Conn { tcp, _place: place }, addr)
    }

    fn local_addr(&self) -> io::Result<L::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_the_reserve_and_a_floor() {
        assert_eq!(cap_for(1024), 960);
        assert_eq!(cap_for(20_000), 19_936);
        assert_eq!(cap_for(70), FLOOR as usize);
        assert_eq!(cap_for(0), FLOOR as usize);
    }

    #[tokio::test]
    async fn a_place_is_held_while_the_connection_lives() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let admission = Admission::new(1);
        let mut capped = Capped::new(listener, admission.clone());
        let _a = TcpStream::connect(addr).await.expect("connect a");
        let _b = TcpStream::connect(addr).await.expect("connect b");
        let (first, _) = capped.accept().await;
        assert_eq!(admission.open(), 1);
        // At the cap, the second connection waits in the queue.
        assert!(tokio::time::timeout(Duration::from_millis(100), capped.accept()).await.is_err());
        drop(first);
        assert_eq!(admission.open(), 0);
        let (_second, _) = tokio::time::timeout(Duration::from_secs(5), capped.accept()).await.expect("accepted");
        assert_eq!(admission.open(), 1);
    }
}
