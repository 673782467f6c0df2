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
//! - `state`: the task's state and its housekeeping between messages.
//! - `app`, `slot`: an app's sockets, logs and slots, and a slot's one or two processes.

mod app;
mod build;
mod builder;
mod cron;
mod effects;
mod handle;
pub(crate) mod handover;
pub(crate) mod msg;
mod reload;
mod requests;
mod slot;
mod state;

use std::time::{Duration, Instant};

use chat_shared::spec::AppSpec;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use crate::home::Home;
use crate::ipc_server::Answers;
use crate::reaper::Reaper;
use app::App;
pub use app::StartError;
use effects::Effects;
use msg::Msg;
pub use state::Outcome;
use state::{Daemon, KilledBy, Lifecycle};

/// How long an exiting daemon waits for its connections to write the answers they owe (the kill's
/// among them); a client that stopped reading must not keep the daemon alive.
const ANSWERS_BOUND: Duration = Duration::from_secs(2);

/// How the daemon runs: detached, or in the foreground (`chatctl run`).
#[derive(Debug, Default)]
pub struct RunOptions {
    /// `chatctl run`: logging to stderr (and so after `chatctl update` too).
    pub foreground: bool,
    /// Exit once every instance is stopped or errored (nothing left to supervise).
    pub exit_when_idle: bool,
    /// systemd's `NOTIFY_SOCKET`: `READY=1` once every initial instance is online, `STOPPING=1`
    /// when stopping (a `Type=notify` unit).
    pub notify_socket: Option<std::path::PathBuf>,
}

/// What the daemon begins with.
pub(crate) enum Begin {
    /// A new daemon: these apps are started first; if they cannot be, nothing runs and the error
    /// is returned.
    Fresh(Vec<AppSpec>),
    /// The state the previous image of this daemon handed over (`chatctl update`).
    Adopt(crate::handover::Saved),
}

/// Runs the daemon until `chatctl kill`, `shutdown` resolving, or (with `exit_when_idle`) nothing
/// left to run. `lock` is the home's lock, which an update hands over.
pub(crate) async fn run(
    home: Home,
    control: UnixListener,
    begin: Begin,
    shutdown: impl Future<Output = ()>,
    options: RunOptions,
    lock: std::os::fd::RawFd,
) -> Result<Outcome, StartError> {
    let RunOptions { foreground, exit_when_idle, notify_socket } = options;
    let mut ready_sent = notify_socket.is_none();
    let (tx, mut rx) = mpsc::unbounded_channel();
    raise_nofile();
    let mode = crate::handover::Mode { foreground, exit_when_idle, notify_socket: notify_socket.clone() };
    let (mut daemon, bus) = match begin {
        Begin::Fresh(initial) => fresh(home, tx.clone(), initial)?,
        Begin::Adopt(saved) => adopt(home, tx.clone(), saved)?,
    };
    let exporter = serve_metrics(&tx).await;
    let (bus_task, bus) = match bus {
        Some((listener, adopted)) => {
            let pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
            let share = handover::Bus { listener: listener.try_clone().map_err(adopt_error)?, pid: pid.clone() };
            (Some(tokio::spawn(crate::bus::supervise(listener, pid, adopted))), Some(share))
        }
        None => (None, None),
    };
    let hosting = handover::Hosting { lock, control: std::os::fd::AsRawFd::as_raw_fd(&control), mode, bus };
    let ready = daemon.effects.home.dir().join(crate::handover::READY_FILE);
    let mut update = answer_updates(&ready);
    let answers = Answers::new();
    let server = tokio::spawn(crate::ipc_server::serve(control, tx, answers.owed()));
    // Every handler is in place (the stop signals' since `shutdown` was made): what a previous
    // image of this daemon held across `execve` may come now.
    if let Err(e) = crate::handover::release_signals() {
        tracing::error!(error = %e, "cannot release the signals held across an update");
    }
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
            Some(()) = async { update.as_mut()?.recv().await } => {
                // What happened before the signal is handled first (exits above all).
                while let Ok(msg) = rx.try_recv() {
                    daemon.handle(msg);
                }
                // A stop signal another thread of this image took meanwhile would be lost at exec:
                // the update looks, just before, and gives way to it.
                let mut stop = false;
                let mut stopping = || {
                    stop = stop || (!signalled && done_now(shutdown.as_mut()));
                    stop
                };
                daemon.update(&hosting, &mut stopping).await;
                if stop {
                    signalled = true;
                    stop_by_signal(&mut daemon, notify_socket.as_deref());
                }
            }
            () = &mut shutdown, if !signalled => {
                signalled = true;
                stop_by_signal(&mut daemon, notify_socket.as_deref());
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
    for task in [bus_task, exporter].into_iter().flatten() {
        task.abort();
    }
    let _ = std::fs::remove_file(daemon.effects.home.dir().join(crate::spawn::BUS_FILE));
    let _ = std::fs::remove_file(&ready);
    // Requests still queued or parked are answered "the daemon stopped" by their connections once
    // their reply channels drop with the daemon; the kill's answer is already on its way. Then every
    // answer owed is written before the runtime, and the connections with it, go away.
    drop(rx);
    drop(daemon);
    answers.written(ANSWERS_BOUND).await;
    Ok(outcome)
}

type BusStart = Option<(std::os::unix::net::UnixListener, Option<crate::handover::Pidfd>)>;

/// A new daemon: what earlier daemons of the home left ended, its reaper, `initial` started, its
/// bus socket bound.
fn fresh(home: Home, tx: mpsc::UnboundedSender<Msg>, initial: Vec<AppSpec>) -> Result<(Daemon, BusStart), StartError> {
    let ended = crate::leftovers::end(home.dir());
    if ended > 0 {
        tracing::warn!(ended, "ended leftovers of a previous daemon");
    }
    let mut daemon = Daemon::new(home, tx);
    daemon.effects.reaper = start_reaper(&daemon.effects);
    if !initial.is_empty() {
        daemon.start(initial, Instant::now())?;
    }
    let bus = match bind_bus(&daemon.effects.home) {
        Ok(listener) => Some((listener, None)),
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the local bus: workers will not share rooms");
            None
        }
    };
    Ok((daemon, bus))
}

/// `chatctl update`'s signal, and `ready` saying that this daemon answers it.
fn answer_updates(ready: &std::path::Path) -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
        Ok(signal) => {
            if let Err(e) = std::fs::write(ready, format!("{}\n", std::process::id())) {
                tracing::error!(path = %ready.display(), error = %e, "cannot say this daemon answers chatctl update");
            }
            Some(signal)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGUSR2: chatctl update will not be answered");
            None
        }
    }
}

/// The daemon the previous image handed over, and its bus; the update's result written.
fn adopt(
    home: Home,
    tx: mpsc::UnboundedSender<Msg>,
    saved: crate::handover::Saved,
) -> Result<(Daemon, BusStart), StartError> {
    let dir = home.dir().to_owned();
    let request = saved.request.clone();
    let bus = match &saved.bus {
        Some(bus) => {
            let listener = crate::handover::adopt_fd(bus.listener).map_err(adopt_error)?;
            let adopted = bus.pid.and_then(|pid| match crate::handover::Pidfd::open(pid, bus.start_time) {
                Ok(pidfd) => Some(pidfd),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "the bus process is gone: starting another");
                    None
                }
            });
            Some((std::os::unix::net::UnixListener::from(listener), adopted))
        }
        None => None,
    };
    let from = saved.version.clone();
    let (daemon, lost) = Daemon::adopt(home, tx, saved).map_err(|why| adopt_error(std::io::Error::other(why)))?;
    let instances: usize = daemon.apps.iter().map(|a| a.slots.len()).sum();
    let apps = daemon.apps.len();
    tracing::info!(from, to = crate::handover::version(), apps, instances, lost = lost.len(), "updated in place");
    let mut message = format!("{instances} instance(s) of {apps} app(s) taken over");
    if !lost.is_empty() {
        message.push_str(&format!("; not taken over, their instances stopped: {}", lost.join("; ")));
    }
    let outcome = crate::handover::Outcome {
        id: request,
        ok: lost.is_empty(),
        message,
        version: crate::handover::version(),
        pid: std::process::id(),
    };
    for file in [crate::handover::STATE_FILE, crate::handover::REQUEST_FILE] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    if let Err(e) = crate::handover::write_json(&dir, crate::handover::RESULT_FILE, &outcome) {
        tracing::error!(error = %e, "cannot write the update's result");
    }
    Ok((daemon, bus))
}

fn adopt_error(source: std::io::Error) -> StartError {
    StartError { app: "(update)".into(), source: app::AppError::Adopt(source) }
}

fn stop_by_signal(daemon: &mut Daemon, notify_socket: Option<&std::path::Path>) {
    tracing::info!("stop requested by signal: stopping every app");
    sd_notify(notify_socket, "STOPPING=1");
    daemon.begin_kill(KilledBy::Signal);
}

/// Whether `future` is done, polled once now (nobody is woken for it: the loop polls it again).
fn done_now(future: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_ready()
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
fn bind_bus(home: &Home) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = home.dir().join(crate::spawn::BUS_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
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
