//! The environment contract between the supervisor and the programs it runs. Names live here as
//! constants so that neither side spells them on its own.
//!
//! Sockets follow systemd's socket-activation convention (`sd_listen_fds(3)`): inherited descriptors
//! start at fd 3, `LISTEN_FDS` says how many, `LISTEN_FDNAMES` names them in order, colon-separated.
//! `LISTEN_PID` is not set: the parent cannot know the child's pid before `fork`, and setting it after
//! `fork` in a threaded parent is unsafe.

/// Number of inherited listening sockets, starting at [`LISTEN_FDS_START`].
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// Colon-separated names of the inherited sockets, in fd order.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// First inherited fd, as in systemd.
pub const LISTEN_FDS_START: i32 = 3;
/// Name of the public listener (the app's port, shared by all instances in cluster mode).
pub const FD_NAME_HTTP: &str = "http";
/// Name of the instance's private loopback listener, where the supervisor probes `/health` of this
/// one instance although every instance shares the public port.
pub const FD_NAME_ADMIN: &str = "admin";

/// Default variable carrying the port (`increment_var`).
pub const DEFAULT_PORT_VAR: &str = "PORT";
/// Default variable carrying the instance index (`instance_var`).
pub const DEFAULT_INSTANCE_VAR: &str = "INSTANCE_ID";
/// The instance index, always set (also under `instance_var`, which an operator may rename).
pub const INSTANCE: &str = "CHATCTL_INSTANCE";
/// The app's name, always set.
pub const APP_NAME: &str = "CHATCTL_APP";
/// The app's `kill_timeout` in milliseconds, always set: a worker can finish its drain before SIGKILL.
pub const KILL_TIMEOUT_MS: &str = "CHATCTL_KILL_TIMEOUT_MS";
/// Set to the supervisor's home directory in every instance's environment (and so, usually, in
/// their children's): a new daemon ends processes that carry its home's mark but are not its own.
pub const SUPERVISOR_MARK: &str = "CHATCTL_SUPERVISOR";
/// A per-spawn id (`<daemon pid>.<n>`) in every instance's environment: the daemon finds the
/// instance's descendants by it after they left its process group, where it cannot use cgroups.
pub const LAUNCH: &str = "CHATCTL_LAUNCH";
/// Path of the datagram socket an instance with `readiness = "notify"` sends `READY=1` to
/// (systemd's sd_notify protocol).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// A random secret the daemon makes once per app and gives every instance of it, so that what one
/// instance signs (guest session tokens) another verifies. Lasts as long as the daemon knows the app.
pub const APP_SECRET: &str = "CHATCTL_APP_SECRET";
/// Path of the daemon's local bus (publish/subscribe on a Unix socket): the workers of one host
/// share rooms through it when no Redis is configured.
pub const BUS: &str = "CHATCTL_BUS";

/// The app's data directory, shared by its instances and kept across reloads (the chat worker keeps
/// its shared files there).
pub const DATA_DIR: &str = "CHATCTL_DATA_DIR";

/// The instance's port (whatever `increment_var` names it): the Node preload takes the listen on
/// this port.
pub const PORT: &str = "CHATCTL_PORT";
/// Directory of the Unix sockets through which the instances of one cluster-mode app hand each
/// other the connections of long-polling sessions (the worker's `handoff` module).
pub const HANDOFF: &str = "CHATCTL_HANDOFF";
