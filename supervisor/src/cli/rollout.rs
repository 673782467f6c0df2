//! What `reload`, `scale` and `start --reload` share: the started environment kept, and a rollout's
//! steps printed as the daemon reports them.

use std::process::ExitCode;

use chat_shared::ipc::{Event, ReloadPhase};
use chat_shared::spec::AppSpec;

use super::exit;
use crate::client::{Client, ClientError, Frame};

/// Each spec read again with the environment its app was started with, for the apps that run
/// (see `AppSpec::with_started_env`); apps the daemon does not know are started as read.
pub(super) async fn with_started_env(client: &mut Client, specs: Vec<AppSpec>) -> anyhow::Result<Vec<AppSpec>> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        match client.describe(&spec.name).await {
            Ok(running) => out.push(spec.with_started_env(&running.spec)),
            Err(ClientError::Daemon { .. }) => out.push(spec),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Prints a reload's (or scale's) steps as they come, then its outcome.
pub(super) async fn progress(client: &mut Client, json: bool) -> anyhow::Result<ExitCode> {
    loop {
        let frame = match client.next_rollout_frame().await {
            Ok(frame) => frame,
            Err(ClientError::Daemon { message, .. }) => {
                eprintln!("error: {message}");
                return Ok(ExitCode::from(exit::RELOAD_FAILED));
            }
            Err(e) => return Err(e.into()),
        };
        match frame {
            Frame::Event(Event::Reload(step)) if json => println!("{}", serde_json::to_string(&step)?),
            Frame::Event(Event::Reload(step)) => {
                let who = format!("{}[{}]", step.app, step.index);
                let pid = |p: Option<u32>| p.map_or("-".to_owned(), |p| p.to_string());
                let line = match step.step {
                    ReloadPhase::Starting => format!("{who}: starting a new process beside pid {}", pid(step.old_pid)),
                    ReloadPhase::Ready => format!(
                        "{who}: pid {} ready after {} ms; draining pid {}",
                        pid(step.new_pid),
                        step.ready_ms.unwrap_or_default(),
                        pid(step.old_pid)
                    ),
                    ReloadPhase::Done => {
                        let how = step.message.map(|m| format!(" ({m})")).unwrap_or_default();
                        format!("{who}: done, pid {} -> {}{how}", pid(step.old_pid), pid(step.new_pid))
                    }
                    ReloadPhase::Failed => {
                        format!(
                            "{who}: FAILED: {}; pid {} keeps serving",
                            step.message.unwrap_or_default(),
                            pid(step.old_pid)
                        )
                    }
                    ReloadPhase::Scaled => format!("{who}: {}", step.message.unwrap_or_default()),
                };
                println!("{line}");
            }
            Frame::Event(_) => {}
            Frame::End(apps) => {
                for summary in &apps {
                    if json {
                        println!("{}", serde_json::to_string(summary)?);
                    } else {
                        println!(
                            "reloaded {}: {} replaced, {} added, {} removed in {} ms",
                            summary.app, summary.replaced, summary.added, summary.removed, summary.duration_ms
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}
