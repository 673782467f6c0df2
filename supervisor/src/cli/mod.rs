//! The command line: clap definitions (`args`) and one module per verb, dispatched from here.

mod args;
mod control;
mod deploy;
mod describe;
mod env;
mod exit;
mod import;
mod logs;
mod program;
mod reload;
mod rollout;
mod setup;
mod specs;
mod start;
mod table;
pub mod target;

use std::process::ExitCode;

pub use args::{
    Cli, Command, DeployAction, DeployArgs, InstanceArgs, LogsArgs, ReloadArgs, RunArgs, StartArgs, StartupArgs, Target,
};
pub use start::{run_exit_code, run_foreground};

/// Runs a client command (everything but `daemon` and `run`).
pub async fn client_command(command: Command, home: &crate::home::Home) -> anyhow::Result<ExitCode> {
    match command {
        Command::Start(args) => start::start(args, home).await,
        Command::List { json } => control::list(json, home).await,
        Command::Describe { target, json } => describe::describe(target, json, home).await,
        Command::Save => control::save(home).await,
        Command::Monit => crate::dashboard::monit(home).await,
        Command::Resurrect => start::resurrect(home).await,
        Command::Stop(args) => control::stop(args.target, home).await,
        Command::Restart(args) => control::restart(args.target, home).await,
        Command::Signal { signal, target } => control::signal(signal, target, home).await,
        Command::Env { target, show_secrets, json } => env::env(target, show_secrets, json, home).await,
        Command::Delete(target) => control::delete(target, home).await,
        Command::Reload(args) => reload::reload(args, home).await,
        Command::Scale { app, to, json } => reload::scale(app, to, json, home).await,
        Command::Kill => control::kill(home).await,
        Command::Update { binary, timeout } => control::update(home, binary, timeout.0),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "chatctl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { force } => setup::init(force),
        Command::Import { source, output, force } => import::import(&source, &output, force),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&chat_shared::ecosystem::ecosystem_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Startup(args) => setup::startup(args, home),
        Command::Deploy(args) => deploy::deploy(args),
        Command::Ping => control::ping(home).await,
        Command::Logs(args) => logs::logs(args, home).await,
        Command::Flush { app } => logs::flush(app, home).await,
        Command::ReloadLogs => logs::reload(home).await,
        Command::Run(_) | Command::Daemon => unreachable!("UNWRAP: main dispatches run and daemon itself"),
    }
}
