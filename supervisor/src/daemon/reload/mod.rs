//! Rolling reloads: every instance of an app replaced by a successor running the new spec, `batch`
//! at a time, each successor ready before its predecessor drains (see `slot`). Fail-closed: the
//! first successor that fails stops the reload; the instances not yet replaced keep serving.
//!
//! A job covers the apps of one `chatctl reload`, one app after the other; progress goes to the
//! requesting connection as events, the outcome as its response. What to do for one app is decided
//! by its pure [`plan::Plan`]; this module shows it the app and carries its actions out.

mod plan;

use std::collections::VecDeque;
use std::time::Instant;

use chat_shared::ipc::{ErrorKind, Event, LogStream, ReloadPhase, ReloadStep, ReloadSummary, Response};
use chat_shared::spec::AppSpec;
use tokio::sync::{mpsc, oneshot};

use super::app::{App, app_mut};
use super::effects::Effects;
use super::msg::AppId;
use super::slot::{OnFailure, Which};
use crate::instance::Input;
use crate::pid::Pid;
use plan::{Action, Plan, Report, Seen, SlotView};

/// Lines of the failed instance's logs quoted in the error.
const FAILURE_LOG_LINES: usize = 10;

pub(super) struct Job {
    /// Apps still to reload, with their new specs, in order.
    queue: VecDeque<(AppId, AppSpec)>,
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
    app_id: AppId,
    /// The spec before the reload: restored for future processes if the reload fails.
    previous: AppSpec,
    plan: Plan,
}

impl Job {
    pub(super) fn new(
        apps: Vec<(AppId, AppSpec)>,
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
        app_id: AppId,
        spec: AppSpec,
        events: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Response>,
    ) -> Job {
        Job { replace: false, ..Job::new(vec![(app_id, spec)], None, events, reply) }
    }

    /// Instance `index` of the app replaced by a new process of `spec` (the app's own).
    pub(super) fn instance(
        app_id: AppId,
        spec: AppSpec,
        index: usize,
        events: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Response>,
    ) -> Job {
        Job { only: Some(index), ..Job::new(vec![(app_id, spec)], None, events, reply) }
    }

    pub(super) fn covers(&self, app_id: AppId) -> bool {
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
                let batch = self.batch.unwrap_or(spec.reload_batch);
                self.current = Some(AppReload::begin(app, spec, self.replace, self.only, batch, now));
            }
            let Some(reload) = self.current.as_mut() else { return };
            let Some(app) = app_mut(apps, reload.app_id) else {
                self.current = None;
                continue;
            };
            match reload.advance(app, now, fx, &self.events) {
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
    fn begin(
        app: &mut App,
        spec: AppSpec,
        replace: bool,
        only: Option<usize>,
        batch: usize,
        now: Instant,
    ) -> AppReload {
        let old_count = app.slots.len();
        let target = spec.instances;
        let previous = app.spec.clone();
        app.retarget(spec);
        if replace {
            app.reloads += 1;
        }
        tracing::info!(app = %app.spec.name, instances = old_count, target, "reload begins");
        let plan = Plan::new(app.spec.name.clone(), old_count, target, replace, only, batch, now);
        AppReload { app_id: app.id, previous, plan }
    }

    /// Steps the plan over the app as it is and carries its actions out. `None` while under way;
    /// then the summary, or why it failed.
    fn advance(
        &mut self,
        app: &mut App,
        now: Instant,
        fx: &mut Effects,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Option<Result<ReloadSummary, String>> {
        let name = self.plan.name().to_owned();
        let send = |report: Report| {
            let Report { index, step, old_pid, new_pid, ready_ms, message } = report;
            let app = name.clone();
            let (old_pid, new_pid) = (old_pid.map(Pid::raw), new_pid.map(Pid::raw));
            let _ = events.send(Event::Reload(ReloadStep { app, index, step, old_pid, new_pid, ready_ms, message }));
        };
        let seen = seen(app);
        for action in self.plan.step(&seen, now) {
            match action {
                Action::Report(report) => send(report),
                Action::InPlace { index, restart } => {
                    // Nothing running (or no way to run two): start it as the new spec says.
                    let input = if restart { Input::Restart } else { Input::Start };
                    app.drive(index, Which::Current, input, now, fx);
                }
                Action::Replace { index } => app.replace(index, "reload".into(), OnFailure::Keep, now, fx),
                Action::AddSlot => {
                    let index = app.add_slot(now, fx);
                    let pid = app.slots[index].current.instance.pid();
                    send(Report {
                        index,
                        step: ReloadPhase::Scaled,
                        old_pid: None,
                        new_pid: pid,
                        ready_ms: None,
                        message: Some("added".into()),
                    });
                }
                Action::Retire { index } => app.retire(index, now, fx),
                Action::Fail { why, replaced } => {
                    // Fail-closed: what starts from now on (a memory replacement, a new slot) runs the
                    // version that works; instances already replaced keep the new one.
                    app.retarget(self.previous.clone());
                    let tail = app.log_tail(FAILURE_LOG_LINES);
                    return Some(Err(format!(
                        "{why}\nthe reload stopped there: {replaced} instance(s) replaced, the others keep serving the previous version\n{tail}"
                    )));
                }
                Action::Finish(summary) => {
                    tracing::info!(app = %summary.app, replaced = summary.replaced, "reload done");
                    return Some(Ok(summary));
                }
            }
        }
        None
    }
}

/// What the plan needs to see of `app`; takes the replacements finished since the last look.
fn seen(app: &mut App) -> Seen {
    let slots = app
        .slots
        .iter()
        .map(|slot| {
            let current = &slot.current.instance;
            SlotView {
                phase: current.phase(),
                pid: current.pid(),
                note: current.note.clone(),
                successor: slot.proc(Which::Successor).map(|s| (s.instance.pid(), s.instance.phase())),
                retiring: slot.retiring,
            }
        })
        .collect();
    Seen { slots, outcomes: std::mem::take(&mut app.outcomes), can_surge: app.can_surge() }
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
