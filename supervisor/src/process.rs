//! Being the daemon process: one per home (an exclusive lock on the pid file), the control socket
//! (0600, stale file replaced), and starting the daemon detached from a CLI.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

use crate::client::{Client, ClientError};
use crate::home::{HOME_VAR, Home};

/// How long a CLI waits for a daemon it started to accept connections.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("another chatctl daemon already runs for {home} (pid {pid})")]
    AlreadyRunning { home: String, pid: String },
    #[error("{about}")]
    Io {
        about: String,
        #[source]
        source: io::Error,
    },
    #[error("the daemon did not come up within {timeout:?}; its log {log} ends with:\n{tail}")]
    DaemonDidNotStart { timeout: Duration, log: String, tail: String },
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn io_err(about: impl Into<String>) -> impl FnOnce(io::Error) -> ProcessError {
    let about = about.into();
    move |source| ProcessError::Io { about, source }
}

/// Held for the daemon's life; dropping it releases the home.
pub struct DaemonLock {
    _lock: Flock<File>,
}

impl DaemonLock {
    /// The lock the previous image of this process held (`chatctl update`): the same open file,
    /// so the lock is ours already.
    pub fn adopt(fd: std::os::fd::OwnedFd) -> Result<DaemonLock, ProcessError> {
        match Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(DaemonLock { _lock: lock }),
            Err((_, e)) => Err(ProcessError::Io { about: "cannot keep the home's lock".into(), source: e.into() }),
        }
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self._lock)
    }
}

/// Takes the home's lock and writes our pid into it.
pub fn lock(home: &Home) -> Result<DaemonLock, ProcessError> {
    home.ensure().map_err(io_err(format!("cannot create {}", home.dir().display())))?;
    let path = home.lock_file();
    let file = crate::home::private_file()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    crate::home::keep_private(&file).map_err(io_err(format!("cannot chmod {}", path.display())))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, _)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default().trim().to_owned();
            return Err(ProcessError::AlreadyRunning { home: home.dir().display().to_string(), pid });
        }
    };
    lock.set_len(0).map_err(io_err("cannot write the pid file"))?;
    writeln!(lock, "{}", std::process::id()).map_err(io_err("cannot write the pid file"))?;
    Ok(DaemonLock { _lock: lock })
}

/// Binds the control socket. Holding the lock proves any existing socket file is stale.
pub fn bind_control(home: &Home, _lock: &DaemonLock) -> Result<UnixListener, ProcessError> {
    let path = home.socket();
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("cannot remove stale {}", path.display()))(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io_err(format!("cannot bind {}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("cannot chmod {}", path.display())))?;
    Ok(listener)
}

/// Connects to the home's daemon, starting it (detached, in its own session) when none runs.
pub async fn connect_or_start(home: &Home) -> Result<Client, ProcessError> {
    match Client::connect(home).await {
        Ok(client) => return Ok(client),
        Err(ClientError::NotRunning(_)) => {}
        Err(e) => return Err(e.into()),
    }
    home.ensure().map_err(io_err(format!("cannot create {}", home.dir().display())))?;
    let log_path = home.daemon_log();
    let log = crate::home::private_file()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(format!("cannot open {}", log_path.display())))?;
    crate::home::keep_private(&log).map_err(io_err(format!("cannot chmod {}", log_path.display())))?;
    let exe = std::env::current_exe().map_err(io_err("cannot find the chatctl executable"))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("daemon")
        .env(HOME_VAR, home.dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io_err("cannot duplicate the log fd"))?)
        .stderr(log);
    #[allow(unsafe_code)]
    // SAFETY: setsid is async-signal-safe and touches no memory; it detaches the daemon from the
    // CLI's terminal and session, so closing the terminal does not stop it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(io_err("cannot start the daemon"))?;
    let started = Instant::now();
    loop {
        match Client::connect(home).await {
            Ok(client) => {
                tracing::debug!(ms = started.elapsed().as_millis() as u64, "daemon up");
                return Ok(client);
            }
            Err(ClientError::NotRunning(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // A daemon that lost the race for the lock exits; then the winner will answer.
        let exited = child.try_wait().ok().flatten().is_some();
        if started.elapsed() > DAEMON_START_TIMEOUT || (exited && started.elapsed() > Duration::from_secs(2)) {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(ProcessError::DaemonDidNotStart {
                timeout: DAEMON_START_TIMEOUT,
                log: log_path.display().to_string(),
                tail,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Resolves on SIGTERM or SIGINT (and ignores SIGHUP, which a detached daemon may still get). The
/// handlers are in place when this returns, not when the future is first polled: a daemon that
/// re-executed itself (`chatctl update`) unblocks the signals held across `execve` right after.
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()));
    async move {
        let (Ok(mut term), Ok(mut int), hup) = signals else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        let _keep_hup_ignored = hup;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    }
}
