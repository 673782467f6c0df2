//! `start` (through the daemon) and `run` (in the foreground): read and validate the ecosystem file
//! here, where the user typed the command, then hand resolved specs over.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_shared::ecosystem::Ecosystem;
use chat_shared::ipc::Rollout;
use chat_shared::spec::AppSpec;
use chat_shared::status::{AppStatus, Phase};

use super::args::{RunArgs, StartArgs};
use super::exit;
use super::specs::load;
use super::{rollout, table};
use crate::client::{Client, ClientError, Started};
use crate::home::Home;
use crate::host::HostError;
use crate::process;

pub(super) async fn start(args: StartArgs, home: &Home) -> anyhow::Result<ExitCode> {
    let specs = match start_specs(&args) {
        Ok(specs) => specs,
        Err(code) => return Ok(code),
    };
    let mut client = process::connect_or_start(home).await?;
    let (started, already) = match client.start(specs.clone()).await {
        Ok(Started { started, already_running }) => (started, already_running),
        Err(ClientError::Daemon { message, .. }) => {
            eprintln!("error: {message}\nnothing was started");
            return Ok(ExitCode::from(exit::CONFIG));
        }
        Err(e) => return Err(e.into()),
    };
    if args.reload && !already.is_empty() {
        let running: Vec<_> = specs.into_iter().filter(|s| already.contains(&s.name)).collect();
        // As `reload` without --update-env: the environment each app was started with is kept.
        let running = rollout::with_started_env(&mut client, running).await?;
        client.rollout(Rollout::Reload { apps: running, batch: None }).await?;
        let code = rollout::progress(&mut client, args.json).await?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    } else {
        for name in &already {
            eprintln!("{name}: already running (`chatctl reload {name}` replaces it without downtime)");
        }
    }
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut all = started;
    all.extend(already);
    wait_online(&mut client, &all, args.json).await
}

/// What `chatctl start X` starts: a program on its own, or the apps of the ecosystem file.
fn start_specs(args: &StartArgs) -> Result<Vec<AppSpec>, ExitCode> {
    // The file's profiles, to tell `start production` from `start ./production`.
    let profiles: Vec<String> = Ecosystem::load(&args.config)
        .map(|eco| eco.apps.iter().flat_map(|a| a.profiles.iter().map(|(p, _)| p.clone())).collect())
        .unwrap_or_default();
    match super::program::target(args, &profiles) {
        Err(why) => {
            eprintln!("error: {why}");
            Err(ExitCode::from(exit::CONFIG))
        }
        Ok(super::program::Target::Profile) => load(&args.config, args.profile.as_deref(), args.only.as_deref()),
        Ok(super::program::Target::Program(words)) => {
            let env: BTreeMap<String, String> = std::env::vars().collect();
            let env_port = env.get("PORT").and_then(|p| p.parse().ok());
            let text = super::program::table(args, &words, env_port);
            let here = std::env::current_dir().unwrap_or_default();
            super::program::specs(&text, &here, &env).map_err(|why| {
                eprintln!("{why}");
                ExitCode::from(exit::CONFIG)
            })
        }
    }
}

/// `chatctl resurrect`: the apps of the last `save`, started as they were. A dump that cannot be read
/// is reported and left as it is.
pub(super) async fn resurrect(home: &Home) -> anyhow::Result<ExitCode> {
    let path = home.dir().join(chat_shared::ipc::DUMP_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (run `chatctl save` first)", path.display()))?;
    let dump: chat_shared::ipc::Dump = match serde_json::from_str(&text) {
        Ok(dump) => dump,
        Err(e) => bail!("{} is not a valid dump ({e}); it was left untouched", path.display()),
    };
    if dump.version != chat_shared::ipc::DUMP_VERSION {
        bail!(
            "{} has dump version {}, this chatctl reads {}",
            path.display(),
            dump.version,
            chat_shared::ipc::DUMP_VERSION
        );
    }
    eprintln!("resurrecting {} app(s) saved at {}", dump.apps.len(), dump.saved_at);
    let mut client = process::connect_or_start(home).await?;
    let names: Vec<String> = dump.apps.iter().map(|a| a.name.clone()).collect();
    client.start(dump.apps).await?;
    wait_online(&mut client, &names, false).await
}

/// Polls the daemon until every instance of `apps` is online, one is errored, or the apps'
/// `listen_timeout` (plus a margin) has passed; prints the table and the time it took.
pub(super) async fn wait_online(client: &mut Client, apps: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let begun = Instant::now();
    // Poll fast: readiness takes tens of milliseconds; a list request costs well under a millisecond.
    let every = Duration::from_millis(10);
    // The daemon enforces listen_timeout itself (and restarts a laggard); the CLI gives up after it.
    let give_up = Duration::from_secs(30);
    loop {
        let statuses: Vec<_> = client.list().await?.into_iter().filter(|a| apps.contains(&a.name)).collect();
        let instances = || statuses.iter().flat_map(|a| a.instances.iter());
        let online = instances().filter(|i| i.status == Phase::Online).count();
        let total = instances().count();
        let errored = instances().any(|i| i.status == Phase::Errored);
        if online == total || errored || begun.elapsed() > give_up {
            print_status(&statuses, json)?;
            let ms = begun.elapsed().as_millis();
            if online == total {
                eprintln!("{online}/{total} instance(s) online after {ms} ms");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("{online}/{total} instance(s) online after {ms} ms; see the notes above and `<home>/logs`");
            return Ok(ExitCode::from(exit::NOT_ONLINE));
        }
        tokio::time::sleep(every).await;
    }
}

fn print_status(apps: &[AppStatus], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(apps)?);
    } else {
        print!("{}", table::render(apps));
    }
    Ok(())
}

/// `chatctl run`: the daemon in this process, logging to stderr, until SIGTERM/SIGINT.
pub fn run_foreground(args: RunArgs, home: &Home) -> anyhow::Result<ExitCode> {
    let specs = match load(&args.config, args.profile.as_deref(), args.only.as_deref()) {
        Ok(specs) => specs,
        Err(code) => return Ok(code),
    };
    let claimed = crate::host::claim(home)?;
    let options = crate::daemon::RunOptions {
        foreground: true,
        exit_when_idle: true,
        notify_socket: std::env::var_os("NOTIFY_SOCKET").map(std::path::PathBuf::from),
    };
    let outcome = match crate::host::host_daemon(claimed, specs, options) {
        Ok(outcome) => outcome,
        Err(HostError::Start(e)) => {
            eprintln!("error: {}\nnothing was started", e.chain());
            return Ok(ExitCode::from(exit::CONFIG));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(?outcome, "stopped");
    Ok(run_exit_code(&outcome))
}

/// `chatctl run`'s exit code (also after `chatctl update` re-executed it).
pub fn run_exit_code(outcome: &crate::daemon::Outcome) -> ExitCode {
    // Every instance finished on its own (stop_exit_codes) is a success; an errored one is not.
    if outcome.nothing_left && outcome.errored {
        ExitCode::from(exit::ERRORED)
    } else if outcome.forced > 0 {
        ExitCode::from(exit::FORCED)
    } else {
        ExitCode::SUCCESS
    }
}
