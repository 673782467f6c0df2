//! `chatctl update` inside the daemon: handing everything to the next image of this process, or
//! taking it over from the previous one (see `crate::handover` for the protocol and the state).

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::killpg;
use tokio::sync::{broadcast, mpsc};

use super::app::{App, add_pipes};
use super::effects::Effects;
use super::msg::{AppId, Msg};
use super::state::{Daemon, Lifecycle};
use crate::handover::{self, FORMAT, Mode, Outcome, Request, STATE_FILE, Saved, SavedBus, SavedReaper};
use crate::home::Home;
use crate::logs::Handed;
use crate::probe::Prober;
use crate::reaper::Reaper;

/// The longest the new binary may take to check the state.
const PREFLIGHT: Duration = Duration::from_secs(15);
/// The longest the capture tasks may take to give their pipes back.
const PIPES_BACK: Duration = Duration::from_secs(2);

/// What the host of the daemon knows that the state needs.
pub(crate) struct Hosting {
    pub(crate) lock: RawFd,
    pub(crate) control: RawFd,
    pub(crate) mode: Mode,
    pub(crate) bus: Option<Bus>,
}

/// The bus's listening socket (a copy) and its process's pid (0 while none runs).
pub(crate) struct Bus {
    pub(crate) listener: std::os::unix::net::UnixListener,
    pub(crate) pid: Arc<AtomicU32>,
}

impl Daemon {
    /// Answers an update request (`SIGUSR2`): re-executes the requested binary on this daemon's
    /// state, or, when it cannot, says why in the result file and goes on serving.
    /// `stopping` says whether a stop was asked for meanwhile (then the update gives way).
    pub(super) async fn update(&mut self, hosting: &Hosting, stopping: &mut dyn FnMut() -> bool) {
        let home = self.effects.home.dir().to_owned();
        let request: Request = match handover::read_json(&home.join(handover::REQUEST_FILE)) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(error = %e, "SIGUSR2 without a readable update request: ignored");
                return;
            }
        };
        tracing::info!(binary = %request.binary.display(), "update requested");
        let Err(why) = self.hand_over(&request, hosting, stopping).await;
        tracing::error!(why, "update refused: this daemon goes on serving");
        let outcome =
            Outcome { id: request.id, ok: false, message: why, version: handover::version(), pid: std::process::id() };
        if let Err(e) = handover::write_json(&home, handover::RESULT_FILE, &outcome) {
            tracing::error!(error = %e, "cannot write the update's result");
        }
    }

    /// Checks that now is a moment to hand over, has the new binary check the state, then hands
    /// every app's pipes over and re-executes; returns only when that did not happen.
    async fn hand_over(
        &mut self,
        request: &Request,
        hosting: &Hosting,
        stopping: &mut dyn FnMut() -> bool,
    ) -> Result<std::convert::Infallible, String> {
        self.quiet()?;
        // From here a stop signal waits for whichever image serves (see `hold_signals`).
        handover::hold_signals().map_err(|e| format!("cannot hold signals: {e}"))?;
        let Err(why) = self.replace_image(request, hosting, stopping).await;
        if let Err(e) = handover::release_signals() {
            tracing::error!(error = %e, "cannot release the signals held for the update");
        }
        Err(why)
    }

    async fn replace_image(
        &mut self,
        request: &Request,
        hosting: &Hosting,
        stopping: &mut dyn FnMut() -> bool,
    ) -> Result<std::convert::Infallible, String> {
        let home = self.effects.home.dir().to_owned();
        let state_path = home.join(STATE_FILE);
        let mut saved = self.state_for(&request.id, hosting);
        handover::write_json(&home, STATE_FILE, &saved).map_err(|e| format!("cannot write the state: {e}"))?;
        let version = preflight(&request.binary, &state_path).await?;
        tracing::info!(version, "the new binary accepts the state: handing over");
        let mut handed: Vec<(usize, Vec<Handed>)> = Vec::new();
        for (i, app) in self.apps.iter().enumerate() {
            match app.logs.hand_over(PIPES_BACK).await {
                Ok(pipes) => handed.push((i, pipes)),
                Err(e) => {
                    // The app's own pipes given back so far are still in its sink.
                    handed.push((i, Vec::new()));
                    self.resume(handed);
                    return Err(format!("app {}: cannot hand its logs over: {e}", app.spec.name));
                }
            }
        }
        let mut fds = self.descriptors(hosting);
        for (i, pipes) in &handed {
            fds.extend(add_pipes(&mut saved.apps[*i], pipes));
        }
        // The bus process as it is now, after the awaits above (it may have been started again).
        if let (Some(bus), Some(saved_bus)) = (&hosting.bus, saved.bus.as_mut()) {
            saved_bus.pid = Some(bus.pid.load(Ordering::Relaxed)).filter(|pid| *pid > 0);
            saved_bus.start_time = saved_bus.pid.and_then(handover::start_time);
        }
        let result = handover::write_json(&home, STATE_FILE, &saved)
            .map_err(|e| format!("cannot write the state: {e}"))
            .and_then(|()| fds.iter().try_for_each(|fd| handover::set_cloexec(*fd, false)).map_err(|e| e.to_string()));
        let result = result.and_then(|()| {
            if stopping() { Err("a stop was asked for meanwhile: stopping instead".to_owned()) } else { Ok(()) }
        });
        if let Err(why) = result {
            for fd in &fds {
                let _ = handover::set_cloexec(*fd, true);
            }
            self.resume(handed);
            return Err(why);
        }
        tracing::info!(binary = %request.binary.display(), "re-executing");
        handover::drop_log_guard();
        let why = exec(&request.binary, &state_path);
        // Still here: the image could not be replaced. Back to serving.
        handover::reopen_log();
        for fd in &fds {
            let _ = handover::set_cloexec(*fd, true);
        }
        self.resume(handed);
        Err(format!("cannot execute {}: {why}", request.binary.display()))
    }

    /// Why not now, if not now.
    fn quiet(&self) -> Result<(), String> {
        if !matches!(self.lifecycle, Lifecycle::Serving) {
            return Err("the daemon is stopping".into());
        }
        if !self.reloads.is_empty() || !self.built_waiting.is_empty() {
            return Err("a reload is under way: try again once it is done".into());
        }
        match self.apps.iter().find_map(App::busy) {
            Some(busy) => Err(format!("{busy}: try again in a moment")),
            None => Ok(()),
        }
    }

    fn state_for(&self, request: &str, hosting: &Hosting) -> Saved {
        let now = Instant::now();
        Saved {
            format: FORMAT,
            version: handover::version(),
            mode: hosting.mode.clone(),
            lock: hosting.lock,
            control: hosting.control,
            bus: hosting.bus.as_ref().map(|bus| SavedBus {
                listener: bus.listener.as_raw_fd(),
                pid: Some(bus.pid.load(Ordering::Relaxed)).filter(|pid| *pid > 0),
                start_time: None,
            }),
            reaper: self
                .effects
                .reaper
                .as_ref()
                .and_then(|reaper| Some(SavedReaper { pid: reaper.pid(), pipe: reaper.pipe()?.as_raw_fd() })),
            cgroup: self.effects.descendants.base().map(Path::to_owned),
            next_launch: self.effects.descendants.next_launch(),
            next_app_id: self.next_app_id.0,
            apps: self.apps.iter().map(|app| app.save(now)).collect(),
            request: request.to_owned(),
        }
    }

    /// Every descriptor named in the state but the pipes.
    fn descriptors(&self, hosting: &Hosting) -> Vec<RawFd> {
        let mut fds = vec![hosting.lock, hosting.control];
        fds.extend(hosting.bus.as_ref().map(|bus| bus.listener.as_raw_fd()));
        fds.extend(self.effects.reaper.as_ref().and_then(Reaper::pipe).map(AsRawFd::as_raw_fd));
        for app in &self.apps {
            fds.extend(app.descriptors());
        }
        fds
    }

    fn resume(&self, handed: Vec<(usize, Vec<Handed>)>) {
        for (i, pipes) in handed {
            self.apps[i].resume_pipes(pipes);
        }
    }

    /// The daemon as the previous image left it: its apps (instances running, waited on through
    /// pidfds), its reaper and its launch numbering. An app that cannot be taken over (its log
    /// files cannot be opened, say) is not: its instances are stopped, and it is named in the
    /// second part, with why.
    pub(super) fn adopt(
        home: Home,
        tx: mpsc::UnboundedSender<Msg>,
        saved: Saved,
    ) -> Result<(Daemon, Vec<String>), String> {
        let reaper = match saved.reaper {
            Some(SavedReaper { pid, pipe }) => {
                Some(Reaper::adopt(pid, handover::adopt_fd(pipe).map_err(|e| format!("the reaper's pipe: {e}"))?))
            }
            None => None,
        };
        let effects = Effects {
            descendants: crate::descendants::Descendants::adopt(saved.cgroup, saved.next_launch),
            home,
            tx,
            prober: Prober::new(),
            follow: broadcast::channel(super::state::FOLLOW_BUFFER).0,
            reaper,
        };
        let mut daemon = Daemon::new_with(effects);
        daemon.next_app_id = AppId(saved.next_app_id);
        let mut lost = Vec::new();
        for app in saved.apps {
            let name = app.spec.name.clone();
            let paths = daemon.log_paths(&app.spec);
            let pids: Vec<u32> = (app.slots.iter()).filter_map(|s| s.proc.state.pid()).collect();
            match App::adopt(app, &paths, &daemon.effects) {
                Ok(app) => daemon.apps.push(app),
                Err(e) => {
                    tracing::error!(app = name, error = %e, "cannot take the app over: stopping its instances");
                    // Their process groups, as a stop's SIGKILL would (the reaper still knows them).
                    for pid in pids.into_iter().filter_map(|p| i32::try_from(p).ok()) {
                        let _ = killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                    lost.push(format!("{name}: {e}"));
                }
            }
        }
        Ok((daemon, lost))
    }
}

/// Runs `binary __adopt --check STATE`; its version when it accepts the state.
async fn preflight(binary: &Path, state: &Path) -> Result<String, String> {
    let mut command = tokio::process::Command::new(binary);
    command.arg("__adopt").arg("--check").arg(state).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let output = match tokio::time::timeout(PREFLIGHT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", binary.display())),
        Err(_) => return Err(format!("{} did not check the state within {} s", binary.display(), PREFLIGHT.as_secs())),
    };
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    if !output.status.success() {
        let stderr = said(&output.stderr);
        let why = if stderr.is_empty() { output.status.to_string() } else { stderr };
        return Err(format!("{} refused the state: {why}", binary.display()));
    }
    Ok(said(&output.stdout))
}

/// Replaces this process's image with `binary __adopt STATE`; returns only on failure. Not
/// `std::process::Command::exec`, which resets the signal mask (the held signals would be
/// delivered to nobody) and SIGPIPE's disposition (left at its default after a failure).
fn exec(binary: &Path, state: &Path) -> std::io::Error {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |bytes: &[u8]| std::ffi::CString::new(bytes).map_err(std::io::Error::other);
    let args = (cstr(binary.as_os_str().as_bytes()), cstr(b"__adopt"), cstr(state.as_os_str().as_bytes()));
    let (Ok(path), Ok(adopt), Ok(state)) = args else {
        return std::io::Error::other("a path holds a NUL byte");
    };
    // The daemon's thread, which forked every instance: exec keeps the pid and the children.
    match nix::unistd::execv(&path, &[path.as_c_str(), adopt.as_c_str(), state.as_c_str()]) {
        Err(e) => e.into(),
    }
}
