//! What crosses `execve`: the daemon's state as JSON, and which formats a binary reads.

use std::os::fd::RawFd;
use std::path::PathBuf;

use chat_shared::spec::AppSpec;
use chat_shared::status::{ExitKind, HistoryEntry, ProbeRecord};
use serde::{Deserialize, Serialize};

/// The state format this binary writes. A new binary reads every format from
/// [`OLDEST_FORMAT`] to its own; a state of a newer format (a downgrade across a format change) is
/// refused by the preflight.
pub const FORMAT: u32 = 2;
pub const OLDEST_FORMAT: u32 = 1;
// Bump FORMAT whenever a field is added to the state or to `AppSpec` that an older binary must
// not drop silently (serde ignores fields it does not know): a downgrade is then refused.

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

/// The states an instance may be handed over in; the others (stopping, a replacement under way)
/// are in the middle of something that a new image could not finish, and an update waits for them.
/// (`Waiting` and `Starting` came with format 2.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SavedState {
    Stopped,
    Errored,
    /// To be started again (a restart delay, a crash loop's backoff) in `in_ms`.
    Waiting {
        in_ms: u64,
    },
    /// Running, not ready yet: ready within `deadline_ms` or restarted.
    Starting {
        pid: u32,
        start_time: u64,
        uptime_ms: u64,
        deadline_ms: u64,
    },
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

impl SavedState {
    /// The process running, if any.
    pub fn pid(&self) -> Option<u32> {
        match self {
            SavedState::Starting { pid, .. } | SavedState::Online { pid, .. } => Some(*pid),
            _ => None,
        }
    }
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
        Err(format!("state format {format}; this chatctl reads formats {OLDEST_FORMAT} to {FORMAT}"))
    }
}
