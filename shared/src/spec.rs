//! An app as the daemon runs it: one profile of one `ecosystem.toml` app, with every default applied
//! and every path made absolute. The CLI resolves it (so errors are reported where the user typed the
//! command) and sends it to the daemon, which needs no access to the file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ecosystem::{ExecMode, Readiness, StopSignal};
use crate::units::{ByteSize, HumanDuration};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    pub name: String,
    /// The profile this spec was resolved with, if any.
    pub profile: Option<String>,
    /// An absolute path, or a bare command name looked up in the app's `PATH`.
    pub script: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment: the environment `chatctl start` ran in, then the file's `env`.
    pub env: BTreeMap<String, String>,
    pub instances: usize,
    pub exec_mode: ExecMode,
    pub listen: Option<ListenSpec>,
    pub increment_var: String,
    pub instance_var: String,
    pub kill_signal: StopSignal,
    pub kill_timeout: HumanDuration,
    pub restart_delay: HumanDuration,
    pub max_restart_delay: HumanDuration,
    pub autorestart: bool,
    pub stop_exit_codes: Vec<i32>,
    pub min_uptime: HumanDuration,
    pub max_restarts: u32,
    pub listen_timeout: HumanDuration,
    pub reload_batch: usize,
    pub build: Option<String>,
    /// `None`: online as soon as it runs (no health check, no notify).
    pub readiness: Option<Readiness>,
    pub health: Option<HealthSpec>,
    pub logs: LogSpec,
    /// Replace an instance whose process group uses more resident memory than this.
    pub max_memory: Option<ByteSize>,
    pub memory_check_interval: HumanDuration,
    /// Restart on file changes (development).
    pub watch: Option<WatchSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// Absolute paths, watched recursively.
    pub paths: Vec<PathBuf>,
    /// Glob patterns: without a `/` they match any file or directory name (`*.tmp`, `cache`); with
    /// one, a path relative to `cwd` (`public/uploads`). Matching a directory ignores what is in it.
    pub ignore: Vec<String>,
    /// Changes are gathered for this long after the last one, then restart once.
    pub delay: HumanDuration,
}

/// Where and how an app's output is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// stdout; `None` = the daemon's default `<home>/logs/<name>-out.log`.
    pub out_file: Option<PathBuf>,
    /// stderr; `None` = `<home>/logs/<name>-error.log`. May equal `out_file` (one file).
    pub error_file: Option<PathBuf>,
    /// One file for all instances, or `-<index>` before the extension per instance.
    pub merge: bool,
    pub date_format: Option<String>,
    pub json: bool,
    pub max_size: ByteSize,
    pub retain: u32,
    pub compress: bool,
    pub daily: bool,
}

/// Where an app's instances receive connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenSpec {
    pub host: IpAddr,
    /// Cluster: the one shared port. Fork: the port of instance 0; instance i gets `port + i`.
    /// `0` asks the kernel for a free port (cluster mode; tests use it).
    pub port: u16,
    /// The supervisor binds and passes the socket (fd 3); otherwise the program binds the port itself.
    pub inherit: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub path: String,
    pub interval: HumanDuration,
    pub timeout: HumanDuration,
    pub unhealthy_threshold: u32,
    pub grace: HumanDuration,
}

impl AppSpec {
    /// Whether `other` can replace this spec's processes on the same sockets (a reload): same
    /// listening address, mode and socket passing.
    pub fn same_sockets(&self, other: &AppSpec) -> bool {
        self.listen == other.listen && self.exec_mode == other.exec_mode
    }

    /// The port instance `index` serves on, if the app listens.
    pub fn port_of(&self, index: usize) -> Option<u16> {
        let listen = self.listen.as_ref()?;
        match self.exec_mode {
            ExecMode::Cluster => Some(listen.port),
            ExecMode::Fork if listen.port == 0 => Some(0),
            // Validation guarantees port + instances - 1 fits in a u16.
            ExecMode::Fork => u16::try_from(usize::from(listen.port) + index).ok(),
        }
    }
}
