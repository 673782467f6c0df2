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

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use chat_shared::spec::AppSpec;
use chat_shared::status::{ExitKind, HistoryEntry, ProbeRecord};
use serde::{Deserialize, Serialize};

/// The state format this binary writes. A new binary reads every format from
/// [`OLDEST_FORMAT`] to its own; a state of a newer format (a downgrade across a format change) is
/// refused by the preflight.
pub const FORMAT: u32 = 1;
pub const OLDEST_FORMAT: u32 = 1;

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

/// The detached daemon's log writer guard (its drop writes out the lines queued), kept here so
/// that the daemon can write its log out before it re-executes itself.
static LOG_GUARD: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>> = std::sync::Mutex::new(None);

pub fn keep_log_guard(guard: impl std::any::Any + Send) {
    *LOG_GUARD.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(guard));
}

/// Writes out the daemon's log (nothing is logged to its file after this).
pub fn drop_log_guard() {
    drop(LOG_GUARD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
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

/// The signals that must reach whichever image serves: held (blocked) from the moment a daemon
/// starts handing over until the next image has its handlers (a signal arriving in between would
/// take its default action, which ends the daemon and every instance with it), or until the
/// hand-over is given up. Blocked signals stay pending across `execve`.
const HELD: [nix::sys::signal::Signal; 4] = [
    nix::sys::signal::Signal::SIGUSR2,
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGHUP,
];

pub fn hold_signals() -> io::Result<()> {
    mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
}

pub fn release_signals() -> io::Result<()> {
    mask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK)
}

fn mask(how: nix::sys::signal::SigmaskHow) -> io::Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    HELD.iter().for_each(|s| set.add(*s));
    nix::sys::signal::pthread_sigmask(how, Some(&set), None).map_err(io::Error::from)
}

/// Whether this kernel lets a process wait on a child through a pidfd (Linux 5.3 and later), which
/// the next image needs for the instances it did not spawn.
pub fn pidfd_supported() -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: pidfd_open on our own pid; the descriptor is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id() as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: a descriptor pidfd_open just returned.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    Ok(())
}

/// A hook that opens the daemon's log again (set by the detached daemon): the log is written out
/// and closed just before `execve`, and must come back if `execve` fails.
static LOG_REOPEN: std::sync::Mutex<Option<Box<dyn Fn() + Send>>> = std::sync::Mutex::new(None);

pub fn on_log_reopen(reopen: impl Fn() + Send + 'static) {
    *LOG_REOPEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(reopen));
}

pub fn reopen_log() {
    if let Some(reopen) = LOG_REOPEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
        reopen();
    }
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Everything the next daemon image needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    pub format: u32,
    /// The version that wrote it.
    pub version: String,
    pub mode: Mode,
    pub lock: RawFd,
    pub control: RawFd,
    pub bus: Option<SavedBus>,
    pub reaper: Option<SavedReaper>,
    /// The daemon's cgroup directory, if descendants are tracked by cgroup.
    pub cgroup: Option<PathBuf>,
    /// The next launch number (`CHATCTL_LAUNCH` ids stay unique).
    pub next_launch: u64,
    pub next_app_id: u64,
    pub apps: Vec<SavedApp>,
    /// The request this state answers.
    pub request: String,
}

/// How the daemon was run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mode {
    /// `chatctl run` (logging to stderr) rather than the detached daemon (its log file).
    pub foreground: bool,
    pub exit_when_idle: bool,
    pub notify_socket: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedBus {
    pub listener: RawFd,
    /// The broker's process, which keeps running (and keeps its connections) across the update,
    /// and its start time.
    pub pid: Option<u32>,
    #[serde(default)]
    pub start_time: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedReaper {
    pub pid: u32,
    pub pipe: RawFd,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedApp {
    pub id: u64,
    pub spec: AppSpec,
    pub secret: String,
    pub reloads: u64,
    pub next_key: u64,
    pub port: Option<u16>,
    pub shared: Option<RawFd>,
    /// Log lines and bytes captured so far (`/metrics` counters).
    pub log_counts: (u64, u64),
    pub slots: Vec<SavedSlot>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedSlot {
    pub own: Option<RawFd>,
    pub port: Option<u16>,
    pub history: Vec<HistoryEntry>,
    pub probes: Vec<ProbeRecord>,
    pub memory_peak: Option<u64>,
    pub probe_failures: u64,
    pub proc: SavedProc,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedProc {
    pub key: u64,
    pub spec: AppSpec,
    pub admin: Option<RawFd>,
    pub restarts: u32,
    pub spawned_once: bool,
    pub last_exit: Option<ExitKind>,
    pub note: Option<String>,
    pub incidents: u64,
    pub unstable: u32,
    pub state: SavedState,
    /// Where its descendants are: a cgroup directory, or its launch id.
    pub cgroup: Option<PathBuf>,
    pub launch: Option<String>,
    pub pipes: Vec<SavedPipe>,
}

/// The states an instance may be handed over in; the others (starting, stopping, waiting to
/// restart, a replacement under way) are in the middle of something, and an update waits for them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SavedState {
    Stopped,
    Errored,
    Online {
        pid: u32,
        /// The process's start time (clock ticks since boot, `/proc/PID/stat`): a pid that names
        /// another process by the time it is adopted is not taken for it.
        start_time: u64,
        uptime_ms: u64,
        ready_ms: u64,
        failures: u32,
    },
}

/// One of an instance's output pipes, with the start of a line it had not finished.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPipe {
    pub err: bool,
    pub fd: RawFd,
    pub pending: Vec<u8>,
}

/// Whether this binary can take over a state of `format`.
pub fn accepts(format: u32) -> Result<(), String> {
    if (OLDEST_FORMAT..=FORMAT).contains(&format) {
        Ok(())
    } else {
        Err(format!("state format {format}, this chatctl ({}) reads formats {OLDEST_FORMAT} to {FORMAT}", version()))
    }
}

/// Lets `fd` cross `execve`.
pub fn inherit(fd: &impl AsRawFd) -> io::Result<()> {
    set_cloexec(fd.as_raw_fd(), false)
}

pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: fcntl on a descriptor number; an invalid one is an error, not undefined behaviour.
    let done = unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
    if done < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Takes ownership of an inherited descriptor named in the state, and marks it close-on-exec
/// again (so that instances spawned from now on do not inherit it).
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    set_cloexec(fd, true)?;
    #[allow(unsafe_code)]
    // SAFETY: the previous image handed this descriptor to us alone (the state names it once), and
    // `set_cloexec` just proved it open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its closing one.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// A child of this process, waited on through a pidfd (one this image did not spawn).
pub struct Pidfd {
    pid: u32,
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl Pidfd {
    /// `None` when `pid` is gone already or is no longer the process that started at `start_time`.
    pub fn open(pid: u32, start_time: Option<u64>) -> io::Result<Pidfd> {
        #[allow(unsafe_code)]
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        #[allow(unsafe_code)]
        // SAFETY: a descriptor pidfd_open just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        if let Some(expected) = start_time
            && self::start_time(pid).is_some_and(|now| now != expected)
        {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("pid {pid} is another process now")));
        }
        #[allow(unsafe_code)]
        // SAFETY: an OwnedFd: open, and the same descriptor for as long as the AsyncFd owns it.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Pidfd { pid, fd })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it.
    pub async fn wait(&self) -> ExitKind {
        loop {
            match self.fd.readable().await {
                Ok(mut ready) => {
                    if let Some(kind) = self.try_reap() {
                        return kind;
                    }
                    ready.clear_ready();
                }
                Err(_) => return ExitKind::Unknown,
            }
        }
    }

    /// Reaps the process if it has exited.
    pub fn try_reap(&self) -> Option<ExitKind> {
        #[allow(unsafe_code)]
        // SAFETY: a zeroed siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        #[allow(unsafe_code)]
        // SAFETY: waitid on our own pidfd with a valid siginfo_t pointer.
        let done = unsafe {
            libc::waitid(libc::P_PIDFD, self.fd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG)
        };
        if done < 0 {
            // ECHILD: reaped by someone else already; nothing more to learn.
            return Some(ExitKind::Unknown);
        }
        #[allow(unsafe_code)]
        // SAFETY: waitid filled `info` (si_pid stays 0 while the process runs).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return None;
        }
        Some(match info.si_code {
            libc::CLD_EXITED => ExitKind::Code(status),
            libc::CLD_KILLED | libc::CLD_DUMPED => ExitKind::Signal(status),
            _ => ExitKind::Unknown,
        })
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&self) {
        #[allow(unsafe_code)]
        // SAFETY: pidfd_send_signal on our own pidfd.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0);
        }
        for _ in 0..100 {
            if self.try_reap().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
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
