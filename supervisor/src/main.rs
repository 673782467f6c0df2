//! `chatctl` entry point: parse, set up logging, dispatch, map errors to exit codes.

use std::process::ExitCode;

use anyhow::Context;
use chatctl::cli::{Cli, Command};
use chatctl::home::Home;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // The reaper and the bus are started by the daemon and never by a person: kept out of clap's
    // help.
    match std::env::args_os().nth(1) {
        Some(a) if a == "__reaper" => return chatctl::reaper::main(),
        Some(a) if a == "__bus" => return chatctl::bus::main(),
        _ => {}
    }
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let home = Home::from_env().context("cannot find the chatctl home")?;
    let filter = |default: &str| EnvFilter::try_from_env("CHATCTL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    match cli.command {
        Command::Daemon => daemon(&home),
        Command::Run(args) => {
            tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter("info")).init();
            chatctl::cli::run_foreground(args, &home)
        }
        command => {
            tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter("warn")).init();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(chatctl::cli::client_command(command, &home))
        }
    }
}

/// The detached daemon: its own log file, one runtime thread (every child is forked from it, which
/// `PR_SET_PDEATHSIG` needs), until `chatctl kill` or SIGTERM.
fn daemon(home: &Home) -> anyhow::Result<ExitCode> {
    let claimed = chatctl::host::claim(home)?;
    // The appender would create a missing log with the umask's mode: create it private first.
    let log = chatctl::home::private_file().create(true).append(true).open(home.daemon_log())?;
    chatctl::home::keep_private(&log)?;
    drop(log);
    // Rotated by size (see `DaemonLog`), written from the appender's thread.
    let appender = chatctl::DaemonLog::open(home.daemon_log())?;
    // A small queue: the default (128k lines) is allocated and touched up front, which alone was
    // about half of the idle daemon's memory; the daemon logs a few lines per event.
    let (writer, _guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().buffered_lines_limit(1024).finish(appender);
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_env_filter(EnvFilter::try_from_env("CHATCTL_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    tracing::info!(pid = std::process::id(), home = %home.dir().display(), version = env!("CARGO_PKG_VERSION"), "daemon starting");
    match chatctl::host::host_daemon(claimed, Vec::new(), Default::default()) {
        Ok(outcome) => {
            tracing::info!(?outcome, "daemon exiting");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ chatctl::host::HostError::Start(_)) => Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "daemon failed");
            Err(e.into())
        }
    }
}
