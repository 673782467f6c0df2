//! Where the worker accepts connections: sockets inherited from the supervisor (systemd's
//! `LISTEN_FDS` convention, see `chat_shared::worker_env`) or, run on its own, a port it binds.
//!
//! Inherited descriptors are adopted in the synchronous `main`, before the runtime starts any thread.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

use chat_shared::worker_env::{FD_NAME_ADMIN, FD_NAME_HTTP, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_START};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};

use crate::config::{Config, ConfigError};

/// The listeners a worker serves.
#[derive(Debug)]
pub struct Listeners {
    /// The public port (shared with the other instances in cluster mode).
    pub public: TcpListener,
    /// The private loopback listener the supervisor probes; `None` when run on its own.
    pub admin: Option<TcpListener>,
    /// Whether `public` was inherited (and so outlives this process in the supervisor).
    pub inherited: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("inherited fd {fd} ({name}) is not a socket")]
    NotASocket { fd: RawFd, name: String },
    #[error("inherited fd {fd} ({name})")]
    Fd {
        fd: RawFd,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{LISTEN_FDS} is set but no fd is named {FD_NAME_HTTP:?} in {LISTEN_FDNAMES}={names:?}")]
    NoHttp { names: String },
    #[error("cannot bind {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl Listeners {
    /// Adopts inherited sockets when `LISTEN_FDS` is set, else binds `HOST:PORT`.
    pub fn from_env(config: &Config) -> Result<Listeners, ListenError> {
        let Some(count) = std::env::var(LISTEN_FDS).ok() else {
            let addr = std::net::SocketAddr::new(config.host, config.port);
            let public =
                TcpListener::bind(addr).map_err(|source| ListenError::Bind { addr: addr.to_string(), source })?;
            public.set_nonblocking(true).map_err(|source| ListenError::Bind { addr: addr.to_string(), source })?;
            return Ok(Listeners { public, admin: None, inherited: false });
        };
        let count: i32 = count.trim().parse().map_err(|_| ConfigError {
            name: LISTEN_FDS,
            value: count.clone(),
            why: "expected a number of inherited sockets".into(),
        })?;
        let names = std::env::var(LISTEN_FDNAMES).unwrap_or_default();
        let mut name_list = names.split(':');
        let (mut public, mut admin) = (None, None);
        for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
            // Unnamed sockets count as the public one, as with plain systemd socket activation.
            let name = name_list.next().filter(|n| !n.is_empty()).unwrap_or(FD_NAME_HTTP).to_owned();
            let listener = adopt(fd, &name)?;
            match name.as_str() {
                FD_NAME_ADMIN => admin = Some(listener),
                _ if public.is_none() => public = Some(listener),
                _ => tracing::warn!(fd, name, "ignoring an extra inherited socket"),
            }
        }
        let public = public.ok_or(ListenError::NoHttp { names })?;
        Ok(Listeners { public, admin, inherited: true })
    }
}

/// Takes ownership of an inherited listening socket: checks it is one, keeps it from leaking into
/// processes this worker might start, and makes it non-blocking for tokio.
fn adopt(fd: RawFd, name: &str) -> Result<TcpListener, ListenError> {
    let io = |source: nix::Error| ListenError::Fd { fd, name: name.to_owned(), source: source.into() };
    let stat = fstat(unsafe_borrow(fd)).map_err(io)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(ListenError::NotASocket { fd, name: name.to_owned() });
    }
    fcntl(unsafe_borrow(fd), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io)?;
    #[allow(unsafe_code)]
    // SAFETY: the supervisor passed this fd to us under the LISTEN_FDS convention and nothing else in
    // this process refers to it; we checked above that it is an open socket. Ownership moves here once.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener.set_nonblocking(true).map_err(|source| ListenError::Fd { fd, name: name.to_owned(), source })?;
    Ok(listener)
}

/// A borrowed view of an inherited fd for the nix calls above, before ownership is taken.
fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    #[allow(unsafe_code)]
    // SAFETY: `fd` is one of the LISTEN_FDS range, open for the life of the process until `adopt`
    // takes ownership; the borrow is used only by the calls inside `adopt`.
    unsafe {
        std::os::fd::BorrowedFd::borrow_raw(fd)
    }
}
