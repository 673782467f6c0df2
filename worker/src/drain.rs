//! A listener that stops accepting on demand without closing: what is left in a shared accept
//! queue is then taken by the other instances.

use std::future::pending;

use axum::serve::Listener;
use tokio::sync::watch;

pub(crate) struct Draining<L> {
    inner: L,
    /// `true` once no new connection may be accepted.
    stop: watch::Receiver<bool>,
}

impl<L> Draining<L> {
    pub(crate) fn new(inner: L, stop: watch::Receiver<bool>) -> Self {
        Draining { inner, stop }
    }
}

impl<L: Listener> Listener for Draining<L> {
    type Io = L::Io;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let stopped = *self.stop.borrow();
        if stopped {
            return pending().await;
        }
        let stop = &mut self.stop;
        let stopping = async move {
            // The guard `wait_for` returns must not live across an await.
            let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
        };
        tokio::select! {
            // Checked first: once draining, a connection still in the queue is not ours to take.
            biased;
            () = stopping => pending().await,
            // `accept` is cancel-safe: nothing is taken from the queue unless it returns.
            connection = self.inner.accept() => connection,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The peer's address, as a connection's `ConnectInfo` (axum provides it for its own listeners only).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::handoff::Routed<L>>> for PeerAddr
where
    L: Listener<Io = crate::admission::Conn, Addr = std::net::SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::handoff::Routed<L>>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}
