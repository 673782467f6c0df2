//! `chatctl monit`: a terminal dashboard fed by the daemon's pushed snapshots and log lines.
//!
//! # Layout
//! - `state`: what is shown and how keys change it (pure).
//! - `view`: drawing (pure; tested on ratatui's test backend).
//! - this file: the terminal, the two daemon subscriptions, the key thread, the commands.

mod state;
mod view;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chat_shared::ipc::{Call, Event, Rollout, Subscription};
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind};
use tokio::sync::mpsc;

use crate::client::{Client, Frame};
use crate::home::Home;
use state::{Command, Dashboard, Key};

/// How often the daemon pushes a snapshot.
const EVERY: Duration = Duration::from_millis(500);

pub async fn monit(home: &Home) -> anyhow::Result<ExitCode> {
    // Before touching the terminal: a missing daemon is a plain message.
    let mut snapshots = Client::connect(home).await.context("no daemon to monitor (start one with `chatctl start`)")?;
    snapshots.subscribe(Subscription::Monitor { every_ms: EVERY.as_millis() as u64 }).await?;
    let mut logs = Client::connect(home).await?;
    logs.subscribe(Subscription::Logs { app: None, lines: 0, stream: None, follow: true }).await?;

    // Keys come from a thread: crossterm's reading blocks.
    let (keys_tx, mut keys) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        loop {
            let Ok(ready) = event::poll(Duration::from_millis(200)) else { return };
            if !ready {
                if keys_tx.is_closed() {
                    return;
                }
                continue;
            }
            match event::read() {
                Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                    let key = match k.code {
                        KeyCode::Up => Key::Up,
                        KeyCode::Down => Key::Down,
                        KeyCode::Enter => Key::Enter,
                        KeyCode::Esc => Key::Esc,
                        KeyCode::Backspace => Key::Backspace,
                        KeyCode::Char(c) => Key::Char(c),
                        _ => continue,
                    };
                    if keys_tx.send(Some(key)).is_err() {
                        return;
                    }
                }
                // A resize: redraw.
                Ok(TermEvent::Resize(..)) => {
                    if keys_tx.send(None).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });

    // `init` installs a panic hook that restores the terminal first.
    let mut terminal = ratatui::init();
    let result = run(&mut terminal, home, &mut snapshots, &mut logs, &mut keys).await;
    ratatui::restore();
    result
}

async fn run(
    terminal: &mut ratatui::DefaultTerminal,
    home: &Home,
    snapshots: &mut Client,
    logs: &mut Client,
    keys: &mut mpsc::UnboundedReceiver<Option<Key>>,
) -> anyhow::Result<ExitCode> {
    let mut dashboard = Dashboard::new();
    let (done_tx, mut done) = mpsc::unbounded_channel::<String>();
    loop {
        terminal.draw(|frame| view::draw(frame, &dashboard))?;
        tokio::select! {
            frame = snapshots.next_snapshot() => match frame {
                Ok(Some(snapshot)) => dashboard.on_snapshot(snapshot),
                Ok(None) => {}
                Err(crate::client::ClientError::Closed) => bail!("the daemon went away"),
                Err(e) => return Err(e.into()),
            },
            event = logs.next_logs_frame() => match event {
                Ok(Frame::Event(Event::Log(record))) => dashboard.on_log(record),
                Ok(_) => {}
                Err(crate::client::ClientError::Closed) => bail!("the daemon went away"),
                Err(e) => return Err(e.into()),
            },
            key = keys.recv() => match key {
                Some(Some(key)) => match dashboard.on_key(key) {
                    Some(Command::Quit) => return Ok(ExitCode::SUCCESS),
                    Some(command) => {
                        let (home, done) = (home.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            let _ = done.send(execute(command, &home).await.unwrap_or_else(|e| format!("failed: {e:#}")));
                        });
                    }
                    None => {}
                },
                Some(None) => {}
                None => return Ok(ExitCode::SUCCESS),
            },
            Some(message) = done.recv() => dashboard.message = Some(message),
        }
    }
}

/// Carries out a command on its own connection; returns what to tell the operator.
async fn execute(command: Command, home: &Home) -> anyhow::Result<String> {
    let mut client = Client::connect(home).await?;
    let (request, what) = match command {
        Command::Restart { app, index } => {
            (Call::Restart { app: Some(app.clone()), instance: Some(index) }, format!("restarted {app}[{index}]"))
        }
        Command::Stop { app, index } => {
            (Call::Stop { app: Some(app.clone()), instance: Some(index) }, format!("stopped {app}[{index}]"))
        }
        Command::Reload { app } => {
            // The running spec, reloaded as it is: a zero-downtime restart of every instance.
            let spec = client.describe(&app).await?.spec;
            client.rollout(Rollout::Reload { apps: vec![spec], batch: None }).await?;
            loop {
                if let Frame::End(apps) = client.next_rollout_frame().await? {
                    let replaced: usize = apps.iter().map(|a| a.replaced).sum();
                    return Ok(format!("reloaded {app}: {replaced} replaced"));
                }
            }
        }
        Command::Quit => return Ok(String::new()),
    };
    client.act(request).await?;
    Ok(what)
}
