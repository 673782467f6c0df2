//! One app inside the daemon: its spec, the sockets it owns, its log sink and its instance slots;
//! and the carrying out of the state machine's effects for them.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After an instance exits, how long its output may take to reach the end of its pipes before the
/// exit is handled anyway (a descendant that outlives it may hold them open).
const PIPES_AFTER_EXIT: Duration = Duration::from_millis(200);

use chat_shared::ecosystem::{ExecMode, Readiness, StopSignal};
use chat_shared::spec::AppSpec;
use chat_shared::status::{AppStatus, ExitKind, InstanceStatus, Phase};
use chat_shared::worker_env::{FD_NAME_ADMIN, FD_NAME_HTTP};
use nix::sys::signal::{Signal, killpg};

use super::effects::Effects;
use super::msg::{AppId, Msg};
use super::slot::{Proc, Slot, Which};
use crate::instance::{Effect, Input, Instance, Policy};
use crate::listen::{self, BindError};
use chat_shared::ipc::LogStream;

use crate::logs::{LogPaths, LogSink};
use crate::metrics::Usage;
use crate::notify::NotifySocket;
use crate::pid::Pid;
use crate::spawn::{self, Launch, PassedFd};
use crate::watch::{AppWatcher, Ignore, WatchError};

mod describe;
mod handover;
mod model;
mod replace;

pub(super) use handover::add_pipes;
pub(super) use model::App;

/// The app with id `app_id`, if it is still known (messages may outlive a deleted app).
pub(super) fn app_mut(apps: &mut [App], app_id: AppId) -> Option<&mut App> {
    apps.iter_mut().find(|a| a.id == app_id)
}

/// [`app_mut`], to read.
pub(super) fn app(apps: &[App], app_id: AppId) -> Option<&App> {
    apps.iter().find(|a| a.id == app_id)
}

impl App {
    /// Binds every socket the app needs; nothing is spawned yet. Fails as a whole.
    pub(super) fn new(id: AppId, spec: AppSpec, log_paths: &LogPaths, fx: &Effects) -> Result<App, AppError> {
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
        let mut next_key = 0;
        for index in 0..spec.instances {
            let own = Self::own_socket(&spec, index)?;
            let slot_port = own.as_ref().map(|(_, p)| *p).or(port).or_else(|| spec.port_of(index));
            next_key += 1;
            let current = Self::new_proc(id, next_key, &spec, slot_port, None, fx)?;
            slots.push(Slot::new(current, own.map(|(socket, _)| socket), slot_port));
        }
        if spec.exec_mode == ExecMode::Fork {
            port = slots.first().and_then(|s| s.port);
        }
        let logs = LogSink::open(&spec.name, log_paths.clone(), &spec.logs, spec.instances, fx.follow.clone(), (0, 0))
            .map_err(|source| AppError::Logs { path: log_paths.out.clone(), source })?;
        let watcher = Self::watcher(id, &spec, log_paths, fx)?;
        let policy = Policy::of(&spec);
        Ok(App {
            id,
            successor_policy: Policy::for_successor(&policy),
            policy,
            outcomes: Vec::new(),
            builder: super::builder::Builder::default(),
            reloads: 0,
            secret: app_secret().map_err(|source| AppError::Secret { source })?,
            spec,
            shared,
            port,
            slots,
            logs,
            deleting: false,
            _watcher: watcher,
            next_key,
        })
    }

    /// Watch mode: the watcher that tells the daemon about changes.
    fn watcher(id: AppId, spec: &AppSpec, log_paths: &LogPaths, fx: &Effects) -> Result<Option<AppWatcher>, AppError> {
        let Some(watch) = &spec.watch else { return Ok(None) };
        // Logs never restart the app: the daemon's whole home (its own log, sockets) and the
        // directories of the app's log files.
        let mut dirs = vec![fx.home.dir().to_owned()];
        dirs.extend([&log_paths.out, &log_paths.err].iter().filter_map(|p| p.parent()).map(std::path::Path::to_owned));
        let ignore = Ignore::new(&watch.ignore, dirs, &spec.cwd)?;
        let tx = fx.tx.clone();
        Ok(Some(AppWatcher::start(watch, ignore, move |paths| {
            let _ = tx.send(Msg::Changed { app_id: id, paths });
        })?))
    }

    /// Fork mode with `inherit_socket`: the slot's own `port + i`, bound, and its real port.
    fn own_socket(spec: &AppSpec, index: usize) -> Result<Option<(TcpListener, u16)>, AppError> {
        let (Some(l), ExecMode::Fork) = (&spec.listen, spec.exec_mode) else { return Ok(None) };
        if !l.inherit {
            return Ok(None);
        }
        let port = spec.port_of(index).unwrap_or(0);
        let own = listen::bind(l.host, port)?;
        let bound =
            own.local_addr().map_err(|source| BindError { addr: SocketAddr::new(l.host, port), source })?.port();
        Ok(Some((own, bound)))
    }

    /// A process of a slot, with its own admin listener (cluster; `admin` when it has one already)
    /// and notify socket.
    fn new_proc(
        app_id: AppId,
        key: u64,
        spec: &AppSpec,
        port: Option<u16>,
        admin: Option<TcpListener>,
        fx: &Effects,
    ) -> Result<Proc, AppError> {
        let mut proc = Proc {
            instance: Instance::new(),
            spec: std::sync::Arc::new(spec.clone()),
            key,
            admin: None,
            probe_addr: None,
            notify: None,
            tracked: None,
        };
        if let Some(l) = &spec.listen {
            match spec.exec_mode {
                ExecMode::Cluster => {
                    let admin = match admin {
                        Some(admin) => admin,
                        None => listen::admin()?,
                    };
                    proc.probe_addr = admin.local_addr().ok();
                    proc.admin = Some(admin);
                }
                ExecMode::Fork => proc.probe_addr = port.map(|p| listen::probe_target(l.host, p)),
            }
        }
        if spec.readiness == Some(Readiness::Notify) {
            let path = fx.home.dir().join("notify").join(format!("{app_id}.{key}.sock"));
            let tx = fx.tx.clone();
            let on_notice = move |notice| {
                let _ = tx.send(Msg::Notify { app_id, key, notice });
            };
            let socket =
                NotifySocket::bind(path.clone(), on_notice).map_err(|source| AppError::Notify { path, source })?;
            proc.notify = Some(socket);
        }
        Ok(proc)
    }

    /// Where the process with `pid` is.
    pub(super) fn find_pid(&self, pid: Pid) -> Option<(usize, Which)> {
        self.find(|p| p.instance.pid() == Some(pid))
    }

    /// Where the process with notify `key` is.
    pub(super) fn find_key(&self, key: u64) -> Option<(usize, Which)> {
        self.find(|p| p.key == key)
    }

    fn find(&self, wanted: impl Fn(&Proc) -> bool) -> Option<(usize, Which)> {
        self.slots.iter().enumerate().find_map(|(index, slot)| {
            [Which::Current, Which::Successor]
                .into_iter()
                .find(|w| slot.proc(*w).is_some_and(&wanted))
                .map(|which| (index, which))
        })
    }

    /// Feeds `input` to a process of slot `index`, carries out the effects, and moves a
    /// replacement in progress along.
    pub(super) fn drive(&mut self, index: usize, which: Which, input: Input, now: Instant, fx: &mut Effects) {
        self.drive_one(index, which, input, now, fx);
        self.advance(index, now, fx);
    }

    /// Feeds `input` and carries out the effects, including those that follow from them (a spawn's
    /// outcome is itself an input).
    fn drive_one(&mut self, index: usize, which: Which, input: Input, now: Instant, fx: &mut Effects) {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let Some(proc) = self.slots.get_mut(index).and_then(|s| s.proc_mut(which)) else { return };
            let instance = &mut proc.instance;
            let before = instance.phase();
            let incidents = instance.incidents;
            // A successor gets one chance: if it fails, the replacement is abandoned, not retried.
            let policy = if which == Which::Successor { &self.successor_policy } else { &self.policy };
            let effects = instance.step(input, now, policy);
            let after = instance.phase();
            let incident = instance.incidents != incidents;
            if before != after || incident {
                let successor = which == Which::Successor;
                let span = tracing::info_span!("instance", app = %self.spec.name, index, successor);
                let _enter = span.enter();
                let note = instance.note.as_deref().unwrap_or("");
                let (from, to, pid) = (before.as_str(), after.as_str(), instance.pid());
                // The machine writes a note exactly when something unplanned happened (a crash, a
                // failed probe, a timeout): that is what an operator must hear about.
                if incident {
                    tracing::warn!(from, to, pid = pid.map(Pid::raw), note, "state");
                } else {
                    tracing::info!(from, to, pid = pid.map(Pid::raw), "state");
                }
                let who = if successor { "successor " } else { "" };
                let pid = pid.map(|p| format!(" pid {p}")).unwrap_or_default();
                let why = if incident { format!(": {note}") } else { String::new() };
                let event = format!("{who}{from} -> {to}{pid}{why}");
                self.slots[index].record(event);
            }
            for effect in effects {
                if let Some(next) = self.apply(index, which, effect, fx) {
                    queue.push_back(next);
                }
            }
        }
    }

    fn apply(&mut self, index: usize, which: Which, effect: Effect, fx: &mut Effects) -> Option<Input> {
        let name = self.spec.name.clone();
        match effect {
            Effect::Spawn => Some(self.spawn(index, which, fx)),
            Effect::Signal { pid, signal } => {
                signal_group(&name, pid, to_nix(signal));
                None
            }
            Effect::KillGroup { pid } => {
                signal_group(&name, pid, Signal::SIGKILL);
                None
            }
            Effect::Probe { pid } => {
                let proc = self.slots[index].proc(which)?;
                let (Some(addr), Some(health)) = (proc.probe_addr, self.spec.health.as_ref()) else {
                    return Some(Input::ProbePassed);
                };
                let (prober, tx, app_id) = (fx.prober.clone(), fx.tx.clone(), self.id);
                let (path, timeout, any_answer) = (health.path.clone(), health.timeout.0, health.any_answer);
                tokio::spawn(async move {
                    let begun = Instant::now();
                    let result = prober.probe(addr, &path, timeout, any_answer).await;
                    let latency_ms = begun.elapsed().as_millis() as u64;
                    let _ = tx.send(Msg::Probe { app_id, pid, result, latency_ms });
                });
                None
            }
        }
    }

    fn spawn(&mut self, index: usize, which: Which, fx: &mut Effects) -> Input {
        let slot = &self.slots[index];
        let Some(proc) = slot.proc(which) else { return Input::SpawnFailed("no such process".into()) };
        let mut fds: Vec<PassedFd<'_>> = Vec::new();
        if let Some(shared) = &self.shared {
            fds.push(PassedFd { fd: shared, name: FD_NAME_HTTP });
        }
        if let Some(own) = &slot.own {
            fds.push(PassedFd { fd: own, name: FD_NAME_HTTP });
        }
        if let Some(admin) = &proc.admin {
            fds.push(PassedFd { fd: admin, name: FD_NAME_ADMIN });
        }
        let spec = proc.spec.clone();
        let tracking = fx.descendants.prepare(&spec.name, index);
        let channel = match self.node_channel(&spec, proc.key, fx) {
            Ok(channel) => channel,
            Err(e) => {
                fx.descendants.discard(tracking);
                return Input::SpawnFailed(format!("cannot make the Node IPC channel: {e}"));
            }
        };
        let launch = Launch {
            spec: &spec,
            index,
            port: slot.port,
            fds: &fds,
            home: fx.home.dir(),
            notify: proc.notify.as_ref().map(NotifySocket::path),
            secret: &self.secret,
            tracking: &tracking,
            channel: channel.as_ref().map(|c| c as &dyn std::os::fd::AsRawFd),
        };
        // Watched for in the program's output when it was passed its port (see below).
        let watch =
            match (fds.is_empty(), slot.port.or_else(|| self.shared.as_ref()?.local_addr().ok().map(|a| a.port()))) {
                (false, Some(port)) => Some(Arc::new(crate::diagnose::BindWatch::new(port))),
                _ => None,
            };
        let mut child = match spawn::spawn(&launch) {
            Ok(child) => child,
            Err(e) => {
                fx.descendants.discard(tracking);
                tracing::error!(app = %self.spec.name, index, script = %spec.script, error = %e, "spawn failed");
                // chdir happens before exec, and both fail with ENOENT: name the path that is missing.
                if !spec.cwd.is_dir() {
                    return Input::SpawnFailed(format!("cwd {}: {e}", spec.cwd.display()));
                }
                return Input::SpawnFailed(format!("{}: {e}", spec.script));
            }
        };
        let Some(pid) = child.id().map(Pid::new) else {
            fx.descendants.discard(tracking);
            return Input::SpawnFailed("the process exited before its pid could be read".into());
        };
        let tracked = fx.descendants.tracked(tracking, pid.raw());
        if let Some(proc) = self.slots[index].proc_mut(which) {
            proc.tracked = Some(tracked);
        }
        // A program passed its port that binds it itself fails the same way every time: its
        // output is watched, so that the exit says what to do instead of restarting in vain.
        let pipes = self.capture(&mut child, index, pid, watch.as_ref());
        let exited = async move {
            match child.wait().await {
                Ok(status) => exit_kind(status),
                Err(e) => {
                    tracing::error!(%pid, error = %e, "waiting for an instance failed");
                    ExitKind::Unknown
                }
            }
        };
        tokio::spawn(report_exit(exited, pid, pipes, watch, fx.tx.clone(), self.id));
        if let Some(reaper) = &mut fx.reaper {
            reaper.watch(pid);
        }
        tracing::debug!(app = %self.spec.name, index, %pid, "spawned");
        Input::Spawned { pid }
    }

    /// Reads a new process's stdout and stderr into the app's logs.
    fn capture(
        &self,
        child: &mut tokio::process::Child,
        index: usize,
        pid: Pid,
        watch: Option<&Arc<crate::diagnose::BindWatch>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let outputs = [
            (child.stdout.take().map(|o| crate::logs::pipe(o.into_owned_fd())), LogStream::Out),
            (child.stderr.take().map(|e| crate::logs::pipe(e.into_owned_fd())), LogStream::Err),
        ];
        let mut pipes = Vec::new();
        for (pipe, stream) in outputs {
            match pipe {
                Some(Ok(pipe)) => {
                    pipes.push(self.logs.capture(pipe, stream, index, Some(pid.raw()), watch.cloned(), Vec::new()))
                }
                Some(Err(e)) => tracing::error!(app = %self.spec.name, index, error = %e, "cannot read an output pipe"),
                None => {}
            }
        }
        pipes
    }

    /// A Node program that says it is ready the PM2 way (`process.send('ready')`) gets a channel
    /// whose notices reach the daemon as `Msg::Notify`; other programs get none.
    fn node_channel(
        &self,
        spec: &AppSpec,
        key: u64,
        fx: &Effects,
    ) -> std::io::Result<Option<std::os::unix::net::UnixStream>> {
        if spec.readiness != Some(Readiness::Notify) || !spec.node_preload {
            return Ok(None);
        }
        let (tx, app_id) = (fx.tx.clone(), self.id);
        crate::notify::node_channel(move |notice| {
            let _ = tx.send(Msg::Notify { app_id, key, notice });
        })
        .map(Some)
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.procs().filter_map(|(_, _, p)| p.instance.next_deadline()).min()
    }

    /// Every process of every slot, with where it is.
    pub(super) fn procs(&self) -> impl Iterator<Item = (usize, Which, &Proc)> {
        self.slots.iter().enumerate().flat_map(|(index, slot)| {
            [Which::Current, Which::Successor].into_iter().filter_map(move |w| slot.proc(w).map(|p| (index, w, p)))
        })
    }

    /// Every slot stopped (or errored): nothing running, nothing about to run.
    pub(super) fn is_down(&self) -> bool {
        self.slots.iter().all(Slot::is_down)
    }

    pub(super) fn status(&self, now: Instant, usage: &std::collections::HashMap<u32, Usage>) -> AppStatus {
        let instances = self
            .slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let current = &slot.current;
                let pid = current.instance.pid();
                let use_ = pid.and_then(|p| usage.get(&p.raw()));
                let note = match &slot.successor {
                    Some(s) => {
                        let pid = s.proc.instance.pid().map_or("-".into(), |p| p.to_string());
                        Some(match (current.instance.phase(), s.proc.instance.phase()) {
                            (Phase::Stopping, Phase::Online) => format!("draining: pid {pid} took over ({})", s.reason),
                            (_, phase) => format!("replacing ({}): successor pid {pid} {}", s.reason, phase.as_str()),
                        })
                    }
                    None => current.instance.note.clone(),
                };
                InstanceStatus {
                    index,
                    status: current.instance.phase(),
                    pid: pid.map(Pid::raw),
                    port: slot.port,
                    admin_addr: current.admin.as_ref().and_then(|a| a.local_addr().ok()).map(|a| a.to_string()),
                    uptime_ms: current.instance.since().map(|s| now.saturating_duration_since(s).as_millis() as u64),
                    restarts: current.instance.restarts,
                    memory_bytes: use_.map(|u| u.memory_bytes),
                    cpu_percent: use_.map(|u| u.cpu_percent),
                    last_exit: current.instance.last_exit,
                    note,
                    last_probe: slot.probes.back().map(|p| (p.ok, p.latency_ms)),
                    chat: slot.chat.clone(),
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
            log_issue: self.logs.issue(),
            build: self.builder.note(),
        }
    }
}

/// Starting apps failed before anything was spawned.
#[derive(Debug, thiserror::Error)]
#[error("app {app}: {source}")]
pub struct StartError {
    pub(super) app: String,
    #[source]
    pub(super) source: AppError,
}

impl StartError {
    /// The error with its causes, on one line, for the CLI.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(&self.source);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }
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
    #[error("cannot take over a socket of the previous daemon image")]
    Adopt(#[source] std::io::Error),
    #[error("cannot make the app's secret")]
    Secret {
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

/// 32 random bytes from the kernel, hex.
fn app_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn signal_group(app: &str, pid: Pid, signal: Signal) {
    let Some(group) = pid.to_nix() else { return };
    match killpg(group, signal) {
        // The group is already gone: nothing left to stop.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::error!(app, %pid, ?signal, error = %e, "signalling the process group failed"),
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

/// Waits for an instance's process, then for its output to reach the logs, and tells the daemon
/// how it ended (and what its output showed is wrong with its setup, if anything).
async fn report_exit(
    exited: impl std::future::Future<Output = ExitKind>,
    pid: Pid,
    pipes: Vec<tokio::task::JoinHandle<()>>,
    watch: Option<Arc<crate::diagnose::BindWatch>>,
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    app_id: AppId,
) {
    let status = exited.await;
    // Its last words first (a descendant may hold the pipes open: not for long).
    let _ = tokio::time::timeout(PIPES_AFTER_EXIT, async {
        for pipe in pipes {
            let _ = pipe.await;
        }
    })
    .await;
    let misconfigured = watch.filter(|w| w.seen()).map(|w| w.advice());
    let _ = tx.send(Msg::Exited { app_id, pid, status, misconfigured });
}

/// How a process that was already gone exited: nobody can tell any more.
async fn exit_kind_unknown() -> ExitKind {
    ExitKind::Unknown
}

fn exit_kind(status: std::process::ExitStatus) -> ExitKind {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitKind::Code(code),
        (None, Some(signal)) => ExitKind::Signal(signal),
        (None, None) => ExitKind::Unknown,
    }
}
