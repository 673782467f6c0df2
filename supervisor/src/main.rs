//! `chatctl` entry point: parse, set up logging, dispatch, map errors to exit codes.

use std::process::ExitCode;

use anyhow::Context;
use chatctl::cli::{Cli, Command};
use chatctl::home::Home;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // The reaper, the bus and an updated daemon's image are started by the daemon and never by a
    // person: kept out of clap's help.
    match std::env::args_os().nth(1) {
        Some(a) if a == "__reaper" => return chatctl::reaper::main(),
        Some(a) if a == "__bus" => return chatctl::bus::main(),
        Some(a) if a == "__adopt" => return adopt(std::env::args_os().skip(2).collect()),
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
    log_to_file(home)?;
    tracing::info!(pid = std::process::id(), home = %home.dir().display(), version = chatctl::handover::version(), "daemon starting");
    let hosted = chatctl::host::host_daemon(claimed, Vec::new(), Default::default());
    exited(hosted.map(|_| ExitCode::SUCCESS))
}

/// The detached daemon's log: its own file, rotated by size (see `DaemonLog`), written from the
/// appender's thread (whose guard `chatctl::handover` keeps, to write the log out before an update
/// re-executes the daemon).
fn log_to_file(home: &Home) -> anyhow::Result<()> {
    // The appender would create a missing log with the umask's mode: create it private first.
    let log = chatctl::home::private_file().create(true).append(true).open(home.daemon_log())?;
    chatctl::home::keep_private(&log)?;
    drop(log);
    // A small queue: the default (128k lines) is allocated and touched up front, which alone was
    // about half of the idle daemon's memory; the daemon logs a few lines per event.
    let open = |path: &std::path::Path| -> std::io::Result<tracing_appender::non_blocking::NonBlocking> {
        let appender = chatctl::DaemonLog::open(path.to_owned())?;
        let (writer, guard) =
            tracing_appender::non_blocking::NonBlockingBuilder::default().buffered_lines_limit(1024).finish(appender);
        chatctl::handover::keep_log_guard(guard);
        Ok(writer)
    };
    let writer = std::sync::Arc::new(std::sync::RwLock::new(open(&home.daemon_log())?));
    let (again, path) = (writer.clone(), home.daemon_log());
    // An update whose exec failed closed the log: open it again.
    chatctl::handover::on_log_reopen(move || {
        if let Ok(reopened) = open(&path) {
            *again.write().unwrap_or_else(std::sync::PoisonError::into_inner) = reopened;
        }
    });
    tracing_subscriber::fmt()
        .with_writer(move || writer.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
        .with_ansi(false)
        .with_env_filter(EnvFilter::try_from_env("CHATCTL_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    Ok(())
}

fn exited(hosted: Result<ExitCode, chatctl::host::HostError>) -> anyhow::Result<ExitCode> {
    let result = match hosted {
        Ok(code) => {
            tracing::info!("daemon exiting");
            Ok(code)
        }
        Err(e @ chatctl::host::HostError::Start(_)) => Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "daemon failed");
            Err(e.into())
        }
    };
    chatctl::handover::drop_log_guard();
    result
}

/// `chatctl __adopt [--check] STATE`: the daemon's next image (`chatctl update`) taking over the
/// state the previous one handed it, or, with `--check`, only saying whether it could (the
/// preflight, run in a child while the old image serves on).
fn adopt(args: Vec<std::ffi::OsString>) -> ExitCode {
    use chatctl::handover;
    let (check, path) = match args.as_slice() {
        [flag, path] if flag == "--check" => (true, std::path::PathBuf::from(path)),
        [path] => (false, std::path::PathBuf::from(path)),
        _ => {
            eprintln!("usage: chatctl __adopt [--check] STATE (started by the daemon, never by hand)");
            return ExitCode::FAILURE;
        }
    };
    let saved: handover::Saved = match handover::read_json(&path) {
        Ok(saved) => saved,
        Err(e) => {
            eprintln!("cannot read the state {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(why) = handover::accepts(saved.format) {
        eprintln!("chatctl {} refuses the state: {why}", handover::version());
        return ExitCode::FAILURE;
    }
    if check {
        if let Err(e) = handover::pidfd_supported() {
            eprintln!(
                "this kernel cannot wait on another image's children (pidfd_open: {e}); Linux 5.3 or later is needed"
            );
            return ExitCode::FAILURE;
        }
        println!("{}", handover::version());
        return ExitCode::SUCCESS;
    }
    let result = (|| -> anyhow::Result<ExitCode> {
        let home = Home::from_env().context("cannot find the chatctl home")?;
        let foreground = saved.mode.foreground;
        if foreground {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(EnvFilter::try_from_env("CHATCTL_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
                .init();
        } else {
            log_to_file(&home)?;
        }
        tracing::info!(pid = std::process::id(), version = handover::version(), "daemon re-executed: taking over");
        let hosted = chatctl::host::host_adopted(&home, saved);
        exited(hosted.map(|outcome| if foreground { chatctl::cli::run_exit_code(&outcome) } else { ExitCode::SUCCESS }))
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
