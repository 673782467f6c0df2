//! The clap definitions: every verb, its arguments and their help. Apart from the verbs, which
//! import their arguments from here, and from the dispatch in `cli`, which imports both.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chatctl",
    version,
    about = "Process manager for realtime chat backends: a cluster on one shared socket, per-instance health checks, restarts.",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the apps of the ecosystem file (starting the daemon if needed) and wait until they are online.
    Start(StartArgs),
    /// Run the apps in the foreground, without a daemon (containers, systemd units). SIGTERM or Ctrl-C stops everything.
    Run(RunArgs),
    /// Every setting in effect for an app, and each instance's sockets, logs, history and probes
    /// (only one instance's with APP:INDEX).
    Describe {
        #[arg(value_name = "APP[:INDEX]")]
        target: super::target::InstanceTarget,
        #[arg(long)]
        json: bool,
    },
    /// Write the running apps to `<home>/dump.json`, for `resurrect` (after a reboot, say).
    Save,
    /// Start the apps of the last `save`.
    Resurrect,
    /// A live dashboard: instances, CPU and memory, logs; restart, reload, stop from the keyboard.
    Monit,
    /// Show every app and instance.
    #[command(alias = "ls", alias = "status")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop an app's instances, or one (APP:INDEX): stop signal to each process group, SIGKILL
    /// after kill_timeout.
    Stop(InstanceArgs),
    /// Stop then start an app's instances, or one (APP:INDEX).
    Restart(InstanceArgs),
    /// Send a signal (SIGUSR2, HUP, ...) to the main process of an app's running instances, or of
    /// one (APP:INDEX).
    Signal {
        /// SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGUSR1, SIGUSR2, SIGTERM, SIGCONT, SIGSTOP, SIGTSTP,
        /// SIGWINCH or SIGALRM (the SIG prefix may be left out).
        signal: chat_shared::ipc::SignalName,
        /// APP or APP:INDEX.
        #[arg(value_name = "APP[:INDEX]")]
        target: super::target::InstanceTarget,
    },
    /// The environment an instance runs with, as its process got it; values of keys that look like
    /// secrets, and passwords in URLs, are masked.
    Env {
        /// APP:INDEX (APP alone for an app of one instance).
        #[arg(value_name = "APP[:INDEX]")]
        target: super::target::InstanceTarget,
        /// Show secret values as they are.
        #[arg(long)]
        show_secrets: bool,
        /// One JSON object, name to value.
        #[arg(long)]
        json: bool,
    },
    /// Stop an app and forget it.
    #[command(alias = "del")]
    Delete(Target),
    /// Replace every instance with the file's current version, one at a time, each new process
    /// ready before the old one drains; stops at the first failure (the rest keep serving).
    Reload(ReloadArgs),
    /// Add or remove instances of an app (N, +N or -N), leaving the others running.
    Scale {
        app: String,
        /// A count (3) or a change (+2, -1).
        #[arg(allow_hyphen_values = true)]
        to: chat_shared::ipc::ScaleTo,
        #[arg(long)]
        json: bool,
    },
    /// Stop every app, then the daemon.
    Kill,
    /// Replace the running daemon with a new chatctl binary in place (same pid), keeping every
    /// instance, socket, log pipe and chat connection (PM2's `pm2 update` restarts every process).
    Update {
        /// The chatctl to run; by default this one.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// How long to wait for the new daemon to say it took over (`30s`, `2m`).
        #[arg(long, default_value = "60s")]
        timeout: chat_shared::units::HumanDuration,
    },
    /// Start the daemon if it is not running, and print its pid and version.
    Ping,
    /// Show the last lines of the apps' logs, and with --follow every new line.
    Logs(LogsArgs),
    /// Empty the apps' current log files.
    Flush {
        /// An app name; every app when omitted.
        app: Option<String>,
    },
    /// Reopen every log file (after an external logrotate moved them away).
    ReloadLogs,
    /// Print a shell completion script: `chatctl completions bash > /etc/bash_completion.d/chatctl`.
    Completions { shell: clap_complete::Shell },
    /// Convert a PM2 ecosystem file (ecosystem.config.js, or JSON) to ecosystem.toml.
    ///
    /// A .js/.cjs/.mjs file is EXECUTED with `node` to read it: whatever code it holds runs with
    /// your privileges. Import only files you trust, or export the JSON yourself and import that.
    Import {
        /// The PM2 file.
        source: PathBuf,
        /// Where to write.
        #[arg(short = 'o', long, default_value = "ecosystem.toml")]
        output: PathBuf,
        /// Overwrite an existing output.
        #[arg(long)]
        force: bool,
    },
    /// Print a JSON Schema of ecosystem.toml (for editors with a TOML language server).
    Schema,
    /// Write a commented ecosystem.toml for the current directory.
    Init {
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print (or install) a systemd unit that runs the apps with `chatctl run`.
    Startup(StartupArgs),
    /// Ship the app to the hosts of a `[deploy.NAME]` table over ssh and git, as `pm2 deploy`
    /// does: `setup` once, then `chatctl deploy NAME` for each release; `revert`, `list`, `exec`.
    Deploy(DeployArgs),
    /// Run the daemon itself (started on demand by the other commands).
    #[command(hide = true)]
    Daemon,
}

/// The ecosystem file a command reads when not told another.
pub(crate) const DEFAULT_CONFIG: &str = "ecosystem.toml";

#[derive(Debug, Args)]
pub struct StartArgs {
    /// A profile of the ecosystem file (development, production, loadbalanced...), or a program to
    /// start on its own, as `pm2 start` does: an existing file (`server.js`, `./app`) or a command
    /// with spaces (`"python3 -m http.server"`). A bare word that is both is refused, naming both.
    #[arg(value_name = "PROFILE|PROGRAM")]
    pub profile: Option<String>,
    /// A program's own arguments, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    pub program_args: Vec<String>,
    /// A program: how many instances (a number, `max`, or negative: CPUs minus n); with `--port`
    /// they share it (cluster mode), as `pm2 start -i` does.
    #[arg(short = 'i', long, value_name = "N", allow_hyphen_values = true)]
    pub instances: Option<String>,
    /// A program: the app's name (default: the file's name without extension, or the command).
    #[arg(long)]
    pub name: Option<String>,
    /// A program: its port (default: `$PORT` when set), passed as `PORT` and, to programs that
    /// can take it, as an inherited socket.
    #[arg(long)]
    pub port: Option<u16>,
    /// A program: restart it when a file of this directory changes.
    #[arg(long)]
    pub watch: bool,
    /// A program: replace an instance whose memory passes this (`512M`, `1G`).
    #[arg(long, value_name = "SIZE")]
    pub max_memory_restart: Option<String>,
    /// Start only this app.
    #[arg(long, value_name = "APP")]
    pub only: Option<String>,
    /// The ecosystem file.
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = "ecosystem.toml")]
    pub config: PathBuf,
    /// Return once the daemon has the apps, without waiting for them to be online.
    #[arg(long)]
    pub no_wait: bool,
    /// Apps already running are reloaded (zero downtime) instead of left alone: one command for
    /// every deploy.
    #[arg(long)]
    pub reload: bool,
    /// Print the resulting status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    pub profile: Option<String>,
    #[arg(long, value_name = "APP")]
    pub only: Option<String>,
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = "ecosystem.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct StartupArgs {
    /// The init system; only systemd is supported.
    #[arg(value_parser = ["systemd"])]
    pub system: String,
    /// The profile the unit runs.
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = "ecosystem.toml")]
    pub config: PathBuf,
    /// Write the unit to this path instead of printing it (e.g. /etc/systemd/system/chat.service).
    #[arg(long, value_name = "PATH")]
    pub install: Option<PathBuf>,
    /// The account the unit runs chatctl and the apps as (`User=`); default: the user who ran
    /// `sudo`, else the current user.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// An app name (read again from the file it was started from, from any directory), or `all`
    /// (the default: the apps of the ecosystem file here); APP:INDEX replaces only that instance,
    /// with the version the app runs.
    #[arg(value_name = "APP[:INDEX]|all")]
    pub app: Option<String>,
    /// Profile of the ecosystem file to apply.
    pub profile: Option<String>,
    /// The ecosystem file (default: `ecosystem.toml` here, or for one app the file it was started from).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Instances replaced at once (default: each app's `reload_batch`, else 1).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Run each app's `build` command first; a failing build touches no instance.
    #[arg(long)]
    pub build: bool,
    /// Take the environment of this shell, as a start would; without it an app keeps the
    /// environment it was started with (PM2's rule), the file's `env` table applied again.
    #[arg(long)]
    pub update_env: bool,
    /// Progress and summary as JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// An app name, or one of its instances (`web:1`: its own files, or its lines of a merged
    /// file when they are JSON records; its new lines only with --follow); every app when omitted.
    #[arg(value_name = "APP[:INDEX]")]
    pub app: Option<super::target::InstanceTarget>,
    /// Lines of each file to show first.
    #[arg(long, short = 'n', default_value_t = 15)]
    pub lines: usize,
    /// Keep streaming new lines until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only stderr.
    #[arg(long, conflicts_with = "out")]
    pub err: bool,
    /// Only stdout.
    #[arg(long)]
    pub out: bool,
    /// One JSON object per line: file tails, then `{time, app, instance, stream, message}` records.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstanceArgs {
    /// An app name, one of its instances (`web:2`, from 0), or `all`.
    #[arg(value_name = "APP[:INDEX]|all")]
    pub target: super::target::InstanceTarget,
}

#[derive(Debug, Args)]
pub struct Target {
    /// An app name, or `all`.
    pub app: String,
}

impl Target {
    pub(crate) fn app(&self) -> Option<String> {
        (self.app != "all").then(|| self.app.clone())
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = false, subcommand_value_name = "ACTION")]
pub struct DeployArgs {
    /// A `[deploy.NAME]` table of the ecosystem file.
    #[arg(value_name = "NAME")]
    pub target: String,
    /// What to do on the hosts; without one, deploy the table's `ref` (PM2's `update`).
    #[command(subcommand)]
    pub action: Option<DeployAction>,
    /// The ecosystem file.
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = "ecosystem.toml", global = true)]
    pub config: PathBuf,
    /// Every host at once instead of one after another (a failure then stops no other host).
    #[arg(long, global = true)]
    pub parallel: bool,
    /// One JSON event per line: steps, output lines, failures, each host's outcome.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeployAction {
    /// Prepare the path on every host: `releases/`, `shared/` and a mirror of the repository
    /// (`pre-setup` before, `post-setup` after).
    Setup,
    /// Deploy the table's `ref` (the same as no action; PM2's word).
    Update,
    /// Point `current` back N releases (default 1) and run `post-deploy` there.
    Revert {
        #[arg(default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        back: u16,
    },
    /// The releases on every host, the current one marked.
    #[command(alias = "ls")]
    List,
    /// Run a shell command on every host, in the current release.
    Exec {
        /// The command (one argument: quote it).
        command: String,
    },
}
