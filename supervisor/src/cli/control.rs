//! `list`, `stop`, `restart`, `delete`, `signal`, `kill`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use chat_shared::ipc::Call;

use super::args::Target;
use super::start::wait_online;
use super::table;
use super::target::InstanceTarget;
use crate::client::{Client, ClientError, Signalled};
use crate::home::Home;

pub(super) async fn list(json: bool, home: &Home) -> anyhow::Result<ExitCode> {
    let apps = match Client::connect(home).await {
        Ok(mut client) => client.list().await?,
        // No daemon: nothing runs, which is an answer, not an error.
        Err(ClientError::NotRunning(_)) => Vec::new(),
        Err(e) => return Err(e).context("cannot reach the daemon"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&apps)?);
    } else {
        print!("{}", table::render(&apps));
    }
    Ok(ExitCode::SUCCESS)
}

async fn act(call: Call, home: &Home) -> anyhow::Result<Vec<String>> {
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    Ok(client.act(call).await?)
}

pub(super) async fn stop(target: InstanceTarget, home: &Home) -> anyhow::Result<ExitCode> {
    let apps = act(Call::Stop { app: target.app.clone(), instance: target.index }, home).await?;
    match target.index {
        Some(index) => println!("stopped: {}", names(&apps.iter().map(|a| format!("{a}:{index}")).collect::<Vec<_>>())),
        None => println!("stopped: {}", names(&apps)),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn restart(target: InstanceTarget, home: &Home) -> anyhow::Result<ExitCode> {
    let apps = act(Call::Restart { app: target.app.clone(), instance: target.index }, home).await?;
    let mut client = Client::connect(home).await?;
    wait_online(&mut client, &apps, false).await
}

pub(super) async fn delete(target: Target, home: &Home) -> anyhow::Result<ExitCode> {
    let apps = act(Call::Delete { app: target.app() }, home).await?;
    println!("deleted: {}", names(&apps));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn signal(
    signal: chat_shared::ipc::SignalName,
    target: InstanceTarget,
    home: &Home,
) -> anyhow::Result<ExitCode> {
    let app = target.one_app().map_err(anyhow::Error::msg)?.to_owned();
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    let Signalled { app, signal, sent } = client.signal(app, target.index, signal).await?;
    for (index, pid) in sent {
        println!("{signal} sent to {app}:{index} (pid {pid})");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn save(home: &Home) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home).await.context("cannot reach the daemon (nothing runs to save)")?;
    let (path, apps) = client.save().await?;
    println!("saved {} app(s) to {path}: {}", apps.len(), names(&apps));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn ping(home: &Home) -> anyhow::Result<ExitCode> {
    let client = crate::process::connect_or_start(home).await?;
    println!("daemon pid {}, version {} ({})", client.daemon_pid, client.daemon_version, home.dir().display());
    Ok(ExitCode::SUCCESS)
}

/// `chatctl update`: the running daemon re-executes `binary` (by default this chatctl) in place,
/// keeping every instance (see `crate::handover`). Asked through a signal and two files, not the
/// control protocol, so that it works whatever protocol either side speaks.
pub(super) fn update(
    home: &Home,
    binary: Option<std::path::PathBuf>,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let binary = match binary {
        Some(path) => std::fs::canonicalize(&path).with_context(|| format!("cannot find {}", path.display()))?,
        None => std::env::current_exe().context("cannot find this chatctl's executable")?,
    };
    let pid: u32 = match std::fs::read_to_string(home.lock_file()).ok().and_then(|t| t.trim().parse().ok()) {
        Some(pid) if std::path::Path::new(&format!("/proc/{pid}")).exists() => pid,
        _ => {
            println!("no daemon running: nothing to update ({})", home.dir().display());
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("asking the daemon (pid {pid}) to re-execute {}", binary.display());
    let outcome = crate::handover::ask(home.dir(), pid, &binary, timeout).context("the update did not answer")?;
    if outcome.ok {
        println!("updated in place: pid {} now runs chatctl {} ({})", outcome.pid, outcome.version, outcome.message);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "update refused, the daemon (pid {}, chatctl {}) goes on serving: {}",
            outcome.pid, outcome.version, outcome.message
        );
        Ok(ExitCode::from(super::exit::UPDATE_REFUSED))
    }
}

pub(super) async fn kill(home: &Home) -> anyhow::Result<ExitCode> {
    let mut client = match Client::connect(home).await {
        Ok(client) => client,
        Err(ClientError::NotRunning(_)) => {
            println!("no daemon running");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e).context("cannot reach the daemon"),
    };
    let pid = client.daemon_pid;
    let (instances_stopped, forced) = client.kill().await?;
    println!("stopped {instances_stopped} instance(s){}; daemon (pid {pid}) exiting", forced_note(forced));
    // The reply comes just before the daemon exits; wait for the socket to go so that a `start`
    // right after this does not reach the dying daemon.
    for _ in 0..200 {
        if matches!(Client::connect(home).await, Err(ClientError::NotRunning(_))) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    bail!("the daemon (pid {pid}) answered but did not exit")
}

fn forced_note(forced: usize) -> String {
    if forced == 0 { String::new() } else { format!(", {forced} killed after kill_timeout") }
}

fn names(apps: &[String]) -> String {
    if apps.is_empty() { "(none)".to_owned() } else { apps.join(", ") }
}
