//! What the daemon does for each [`Call`] and rollout.

use std::time::Instant;

use chat_shared::ipc::{Call, ErrorKind, LogStream, LogTail, Response, SignalName};
use chat_shared::spec::AppSpec;
use chat_shared::status::Phase;
use tokio::sync::oneshot;

use super::app::{App, StartError};
use super::reload;
use super::slot::Which;
use super::state::{Daemon, KilledBy, Lifecycle, Until, Waiter};
use crate::instance::Input;
use crate::logs::LogPaths;

/// `Ok` when `app` has an instance `index`, else the answer that says how many it has.
fn has_instance(app: &App, index: usize) -> Result<(), Response> {
    let message = match app.slots.len() {
        n if index < n => return Ok(()),
        1 => format!("`{}` has no instance {index}: it has one instance, 0", app.spec.name),
        n => format!("`{}` has no instance {index}: it has {n} instances, 0 to {}", app.spec.name, n - 1),
    };
    Err(Response::error(ErrorKind::NotFound, message))
}

/// The answer to a rollout of an app that is already being rolled out.
fn busy(name: &str) -> Response {
    Response::error(ErrorKind::Busy, format!("a reload of `{name}` is already under way; wait for it to finish"))
}

fn to_nix(signal: SignalName) -> nix::sys::signal::Signal {
    use nix::sys::signal::Signal;
    match signal {
        SignalName::Hup => Signal::SIGHUP,
        SignalName::Int => Signal::SIGINT,
        SignalName::Quit => Signal::SIGQUIT,
        SignalName::Kill => Signal::SIGKILL,
        SignalName::Usr1 => Signal::SIGUSR1,
        SignalName::Usr2 => Signal::SIGUSR2,
        SignalName::Term => Signal::SIGTERM,
        SignalName::Cont => Signal::SIGCONT,
        SignalName::Stop => Signal::SIGSTOP,
        SignalName::Tstp => Signal::SIGTSTP,
        SignalName::Winch => Signal::SIGWINCH,
        SignalName::Alrm => Signal::SIGALRM,
    }
}

/// Every spec of a request checked as the config validation would, before anything is touched: a
/// request comes from whoever can reach the socket, not only from a validated file.
fn checked(specs: &[AppSpec]) -> Result<(), Response> {
    for spec in specs {
        spec.validate()
            .map_err(|e| Response::error(ErrorKind::Invalid, format!("app {:?}: refused: {e}", spec.name)))?;
    }
    Ok(())
}

impl Daemon {
    /// Answers `call`, now or (stop, restart, delete, kill, flush) once it is done.
    pub(super) fn call(&mut self, call: Call, reply: oneshot::Sender<Response>, now: Instant) {
        if !matches!(self.lifecycle, Lifecycle::Serving) && !matches!(call, Call::List) {
            let _ = reply.send(Response::error(ErrorKind::ShuttingDown, "the daemon is shutting down"));
            return;
        }
        tracing::debug!(?call, "request");
        let response = match call {
            Call::Start { apps } => match checked(&apps) {
                Ok(()) => self.start(apps, now).unwrap_or_else(|e| Response::error(ErrorKind::Failed, e.chain())),
                Err(refused) => refused,
            },
            Call::List => {
                self.refresh_usage(now);
                Response::List { apps: self.apps.iter().map(|a| a.status(now, &self.usage)).collect() }
            }
            Call::Stop { app, instance } => {
                return self.act(app.as_deref(), instance, Input::Stop, Until::Down, false, reply, now);
            }
            Call::Restart { app, instance } => {
                return self.act(app.as_deref(), instance, Input::Restart, Until::Restarted, false, reply, now);
            }
            Call::Delete { app } => {
                return self.act(app.as_deref(), None, Input::Stop, Until::Down, true, reply, now);
            }
            Call::Signal { app, instance, signal } => self.signal(&app, instance, signal),
            Call::Kill => {
                self.begin_kill(KilledBy::Request(reply));
                return;
            }
            Call::Flush { app } => return self.log_control(app.as_deref(), false, reply),
            Call::ReloadLogs => return self.log_control(None, true, reply),
            Call::Describe { app } => {
                self.refresh_usage(now);
                match self.apps.iter().find(|a| a.spec.name == app) {
                    Some(found) => Response::Described(Box::new(found.describe(now, &self.usage))),
                    None => Response::error(ErrorKind::NotFound, format!("no app named `{app}`")),
                }
            }
            Call::Snapshot => {
                self.refresh_usage(now);
                Response::Snapshot(self.snapshot(now))
            }
            Call::Save => match self.save() {
                Ok(response) => response,
                Err(e) => Response::error(ErrorKind::Failed, format!("cannot write the dump: {e}")),
            },
        };
        let _ = reply.send(response);
    }

    /// Creates (binding every socket first, all or nothing) and starts the apps not yet running.
    ///
    /// An app that is known but stopped is started again; with a changed spec it is replaced, its
    /// sockets released before the new ones are bound.
    pub(super) fn start(&mut self, specs: Vec<AppSpec>, now: Instant) -> Result<Response, StartError> {
        let mut already_running = Vec::new();
        let mut again = Vec::new();
        let mut fresh = Vec::new();
        for spec in specs {
            match self.apps.iter().find(|a| a.spec.name == spec.name) {
                Some(app) if !app.is_down() => already_running.push(spec.name),
                Some(app) if app.spec == spec => again.push(app.id),
                Some(_) => {
                    self.apps.retain(|a| a.spec.name != spec.name);
                    fresh.push(spec);
                }
                None => fresh.push(spec),
            }
        }
        // Bind everything before starting anything: a port in use changes nothing that runs.
        let mut built = Vec::with_capacity(fresh.len());
        for spec in fresh {
            let paths = self.log_paths(&spec);
            let name = spec.name.clone();
            built.push(
                App::new(self.next_app_id, spec, &paths, &self.effects)
                    .map_err(|source| StartError { app: name, source })?,
            );
            self.next_app_id = self.next_app_id.next();
        }
        again.extend(built.iter().map(|a| a.id));
        // A memory limit is checked from the first interval on, not from the next regular sample.
        if let Some(every) =
            built.iter().filter(|a| a.spec.max_memory.is_some()).map(|a| a.spec.memory_check_interval.0).min()
        {
            self.next_sample = self.next_sample.min(now + every);
        }
        self.apps.extend(built);
        let mut started = Vec::new();
        for app in self.apps.iter_mut().filter(|a| again.contains(&a.id)) {
            tracing::info!(app = %app.spec.name, instances = app.slots.len(), mode = ?app.spec.exec_mode, "starting");
            app.deleting = false;
            for slot in 0..app.slots.len() {
                app.drive(slot, Which::Current, Input::Start, now, &mut self.effects);
            }
            started.push(app.spec.name.clone());
        }
        Ok(Response::Started { started, already_running })
    }

    pub(super) fn log_paths(&self, spec: &AppSpec) -> LogPaths {
        let dir = self.effects.home.logs_dir();
        LogPaths {
            out: spec.logs.out_file.clone().unwrap_or_else(|| dir.join(format!("{}-out.log", spec.name))),
            err: spec.logs.error_file.clone().unwrap_or_else(|| dir.join(format!("{}-error.log", spec.name))),
        }
    }

    /// Indices of the app named `target`, or of every app; an unknown name is refused.
    fn chosen(&self, target: Option<&str>) -> Result<Vec<usize>, Response> {
        match target {
            None => Ok((0..self.apps.len()).collect()),
            Some(name) => match self.apps.iter().position(|a| a.spec.name == name) {
                Some(i) => Ok(vec![i]),
                None => {
                    let known: Vec<&str> = self.apps.iter().map(|a| a.spec.name.as_str()).collect();
                    let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                    Err(Response::error(ErrorKind::NotFound, format!("no app named `{name}` (running apps: {known})")))
                }
            },
        }
    }

    /// The current log files of `target` (every app when `None`), as tails without lines yet: the
    /// connection reads them off this thread (see `ipc_server::tail`).
    pub(super) fn log_files(&self, target: Option<&str>, stream: Option<LogStream>) -> Result<Vec<LogTail>, Response> {
        let mut out = Vec::new();
        for app in self.chosen(target)?.into_iter().map(|i| &self.apps[i]) {
            for (file_stream, instance, path) in app.logs.current_files(app.slots.len()) {
                if stream.is_some_and(|s| s != file_stream) {
                    continue;
                }
                out.push(LogTail {
                    app: app.spec.name.clone(),
                    stream: file_stream,
                    instance,
                    path: path.display().to_string(),
                    lines: Vec::new(),
                });
            }
        }
        Ok(out)
    }

    /// `flush` (truncate) or `reload-logs` (reopen) on the writers; answered when all are done.
    fn log_control(&mut self, target: Option<&str>, reopen: bool, reply: oneshot::Sender<Response>) {
        let chosen = match self.chosen(target) {
            Ok(chosen) => chosen,
            Err(refused) => {
                let _ = reply.send(refused);
                return;
            }
        };
        let sinks: Vec<(String, crate::logs::LogSink)> =
            chosen.iter().map(|i| (self.apps[*i].spec.name.clone(), self.apps[*i].logs.clone())).collect();
        tokio::spawn(async move {
            let mut names = Vec::new();
            for (name, sink) in sinks {
                let result = if reopen { sink.reopen().await } else { sink.truncate().await };
                if let Err(e) = result {
                    let _ = reply.send(Response::error(ErrorKind::Failed, format!("{name}: {e}")));
                    return;
                }
                names.push(name);
            }
            let _ = reply.send(Response::Done { apps: names });
        });
    }

    /// Starts a rolling reload of `specs` (see `reload`); apps not running are started instead.
    pub(super) fn reload(
        &mut self,
        specs: Vec<AppSpec>,
        batch: Option<usize>,
        events: tokio::sync::mpsc::UnboundedSender<chat_shared::ipc::Event>,
        reply: oneshot::Sender<Response>,
        now: Instant,
    ) {
        if let Err(refused) = checked(&specs) {
            let _ = reply.send(refused);
            return;
        }
        let mut jobs = Vec::new();
        let mut to_start = Vec::new();
        for spec in specs {
            match self.apps.iter().find(|a| a.spec.name == spec.name) {
                Some(app) if self.reloads.iter().any(|j| j.covers(app.id)) => {
                    let _ = reply.send(busy(&spec.name));
                    return;
                }
                Some(app) if !app.spec.same_sockets(&spec) => {
                    let message = format!(
                        "`{}`: port, host, exec_mode or inherit_socket changed; a reload keeps the sockets: \
                         `chatctl delete {0}` then `chatctl start` to change them",
                        spec.name
                    );
                    let _ = reply.send(Response::error(ErrorKind::Invalid, message));
                    return;
                }
                Some(app) if !app.is_down() => jobs.push((app.id, spec)),
                _ => to_start.push(spec),
            }
        }
        if !to_start.is_empty()
            && let Err(e) = self.start(to_start, now)
        {
            let _ = reply.send(Response::error(ErrorKind::Failed, e.chain()));
            return;
        }
        let mut job = reload::Job::new(jobs, batch, events, reply);
        job.advance(&mut self.apps, now, &mut self.effects);
        if !job.is_finished() {
            self.reloads.push(job);
        }
    }

    /// Writes the running apps' specs atomically: a temporary file, fsync, rename, fsync of the
    /// directory. A crash at any point leaves the previous dump or the new one, never half of one.
    fn save(&self) -> std::io::Result<Response> {
        use std::io::Write;
        let apps: Vec<AppSpec> =
            self.apps.iter().filter(|a| !a.is_down() && !a.deleting).map(|a| a.spec.clone()).collect();
        let names = apps.iter().map(|a| a.name.clone()).collect();
        let dump = chat_shared::ipc::Dump {
            version: chat_shared::ipc::DUMP_VERSION,
            saved_at: chat_shared::time::Timestamp::now_secs(),
            apps,
        };
        let path = self.effects.home.dir().join(chat_shared::ipc::DUMP_FILE);
        let tmp = path.with_extension("json.tmp");
        // A fresh file, so it gets our mode (0600: it holds every app's environment) even where a
        // crash left a temporary file of an older chatctl behind.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = crate::home::private_file().write(true).create_new(true).open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(&dump).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(self.effects.home.dir())?.sync_all()?;
        tracing::info!(path = %path.display(), "saved the process list");
        Ok(Response::Saved { path: path.display().to_string(), apps: names })
    }

    /// `chatctl scale`: instances added or removed at the end, through the reload machinery.
    pub(super) fn scale(
        &mut self,
        name: &str,
        to: chat_shared::ipc::ScaleTo,
        events: tokio::sync::mpsc::UnboundedSender<chat_shared::ipc::Event>,
        reply: oneshot::Sender<Response>,
        now: Instant,
    ) {
        let Some(app) = self.apps.iter().find(|a| a.spec.name == name) else {
            let _ = reply.send(Response::error(ErrorKind::NotFound, format!("no app named `{name}`")));
            return;
        };
        if self.reloads.iter().any(|j| j.covers(app.id)) {
            let _ = reply.send(busy(name));
            return;
        }
        let mut spec = app.spec.clone();
        let Some(instances) = to.from(app.slots.len()) else {
            let message = format!("`{name}`: {to:?} from {} instances does not fit a count", app.slots.len());
            let _ = reply.send(Response::error(ErrorKind::Invalid, message));
            return;
        };
        spec.instances = instances;
        if let Err(e) = spec.validate() {
            let _ = reply.send(Response::error(ErrorKind::Invalid, format!("`{name}`: cannot scale: {e}")));
            return;
        }
        let mut job = reload::Job::scale(app.id, spec, events, reply);
        job.advance(&mut self.apps, now, &mut self.effects);
        if !job.is_finished() {
            self.reloads.push(job);
        }
    }

    /// `chatctl reload APP:INDEX`: that instance replaced by a new process of the app's spec as it
    /// runs (the file is not read: the instances of one app run one version), surge first.
    pub(super) fn reload_instance(
        &mut self,
        name: &str,
        index: usize,
        events: tokio::sync::mpsc::UnboundedSender<chat_shared::ipc::Event>,
        reply: oneshot::Sender<Response>,
        now: Instant,
    ) {
        let app = match self.chosen(Some(name)) {
            Ok(chosen) => &self.apps[chosen[0]],
            Err(refused) => {
                let _ = reply.send(refused);
                return;
            }
        };
        if let Err(refused) = has_instance(app, index) {
            let _ = reply.send(refused);
            return;
        }
        if self.reloads.iter().any(|j| j.covers(app.id)) {
            let _ = reply.send(busy(name));
            return;
        }
        let mut job = reload::Job::instance(app.id, app.spec.clone(), index, events, reply);
        job.advance(&mut self.apps, now, &mut self.effects);
        if !job.is_finished() {
            self.reloads.push(job);
        }
    }

    /// Moves every reload along; forgets finished ones and scaled-away slots.
    pub(super) fn advance_reloads(&mut self, now: Instant) {
        for job in &mut self.reloads {
            job.advance(&mut self.apps, now, &mut self.effects);
        }
        self.reloads.retain(|j| !j.is_finished());
        for app in &mut self.apps {
            app.reap_retired();
        }
        if !self.built_waiting.is_empty() {
            self.reload_built(now);
        }
    }

    /// Stop, restart or delete `target` (every app when `None`), answering once `until` holds.
    #[allow(clippy::too_many_arguments)] // one request's parts, passed through from one match
    fn act(
        &mut self,
        target: Option<&str>,
        instance: Option<usize>,
        input: Input,
        until: Until,
        delete: bool,
        reply: oneshot::Sender<Response>,
        now: Instant,
    ) {
        let chosen = match self.chosen(target) {
            Ok(chosen) => chosen,
            Err(refused) => {
                let _ = reply.send(refused);
                return;
            }
        };
        if let (Some(index), [app]) = (instance, chosen.as_slice())
            && let Err(refused) = has_instance(&self.apps[*app], index)
        {
            let _ = reply.send(refused);
            return;
        }
        let mut names = Vec::new();
        let mut app_ids = Vec::new();
        for i in chosen {
            let app = &mut self.apps[i];
            for job in self.reloads.iter_mut().filter(|j| j.covers(app.id)) {
                job.interrupt("an operator stopped, restarted or deleted the app");
            }
            app.deleting |= delete;
            names.push(app.spec.name.clone());
            app_ids.push(app.id);
            for slot in (0..app.slots.len()).filter(|s| instance.is_none_or(|i| i == *s)) {
                // An operator's request wins over a replacement in progress.
                app.cancel_successor(slot, now, &mut self.effects);
                app.drive(slot, Which::Current, input.clone(), now, &mut self.effects);
            }
        }
        self.waiters.push(Waiter { app_ids, slot: instance, until, reply, response: Response::Done { apps: names } });
    }

    /// `chatctl signal`: `signal` to the main process of each chosen instance that has one.
    ///
    /// To the process, not its group, as PM2 does: such a signal is a message to the program
    /// (SIGUSR2: reopen your logs, SIGHUP: read your config again), and the program decides what
    /// its children hear; a group would also reach helpers that die of SIGUSR1's default action.
    /// Stops, which must reach every descendant, signal the group. The pid is one the daemon has
    /// not reaped yet, so it cannot name another program. A signal that ends the process (SIGTERM,
    /// SIGKILL) counts as an exit like any other: `autorestart` decides what follows.
    fn signal(&self, name: &str, instance: Option<usize>, signal: SignalName) -> Response {
        let app = match self.chosen(Some(name)) {
            Ok(chosen) => &self.apps[chosen[0]],
            Err(refused) => return refused,
        };
        if let Some(index) = instance
            && let Err(refused) = has_instance(app, index)
        {
            return refused;
        }
        let mut sent = Vec::new();
        for (index, slot) in app.slots.iter().enumerate().filter(|(i, _)| instance.is_none_or(|want| want == *i)) {
            let Some(pid) = slot.current.instance.pid() else { continue };
            let Some(process) = pid.to_nix() else { continue };
            match nix::sys::signal::kill(process, to_nix(signal)) {
                Ok(()) => sent.push((index, pid.raw())),
                // Exited a moment ago: its exit is on its way to this loop.
                Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    return Response::error(ErrorKind::Failed, format!("{signal} to pid {pid} ({name}:{index}): {e}"));
                }
            }
        }
        if sent.is_empty() {
            let which = instance.map_or_else(|| format!("no instance of `{name}`"), |i| format!("`{name}:{i}`"));
            return Response::error(ErrorKind::NotFound, format!("{which} is running: no process to send {signal} to"));
        }
        tracing::info!(app = %name, %signal, ?sent, "signal sent on request");
        Response::Signalled { app: name.to_owned(), signal, sent }
    }

    /// Stops every app; the daemon exits once all are down, answering a kill request first. A
    /// signal during a requested kill keeps the request's answer.
    pub(super) fn begin_kill(&mut self, by: KilledBy) {
        let now = Instant::now();
        for job in &mut self.reloads {
            job.interrupt("the daemon is stopping");
        }
        self.built_waiting.clear();
        for app in &mut self.apps {
            for slot in 0..app.slots.len() {
                app.cancel_successor(slot, now, &mut self.effects);
                app.drive(slot, Which::Current, Input::Stop, now, &mut self.effects);
            }
        }
        if !matches!(self.lifecycle, Lifecycle::Killing(KilledBy::Request(_))) {
            self.lifecycle = Lifecycle::Killing(by);
        }
    }

    /// Answers every waiter whose condition holds; removes deleted apps that are down.
    pub(super) fn answer_waiters(&mut self) {
        let mut i = 0;
        while i < self.waiters.len() {
            let waiter = &self.waiters[i];
            let done = waiter.app_ids.iter().all(|id| match super::app::app(&self.apps, *id) {
                None => true,
                Some(app) => {
                    let wanted = |index: usize| waiter.slot.is_none_or(|s| s == index);
                    match waiter.until {
                        Until::Down => {
                            app.slots.iter().enumerate().filter(|(i, _)| wanted(*i)).all(|(_, s)| s.is_down())
                        }
                        Until::Restarted => app
                            .procs()
                            .filter(|(i, _, _)| wanted(*i))
                            .all(|(_, _, p)| p.instance.phase() != Phase::Stopping),
                    }
                }
            });
            if done {
                let waiter = self.waiters.swap_remove(i);
                let _ = waiter.reply.send(waiter.response);
            } else {
                i += 1;
            }
        }
        let before = self.apps.len();
        self.apps.retain(|a| !(a.deleting && a.is_down()));
        if self.apps.len() != before {
            tracing::info!(removed = before - self.apps.len(), "deleted apps");
        }
    }

    /// True once a kill is under way and every instance is down; sends the kill's reply.
    pub(super) fn finished_killing(&mut self) -> bool {
        if !matches!(self.lifecycle, Lifecycle::Killing(_)) || !self.apps.iter().all(App::is_down) {
            return false;
        }
        let outcome = self.outcome(false);
        if let Lifecycle::Killing(KilledBy::Request(reply)) = std::mem::replace(&mut self.lifecycle, Lifecycle::Stopped)
        {
            let _ =
                reply.send(Response::Killed { instances_stopped: outcome.instances_stopped, forced: outcome.forced });
        }
        true
    }
}
