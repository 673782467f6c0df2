//! `logs`, `flush`, `reload-logs`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use std::io::Write;

use chat_shared::ipc::{Call, Event, LogStream, LogTail, Subscription};

use super::args::LogsArgs;
use crate::client::{Client, Frame};
use crate::home::Home;

pub(super) async fn logs(args: LogsArgs, home: &Home) -> anyhow::Result<ExitCode> {
    let stream = match (args.out, args.err) {
        (true, _) => Some(LogStream::Out),
        (_, true) => Some(LogStream::Err),
        _ => None,
    };
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    let (app, only) = args.app.map_or((None, None), |t| (t.app, t.index));
    if let (Some(name), Some(index)) = (&app, only) {
        has_instance(&mut client, name, index).await?;
    }
    client.subscribe(Subscription::Logs { app, lines: args.lines, stream, follow: args.follow }).await?;
    let per_file = print_tail(&mut client, only, args.json).await?;
    if per_file < args.lines {
        eprintln!(
            "chatctl: showing at most the last {per_file} lines of each file (asked for {}); the files hold the rest",
            args.lines
        );
    }
    if args.follow {
        follow(&mut client, only, args.json).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the tail as it comes, in parts (a long tail does not wait in memory); JSON keeps one
/// object per file. `only`: of one instance, its own files whole and the lines of a merged file
/// that say they are its own. Returns the lines sent per file.
async fn print_tail(client: &mut Client, only: Option<usize>, json: bool) -> anyhow::Result<usize> {
    let keep = |part: &mut LogTail| match (only, part.instance) {
        (Some(index), Some(of)) => of == index,
        (Some(index), None) => {
            part.lines.retain(|line| record_instance(line).is_none_or(|of| of == index));
            true
        }
        (None, _) => true,
    };
    let mut mixed_told = false;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut current: Option<LogTail> = None;
    let per_file = loop {
        let mut part = match client.next_logs_frame().await? {
            Frame::Event(Event::Tail(part)) => part,
            Frame::Event(_) => continue,
            Frame::End(per_file) => break per_file,
        };
        if !keep(&mut part) {
            continue;
        }
        if let Some(index) = only
            && part.instance.is_none()
            && !mixed_told
            && part.lines.iter().any(|l| record_instance(l).is_none())
        {
            mixed_told = true;
            eprintln!(
                "chatctl: {} holds the lines of every instance (merge_logs) without saying whose: \
                 all are shown; with log_type = \"json\" only instance {index}'s would be",
                part.path
            );
        }
        let same = current.as_ref().is_some_and(|c| c.path == part.path && c.app == part.app);
        if json {
            match current.as_mut() {
                Some(file) if same => file.lines.extend(part.lines),
                _ => {
                    if let Some(done) = current.replace(part) {
                        writeln!(out, "{}", serde_json::to_string(&done)?)?;
                    }
                }
            }
        } else {
            if !same {
                writeln!(out, "==> {} <==", part.path)?;
            }
            for line in &part.lines {
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            current = Some(LogTail { lines: Vec::new(), ..part });
        }
    };
    if json && let Some(done) = current.take() {
        writeln!(out, "{}", serde_json::to_string(&done)?)?;
    }
    out.flush()?;
    Ok(per_file)
}

/// Prints every new line (of instance `only`, if given) until the daemon closes the connection.
async fn follow(client: &mut Client, only: Option<usize>, json: bool) -> anyhow::Result<()> {
    while let Some(event) = client.next_event().await? {
        match event {
            Event::Log(record) if only.is_some_and(|i| i != record.instance) => {}
            Event::Log(record) if json => println!("{}", serde_json::to_string(&record)?),
            Event::Log(record) => {
                let mark = if record.stream == LogStream::Err { " err" } else { "" };
                println!("{}[{}]{mark} | {}", record.app, record.instance, record.message);
            }
            Event::Skipped { count } => {
                eprintln!("chatctl: {count} line(s) skipped: this terminal fell behind (they are in the files)")
            }
            Event::Reload(_) | Event::Snapshot(_) | Event::Tail(_) => {}
        }
    }
    Ok(())
}

/// The instance a line of a `log_type = "json"` file belongs to; `None` for a raw line.
fn record_instance(line: &str) -> Option<usize> {
    serde_json::from_str::<chat_shared::ipc::LogRecord>(line).ok().map(|r| r.instance)
}

/// `Ok` when `app` has an instance `index`; else the error names its instance count.
async fn has_instance(client: &mut Client, app: &str, index: usize) -> anyhow::Result<()> {
    let apps = client.list().await?;
    let Some(found) = apps.iter().find(|a| a.name == app) else { bail!("no app named `{app}`") };
    let count = found.instances.len();
    if index >= count {
        bail!("`{app}` has no instance {index}: it has {count} instance(s), from 0");
    }
    Ok(())
}

pub(super) async fn flush(app: Option<String>, home: &Home) -> anyhow::Result<ExitCode> {
    let apps = done(Call::Flush { app }, home).await?;
    println!("emptied the logs of: {}", apps.join(", "));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn reload(home: &Home) -> anyhow::Result<ExitCode> {
    let apps = done(Call::ReloadLogs, home).await?;
    println!("reopened the logs of: {}", apps.join(", "));
    Ok(ExitCode::SUCCESS)
}

async fn done(call: Call, home: &Home) -> anyhow::Result<Vec<String>> {
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    Ok(client.act(call).await?)
}
