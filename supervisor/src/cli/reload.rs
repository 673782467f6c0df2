//! `reload`: validate the file again, optionally build, then replace instances one at a time while
//! printing each step.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chat_shared::ipc::{Rollout, ScaleTo};
use chat_shared::spec::AppSpec;

use super::args::{DEFAULT_CONFIG, ReloadArgs};
use super::exit;
use super::rollout::{progress, with_started_env};
use super::specs::{check_files, load_unchecked as load};
use super::target::InstanceTarget;
use crate::client::{Client, ClientError};
use crate::home::Home;

pub(super) async fn reload(args: ReloadArgs, home: &Home) -> anyhow::Result<ExitCode> {
    if let Some(target) = &args.app
        && target.contains(':')
    {
        return reload_instance(target.parse().map_err(anyhow::Error::msg)?, &args, home).await;
    }
    let only = args.app.as_deref().filter(|a| *a != "all");
    let mut client =
        Client::connect(home).await.context("cannot reach the daemon (nothing to reload: use `chatctl start`)")?;
    let (config, specs) = match started_from(&mut client, args.config.as_deref(), only).await? {
        // A program started on its own: the same program again, each instance replaced.
        Origin::Program(spec) => (None, Ok(vec![*spec])),
        Origin::File(config) => {
            let specs = match args.profile.as_deref() {
                Some(profile) => load(&config, Some(profile), only),
                None => load_as_started(&mut client, &config, only).await?,
            };
            (Some(config), specs)
        }
    };
    let mut specs = match specs {
        Ok(specs) => specs,
        Err(code) => return Ok(code),
    };
    if !args.update_env && config.is_some() {
        specs = with_started_env(&mut client, specs).await?;
    }
    if args.build {
        for spec in specs.iter().filter(|s| s.build.is_some()) {
            let command = spec.build.as_deref().unwrap_or_default();
            eprintln!("{}: building: {command}", spec.name);
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&spec.cwd)
                .env_clear()
                .envs(&spec.env)
                .status()
                .await
                .with_context(|| format!("cannot run the build of {}", spec.name))?;
            if !status.success() {
                eprintln!("{}: the build failed ({status}); no instance was touched", spec.name);
                return Ok(ExitCode::from(exit::CONFIG));
            }
        }
    }
    // After the build, which may be what creates the script.
    if let Some(config) = &config
        && let Err(code) = check_files(config, &specs)
    {
        return Ok(code);
    }
    client.rollout(Rollout::Reload { apps: specs, batch: args.batch }).await?;
    progress(&mut client, args.json).await
}

/// `reload APP:INDEX`: one instance replaced by a new process of the version the app runs.
async fn reload_instance(target: InstanceTarget, args: &ReloadArgs, home: &Home) -> anyhow::Result<ExitCode> {
    let (Ok(app), Some(instance)) = (target.one_app(), target.index) else {
        bail!("`{target}`: name an app and one of its instances, e.g. web:1")
    };
    if args.profile.is_some() || args.config.is_some() || args.build || args.update_env || args.batch.is_some() {
        bail!(
            "`reload {target}` replaces one instance with the version the app runs; PROFILE, -c, --build, \
             --update-env and --batch apply to a reload of the whole app (`chatctl reload {app}`)"
        );
    }
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    client.rollout(Rollout::ReloadInstance { app: app.to_owned(), instance }).await?;
    progress(&mut client, args.json).await
}

/// Where the specs of a reload come from.
enum Origin {
    /// An ecosystem file.
    File(PathBuf),
    /// A program started on its own, as it was started.
    Program(Box<AppSpec>),
}

/// `-c FILE` when given; for one named app, the file it was started from (as `pm2 reload NAME`
/// works from any directory), or the program itself when it was started on its own; else
/// `ecosystem.toml` here.
async fn started_from(client: &mut Client, config: Option<&Path>, app: Option<&str>) -> anyhow::Result<Origin> {
    if let Some(config) = config {
        return Ok(Origin::File(config.to_owned()));
    }
    let Some(app) = app else { return Ok(Origin::File(PathBuf::from(DEFAULT_CONFIG))) };
    let spec = match client.describe(app).await {
        Ok(description) => description.spec,
        // Not running: the file here may define it (a reload then starts it).
        Err(ClientError::Daemon { .. }) => return Ok(Origin::File(PathBuf::from(DEFAULT_CONFIG))),
        Err(e) => return Err(e.into()),
    };
    Ok(match spec.source {
        Some(file) => Origin::File(file),
        None => Origin::Program(Box::new(spec)),
    })
}

/// Without a PROFILE on the command line, every app is resolved with the profile it was started
/// with (as PM2 keeps an app's `--env`): `chatctl start production` then `chatctl reload` must not
/// silently reload the default profile. Apps of the file that are not running get the default.
async fn load_as_started(
    client: &mut Client,
    config: &std::path::Path,
    only: Option<&str>,
) -> anyhow::Result<Result<Vec<AppSpec>, ExitCode>> {
    let running = client.list().await?;
    let all = match load(config, None, only) {
        Ok(specs) => specs,
        Err(code) => return Ok(Err(code)),
    };
    let mut specs = Vec::with_capacity(all.len());
    for spec in all {
        let profile = running.iter().find(|a| a.name == spec.name).and_then(|a| a.profile.as_deref());
        match profile {
            None => specs.push(spec),
            Some(profile) => match load(config, Some(profile), Some(&spec.name)) {
                Ok(mut resolved) => specs.append(&mut resolved),
                Err(code) => return Ok(Err(code)),
            },
        }
    }
    Ok(Ok(specs))
}

/// `chatctl scale APP N|+N|-N`.
pub(super) async fn scale(app: String, to: ScaleTo, json: bool, home: &Home) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    client.rollout(Rollout::Scale { app, to }).await?;
    progress(&mut client, json).await
}
