//! What one app is inside the daemon. The type alone, apart from the modules that implement it
//! (`app`, `describe`, `replace`), so that none of them imports the module that declares it.

use std::net::TcpListener;

use chat_shared::spec::AppSpec;

use crate::daemon::builder::Builder;
use crate::daemon::msg::AppId;
use crate::daemon::slot::Slot;
use crate::instance::Policy;
use crate::logs::LogSink;
use crate::pid::Pid;
use crate::watch::AppWatcher;

pub(in crate::daemon) struct App {
    /// Unique for the daemon's life, so messages about a deleted app cannot reach a new one of the
    /// same name.
    pub(in crate::daemon) id: AppId,
    /// Development mode's rebuild cycle (`watch` with `build`).
    pub(in crate::daemon) builder: Builder,
    pub(in crate::daemon) spec: AppSpec,
    pub(in crate::daemon) policy: Policy,
    /// Cluster mode: the one socket every instance accepts on.
    pub(super) shared: Option<TcpListener>,
    /// The port actually bound (differs from the spec for port 0).
    pub(super) port: Option<u16>,
    pub(in crate::daemon) slots: Vec<Slot>,
    pub(in crate::daemon) logs: LogSink,
    /// Set by `delete`: the app is removed once every instance has stopped.
    pub(in crate::daemon) deleting: bool,
    /// Watch mode: restarts the app on file changes while it lives.
    pub(super) _watcher: Option<AppWatcher>,
    /// Last process key handed out (see `Proc::key`).
    pub(super) next_key: u64,
    /// `policy` without restarts, for successors.
    pub(super) successor_policy: Policy,
    /// Finished replacements, (slot, new pid or why it failed), for whoever drives them (reloads).
    pub(in crate::daemon) outcomes: Vec<(usize, Result<Option<Pid>, String>)>,
    /// Shared by every instance of the app for as long as the daemon knows it (reloads included).
    pub(super) secret: String,
    /// Rolling reloads begun, for `/metrics`.
    pub(in crate::daemon) reloads: u64,
}
