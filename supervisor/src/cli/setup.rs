//! First-week tools: `init` (a commented ecosystem.toml) and `startup systemd` (a unit for
//! `chatctl run`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chat_shared::ecosystem::Ecosystem;

use super::StartupArgs;
use crate::home::{HOME_VAR, Home};

const FILE: &str = "ecosystem.toml";

pub(super) fn init(force: bool) -> anyhow::Result<ExitCode> {
    let dir = std::env::current_dir().context("current directory")?;
    let path = dir.join(FILE);
    if path.exists() && !force {
        bail!("{} exists; --force overwrites it", path.display());
    }
    let text = template(&dir);
    // What we write must be what we accept.
    if let Err(e) = Ecosystem::parse(&text, &path) {
        bail!("internal error: the generated file does not validate:\n{e}");
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}; start it with `chatctl start` (or `chatctl start production`)", path.display());
    Ok(ExitCode::SUCCESS)
}

/// A commented file for the project in `dir`: a Rust binary, a Node app, or a placeholder.
pub(crate) fn template(dir: &Path) -> String {
    let name: String = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("app")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    let name = if name.is_empty() || name == "all" { "app".to_owned() } else { name };
    let (script, args) = if dir.join("Cargo.toml").exists() {
        (format!("target/release/{name}"), String::new())
    } else if dir.join("package.json").exists() {
        ("node".to_owned(), "args = [\"index.js\"]\n".to_owned())
    } else {
        ("./run.sh".to_owned(), String::new())
    };
    format!(
        r#"# chatctl ecosystem file. Reference of every key: the README of chatctl, "ecosystem.toml".
#   chatctl start               the base settings below
#   chatctl start production    with the production profile applied
#   chatctl reload              zero-downtime deploy of a new version

[apps.{name}]
script = "{script}"
{args}# The supervisor binds the port and passes it to the instances (fd 3, systemd-style);
# a program that cannot take it sets inherit_socket = false and binds $PORT itself.
port = 3000
instances = 1
exec_mode = "fork"              # "cluster": every instance on the one port
kill_timeout = "5s"             # SIGTERM, then SIGKILL after this
max_memory_restart = "1G"       # replaced without downtime when its process tree passes this
max_restarts = 5                # errored after 5 starts shorter than min_uptime
min_uptime = "10s"
health = {{ path = "/health", interval = "30s", timeout = "5s" }}
env = {{ RUST_LOG = "info" }}

[apps.{name}.profiles.development]
watch = true                    # restart on file changes (logs, target/, .git/ ignored)

[apps.{name}.profiles.production]
exec_mode = "cluster"
instances = "max"               # one per CPU
"#
    )
}

pub(super) fn startup(args: StartupArgs, home: &Home) -> anyhow::Result<ExitCode> {
    let config = std::path::absolute(&args.config).context("config path")?;
    if let Err(e) = Ecosystem::load(&config) {
        eprintln!("{e}");
        return Ok(ExitCode::from(super::start::exit::CONFIG));
    }
    let exe = std::env::current_exe().context("cannot find the chatctl executable")?;
    let profile = args.profile.as_deref().map(|p| format!(" {p}")).unwrap_or_default();
    let dir = config.parent().unwrap_or(Path::new("/"));
    let unit = format!(
        r#"[Unit]
Description=chatctl apps of {config}
After=network-online.target
Wants=network-online.target

[Service]
# chatctl run sends READY=1 once every instance is online.
Type=notify
NotifyAccess=main
WorkingDirectory={dir}
Environment={HOME_VAR}={home}
ExecStart={exe} run{profile} -c {config}
ExecReload={exe} reload all{profile} -c {config}
# chatctl stops every instance itself (stop signal, then SIGKILL after each app's kill_timeout);
# systemd only steps in if that takes longer than this.
KillMode=mixed
TimeoutStopSec=60
Restart=on-failure

[Install]
WantedBy=multi-user.target
"#,
        config = config.display(),
        dir = dir.display(),
        home = home.dir().display(),
        exe = exe.display(),
    );
    match args.install {
        None => print!("{unit}"),
        Some(path) => {
            std::fs::write(&path, unit).with_context(|| format!("cannot write {}", path.display()))?;
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("chatctl.service");
            println!("wrote {}\nthen: systemctl daemon-reload && systemctl enable --now {name}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_templates_validate() {
        let dir = tempfile::tempdir().expect("tempdir");
        for marker in [None, Some("Cargo.toml"), Some("package.json")] {
            if let Some(m) = marker {
                std::fs::write(dir.path().join(m), "").expect("marker");
            }
            let text = super::template(dir.path());
            let eco = chat_shared::ecosystem::Ecosystem::parse(&text, std::path::Path::new("e.toml"));
            assert!(eco.is_ok(), "{marker:?}: {}", eco.expect_err("checked"));
        }
    }
}
