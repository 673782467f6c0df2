//! Rolling reloads: every instance of an app replaced by a successor running the new spec, `batch`
//! at a time, each successor ready before its predecessor drains (see `slot`). Fail-closed: the
//! first successor that fails stops the reload; the instances not yet replaced keep serving.
//!
//! A job covers the apps of one `chatctl reload`, one app after the other; progress goes to the
//! requesting connection as events, the outcome as its response.

use std::collections::VecDeque;
use std::time::Instant;

use chat_shared::ipc::{ErrorKind, Event, LogStream, ReloadPhase, ReloadStep, ReloadSummary, Response};
use chat_shared::spec::AppSpec;
use chat_shared::status::Phase;
use tokio::sync::{mpsc, oneshot};

use super::app::{App, app_mut};
use super::effects::Effects;
use super::slot::{OnFailure, Which};
use crate::instance::Input;

/// Lines of the failed instance's logs quoted in the error.
const FAILURE_LOG_LINES: usize = 10;

pub(super) struct Job {
    /// Apps still to reload, with their new specs, in order.
    queue: VecDeque<(u64, AppSpec)>,
    /// `false` for a scale: instances only added or removed, none replaced.
    replace: bool,
    current: Option<AppReload>,
    /// Overrides each app's `reload_batch`.
    batch: Option<usize>,
    /// Replace only this instance (`reload APP:INDEX`), not every one.
    only: Option<usize>,
    summaries: Vec<ReloadSummary>,
    events: mpsc::UnboundedSender<Event>,
    reply: Option<oneshot::Sender<Response>>,
}

/// The reload of one app in progress.
struct AppReload {
    app_id: u64,
    /// The spec before the reload: restored for future processes if the reload fails.
    previous: AppSpec,
    name: String,
    started: Instant,
    pending: VecDeque<usize>,
    active: Vec<Active>,
    failed: Option<String>,
    /// Instance count of the new spec.
    target: usize,
    replaced: usize,
    added: usize,
    removed: usize,
}

struct Active {
    index: usize,
    old_pid: Option<u32>,
    started: Instant,
    new_pid: Option<u32>,
    ready_ms: Option<u64>,
    /// No successor possible (the program binds its own port): restarted in place.
    in_place: bool,
}

impl Job {
    pub(super) fn new(
        apps: Vec<(u64, AppSpec)>,
        batch: Option<usize>,
        events: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Response>,
    ) -> Job {
        Job {
            queue: apps.into(),
            replace: true,
            current: None,
            batch,
            only: None,
            summaries: Vec::new(),
            events,
            reply: Some(reply),
        }
    }

    /// A scale of one app to `spec.instances`.
    pub(super) fn scale(
        app_id: u64,
        spec: AppSpec,
        events: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Response>,
    ) -> Job {
        Job { replace: false, ..Job::new(vec![(app_id, spec)], None, events, reply) }
    }

    /// Instance `index` of the app replaced by a new process of `spec` (the app's own).
    pub(super) fn instance(
        app_id: u64,
        spec: AppSpec,
        index: usize,
        events: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Response>,
    ) -> Job {
        Job { only: Some(index), ..Job::new(vec![(app_id, spec)], None, events, reply) }
    }

    pub(super) fn covers(&self, app_id: u64) -> bool {
        self.current.as_ref().is_some_and(|c| c.app_id == app_id) || self.queue.iter().any(|(id, _)| *id == app_id)
    }

    /// An operator's stop, restart or delete of an app under reload ends the reload.
    pub(super) fn interrupt(&mut self, why: &str) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Response::error(ErrorKind::Interrupted, format!("reload interrupted: {why}")));
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        self.reply.is_none()
    }

    /// Moves the job along; called after every change the daemon makes.
    pub(super) fn advance(&mut self, apps: &mut [App], now: Instant, fx: &mut Effects) {
        if self.reply.is_none() {
            return;
        }
        loop {
            if self.current.is_none() {
                let Some((app_id, spec)) = self.queue.pop_front() else {
                    let summaries = std::mem::take(&mut self.summaries);
                    if let Some(reply) = self.reply.take() {
                        let _ = reply.send(Response::Reloaded { apps: summaries });
                    }
                    return;
                };
                let Some(app) = app_mut(apps, app_id) else { continue };
                self.current = Some(AppReload::begin(app, spec, self.replace, self.only, now));
            }
            let Some(reload) = self.current.as_mut() else { return };
            let Some(app) = app_mut(apps, reload.app_id) else {
                self.current = None;
                continue;
            };
            let batch = self.batch.unwrap_or(app.spec.reload_batch).max(1);
            match reload.advance(app, batch, now, fx, &self.events) {
                None => return,
                Some(Ok(summary)) => {
                    self.summaries.push(summary);
                    self.current = None;
                }
                Some(Err(message)) => {
                    if let Some(reply) = self.reply.take() {
                        let _ = reply.send(Response::error(ErrorKind::Failed, message));
                    }
                    return;
                }
            }
        }
    }
}

impl AppReload {
    fn begin(app: &mut App, spec: AppSpec, replace: bool, only: Option<usize>, now: Instant) -> AppReload {
        let old_count = app.slots.len();
        let target = spec.instances;
        let previous = app.spec.clone();
        app.retarget(spec);
        if replace {
            app.reloads += 1;
        }
        tracing::info!(app = %app.spec.name, instances = old_count, target, "reload begins");
        AppReload {
            app_id: app.id,
            previous,
            name: app.spec.name.clone(),
            started: now,
            pending: match (replace, only) {
                (false, _) => VecDeque::new(),
                (true, Some(index)) => (index..(index + 1).min(old_count.min(target))).collect(),
                (true, None) => (0..old_count.min(target)).collect(),
            },
            active: Vec::new(),
            failed: None,
            target,
            replaced: 0,
            added: 0,
            removed: 0,
        }
    }

    /// `None` while under way; then the summary, or why it failed.
    fn advance(
        &mut self,
        app: &mut App,
        batch: usize,
        now: Instant,
        fx: &mut Effects,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Option<Result<ReloadSummary, String>> {
        let step = |index: usize, step: ReloadPhase, old_pid, new_pid, ready_ms, message: Option<String>| {
            let _ = events.send(Event::Reload(ReloadStep {
                app: self.name.clone(),
                index,
                step,
                old_pid,
                new_pid,
                ready_ms,
                message,
            }));
        };
        // Finished replacements.
        for (index, result) in std::mem::take(&mut app.outcomes) {
            let Some(pos) = self.active.iter().position(|a| a.index == index && !a.in_place) else { continue };
            let active = self.active.remove(pos);
            match result {
                Ok(new_pid) => {
                    self.replaced += 1;
                    step(index, ReloadPhase::Done, active.old_pid, Some(new_pid), active.ready_ms, None);
                }
                Err(why) => {
                    let message = format!("instance {index} of {}: the new process failed: {why}", self.name);
                    step(index, ReloadPhase::Failed, active.old_pid, active.new_pid, None, Some(why));
                    self.failed.get_or_insert(message);
                }
            }
        }
        // Successors that came up, and in-place restarts.
        for active in &mut self.active {
            let slot = &app.slots[active.index];
            if active.in_place {
                let current = &slot.current.instance;
                match current.phase() {
                    Phase::Online if current.pid() != active.old_pid => {
                        active.ready_ms = Some(now.saturating_duration_since(active.started).as_millis() as u64);
                        active.new_pid = current.pid();
                    }
                    Phase::Errored | Phase::Stopped => {
                        let why = current.note.clone().unwrap_or_else(|| "stopped".into());
                        self.failed.get_or_insert(format!("instance {} of {}: {why}", active.index, self.name));
                        step(active.index, ReloadPhase::Failed, active.old_pid, None, None, Some(why));
                        active.index = usize::MAX;
                    }
                    _ => {}
                }
                continue;
            }
            let Some(successor) = slot.proc(Which::Successor) else { continue };
            if active.new_pid.is_none() {
                active.new_pid = successor.instance.pid();
            }
            if active.ready_ms.is_none() && successor.instance.phase() == Phase::Online {
                let ms = now.saturating_duration_since(active.started).as_millis() as u64;
                active.ready_ms = Some(ms);
                step(
                    active.index,
                    ReloadPhase::Ready,
                    active.old_pid,
                    active.new_pid,
                    Some(ms),
                    Some("old process draining".into()),
                );
            }
        }
        let done_in_place: Vec<usize> =
            self.active.iter().filter(|a| a.in_place && a.new_pid.is_some()).map(|a| a.index).collect();
        for index in done_in_place {
            if let Some(pos) = self.active.iter().position(|a| a.index == index) {
                let active = self.active.remove(pos);
                self.replaced += 1;
                step(
                    index,
                    ReloadPhase::Done,
                    active.old_pid,
                    active.new_pid,
                    active.ready_ms,
                    Some("restarted in place".into()),
                );
            }
        }
        self.active.retain(|a| a.index != usize::MAX);
        // More replacements, unless one failed.
        while self.failed.is_none() && self.active.len() < batch {
            let Some(index) = self.pending.pop_front() else { break };
            let old_pid = app.slots[index].current.instance.pid();
            let in_place = !app.can_surge() || old_pid.is_none();
            self.active.push(Active { index, old_pid, started: now, new_pid: None, ready_ms: None, in_place });
            step(index, ReloadPhase::Starting, old_pid, None, None, None);
            if in_place {
                // Nothing running (or no way to run two): start it as the new spec says.
                app.drive(
                    index,
                    Which::Current,
                    if old_pid.is_some() { Input::Restart } else { Input::Start },
                    now,
                    fx,
                );
            } else {
                app.replace(index, "reload".into(), OnFailure::KeepCurrent, now, fx);
            }
        }
        if !self.active.is_empty() || (self.failed.is_none() && !self.pending.is_empty()) {
            return None;
        }
        if let Some(failed) = self.failed.take() {
            // Fail-closed: what starts from now on (a memory replacement, a new slot) runs the version
            // that works; instances already replaced keep the new one.
            app.retarget(self.previous.clone());
            let tail = app.log_tail(FAILURE_LOG_LINES);
            return Some(Err(format!(
                "{failed}\nthe reload stopped there: {} instance(s) replaced, the others keep serving the previous version\n{tail}",
                self.replaced
            )));
        }
        // Scale to the new count.
        while app.slots.len() < self.target {
            let index = app.add_slot(now, fx);
            self.added += 1;
            step(index, ReloadPhase::Scaled, None, app.slots[index].current.instance.pid(), None, Some("added".into()));
        }
        if app.slots.len() > self.target {
            for index in self.target..app.slots.len() {
                if !app.slots[index].retiring {
                    let pid = app.slots[index].current.instance.pid();
                    app.retire(index, now, fx);
                    self.removed += 1;
                    step(index, ReloadPhase::Scaled, pid, None, None, Some("removed".into()));
                }
            }
            return None;
        }
        tracing::info!(app = %self.name, replaced = self.replaced, "reload done");
        Some(Ok(ReloadSummary {
            app: self.name.clone(),
            replaced: self.replaced,
            added: self.added,
            removed: self.removed,
            duration_ms: now.saturating_duration_since(self.started).as_millis() as u64,
        }))
    }
}

impl App {
    /// The last lines of the app's current logs, for an error message.
    pub(super) fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (stream, _, path) in self.logs.current_files(self.slots.len()) {
            let tail = crate::logs::last_lines(&path, lines).unwrap_or_default();
            if tail.is_empty() {
                continue;
            }
            let name = if stream == LogStream::Err { "stderr" } else { "stdout" };
            out.push_str(&format!("last lines of {name} ({}):\n", path.display()));
            for line in tail {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out
    }
}
