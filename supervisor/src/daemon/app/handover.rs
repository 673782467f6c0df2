//! An app across `chatctl update`: what it hands the next daemon image (its sockets, its
//! instances' states and pipes) and how that image takes it over (see `crate::handover`).

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use chat_shared::ipc::LogStream;

use super::model::App;
use super::{AppError, exit_kind_unknown, report_exit};
use crate::daemon::effects::Effects;
use crate::daemon::msg::AppId;
use crate::daemon::slot::{Slot, Which};
use crate::descendants::Tracked;
use crate::handover::{self, Pidfd, SavedApp, SavedPipe, SavedProc, SavedSlot, SavedState};
use crate::instance::{Instance, Policy, Probe, State};
use crate::logs::{Handed, LogPaths, LogSink};
use crate::pid::Pid;

/// A listening socket the previous image handed over.
fn listener(fd: i32) -> Result<TcpListener, AppError> {
    handover::adopt_fd(fd).map(TcpListener::from).map_err(AppError::Adopt)
}

/// An adopted instance's start time and pipes.
type Running = (u64, Vec<SavedPipe>);

impl App {
    /// Why this app cannot be handed over right now, if it cannot: an instance stopping or being
    /// replaced is in the middle of something that a new image could not finish.
    pub(in crate::daemon) fn busy(&self) -> Option<String> {
        if matches!(self.builder, crate::daemon::builder::Builder::Building { .. }) {
            return Some(format!("app {}: a build is running", self.spec.name));
        }
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.successor.is_some() {
                return Some(format!("app {} instance {index}: being replaced", self.spec.name));
            }
            if let State::Launching | State::Stopping { .. } = slot.current.instance.state {
                let phase = slot.current.instance.phase();
                return Some(format!("app {} instance {index}: {}", self.spec.name, phase.as_str()));
            }
        }
        None
    }

    /// Its part of the state; the pipes are added once the capture tasks give them back.
    pub(in crate::daemon) fn save(&self, now: Instant) -> SavedApp {
        let slots = self
            .slots
            .iter()
            .map(|slot| {
                let proc = &slot.current;
                let instance = &proc.instance;
                let state = match instance.state {
                    State::Online { pid, since, ready_at, failures, .. } => SavedState::Online {
                        pid: pid.raw(),
                        start_time: handover::start_time(pid.raw()).unwrap_or(0),
                        uptime_ms: now.saturating_duration_since(since).as_millis() as u64,
                        ready_ms: now.saturating_duration_since(ready_at).as_millis() as u64,
                        failures,
                    },
                    State::Starting { pid, since, deadline, .. } => SavedState::Starting {
                        pid: pid.raw(),
                        start_time: handover::start_time(pid.raw()).unwrap_or(0),
                        uptime_ms: now.saturating_duration_since(since).as_millis() as u64,
                        deadline_ms: deadline.saturating_duration_since(now).as_millis() as u64,
                    },
                    State::Waiting { until } => {
                        SavedState::Waiting { in_ms: until.saturating_duration_since(now).as_millis() as u64 }
                    }
                    State::Errored => SavedState::Errored,
                    _ => SavedState::Stopped,
                };
                let (cgroup, launch) = match &proc.tracked {
                    Some(Tracked::Cgroup(dir)) => (Some(dir.clone()), None),
                    Some(Tracked::Launch(id)) => (None, Some(id.clone())),
                    None => (None, None),
                };
                SavedSlot {
                    own: slot.own.as_ref().map(AsRawFd::as_raw_fd),
                    port: slot.port,
                    history: slot.history.iter().cloned().collect(),
                    probes: slot.probes.iter().cloned().collect(),
                    memory_peak: slot.memory_peak,
                    probe_failures: slot.probe_failures,
                    proc: SavedProc {
                        key: proc.key,
                        spec: (*proc.spec).clone(),
                        admin: proc.admin.as_ref().map(AsRawFd::as_raw_fd),
                        restarts: instance.restarts,
                        spawned_once: instance.spawned_once,
                        last_exit: instance.last_exit,
                        note: instance.note.clone(),
                        incidents: instance.incidents,
                        unstable: instance.unstable,
                        state,
                        cgroup,
                        launch,
                        pipes: Vec::new(),
                    },
                }
            })
            .collect();
        SavedApp {
            id: self.id.0,
            spec: self.spec.clone(),
            secret: self.secret.clone(),
            reloads: self.reloads,
            next_key: self.next_key,
            port: self.port,
            shared: self.shared.as_ref().map(AsRawFd::as_raw_fd),
            log_counts: self.logs.counts(),
            slots,
        }
    }

    /// Every descriptor the app hands over, to be inherited across `execve`.
    pub(in crate::daemon) fn descriptors(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = self.shared.iter().map(AsRawFd::as_raw_fd).collect();
        for slot in &self.slots {
            fds.extend(slot.own.as_ref().map(AsRawFd::as_raw_fd));
            fds.extend(slot.current.admin.as_ref().map(AsRawFd::as_raw_fd));
        }
        fds
    }

    /// Takes over an app of the previous daemon image: its sockets, log files and instances,
    /// which go on running; each instance's exit is waited for through a pidfd, its output read
    /// from the pipes it always had.
    pub(in crate::daemon) fn adopt(saved: SavedApp, log_paths: &LogPaths, fx: &Effects) -> Result<App, AppError> {
        let id = AppId(saved.id);
        let now = Instant::now();
        let shared = saved.shared.map(listener).transpose()?;
        let spec = saved.spec;
        let logs = LogSink::open(
            &spec.name,
            log_paths.clone(),
            &spec.logs,
            saved.slots.len(),
            fx.follow.clone(),
            saved.log_counts,
        )
        .map_err(|source| AppError::Logs { path: log_paths.out.clone(), source })?;
        let policy = Policy::of(&spec);
        let mut slots = Vec::with_capacity(saved.slots.len());
        let mut running = Vec::new();
        for (index, saved_slot) in saved.slots.into_iter().enumerate() {
            let (slot, pipes) = Self::adopt_slot(id, saved_slot, fx, now)?;
            if let (Some(pid), Some(pipes)) = (slot.current.instance.pid(), pipes) {
                running.push((index, pid, pipes.0, pipes.1));
            }
            slots.push(slot);
        }
        let watcher = Self::watcher(id, &spec, log_paths, fx)?;
        let app = App {
            id,
            successor_policy: Policy::for_successor(&policy),
            policy,
            outcomes: Vec::new(),
            builder: crate::daemon::builder::Builder::default(),
            reloads: saved.reloads,
            secret: saved.secret,
            spec,
            shared,
            port: saved.port,
            slots,
            logs,
            deleting: false,
            _watcher: watcher,
            next_key: saved.next_key,
        };
        for (index, pid, start_time, pipes) in running {
            app.watch_adopted(index, pid, start_time, pipes, fx);
        }
        Ok(app)
    }

    /// One slot of an adopted app, its instance in the state it was handed over in; for an online
    /// one, its start time and pipes, to be watched.
    fn adopt_slot(
        id: AppId,
        saved_slot: SavedSlot,
        fx: &Effects,
        now: Instant,
    ) -> Result<(Slot, Option<Running>), AppError> {
        let mut adopted = None;
        let own = saved_slot.own.map(listener).transpose()?;
        let mut saved_proc = saved_slot.proc;
        let admin = saved_proc.admin.map(listener).transpose()?;
        let mut proc = Self::new_proc(id, saved_proc.key, &saved_proc.spec, saved_slot.port, admin, fx)?;
        let proc_policy = Policy::of(&saved_proc.spec);
        let state = match saved_proc.state {
            SavedState::Online { pid, start_time, uptime_ms, ready_ms, failures } => {
                adopted = Some((start_time, std::mem::take(&mut saved_proc.pipes)));
                let probe = proc_policy.health.as_ref().map_or(Probe::Never, |h| Probe::At(now + h.interval));
                State::Online {
                    pid: Pid::new(pid),
                    since: now.checked_sub(Duration::from_millis(uptime_ms)).unwrap_or(now),
                    ready_at: now.checked_sub(Duration::from_millis(ready_ms)).unwrap_or(now),
                    failures,
                    probe,
                }
            }
            SavedState::Starting { pid, start_time, uptime_ms, deadline_ms } => {
                adopted = Some((start_time, std::mem::take(&mut saved_proc.pipes)));
                State::Starting {
                    pid: Pid::new(pid),
                    since: now.checked_sub(Duration::from_millis(uptime_ms)).unwrap_or(now),
                    deadline: now + Duration::from_millis(deadline_ms),
                    // As at its spawn: a notifying instance is not probed until it says it is
                    // ready (on the notify socket bound again for it).
                    probe: match proc_policy.readiness {
                        Some(chat_shared::ecosystem::Readiness::Notify) => Probe::Never,
                        _ => Probe::At(now),
                    },
                }
            }
            SavedState::Waiting { in_ms } => State::Waiting { until: now + Duration::from_millis(in_ms) },
            SavedState::Errored => State::Errored,
            SavedState::Stopped => State::Stopped,
        };
        proc.instance = Instance {
            state,
            restarts: saved_proc.restarts,
            spawned_once: saved_proc.spawned_once,
            last_exit: saved_proc.last_exit,
            note: saved_proc.note,
            incidents: saved_proc.incidents,
            unstable: saved_proc.unstable,
        };
        proc.tracked = match (saved_proc.cgroup, saved_proc.launch) {
            (Some(dir), _) => Some(Tracked::Cgroup(dir)),
            (None, Some(launch)) => Some(Tracked::Launch(launch)),
            (None, None) => None,
        };
        let mut slot = Slot::new(proc, own, saved_slot.port);
        slot.history = saved_slot.history.into();
        slot.probes = saved_slot.probes.into();
        slot.memory_peak = saved_slot.memory_peak;
        slot.probe_failures = saved_slot.probe_failures;
        Ok((slot, adopted))
    }

    /// Reads an adopted instance's pipes and waits for it to exit; one already gone is reported
    /// exited at once.
    fn watch_adopted(&self, index: usize, pid: Pid, start_time: u64, pipes: Vec<SavedPipe>, fx: &Effects) {
        let mut readers = Vec::new();
        for pipe in pipes {
            let stream = if pipe.err { LogStream::Err } else { LogStream::Out };
            match handover::adopt_fd(pipe.fd).and_then(|fd| crate::logs::pipe(Ok(fd))) {
                Ok(fd) => readers.push(self.logs.capture(fd, stream, index, Some(pid.raw()), None, pipe.pending)),
                Err(e) => tracing::error!(app = %self.spec.name, index, error = %e, "cannot read an adopted pipe"),
            }
        }
        let tx = fx.tx.clone();
        match Pidfd::open(pid.raw(), (start_time > 0).then_some(start_time)) {
            Ok(pidfd) => {
                tokio::spawn(report_exit(async move { pidfd.wait().await }, pid, readers, None, tx, self.id));
            }
            Err(e) => {
                tracing::warn!(app = %self.spec.name, index, %pid, error = %e, "an adopted instance is gone");
                tokio::spawn(report_exit(exit_kind_unknown(), pid, readers, None, tx, self.id));
            }
        }
    }

    /// The pipes handed back for nothing (the new image could not start), `handed` and any the
    /// log sink still holds: read them again.
    pub(in crate::daemon) fn resume_pipes(&self, mut handed: Vec<Handed>) {
        handed.extend(self.logs.resume());
        for Handed { pid, stream, fd, pending } in handed {
            let Some((index, Which::Current)) = self.find_pid(Pid::new(pid)) else { continue };
            match crate::logs::pipe(Ok(fd)) {
                Ok(pipe) => {
                    self.logs.capture(pipe, stream, index, Some(pid), None, pending);
                }
                Err(e) => tracing::error!(app = %self.spec.name, index, error = %e, "cannot read a pipe again"),
            }
        }
    }
}

/// Fills each saved instance's pipes from those its capture tasks gave back; returns the
/// descriptors it named. A pipe of no instance in the state (one a descendant of an exited instance
/// still holds) is not among them: it stays close-on-exec and closes at exec.
pub(in crate::daemon) fn add_pipes(saved: &mut SavedApp, handed: &[Handed]) -> Vec<i32> {
    let mut named = Vec::new();
    for slot in &mut saved.slots {
        let Some(pid) = slot.proc.state.pid() else { continue };
        slot.proc.pipes = handed
            .iter()
            .filter(|h| h.pid == pid)
            .map(|h| SavedPipe { err: h.stream == LogStream::Err, fd: h.fd.as_raw_fd(), pending: h.pending.clone() })
            .collect();
        named.extend(slot.proc.pipes.iter().map(|p| p.fd));
    }
    named
}
