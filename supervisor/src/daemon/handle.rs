//! What the daemon does with each [`Msg`] other than a request: one method per kind of news.

use std::path::PathBuf;
use std::time::Instant;

use chat_shared::health::HealthBody;
use chat_shared::ipc::Rollout;
use chat_shared::status::{ChatFigures, ExitKind, Phase};

use super::app::app_mut;
use super::builder;
use super::msg::{AppId, Msg};
use super::slot::Which;
use super::state::Daemon;
use crate::instance::{Input, State};
use crate::notify::Notice;
use crate::pid::Pid;

impl Daemon {
    pub(super) fn handle(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Call(call, reply) => self.call(call, reply, now),
            Msg::Rollout { rollout, events, reply } => match rollout {
                Rollout::Reload { apps, batch } => self.reload(apps, batch, events, reply, now),
                Rollout::Scale { app, to } => self.scale(&app, to, events, reply, now),
                Rollout::ReloadInstance { app, instance } => self.reload_instance(&app, instance, events, reply, now),
            },
            Msg::Exited { app_id, pid, status, misconfigured } => {
                self.on_exited(app_id, pid, status, misconfigured, now)
            }
            Msg::Changed { app_id, paths } => self.on_changed(app_id, &paths, now),
            Msg::Built { app_id, result } => self.on_built(app_id, result, now),
            Msg::Stats { app_id, pid, body } => {
                let Some(app) = app_mut(&mut self.apps, app_id) else { return };
                if let Some((index, Which::Current)) = app.find_pid(pid) {
                    app.slots[index].chat = Some(figures(&body));
                }
            }
            Msg::Metrics(reply) => {
                self.refresh_usage(now);
                let _ = reply.send(self.metrics_text(now));
            }
            Msg::Follow(reply) => {
                let _ = reply.send(self.effects.follow.subscribe());
            }
            Msg::LogFiles { app, stream, reply } => {
                let _ = reply.send(self.log_files(app.as_deref(), stream));
            }
            Msg::Notify { app_id, key, notice } => self.on_notify(app_id, key, &notice, now),
            Msg::Probe { app_id, pid, result, latency_ms } => self.on_probe(app_id, pid, result, latency_ms, now),
        }
    }

    fn on_exited(&mut self, app_id: AppId, pid: Pid, status: ExitKind, misconfigured: Option<String>, now: Instant) {
        let Some(app) = app_mut(&mut self.apps, app_id) else { return };
        // A stale exit (no process of this app has that pid any more) changes nothing.
        let Some((index, which)) = app.find_pid(pid) else { return };
        let state = app.slots[index].proc(which).map(|p| &p.instance.state);
        if matches!(state, Some(State::Stopping { killed: true, .. })) {
            self.forced += 1;
        }
        match status {
            ExitKind::Code(0) => tracing::info!(app = %app.spec.name, index, %pid, "exited with code 0"),
            other => tracing::info!(app = %app.spec.name, index, %pid, exit = %other, "exited"),
        }
        // Before the machine may spawn a replacement into the slot.
        if let Some(tracked) = app.slots[index].proc_mut(which).and_then(|p| p.tracked.take()) {
            crate::descendants::end(tracked);
        }
        let input = match misconfigured {
            Some(why) => Input::Misconfigured { kind: status, why },
            None => Input::Exited(status),
        };
        app.drive(index, which, input, now, &mut self.effects);
        if let Some(reaper) = &mut self.effects.reaper {
            reaper.forget(pid);
        }
    }

    /// Watch mode saw files change: build (with `build`), else restart every instance.
    fn on_changed(&mut self, app_id: AppId, paths: &[PathBuf], now: Instant) {
        let Some(app) = app_mut(&mut self.apps, app_id) else { return };
        let first = paths.first().map(|p| p.display().to_string()).unwrap_or_default();
        if app.spec.build.is_some() {
            // An app an operator stopped stays stopped: nothing to build for.
            if app.is_down() {
                tracing::info!(app = %app.spec.name, first, "files changed; stopped, so not building");
                return;
            }
            tracing::info!(app = %app.spec.name, changed = paths.len(), first, "files changed: building");
            let action = app.builder.step(builder::Event::Changed);
            self.build_then(app_id, action, now);
            return;
        }
        tracing::info!(app = %app.spec.name, changed = paths.len(), first, "files changed: restarting");
        for index in 0..app.slots.len() {
            app.cancel_successor(index, now, &mut self.effects);
            // An instance an operator stopped stays stopped; a crash-looping one gets a new try.
            if app.slots[index].current.instance.phase() != Phase::Stopped {
                app.drive(index, Which::Current, Input::Restart, now, &mut self.effects);
            }
        }
    }

    fn on_built(&mut self, app_id: AppId, result: Result<(), String>, now: Instant) {
        let Some(app) = app_mut(&mut self.apps, app_id) else { return };
        match &result {
            Ok(()) => tracing::info!(app = %app.spec.name, "build succeeded"),
            Err(why) => tracing::warn!(app = %app.spec.name, why, "build failed: the running version keeps serving"),
        }
        let action = app.builder.step(builder::Event::Finished(result));
        self.build_then(app_id, action, now);
    }

    fn on_notify(&mut self, app_id: AppId, key: u64, notice: &Notice, now: Instant) {
        let Some(app) = app_mut(&mut self.apps, app_id) else { return };
        let Some((index, which)) = app.find_key(key) else { return };
        if let Some(status) = &notice.status {
            tracing::info!(app = %app.spec.name, index, status, "instance status");
        }
        if notice.ready {
            app.drive(index, which, Input::Ready, now, &mut self.effects);
        }
    }

    fn on_probe(
        &mut self,
        app_id: AppId,
        pid: Pid,
        result: Result<Option<HealthBody>, String>,
        latency_ms: u64,
        now: Instant,
    ) {
        let Some(app) = app_mut(&mut self.apps, app_id) else { return };
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
                let online =
                    app.slots[index].proc(which).is_some_and(|p| matches!(p.instance.state, State::Online { .. }));
                if online {
                    tracing::warn!(app = %app.spec.name, index, %pid, why, "health check failed");
                }
                Input::ProbeFailed(why)
            }
        };
        app.drive(index, which, input, now, &mut self.effects);
    }
}

/// A chat worker's `/health` body as `list` and `/metrics` show it.
fn figures(body: &HealthBody) -> ChatFigures {
    use chat_shared::health::HealthStatus;
    let degraded = match (&body.status, &body.cluster) {
        (HealthStatus::Degraded, Some(link)) => {
            Some(format!("{} link down: {}", link.via, link.error.as_deref().unwrap_or("unknown reason")))
        }
        (HealthStatus::Degraded, None) => Some("degraded".to_owned()),
        _ => None,
    };
    ChatFigures {
        connections: body.connections,
        rooms: body.rooms,
        messages: body.messages,
        dropped: body.cluster.as_ref().map_or(0, |c| c.dropped),
        handed: body.handoff.map_or(0, |h| h.handed),
        taken: body.handoff.map_or(0, |h| h.taken),
        degraded,
    }
}
