//! The daemon: one task owns every app and instance; everything else sends it messages.
//!
//! IPC connections send `(Request, reply)`; exit waiters (one per child) send `Exited`; probe tasks
//! send `Probe`. Between messages the loop sleeps until the nearest instance deadline (restart delay,
//! probe, readiness timeout, SIGKILL), so nothing polls. Requests that take time (stop, restart,
//! delete, kill) park their reply in a [`Waiter`] that is answered when its condition holds.

mod app;
mod build;
mod cron;
mod reload;
mod requests;
mod slot;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat_shared::ipc::{Request, Response};
use chat_shared::spec::AppSpec;
use chat_shared::status::ExitKind;
use std::sync::Arc;
use tokio::net::UnixListener;

use chat_shared::ipc::LogRecord;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::home::Home;
use crate::instance::Input;
use crate::metrics::{Sampler, Usage};
use crate::probe::Prober;
use crate::reaper::Reaper;
use app::{App, Env};
pub use requests::StartError;
use slot::Which;

/// What carrying out effects needs, as a macro so that it borrows only these fields of the daemon
/// while `apps` is borrowed mutably.
macro_rules! effect_env {
    ($daemon:expr) => {
        Env {
            tx: &$daemon.tx,
            prober: &$daemon.prober,
            home: $daemon.home.dir(),
            follow: &$daemon.follow,
            reaper: $daemon.reaper.as_ref(),
            descendants: &$daemon.descendants,
        }
    };
}
use effect_env;

/// Lines a follower may fall behind by before it loses some (and is told how many).
const FOLLOW_BUFFER: usize = 8192;

/// How often memory and CPU are sampled for `list`.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// A `list` that finds a pid without usage samples at once unless the last sample is this recent
/// (a CLI polling for readiness must not turn into a sampling loop).
const FRESH_ENOUGH: Duration = Duration::from_millis(250);

pub(crate) enum Msg {
    Request(Request, oneshot::Sender<Response>),
    /// Processes are found by pid: a slot may hold two (a replacement), and slots move on.
    /// An app's development build ended (see `build`).
    Built {
        app_id: u64,
        result: Result<(), String>,
    },
    /// A successful build waited for another reload of its app to end: reload it now.
    BuiltWaiting {
        app_id: u64,
    },
    Exited {
        app_id: u64,
        pid: u32,
        status: ExitKind,
        /// What its output showed is wrong with how it is set up (see `diagnose`).
        misconfigured: Option<String>,
    },
    Probe {
        app_id: u64,
        pid: u32,
        result: Result<Option<chat_shared::health::HealthBody>, String>,
        latency_ms: u64,
    },
    /// A chat worker's figures, fetched with the memory samples.
    Stats {
        app_id: u64,
        pid: u32,
        body: chat_shared::health::HealthBody,
    },
    /// `key` names the process (see `slot::Proc::key`): a notify socket belongs to one process.
    Notify {
        app_id: u64,
        key: u64,
        notice: crate::notify::Notice,
    },
    /// Watch mode saw these files change (after the debounce).
    Changed {
        app_id: u64,
        paths: Vec<std::path::PathBuf>,
    },
    /// A `chatctl reload`: progress goes to `events`, the outcome to `reply`.
    /// A `chatctl reload` or `chatctl scale`: progress goes to `events`, the outcome to `reply`.
    Reload {
        request: Request,
        events: mpsc::UnboundedSender<chat_shared::ipc::Event>,
        reply: oneshot::Sender<Response>,
    },
    /// A `/metrics` scrape.
    Metrics(oneshot::Sender<String>),
    /// A `logs --follow` connection subscribing to captured lines.
    Follow(oneshot::Sender<broadcast::Receiver<Arc<LogRecord>>>),
    /// A `logs` connection asking which files to tail (it reads them itself, off this thread).
    LogFiles {
        app: Option<String>,
        stream: Option<chat_shared::ipc::LogStream>,
        reply: oneshot::Sender<Result<Vec<chat_shared::ipc::LogTail>, String>>,
    },
}

/// How the daemon ended, for `chatctl run`'s exit code.
#[derive(Debug, Default)]
pub struct Outcome {
    pub instances_stopped: usize,
    /// Instances that had to be SIGKILLed after `kill_timeout`.
    pub forced: usize,
    /// `chatctl run` only: every instance is errored or stopped, nothing is left to supervise.
    pub nothing_left: bool,
    /// Some instance ended `errored` (a crash loop, a failed spawn).
    pub errored: bool,
}

/// A reply parked until a condition over some apps holds.
struct Waiter {
    app_ids: Vec<u64>,
    /// Only this slot of the app (an instance-level stop or restart).
    slot: Option<usize>,
    until: Until,
    reply: oneshot::Sender<Response>,
    response: Response,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Every instance stopped or errored.
    Down,
    /// No instance stopping any more (a restart has spawned the new processes).
    Restarted,
}

pub(crate) struct Daemon {
    home: Home,
    apps: Vec<App>,
    next_app_id: u64,
    tx: mpsc::UnboundedSender<Msg>,
    prober: Prober,
    sampler: Sampler,
    usage: HashMap<u32, Usage>,
    next_sample: Instant,
    waiters: Vec<Waiter>,
    reaper: Option<std::cell::RefCell<Reaper>>,
    /// Instances' descendants, killed when the instance's main process exits.
    descendants: crate::descendants::Descendants,
    /// Rolling reloads under way.
    reloads: Vec<reload::Job>,
    /// When each app with a `cron_restart` is reloaded next.
    crons: cron::Crons,
    /// Every captured line, for followers; costs nothing while nobody follows.
    follow: broadcast::Sender<Arc<LogRecord>>,
    /// Set once a kill (request or signal) began; the reply goes out when everything is down.
    killing: Option<Option<oneshot::Sender<Response>>>,
    forced: usize,
}

/// How the daemon runs: detached, or in the foreground (`chatctl run`).
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Exit once every instance is stopped or errored (nothing left to supervise).
    pub exit_when_idle: bool,
    /// systemd's `NOTIFY_SOCKET`: `READY=1` once every initial instance is online, `STOPPING=1`
    /// when stopping (a `Type=notify` unit).
    pub notify_socket: Option<std::path::PathBuf>,
}

/// Runs the daemon until `chatctl kill`, `shutdown` resolving, or (with `exit_when_idle`) nothing
/// left to run. `initial` apps are started first; if they cannot be, nothing runs and the error is
/// returned.
pub async fn run(
    home: Home,
    control: UnixListener,
    initial: Vec<AppSpec>,
    shutdown: impl Future<Output = ()>,
    options: RunOptions,
) -> Result<Outcome, StartError> {
    let RunOptions { exit_when_idle, notify_socket } = options;
    let mut ready_sent = notify_socket.is_none();
    let (tx, mut rx) = mpsc::unbounded_channel();
    match crate::limits::raise_nofile() {
        Ok((from, to)) if from != to => {
            tracing::info!(from, to, "raised the daemon's open-file limit (apps keep {from})")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the daemon's open-file limit"),
    }
    let ended = crate::leftovers::end(home.dir());
    if ended > 0 {
        tracing::warn!(ended, "ended leftovers of a previous daemon");
    }
    let mut daemon = Daemon::new(home, tx.clone());
    match Reaper::start(std::process::Stdio::inherit()) {
        Ok(reaper) => {
            let path = daemon.home.dir().join("reaper.pid");
            let written = crate::home::private_file()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{}\n", reaper.pid()).as_bytes()));
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the reaper's pid");
            }
            let mut reaper = reaper;
            reaper.sweep(daemon.descendants.base(), std::process::id());
            daemon.reaper = Some(std::cell::RefCell::new(reaper));
        }
        Err(e) => tracing::error!(error = %e, "cannot start the reaper: grandchildren may outlive a killed daemon"),
    }
    if !initial.is_empty() {
        daemon.start(initial, Instant::now())?;
    }
    let exporter = match crate::exporter::address_from_env() {
        Ok(Some(addr)) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "serving /metrics");
                Some(tokio::spawn(crate::exporter::serve(listener, tx.clone())))
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot serve /metrics");
                None
            }
        },
        Ok(None) => None,
        Err(why) => {
            tracing::error!(why, "not serving /metrics");
            None
        }
    };
    let bus = match bind_bus(&daemon.home) {
        Ok(listener) => Some(tokio::spawn(crate::bus::serve(listener))),
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the local bus: workers will not share rooms");
            None
        }
    };
    let server = tokio::spawn(crate::ipc_server::serve(control, tx));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut signalled = false;
    let outcome = loop {
        let wake = daemon.next_deadline();
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => daemon.handle(msg),
                None => break daemon.outcome(false),
            },
            () = tokio::time::sleep_until(wake.into()) => {}
            () = &mut shutdown, if !signalled => {
                signalled = true;
                tracing::info!("stop requested by signal: stopping every app");
                sd_notify(notify_socket.as_deref(), "STOPPING=1");
                daemon.begin_kill(None);
            }
        }
        let now = Instant::now();
        daemon.tick(now);
        daemon.run_crons(now);
        daemon.advance_reloads(now);
        daemon.answer_waiters();
        if !ready_sent && daemon.all_online() {
            ready_sent = true;
            let online: usize = daemon.apps.iter().map(|a| a.slots.len()).sum();
            sd_notify(notify_socket.as_deref(), &format!("READY=1\nSTATUS={online} instance(s) online"));
        }
        if daemon.finished_killing() {
            break daemon.outcome(false);
        }
        if exit_when_idle && !daemon.apps.is_empty() && daemon.apps.iter().all(App::is_down) && daemon.killing.is_none()
        {
            tracing::warn!("every instance is stopped or errored: nothing left to supervise");
            break daemon.outcome(true);
        }
    };
    server.abort();
    if let Some(bus) = bus {
        bus.abort();
    }
    let _ = std::fs::remove_file(daemon.home.dir().join(crate::spawn::BUS_FILE));
    if let Some(exporter) = exporter {
        exporter.abort();
    }
    // Replies already handed to connection tasks (the kill's) are written when those tasks next run;
    // on this single-threaded runtime, yielding lets every ready task run before we return and the
    // runtime is dropped.
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    Ok(outcome)
}

fn figures(body: &chat_shared::health::HealthBody) -> chat_shared::status::ChatFigures {
    use chat_shared::health::HealthStatus;
    let degraded = match (&body.status, &body.cluster) {
        (HealthStatus::Degraded, Some(link)) => {
            Some(format!("{} link down: {}", link.via, link.error.as_deref().unwrap_or("unknown reason")))
        }
        (HealthStatus::Degraded, None) => Some("degraded".to_owned()),
        _ => None,
    };
    chat_shared::status::ChatFigures {
        connections: body.connections,
        rooms: body.rooms,
        messages: body.messages,
        dropped: body.cluster.as_ref().map_or(0, |c| c.dropped),
        handed: body.handoff.map_or(0, |h| h.handed),
        taken: body.handoff.map_or(0, |h| h.taken),
        degraded,
    }
}

/// The bus socket, private to the daemon's user; a stale file is replaced (we hold the home's lock).
fn bind_bus(home: &Home) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = home.dir().join(crate::spawn::BUS_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Sends an sd_notify message; failures are logged, never fatal.
fn sd_notify(socket: Option<&std::path::Path>, message: &str) {
    let Some(path) = socket else { return };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.send_to(message.as_bytes(), path));
    if let Err(e) = sent {
        tracing::warn!(path = %path.display(), error = %e, "cannot notify the service manager");
    }
}

impl Daemon {
    /// `/metrics`: every instance's and app's figures.
    fn metrics_text(&self, now: Instant) -> String {
        use crate::exporter::{AppFigures, InstanceFigures};
        let mut instances = Vec::new();
        let mut apps = Vec::new();
        for app in &self.apps {
            let status = app.status(now, &self.usage);
            for (slot, i) in app.slots.iter().zip(status.instances) {
                instances.push(InstanceFigures {
                    app: app.spec.name.clone(),
                    instance: i.index,
                    up: i.status == chat_shared::status::Phase::Online,
                    restarts: u64::from(i.restarts),
                    memory_bytes: i.memory_bytes,
                    cpu_percent: i.cpu_percent,
                    health_latency_seconds: slot.probes.back().map(|p| p.latency_ms as f64 / 1000.0),
                    health_failures: slot.probe_failures,
                    chat: slot.chat.clone(),
                });
            }
            let (log_lines, log_bytes) = app.logs.counts();
            apps.push(AppFigures { app: app.spec.name.clone(), reloads: app.reloads, log_lines, log_bytes });
        }
        crate::exporter::render(&instances, &apps)
    }

    /// The status table and the daemon's own footprint.
    fn snapshot(&self, now: Instant) -> chat_shared::ipc::Snapshot {
        let me = std::process::id();
        let own = self.usage.get(&me);
        chat_shared::ipc::Snapshot {
            apps: self.apps.iter().map(|a| a.status(now, &self.usage)).collect(),
            daemon_pid: me,
            daemon_memory_bytes: own.map(|u| u.memory_bytes),
            daemon_cpu_percent: own.map(|u| u.cpu_percent),
        }
    }

    /// Every instance of every app online (and at least one app).
    fn all_online(&self) -> bool {
        !self.apps.is_empty()
            && self
                .apps
                .iter()
                .flat_map(|a| &a.slots)
                .all(|s| s.current.instance.phase() == chat_shared::status::Phase::Online)
    }

    fn new(home: Home, tx: mpsc::UnboundedSender<Msg>) -> Daemon {
        Daemon {
            descendants: crate::descendants::Descendants::setup(home.dir()),
            home,
            apps: Vec::new(),
            next_app_id: 1,
            tx,
            prober: Prober::new(),
            sampler: Sampler::new(),
            usage: HashMap::new(),
            next_sample: Instant::now(),
            waiters: Vec::new(),
            reaper: None,
            reloads: Vec::new(),
            crons: cron::Crons::default(),
            follow: broadcast::channel(FOLLOW_BUFFER).0,
            killing: None,
            forced: 0,
        }
    }

    fn handle(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Request(request, reply) => self.request(request, reply, now),
            Msg::Exited { app_id, pid, status, misconfigured } => {
                let Some(app) = self.apps.iter_mut().find(|a| a.id == app_id) else { return };
                // A stale exit (no process of this app has that pid any more) changes nothing.
                let Some((index, which)) = app.find_pid(pid) else { return };
                let state = app.slots[index].proc(which).map(|p| &p.instance.state);
                if matches!(state, Some(crate::instance::State::Stopping { killed: true, .. })) {
                    self.forced += 1;
                }
                match status {
                    ExitKind::Code(0) => tracing::info!(app = %app.spec.name, index, pid, "exited with code 0"),
                    other => tracing::info!(app = %app.spec.name, index, pid, exit = %other, "exited"),
                }
                // Before the machine may spawn a replacement into the slot.
                if let Some(tracked) = app.slots[index].proc_mut(which).and_then(|p| p.tracked.take()) {
                    crate::descendants::end(tracked);
                }
                let env = effect_env!(self);
                let input = match misconfigured {
                    Some(why) => Input::Misconfigured { kind: status, why },
                    None => Input::Exited(status),
                };
                app.drive(index, which, input, now, &env);
                if let Some(reaper) = &self.reaper {
                    reaper.borrow_mut().forget(pid);
                }
            }
            Msg::Changed { app_id, paths } => {
                let Some(app) = self.apps.iter_mut().find(|a| a.id == app_id) else { return };
                let first = paths.first().map(|p| p.display().to_string()).unwrap_or_default();
                if app.spec.build.is_some() {
                    // An app an operator stopped stays stopped: nothing to build for.
                    if app.is_down() {
                        tracing::info!(app = %app.spec.name, first, "files changed; stopped, so not building");
                        return;
                    }
                    tracing::info!(app = %app.spec.name, changed = paths.len(), first, "files changed: building");
                    let action = app.builder.step(build::Event::Changed);
                    self.build_then(app_id, action, now);
                    return;
                }
                tracing::info!(app = %app.spec.name, changed = paths.len(), first, "files changed: restarting");
                let env = effect_env!(self);
                for index in 0..app.slots.len() {
                    app.cancel_successor(index, now, &env);
                    // An instance an operator stopped stays stopped; a crash-looping one gets a new try.
                    if app.slots[index].current.instance.phase() != chat_shared::status::Phase::Stopped {
                        app.drive(index, Which::Current, Input::Restart, now, &env);
                    }
                }
            }
            Msg::BuiltWaiting { app_id } => self.build_then(app_id, build::Action::Reload, now),
            Msg::Built { app_id, result } => {
                let Some(app) = self.apps.iter_mut().find(|a| a.id == app_id) else { return };
                match &result {
                    Ok(()) => tracing::info!(app = %app.spec.name, "build succeeded"),
                    Err(why) => {
                        tracing::warn!(app = %app.spec.name, why, "build failed: the running version keeps serving")
                    }
                }
                let action = app.builder.step(build::Event::Finished(result));
                self.build_then(app_id, action, now);
            }
            Msg::Reload { request: Request::Reload { apps, batch }, events, reply } => {
                self.reload(apps, batch, events, reply, now)
            }
            Msg::Reload { request: Request::Scale { app, to }, events, reply } => {
                self.scale(&app, to, events, reply, now)
            }
            Msg::Reload { request: Request::ReloadInstance { app, instance }, events, reply } => {
                self.reload_instance(&app, instance, events, reply, now)
            }
            Msg::Reload { reply, .. } => {
                let _ = reply.send(Response::Error { message: "not a reload".into() });
            }
            Msg::Stats { app_id, pid, body } => {
                let Some(app) = self.apps.iter_mut().find(|a| a.id == app_id) else { return };
                if let Some((index, Which::Current)) = app.find_pid(pid) {
                    app.slots[index].chat = Some(figures(&body));
                }
            }
            Msg::Metrics(reply) => {
                self.refresh_usage(now);
                let _ = reply.send(self.metrics_text(now));
            }
            Msg::Follow(reply) => {
                let _ = reply.send(self.follow.subscribe());
            }
            Msg::LogFiles { app, stream, reply } => {
                let _ = reply.send(self.log_files(app.as_deref(), stream));
            }
            Msg::Notify { app_id, key, notice } => {
                let Some(app) = self.apps.iter_mut().find(|a| a.id == app_id) else { return };
                let Some((index, which)) = app.find_key(key) else { return };
                if let Some(status) = &notice.status {
                    tracing::info!(app = %app.spec.name, index, status, "instance status");
                }
                if notice.ready {
                    let env = effect_env!(self);
                    app.drive(index, which, Input::Ready, now, &env);
                }
            }
            Msg::Probe { app_id, pid, result, latency_ms } => {
                let Some(app) = self.apps.iter_mut().find(|a| a.id == app_id) else { return };
                let Some((index, which)) = app.find_pid(pid) else { return };
                if which == Which::Current {
                    app.slots[index].record_probe(latency_ms, result.clone().err());
                    if let Ok(Some(body)) = &result {
                        app.slots[index].chat = Some(figures(body));
                    }
                }
                let input = match result {
                    Ok(_) => Input::ProbePassed,
                    Err(why) => {
                        let online = app.slots[index]
                            .proc(which)
                            .is_some_and(|p| matches!(p.instance.state, crate::instance::State::Online { .. }));
                        if online {
                            tracing::warn!(app = %app.spec.name, index, pid, why, "health check failed");
                        }
                        Input::ProbeFailed(why)
                    }
                };
                let env = effect_env!(self);
                app.drive(index, which, input, now, &env);
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let nearest = self.apps.iter().filter_map(App::next_deadline).chain(self.crons.next()).min();
        nearest.map_or(self.next_sample, |d| d.min(self.next_sample))
    }

    /// Gives every instance whose deadline passed a `Tick`; samples usage when due.
    fn tick(&mut self, now: Instant) {
        let env = effect_env!(self);
        for app in &mut self.apps {
            let due: Vec<(usize, Which)> = app
                .procs()
                .filter(|(_, _, p)| p.instance.next_deadline().is_some_and(|d| d <= now))
                .map(|(index, which, _)| (index, which))
                .collect();
            for (index, which) in due {
                app.drive(index, which, Input::Tick, now, &env);
            }
        }
        if now >= self.next_sample {
            self.sample(now);
        }
    }

    /// Samples now unless a sample covering every running pid is recent enough for `list`.
    fn refresh_usage(&mut self, now: Instant) {
        let missing = self
            .apps
            .iter()
            .flat_map(|a| a.procs().filter_map(|(_, _, p)| p.instance.pid()))
            .any(|p| !self.usage.contains_key(&p));
        let recent = self.next_sample.saturating_duration_since(now) > SAMPLE_EVERY - FRESH_ENOUGH;
        if missing && !recent {
            self.sample(now);
        }
    }

    fn sample(&mut self, now: Instant) {
        let pids: Vec<u32> =
            self.apps.iter().flat_map(|a| a.procs().filter_map(|(_, _, p)| p.instance.pid())).collect();
        self.usage = if pids.is_empty() { HashMap::new() } else { self.sampler.sample(&pids) };
        // The daemon alone, for `monit`'s footprint line (its tree holds every instance).
        if let Some(own) = self.sampler.sample_self() {
            self.usage.insert(std::process::id(), own);
        }
        // Sample as often as the most demanding memory limit asks, and at least every SAMPLE_EVERY.
        let every = self
            .apps
            .iter()
            .filter(|a| a.spec.max_memory.is_some())
            .map(|a| a.spec.memory_check_interval.0)
            .fold(SAMPLE_EVERY, Duration::min);
        self.next_sample = now + every;
        self.enforce_memory(now);
        let env = effect_env!(self);
        for app in &self.apps {
            app.fetch_chat_figures(&env);
        }
    }

    /// Replaces every online instance whose process tree passed its app's `max_memory_restart`.
    fn enforce_memory(&mut self, now: Instant) {
        let env = effect_env!(self);
        for app in &mut self.apps {
            let Some(limit) = app.spec.max_memory else { continue };
            for index in 0..app.slots.len() {
                let slot = &app.slots[index];
                let online = slot.current.instance.phase() == chat_shared::status::Phase::Online;
                let Some(used) = slot.current.instance.pid().and_then(|p| self.usage.get(&p)).map(|u| u.memory_bytes)
                else {
                    continue;
                };
                if online && slot.successor.is_none() && used > limit.0 {
                    let reason = format!(
                        "memory {} over max_memory_restart {limit}",
                        chat_shared::units::ByteSize(used).to_string_rounded()
                    );
                    app.replace(index, reason, slot::OnFailure::RestartCurrent, now, &env);
                }
            }
        }
    }

    fn outcome(&self, nothing_left: bool) -> Outcome {
        let instances_stopped = self.apps.iter().map(|a| a.slots.len()).sum();
        let errored = self
            .apps
            .iter()
            .flat_map(|a| &a.slots)
            .any(|s| s.current.instance.phase() == chat_shared::status::Phase::Errored);
        Outcome { instances_stopped, forced: self.forced, nothing_left, errored }
    }
}
