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
    println!("daemon pid {} ({})", client.daemon_pid, home.dir().display());
    Ok(ExitCode::SUCCESS)
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
