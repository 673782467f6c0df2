//! `logs`, `flush`, `reload-logs`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use chat_shared::ipc::{Event, LogStream, Request, Response};

use super::LogsArgs;
use crate::client::Client;
use crate::home::Home;

pub(super) async fn logs(args: LogsArgs, home: &Home) -> anyhow::Result<ExitCode> {
    let stream = match (args.out, args.err) {
        (true, _) => Some(LogStream::Out),
        (_, true) => Some(LogStream::Err),
        _ => None,
    };
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    let request = Request::Logs { app: args.app, lines: args.lines, stream, follow: args.follow };
    let files = match client.request(&request).await? {
        Response::Logs { files } => files,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    for file in &files {
        if args.json {
            println!("{}", serde_json::to_string(file)?);
        } else if args.lines > 0 {
            println!("==> {} <==", file.path);
            for line in &file.lines {
                println!("{line}");
            }
        }
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    while let Some(event) = client.next_event().await? {
        match event {
            Event::Log(record) if args.json => println!("{}", serde_json::to_string(&record)?),
            Event::Log(record) => {
                let mark = if record.stream == LogStream::Err { " err" } else { "" };
                println!("{}[{}]{mark} | {}", record.app, record.instance, record.message);
            }
            Event::Skipped { count } => {
                eprintln!("chatctl: {count} line(s) skipped: this terminal fell behind (they are in the files)")
            }
            Event::Reload(_) | Event::Snapshot(_) => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn flush(app: Option<String>, home: &Home) -> anyhow::Result<ExitCode> {
    let apps = done(Request::Flush { app }, home).await?;
    println!("emptied the logs of: {}", apps.join(", "));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn reload(home: &Home) -> anyhow::Result<ExitCode> {
    let apps = done(Request::ReloadLogs, home).await?;
    println!("reopened the logs of: {}", apps.join(", "));
    Ok(ExitCode::SUCCESS)
}

async fn done(request: Request, home: &Home) -> anyhow::Result<Vec<String>> {
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    match client.request(&request).await? {
        Response::Done { apps } => Ok(apps),
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}
