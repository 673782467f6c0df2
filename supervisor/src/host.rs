//! Hosting the daemon in this process, for `chatctl daemon` (detached) and `chatctl run`
//! (foreground): the one place that claims the home, builds the runtime, binds the control socket,
//! runs the daemon and cleans up after it.

use tokio::runtime::Builder;

use crate::daemon::{Begin, Outcome, RunOptions, StartError};
use crate::home::Home;
use crate::process::{self, DaemonLock, ProcessError};

/// A home claimed for a daemon of this process (its lock held), not serving yet. Apart from
/// [`host_daemon`] so that the detached daemon can open its log only once it owns the home.
pub struct Claimed {
    home: Home,
    lock: DaemonLock,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot build the tokio runtime")]
    Runtime(#[source] std::io::Error),
    /// The initial apps could not be started; nothing ran.
    #[error("{}", .0.chain())]
    Start(StartError),
}

/// Takes the home's lock: another daemon of the same home makes this fail.
pub fn claim(home: &Home) -> Result<Claimed, ProcessError> {
    Ok(Claimed { home: home.clone(), lock: process::lock(home)? })
}

/// Runs the daemon on `claimed` until it stops (see `daemon::run`), then removes the control
/// socket.
pub fn host_daemon(
    claimed: Claimed,
    initial: Vec<chat_shared::spec::AppSpec>,
    options: RunOptions,
) -> Result<Outcome, HostError> {
    let Claimed { home, lock } = claimed;
    host(home, lock, None, Begin::Fresh(initial), options)
}

/// Runs the daemon the previous image of this process handed over (`chatctl update`): the home's
/// lock and the control socket come with its state.
pub fn host_adopted(home: &Home, saved: crate::handover::Saved) -> Result<Outcome, HostError> {
    let adopt = |fd| crate::handover::adopt_fd(fd).map_err(|e| HostError::Runtime(std::io::Error::other(e)));
    let lock = DaemonLock::adopt(adopt(saved.lock)?)?;
    let control = std::os::unix::net::UnixListener::from(adopt(saved.control)?);
    let options = RunOptions {
        foreground: saved.mode.foreground,
        exit_when_idle: saved.mode.exit_when_idle,
        notify_socket: saved.mode.notify_socket.clone(),
    };
    host(home.clone(), lock, Some(control), Begin::Adopt(saved), options)
}

/// One runtime thread: every child is forked from it, which `PR_SET_PDEATHSIG` needs to tie
/// children to the daemon's life; an update re-executes on it too.
fn host(
    home: Home,
    lock: DaemonLock,
    control: Option<std::os::unix::net::UnixListener>,
    begin: Begin,
    options: RunOptions,
) -> Result<Outcome, HostError> {
    let runtime = Builder::new_current_thread().enable_all().build().map_err(HostError::Runtime)?;
    let result = runtime.block_on(async {
        let control = match control {
            Some(control) => {
                control.set_nonblocking(true).map_err(HostError::Runtime)?;
                tokio::net::UnixListener::from_std(control).map_err(HostError::Runtime)?
            }
            None => process::bind_control(&home, &lock)?,
        };
        let lock_fd = lock.raw_fd();
        let outcome = crate::daemon::run(home.clone(), control, begin, process::stop_signal(), options, lock_fd).await;
        Ok::<_, HostError>(outcome.map_err(HostError::Start))
    });
    drop(lock);
    let _ = std::fs::remove_file(home.socket());
    result?
}
