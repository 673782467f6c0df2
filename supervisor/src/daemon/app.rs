//! One app inside the daemon: its spec, the sockets it owns, its log sink and its instance slots;
//! and the carrying out of the state machine's effects for them.

use std::net::{SocketAddr, TcpListener};
use std::time::Instant;

use chat_shared::ecosystem::{ExecMode, Readiness, StopSignal};
use chat_shared::spec::AppSpec;
use chat_shared::status::{AppStatus, ExitKind, InstanceStatus, Phase};
use chat_shared::worker_env::{FD_NAME_ADMIN, FD_NAME_HTTP};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::Msg;
use crate::instance::{Effect, Input, Instance, Policy};
use crate::listen::{self, BindError};
use chat_shared::ipc::LogStream;

use crate::logs::{LogPaths, LogSink};
use crate::metrics::Usage;
use crate::notify::NotifySocket;
use crate::probe::Prober;
use crate::reaper::Reaper;
use crate::spawn::{self, Launch, PassedFd};
use crate::watch::{AppWatcher, Ignore, WatchError};

pub(super) struct App {
    /// Unique for the daemon's life, so messages about a deleted app cannot reach a new one of the
    /// same name.
    pub(super) id: u64,
    pub(super) spec: AppSpec,
    pub(super) policy: Policy,
    /// Cluster mode: the one socket every instance accepts on.
    shared: Option<TcpListener>,
    /// The port actually bound (differs from the spec for port 0).
    port: Option<u16>,
    pub(super) slots: Vec<Slot>,
    pub(super) logs: LogSink,
    /// Set by `delete`: the app is removed once every instance has stopped.
    pub(super) deleting: bool,
    /// Watch mode: restarts the app on file changes while it lives.
    _watcher: Option<AppWatcher>,
}

pub(super) struct Slot {
    pub(super) instance: Instance,
    /// Cluster mode: private loopback listener for this instance's health probes.
    admin: Option<TcpListener>,
    /// Fork mode with `inherit_socket`: this instance's own `port + i`.
    own: Option<TcpListener>,
    port: Option<u16>,
    probe_addr: Option<SocketAddr>,
    /// `readiness = "notify"`: this slot's `NOTIFY_SOCKET`.
    notify: Option<NotifySocket>,
}

impl App {
    /// Binds every socket the app needs; nothing is spawned yet. Fails as a whole.
    pub(super) fn new(id: u64, spec: AppSpec, log_paths: &LogPaths, env: &Env<'_>) -> Result<App, AppError> {
        let mut shared = None;
        let mut port = None;
        let mut slots = Vec::with_capacity(spec.instances);
        if let Some(l) = &spec.listen
            && spec.exec_mode == ExecMode::Cluster
        {
            let socket = listen::bind(l.host, l.port)?;
            port = Some(
                socket
                    .local_addr()
                    .map_err(|source| BindError { addr: SocketAddr::new(l.host, l.port), source })?
                    .port(),
            );
            shared = Some(socket);
        }
        for index in 0..spec.instances {
            let mut slot = Slot::new(&spec, index, port)?;
            if spec.readiness == Some(Readiness::Notify) {
                let path = env.home.join("notify").join(format!("{id}.{index}.sock"));
                let tx = env.tx.clone();
                let on_notice = move |notice| {
                    let _ = tx.send(Msg::Notify { app_id: id, index, notice });
                };
                let socket =
                    NotifySocket::bind(path.clone(), on_notice).map_err(|source| AppError::Notify { path, source })?;
                slot.notify = Some(socket);
            }
            slots.push(slot);
        }
        if spec.exec_mode == ExecMode::Fork {
            port = slots.first().and_then(|s| s.port);
        }
        let logs = LogSink::open(&spec.name, log_paths.clone(), &spec.logs, spec.instances, env.follow.clone())
            .map_err(|source| AppError::Logs { path: log_paths.out.clone(), source })?;
        let watcher = match &spec.watch {
            Some(watch) => {
                // Logs never restart the app: the daemon's whole home (its own log, sockets) and the
                // directories of the app's log files.
                let mut dirs = vec![env.home.to_owned()];
                dirs.extend(
                    [&log_paths.out, &log_paths.err].iter().filter_map(|p| p.parent()).map(std::path::Path::to_owned),
                );
                let ignore = Ignore::new(&watch.ignore, dirs, &spec.cwd)?;
                let tx = env.tx.clone();
                Some(AppWatcher::start(watch, ignore, move |paths| {
                    let _ = tx.send(Msg::Changed { app_id: id, paths });
                })?)
            }
            None => None,
        };
        Ok(App { id, policy: Policy::of(&spec), spec, shared, port, slots, logs, deleting: false, _watcher: watcher })
    }

    /// Feeds `input` to slot `index` and carries out the effects, including those that follow from
    /// them (a spawn's outcome is itself an input).
    pub(super) fn drive(&mut self, index: usize, input: Input, now: Instant, env: &Env<'_>) {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let Some(slot) = self.slots.get_mut(index) else { return };
            let before = slot.instance.phase();
            let incidents = slot.instance.incidents;
            let effects = slot.instance.step(input, now, &self.policy);
            let after = slot.instance.phase();
            let incident = slot.instance.incidents != incidents;
            if before != after || incident {
                let span = tracing::info_span!("instance", app = %self.spec.name, index);
                let _enter = span.enter();
                let note = slot.instance.note.as_deref().unwrap_or("");
                let (from, to, pid) = (before.as_str(), after.as_str(), slot.instance.pid());
                // The machine writes a note exactly when something unplanned happened (a crash, a
                // failed probe, a timeout): that is what an operator must hear about.
                if incident {
                    tracing::warn!(from, to, pid, note, "state");
                } else {
                    tracing::info!(from, to, pid, "state");
                }
            }
            for effect in effects {
                if let Some(next) = self.apply(index, effect, env) {
                    queue.push_back(next);
                }
            }
        }
    }

    fn apply(&mut self, index: usize, effect: Effect, env: &Env<'_>) -> Option<Input> {
        let name = self.spec.name.clone();
        match effect {
            Effect::Spawn => Some(self.spawn(index, env)),
            Effect::Signal { pid, signal } => {
                signal_group(&name, pid, to_nix(signal));
                None
            }
            Effect::KillGroup { pid } => {
                signal_group(&name, pid, Signal::SIGKILL);
                None
            }
            Effect::Probe { pid } => {
                let slot = &self.slots[index];
                let (Some(addr), Some(health)) = (slot.probe_addr, self.spec.health.as_ref()) else {
                    return Some(Input::ProbePassed);
                };
                let (prober, tx, app_id) = (env.prober.clone(), env.tx.clone(), self.id);
                let (path, timeout) = (health.path.clone(), health.timeout.0);
                tokio::spawn(async move {
                    let result = prober.probe(addr, &path, timeout).await;
                    let _ = tx.send(Msg::Probe { app_id, index, pid, result });
                });
                None
            }
        }
    }

    fn spawn(&mut self, index: usize, env: &Env<'_>) -> Input {
        let slot = &self.slots[index];
        let mut fds: Vec<PassedFd<'_>> = Vec::new();
        if let Some(shared) = &self.shared {
            fds.push(PassedFd { fd: shared, name: FD_NAME_HTTP });
        }
        if let Some(own) = &slot.own {
            fds.push(PassedFd { fd: own, name: FD_NAME_HTTP });
        }
        if let Some(admin) = &slot.admin {
            fds.push(PassedFd { fd: admin, name: FD_NAME_ADMIN });
        }
        let launch = Launch {
            spec: &self.spec,
            index,
            port: slot.port,
            fds: &fds,
            home: env.home,
            notify: slot.notify.as_ref().map(NotifySocket::path),
        };
        let mut child = match spawn::spawn(&launch) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(app = %self.spec.name, index, script = %self.spec.script, error = %e, "spawn failed");
                return Input::SpawnFailed(format!("{}: {e}", self.spec.script));
            }
        };
        let Some(pid) = child.id() else {
            return Input::SpawnFailed("the process exited before its pid could be read".into());
        };
        if let Some(out) = child.stdout.take() {
            self.logs.capture(out, LogStream::Out, index);
        }
        if let Some(err) = child.stderr.take() {
            self.logs.capture(err, LogStream::Err, index);
        }
        let (tx, app_id) = (env.tx.clone(), self.id);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => exit_kind(status),
                Err(e) => {
                    tracing::error!(pid, error = %e, "waiting for an instance failed");
                    ExitKind::Code(-1)
                }
            };
            let _ = tx.send(Msg::Exited { app_id, index, pid, status });
        });
        if let Some(reaper) = env.reaper {
            reaper.borrow_mut().watch(pid);
        }
        tracing::debug!(app = %self.spec.name, index, pid, "spawned");
        Input::Spawned { pid }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.instance.next_deadline()).min()
    }

    /// Every slot stopped (or errored): nothing running, nothing about to run.
    pub(super) fn is_down(&self) -> bool {
        self.slots.iter().all(|s| matches!(s.instance.phase(), Phase::Stopped | Phase::Errored))
    }

    pub(super) fn status(&self, now: Instant, usage: &std::collections::HashMap<u32, Usage>) -> AppStatus {
        let instances = self
            .slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let pid = slot.instance.pid();
                let use_ = pid.and_then(|p| usage.get(&p));
                InstanceStatus {
                    index,
                    status: slot.instance.phase(),
                    pid,
                    port: slot.port,
                    admin_addr: slot.admin.as_ref().and_then(|a| a.local_addr().ok()).map(|a| a.to_string()),
                    uptime_ms: slot.instance.since().map(|s| now.saturating_duration_since(s).as_millis() as u64),
                    restarts: slot.instance.restarts,
                    memory_bytes: use_.map(|u| u.memory_bytes),
                    cpu_percent: use_.map(|u| u.cpu_percent),
                    last_exit: slot.instance.last_exit,
                    note: slot.instance.note.clone(),
                }
            })
            .collect();
        AppStatus {
            name: self.spec.name.clone(),
            profile: self.spec.profile.clone(),
            exec_mode: self.spec.exec_mode,
            script: self.spec.script.clone(),
            port: self.port,
            instances,
        }
    }
}

impl Slot {
    fn new(spec: &AppSpec, index: usize, shared_port: Option<u16>) -> Result<Slot, AppError> {
        let mut slot = Slot {
            instance: Instance::new(),
            admin: None,
            own: None,
            port: spec.port_of(index),
            probe_addr: None,
            notify: None,
        };
        let Some(l) = &spec.listen else { return Ok(slot) };
        match spec.exec_mode {
            ExecMode::Cluster => {
                let admin = listen::admin()?;
                slot.probe_addr = admin.local_addr().ok();
                slot.admin = Some(admin);
                slot.port = shared_port;
            }
            ExecMode::Fork if l.inherit => {
                let port = slot.port.unwrap_or(0);
                let own = listen::bind(l.host, port)?;
                let bound = own
                    .local_addr()
                    .map_err(|source| BindError { addr: SocketAddr::new(l.host, port), source })?
                    .port();
                slot.port = Some(bound);
                slot.probe_addr = Some(listen::probe_target(l.host, bound));
                slot.own = Some(own);
            }
            ExecMode::Fork => slot.probe_addr = slot.port.map(|p| listen::probe_target(l.host, p)),
        }
        Ok(slot)
    }
}

/// What applying effects needs from the daemon.
pub(super) struct Env<'a> {
    pub(super) tx: &'a mpsc::UnboundedSender<Msg>,
    pub(super) prober: &'a Prober,
    /// Marks every instance as this home's (see `leftovers`).
    pub(super) home: &'a std::path::Path,
    /// Where captured lines go for `chatctl logs --follow`.
    pub(super) follow: &'a tokio::sync::broadcast::Sender<std::sync::Arc<chat_shared::ipc::LogRecord>>,
    /// Told about every process group, so they die with the daemon.
    pub(super) reaper: Option<&'a std::cell::RefCell<Reaper>>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum AppError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("cannot bind the notify socket {path}")]
    Notify {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open log file {path}")]
    Logs {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn signal_group(app: &str, pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    match killpg(Pid::from_raw(raw), signal) {
        // The group is already gone: nothing left to stop.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::error!(app, pid, ?signal, error = %e, "signalling the process group failed"),
    }
}

fn to_nix(signal: StopSignal) -> Signal {
    match signal {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
        StopSignal::Hup => Signal::SIGHUP,
        StopSignal::Usr1 => Signal::SIGUSR1,
        StopSignal::Usr2 => Signal::SIGUSR2,
        StopSignal::Kill => Signal::SIGKILL,
    }
}

fn exit_kind(status: std::process::ExitStatus) -> ExitKind {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitKind::Code(code),
        (None, Some(signal)) => ExitKind::Signal(signal),
        (None, None) => ExitKind::Code(-1),
    }
}
