//! The daemon: one task owns every app and instance; everything else sends it messages.
//!
//! IPC connections send `(Request, reply)`; exit waiters (one per child) send `Exited`; probe tasks
//! send `Probe` (see [`msg`]). Between messages the loop sleeps until the nearest instance deadline
//! (restart delay, probe, readiness timeout, SIGKILL), so nothing polls. Requests that take time
//! (stop, restart, delete, kill) park their reply in a [`Waiter`] that is answered when its condition
//! holds.
//!
//! # Layout
//! - `msg`: what the loop hears; `effects`: what carrying out effects needs.
//! - `handle`: one method per message; `requests`: one per request; `reload`, `build` (with its
//!   machine, `builder`), `cron`: the orchestrations over time.
//! - `app`, `slot`: an app's sockets, logs and slots, and a slot's one or two processes.

mod app;
mod build;
mod builder;
mod cron;
mod effects;
mod handle;
pub(crate) mod msg;
mod reload;
mod requests;
mod slot;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat_shared::ipc::Response;
use chat_shared::spec::AppSpec;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::home::Home;
use crate::instance::Input;
use crate::ipc_server::Answers;
use crate::metrics::{Sampler, Usage};
use crate::pid::Pid;
use crate::probe::Prober;
use crate::reaper::Reaper;
use app::App;
pub use app::StartError;
use effects::Effects;
use msg::{AppId, Msg};
use slot::Which;

/// Lines a follower may fall behind by before it loses some (and is told how many).
const FOLLOW_BUFFER: usize = 8192;

/// How often memory and CPU are sampled for `list`.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// A `list` that finds a pid without usage samples at once unless the last sample is this recent
/// (a CLI polling for readiness must not turn into a sampling loop).
const FRESH_ENOUGH: Duration = Duration::from_millis(250);
/// How long an exiting daemon waits for its connections to write the answers they owe (the kill's
/// among them); a client that stopped reading must not keep the daemon alive.
const ANSWERS_BOUND: Duration = Duration::from_secs(2);

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
    app_ids: Vec<AppId>,
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

/// Serving requests, or on the way out.
enum Lifecycle {
    Serving,
    /// A kill began: every app is stopping, and the daemon exits once all are down.
    Killing(KilledBy),
    /// Every instance went down after a kill, and the kill's answer is sent.
    Stopped,
}

/// Who asked the daemon to exit: a signal has nobody to answer, a request has.
enum KilledBy {
    Signal,
    Request(oneshot::Sender<Response>),
}

pub(crate) struct Daemon {
    apps: Vec<App>,
    /// Apart from `apps`, so a method can drive an app and hand it the effects at once.
    effects: Effects,
    next_app_id: AppId,
    sampler: Sampler,
    usage: HashMap<u32, Usage>,
    next_sample: Instant,
    waiters: Vec<Waiter>,
    /// Rolling reloads under way.
    reloads: Vec<reload::Job>,
    /// When each app with a `cron_restart` is reloaded next.
    crons: cron::Crons,
    lifecycle: Lifecycle,
    /// Instances that had to be SIGKILLed after `kill_timeout`, for the outcome.
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
pub(crate) async fn run(
    home: Home,
    control: UnixListener,
    initial: Vec<AppSpec>,
    shutdown: impl Future<Output = ()>,
    options: RunOptions,
) -> Result<Outcome, StartError> {
    let RunOptions { exit_when_idle, notify_socket } = options;
    let mut ready_sent = notify_socket.is_none();
    let (tx, mut rx) = mpsc::unbounded_channel();
    raise_nofile();
    let ended = crate::leftovers::end(home.dir());
    if ended > 0 {
        tracing::warn!(ended, "ended leftovers of a previous daemon");
    }
    let mut daemon = Daemon::new(home, tx.clone());
    daemon.effects.reaper = start_reaper(&daemon.effects);
    if !initial.is_empty() {
        daemon.start(initial, Instant::now())?;
    }
    let exporter = serve_metrics(&tx).await;
    let bus = match bind_bus(&daemon.effects.home) {
        Ok(listener) => Some(tokio::spawn(crate::bus::serve(listener))),
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the local bus: workers will not share rooms");
            None
        }
    };
    let answers = Answers::new();
    let server = tokio::spawn(crate::ipc_server::serve(control, tx, answers.owed()));
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
                daemon.begin_kill(KilledBy::Signal);
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
        let serving = matches!(daemon.lifecycle, Lifecycle::Serving);
        if exit_when_idle && serving && !daemon.apps.is_empty() && daemon.apps.iter().all(App::is_down) {
            tracing::warn!("every instance is stopped or errored: nothing left to supervise");
            break daemon.outcome(true);
        }
    };
    server.abort();
    for task in [bus, exporter].into_iter().flatten() {
        task.abort();
    }
    let _ = std::fs::remove_file(daemon.effects.home.dir().join(crate::spawn::BUS_FILE));
    // Requests still queued or parked are answered "the daemon stopped" by their connections once
    // their reply channels drop with the daemon; the kill's answer is already on its way. Then every
    // answer owed is written before the runtime, and the connections with it, go away.
    drop(rx);
    drop(daemon);
    answers.written(ANSWERS_BOUND).await;
    Ok(outcome)
}

fn raise_nofile() {
    match crate::limits::raise_nofile() {
        Ok((from, to)) if from != to => {
            tracing::info!(from, to, "raised the daemon's open-file limit (apps keep {from})")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the daemon's open-file limit"),
    }
}

/// The companion that kills every process group if the daemon dies (see `reaper`), its pid in the
/// home for `leftovers`; `None`, logged, when it cannot start.
fn start_reaper(effects: &Effects) -> Option<Reaper> {
    let mut reaper = match Reaper::start(std::process::Stdio::inherit()) {
        Ok(reaper) => reaper,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the reaper: grandchildren may outlive a killed daemon");
            return None;
        }
    };
    let path = effects.home.dir().join("reaper.pid");
    let written = crate::home::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{}\n", reaper.pid()).as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the reaper's pid");
    }
    reaper.sweep(effects.descendants.base(), std::process::id());
    Some(reaper)
}

/// `/metrics` on the address `CHATCTL_METRICS` names, if any; a bad address is logged, not fatal.
async fn serve_metrics(tx: &mpsc::UnboundedSender<Msg>) -> Option<tokio::task::JoinHandle<()>> {
    let addr = match crate::exporter::address_from_env() {
        Ok(Some(addr)) => addr,
        Ok(None) => return None,
        Err(why) => {
            tracing::error!(why, "not serving /metrics");
            return None;
        }
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            tracing::info!(%addr, "serving /metrics");
            Some(tokio::spawn(crate::exporter::serve(listener, tx.clone())))
        }
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve /metrics");
            None
        }
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
        let effects = Effects {
            descendants: crate::descendants::Descendants::setup(home.dir()),
            home,
            tx,
            prober: Prober::new(),
            follow: broadcast::channel(FOLLOW_BUFFER).0,
            reaper: None,
        };
        Daemon {
            apps: Vec::new(),
            effects,
            next_app_id: AppId::FIRST,
            sampler: Sampler::new(),
            usage: HashMap::new(),
            next_sample: Instant::now(),
            waiters: Vec::new(),
            reloads: Vec::new(),
            crons: cron::Crons::default(),
            lifecycle: Lifecycle::Serving,
            forced: 0,
        }
    }

    fn next_deadline(&self) -> Instant {
        let nearest = self.apps.iter().filter_map(App::next_deadline).chain(self.crons.next()).min();
        nearest.map_or(self.next_sample, |d| d.min(self.next_sample))
    }

    /// Gives every instance whose deadline passed a `Tick`; samples usage when due.
    fn tick(&mut self, now: Instant) {
        for app in &mut self.apps {
            let due: Vec<(usize, Which)> = app
                .procs()
                .filter(|(_, _, p)| p.instance.next_deadline().is_some_and(|d| d <= now))
                .map(|(index, which, _)| (index, which))
                .collect();
            for (index, which) in due {
                app.drive(index, which, Input::Tick, now, &mut self.effects);
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
            .any(|p| !self.usage.contains_key(&p.raw()));
        let recent = self.next_sample.saturating_duration_since(now) > SAMPLE_EVERY - FRESH_ENOUGH;
        if missing && !recent {
            self.sample(now);
        }
    }

    fn sample(&mut self, now: Instant) {
        let pids: Vec<u32> =
            self.apps.iter().flat_map(|a| a.procs().filter_map(|(_, _, p)| p.instance.pid())).map(Pid::raw).collect();
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
        for app in &self.apps {
            app.fetch_chat_figures(&self.effects);
        }
    }

    /// Replaces every online instance whose process tree passed its app's `max_memory_restart`.
    fn enforce_memory(&mut self, now: Instant) {
        for app in &mut self.apps {
            let Some(limit) = app.spec.max_memory else { continue };
            for index in 0..app.slots.len() {
                let slot = &app.slots[index];
                let online = slot.current.instance.phase() == chat_shared::status::Phase::Online;
                let Some(used) =
                    slot.current.instance.pid().and_then(|p| self.usage.get(&p.raw())).map(|u| u.memory_bytes)
                else {
                    continue;
                };
                if online && slot.successor.is_none() && used > limit.0 {
                    let reason = format!(
                        "memory {} over max_memory_restart {limit}",
                        chat_shared::units::ByteSize(used).to_string_rounded()
                    );
                    app.replace(index, reason, slot::OnFailure::RestartCurrent, now, &mut self.effects);
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
