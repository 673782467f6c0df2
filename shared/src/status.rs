//! Serializable views of what the daemon runs, for `chatctl list` and `chatctl list --json`.

use serde::{Deserialize, Serialize};

use crate::ecosystem::ExecMode;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub profile: Option<String>,
    pub exec_mode: ExecMode,
    pub script: String,
    /// The port the supervisor bound (cluster), or instance 0's port (fork); the real port when the
    /// config asked for port 0.
    pub port: Option<u16>,
    pub instances: Vec<InstanceStatus>,
    /// Why some of the app's output is not reaching its files right now (a failed write or
    /// rotation, with what was dropped); `None` while every line is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_issue: Option<String>,
    /// Development mode (`watch` with `build`): a build under way after a change, or why the last
    /// one failed while the previous version keeps serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub index: usize,
    pub status: Phase,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// Address of the private health listener in cluster mode (`127.0.0.1:N`).
    pub admin_addr: Option<String>,
    /// Milliseconds since the current process was spawned.
    pub uptime_ms: Option<u64>,
    /// Times this slot was started again after the first start (crashes and restarts).
    pub restarts: u32,
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<f32>,
    pub last_exit: Option<ExitKind>,
    /// Why the last restart or stop happened, for operators reading `list`.
    pub note: Option<String>,
    /// The last health probe: passed, and how long it took.
    #[serde(default)]
    pub last_probe: Option<(bool, u64)>,
    /// What a chat worker reports on `/health` (connections, rooms, messages), sampled with memory.
    #[serde(default)]
    pub chat: Option<ChatFigures>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatFigures {
    pub connections: usize,
    pub rooms: usize,
    /// A counter since the worker started.
    pub messages: u64,
    /// Messages from the other workers it dropped because it fell behind (a counter).
    #[serde(default)]
    pub dropped: u64,
    /// Connections it handed to, and took from, the other instances for their polling sessions
    /// (counters).
    #[serde(default)]
    pub handed: u64,
    #[serde(default)]
    pub taken: u64,
    /// Why the worker is cut off from the other workers (it serves its own clients meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// The externally visible phase of an instance (the daemon's state machine has more detail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Stopped,
    /// Waiting out `restart_delay` before the next spawn.
    Waiting,
    Starting,
    Online,
    Stopping,
    Errored,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Waiting => "waiting",
            Phase::Starting => "starting",
            Phase::Online => "online",
            Phase::Stopping => "stopping",
            Phase::Errored => "errored",
        }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitKind {
    Code(i32),
    Signal(i32),
    /// The process is gone but how it ended could not be learnt (waiting for it failed).
    Unknown,
}

impl std::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitKind::Code(c) => write!(f, "exit {c}"),
            ExitKind::Signal(s) => write!(f, "signal {s}"),
            ExitKind::Unknown => f.write_str("unknown exit"),
        }
    }
}

/// `chatctl describe APP`: the settings in effect and each instance's details and recent history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppDescription {
    pub spec: crate::spec::AppSpec,
    pub status: AppStatus,
    pub instances: Vec<InstanceDetail>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDetail {
    pub index: usize,
    /// Sockets the instance gets, as `LISTEN_FDNAMES` names them, with their addresses.
    pub sockets: Vec<String>,
    pub log_files: Vec<String>,
    /// Newest last, bounded.
    pub history: Vec<HistoryEntry>,
    /// Newest last, bounded.
    pub probes: Vec<ProbeRecord>,
    pub memory_peak_bytes: Option<u64>,
}

/// One event in an instance's life: a transition, with the reason when it was not planned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: crate::time::Timestamp,
    pub event: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub at: crate::time::Timestamp,
    pub ok: bool,
    pub latency_ms: u64,
    pub error: Option<String>,
}
