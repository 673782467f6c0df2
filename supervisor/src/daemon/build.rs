//! Development mode that rebuilds: for an app with both `watch` and `build`, a change runs the build
//! first and reloads the instances only when it succeeded, so the running version keeps serving
//! through a broken edit and a compiled program runs its new code (restarting the old binary, as a
//! plain watch does, would not). A change that arrives during a build runs the build again once it
//! ends: what is reloaded is never older than the last change.
//!
//! The decisions are a pure machine (`builder`); running the command and the reload are here.

use super::builder::Action;
use super::msg::{AppId, Msg};

impl super::state::Daemon {
    /// Carries out what the builder of app `app_id` decided.
    pub(super) fn build_then(&mut self, app_id: AppId, action: Action, now: std::time::Instant) {
        let Some(app) = super::app::app(&self.apps, app_id) else { return };
        match action {
            Action::Nothing => {}
            Action::Build => {
                if let Err(e) = run(app, self.effects.tx.clone()) {
                    let _ = self.effects.tx.send(Msg::Built { app_id, result: Err(format!("cannot run it: {e}")) });
                }
            }
            Action::Reload if app.is_down() => {
                tracing::info!(app = %app.spec.name, "built, but stopped meanwhile: not reloading");
            }
            Action::Reload if self.reloads.iter().any(|job| job.covers(app_id)) => {
                // Another reload of the app is under way (an operator's, or the previous build's):
                // this build is reloaded once that one ends (`reload_built`), not dropped.
                tracing::info!(app = %app.spec.name, "built; reloading once the reload under way ends");
                self.built_waiting.insert(app_id);
            }
            Action::Reload => {
                tracing::info!(app = %app.spec.name, "reloading the new build");
                // Nobody waits on this reload: its progress and outcome go to the daemon's log.
                let (events, _) = tokio::sync::mpsc::unbounded_channel();
                let (reply, _) = tokio::sync::oneshot::channel();
                let spec = app.spec.clone();
                self.reload(vec![spec], None, events, reply, now);
            }
        }
    }
}

impl super::state::Daemon {
    /// Reloads the builds that waited for another reload of their app, now that it ended.
    pub(super) fn reload_built(&mut self, now: std::time::Instant) {
        let reloads = &self.reloads;
        let (free, still): (Vec<AppId>, Vec<AppId>) =
            self.built_waiting.iter().partition(|&&app_id| !reloads.iter().any(|job| job.covers(app_id)));
        self.built_waiting = still.into_iter().collect();
        for app_id in free {
            self.build_then(app_id, Action::Reload, now);
        }
    }
}

/// Runs `app`'s build command (through `sh -c`, in its `cwd`, with its environment), its output
/// into the app's logs as instance 0's; `Msg::Built` says how it ended. Spawned from the daemon's
/// thread like every process; its own process group, killed if the daemon drops it.
fn run(app: &super::app::App, tx: tokio::sync::mpsc::UnboundedSender<Msg>) -> std::io::Result<()> {
    use chat_shared::ipc::LogStream;
    let command = app.spec.build.clone().unwrap_or_default();
    tracing::info!(app = %app.spec.name, command, "building");
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .current_dir(&app.spec.cwd)
        .env_clear()
        .envs(&app.spec.env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let outputs = [
        (child.stdout.take().map(|o| o.into_owned_fd()), LogStream::Out),
        (child.stderr.take().map(|e| e.into_owned_fd()), LogStream::Err),
    ];
    let mut pipes = Vec::new();
    for (fd, stream) in outputs {
        if let Some(fd) = fd {
            pipes.push(app.logs.capture(crate::logs::pipe(fd)?, stream, 0, None, None, Vec::new()));
        }
    }
    let app_id = app.id;
    tokio::spawn(async move {
        let result = match child.wait().await {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(status.code().map_or_else(|| status.to_string(), |c| format!("exit {c}"))),
            Err(e) => Err(e.to_string()),
        };
        // Its output is in the log before the outcome is acted on (unless something it started
        // in the background keeps the pipes open).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            for pipe in pipes {
                let _ = pipe.await;
            }
        })
        .await;
        let _ = tx.send(Msg::Built { app_id, result });
    });
    Ok(())
}
