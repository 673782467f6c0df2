//! Upgrading the daemon in place (`chatctl update`): what one daemon image hands the next across
//! `execve`, and the two files and one signal that ask for it.
//!
//! The request does not travel the control protocol, so that any CLI can ask any daemon, whatever
//! either's protocol version (nginx's binary upgrade works the same way): the CLI writes
//! `update.request` (the binary, an id) in the home and sends the daemon `SIGUSR2`; the daemon that
//! ends up serving (the old one when it refuses, the new one once it has taken everything over)
//! writes `update.result` with the same id. `chatctl run` answers the same signal.
//!
//! The daemon keeps its pid: the instances stay its children (their `PR_SET_PDEATHSIG`, process
//! groups and the reaper keep working) and are waited on through pidfds, since the new runtime did
//! not spawn them. What crosses `execve` is a JSON [`Saved`] state in a file and the descriptors
//! it names (listening sockets, log pipes, the control socket, the lock, the bus's listener and
//! the reaper's pipe), their close-on-exec flag cleared just before. Before replacing itself the
//! daemon runs the new binary on the state in a child (`chatctl __adopt --check FILE`): a binary
//! that cannot run or refuses the state leaves the old daemon serving.

mod fds;
mod log;
mod pidfd;
mod state;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use fds::{adopt_fd, hold_signals, pidfd_supported, release_signals, set_cloexec, start_time};
pub use log::{drop_log_guard, keep_log_guard, on_log_reopen, reopen_log};
pub use pidfd::Pidfd;
pub use state::{
    FORMAT, Mode, OLDEST_FORMAT, Saved, SavedApp, SavedBus, SavedPipe, SavedProc, SavedReaper, SavedSlot, SavedState,
    accepts,
};

/// The request file, the result file and the state file, in the home; and the file in which a
/// daemon that answers `SIGUSR2` writes its pid (to a daemon older than `chatctl update`, the
/// signal's default action would be to end it, and with it every instance).
pub const READY_FILE: &str = "update.ready";
pub const REQUEST_FILE: &str = "update.request";
pub const RESULT_FILE: &str = "update.result";
pub const STATE_FILE: &str = "update.state";

/// This binary's version as a daemon reports it. `CHATCTL_VERSION_OVERRIDE` exists for the tests
/// of `chatctl update`, which need a "new" binary that differs only by its version.
pub fn version() -> String {
    std::env::var("CHATCTL_VERSION_OVERRIDE").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned())
}

/// `update.request`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub binary: PathBuf,
}

/// `update.result`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub id: String,
    pub ok: bool,
    pub message: String,
    /// The version serving now.
    pub version: String,
    pub pid: u32,
}

/// Writes `value` as JSON to `dir/name` atomically (a temporary file renamed over it), mode 0600
/// (the state holds the apps' secrets and environments).
pub fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let text = serde_json::to_vec(value).map_err(io::Error::other)?;
    crate::home::private_file().write(true).create(true).truncate(true).open(&tmp)?.write_all(&text)?;
    std::fs::rename(&tmp, dir.join(name))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `chatctl update`'s client side: asks the daemon of `home` (pid `daemon`) to re-execute
/// `binary`, and waits (at most `within`) for the daemon that then serves to say how it went.
pub fn ask(home: &Path, daemon: u32, binary: &Path, within: std::time::Duration) -> io::Result<Outcome> {
    let ready = std::fs::read_to_string(home.join(READY_FILE)).ok().and_then(|t| t.trim().parse::<u32>().ok());
    if ready != Some(daemon) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the running daemon (pid {daemon}) does not answer chatctl update (it predates it): \
                 `chatctl save` and `chatctl kill` with its chatctl, then `chatctl resurrect` with the new one"
            ),
        ));
    }
    let id = format!("{}-{}", std::process::id(), chat_shared::time::unix_millis());
    let _ = std::fs::remove_file(home.join(RESULT_FILE));
    write_json(home, REQUEST_FILE, &Request { id: id.clone(), binary: binary.to_owned() })?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon).map_err(io::Error::other)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2).map_err(io::Error::from)?;
    let begun = std::time::Instant::now();
    loop {
        if let Ok(outcome) = read_json::<Outcome>(&home.join(RESULT_FILE))
            && outcome.id == id
        {
            return Ok(outcome);
        }
        if begun.elapsed() > within {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from the daemon (pid {daemon}) within {} s", within.as_secs()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_of_a_format_this_binary_does_not_read_is_refused() {
        assert!(accepts(FORMAT).is_ok());
        let newer = accepts(FORMAT + 1).expect_err("a downgrade across a format change");
        assert!(newer.contains(&format!("state format {}", FORMAT + 1)), "{newer}");
        assert!(accepts(0).is_err(), "older than the oldest format read");
    }

    #[test]
    fn a_process_start_time_tells_a_reused_pid_apart() {
        let me = std::process::id();
        let start = start_time(me).expect("our own start time");
        assert_eq!(start_time(me), Some(start), "stable");
        let gone = Pidfd::open(me, Some(start + 1)).err().expect("another process than the one saved");
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_state_survives_its_file() {
        let saved = Saved {
            format: FORMAT,
            version: version(),
            mode: Mode { foreground: true, exit_when_idle: true, notify_socket: None },
            lock: 3,
            control: 4,
            bus: Some(SavedBus { listener: 5, pid: Some(42), start_time: None }),
            reaper: None,
            cgroup: None,
            next_launch: 7,
            next_app_id: 2,
            apps: Vec::new(),
            request: "r".into(),
        };
        let dir = std::env::temp_dir().join(format!("chatctl-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        write_json(&dir, STATE_FILE, &saved).expect("written");
        let back: Saved = read_json(&dir.join(STATE_FILE)).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!((back.lock, back.control, back.next_launch, back.bus.and_then(|b| b.pid)), (3, 4, 7, Some(42)));
    }
}
