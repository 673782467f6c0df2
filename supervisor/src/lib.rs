//! `chatctl`: a process manager for realtime chat backends.
//!
//! # Theory of operation
//! One binary. `chatctl daemon` (started on demand, detached) or `chatctl run` (foreground) is the
//! supervisor; every other subcommand is a client that talks to it over a Unix socket in
//! `$CHATCTL_HOME` (newline-delimited JSON, version handshake first; see `chat_shared::ipc`).
//!
//! Inside the daemon one task owns all state (`daemon`). Each instance slot is a pure state machine
//! (`instance`) whose effects — spawn, signal the group, kill the group, probe — the daemon carries
//! out. Child-exit waiters, probe tasks and IPC connections send the owner messages; the owner sleeps
//! until the next message or the nearest deadline. Nothing polls.
//!
//! Sockets are bound by the supervisor (`listen`) and inherited by instances (`spawn`): in cluster
//! mode one port for all instances plus a private loopback listener per instance for its health
//! probe; in fork mode one port per instance. Children are process-group leaders with
//! `PR_SET_PDEATHSIG`, forked from the runtime's only thread, so they die with the daemon.
//!
//! A slot may hold two processes for a moment: its current one and a successor (a memory limit's
//! replacement, a reload's new version) that takes over once ready, so capacity never drops.
//! Subscriptions (`logs --follow`, `monit`, reload progress) are streams of events on the same
//! control connection.
//!
//! # Layout
//! - `cli`: argument parsing and one function per verb; `client`: the CLI end of the socket.
//! - `process`: being the daemon process (lock, control socket, detached start); `host`: hosting
//!   the daemon in this process, for `chatctl daemon` and `chatctl run`.
//! - `daemon`: the owner loop, apps and slots, request handling.
//! - `instance`: the per-instance state machine (pure); `pid`: process ids as they travel.
//! - `spawn`, `listen`, `probe`, `notify`, `logs`, `metrics`, `watch`: the effects' machinery.
//! - `reaper`, `leftovers`, `descendants`: no process outlives its instance or the daemon, however
//!   it dies, not even one that left its process group.
//! - `limits`: the daemon's own open-file limit raised, the apps' left as the daemon got it.
//! - `dashboard`: `chatctl monit`; `exporter`: `/metrics`.
//! - `bus`: the publish/subscribe broker the workers share rooms through.

pub mod bus;
pub mod cli;
pub mod client;
mod daemon;
pub mod dashboard;
mod descendants;
mod diagnose;
pub mod exporter;
pub mod handover;
pub mod home;
pub mod host;
mod instance;
mod ipc_server;
mod leftovers;
mod limits;
mod listen;
mod logs;
mod metrics;
mod notify;
mod pid;
mod probe;
pub mod process;
pub mod reaper;
mod spawn;
mod watch;

pub use daemon::{Outcome, RunOptions, StartError};
pub use logs::DaemonLog;
