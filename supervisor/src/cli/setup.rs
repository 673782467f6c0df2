//! First-week tools: `init` (a commented ecosystem.toml) and `startup systemd` (a unit for
//! `chatctl run`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chat_shared::ecosystem::Ecosystem;

use super::args::StartupArgs;
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

/// What `init` found in the directory, and how such a project runs.
struct Project {
    /// `script` and `args` of the app table, as TOML lines.
    program: String,
    /// Keys that only this kind of project needs, as TOML lines (may be empty).
    extra: String,
    /// Environment of the base settings, as a TOML inline table's content.
    env: &'static str,
    /// The development profile's keys.
    development: String,
    /// The production profile's keys.
    production: &'static str,
    what: &'static str,
}

/// Cluster mode on every CPU: one port shared by every instance.
const CLUSTER: &str = "exec_mode = \"cluster\"\ninstances = \"max\"               # one per CPU, all on the one port\n";

/// A commented file for the project in `dir`: a Rust binary, a Node app, a Python app, or a
/// placeholder; written so that it starts and stays online as it is.
pub(crate) fn template(dir: &Path) -> String {
    let name: String = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("app")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    let name = if name.is_empty() || name == "all" { "app".to_owned() } else { name };
    let project = rust(dir).or_else(|| node(dir)).or_else(|| python(dir)).unwrap_or_else(|| Project {
        program: "script = \"./run.sh\"\n".into(),
        extra: String::new(),
        env: "",
        development: "watch = true                    # restart on file changes (logs, target/, .git/ ignored)\n"
            .into(),
        production: CLUSTER,
        what: "no Rust, Node or Python project here: point script at your program",
    });
    let Project { program, extra, env, development, production, what } = project;
    format!(
        r#"# chatctl ecosystem file ({what}). Reference of every key: the README of chatctl, "ecosystem.toml".
#   chatctl start               the base settings below
#   chatctl start development   rebuilt and reloaded on source changes
#   chatctl start production    with the production profile applied
#   chatctl reload              zero-downtime deploy of a new version

[apps.{name}]
{program}# The supervisor binds the port and passes it to the instances (fd 3, systemd-style);
# a program that cannot take it sets inherit_socket = false and binds $PORT itself.
port = 3000
instances = 1
exec_mode = "fork"              # "cluster": every instance on the one port
{extra}kill_timeout = "5s"             # SIGTERM, then SIGKILL after this
max_memory_restart = "1G"       # replaced without downtime when its process tree passes this
max_restarts = 5                # errored after 5 starts shorter than min_uptime
min_uptime = "10s"
# Any HTTP answer shows the program up (it may have no /health route); with one, drop any_answer.
health = {{ path = "/health", any_answer = true, interval = "30s", timeout = "5s" }}
env = {{ {env} }}

[apps.{name}.profiles.development]
{development}
[apps.{name}.profiles.production]
{production}"#
    )
}

/// A Cargo package: its binary, built in release; development builds and reloads on change.
fn rust(dir: &Path) -> Option<Project> {
    let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?.parse().ok()?;
    let bin = manifest.get("bin").and_then(|b| b.as_array()).and_then(|b| b.first()).and_then(|b| b.get("name"));
    let package = manifest.get("package").and_then(|p| p.get("name"));
    let binary = bin.or(package).and_then(|n| n.as_str()).unwrap_or("app").to_owned();
    Some(Project {
        program: format!(
            "script = \"target/release/{binary}\"\nbuild = \"cargo build --release\"   # `chatctl reload --build` runs it first\n"
        ),
        extra: String::new(),
        env: "RUST_LOG = \"info\"",
        development: format!(
            "script = \"target/debug/{binary}\"\nbuild = \"cargo build\"           # a change builds, then reloads if it succeeded\nwatch = [\"src\"]\n"
        ),
        production: CLUSTER,
        what: "a Rust project: build it once (cargo build --release) before `chatctl start`",
    })
}

/// A Node project: what `npm start` runs when it is `node FILE`, else `main`, else `npm start`.
fn node(dir: &Path) -> Option<Project> {
    let package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package.json")).ok()?).ok()?;
    let start = package["scripts"]["start"].as_str();
    let file = start
        .and_then(|s| s.strip_prefix("node "))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
        .filter(|f| !f.is_empty())
        .or_else(|| package["main"].as_str().map(str::to_owned))
        .or_else(|| dir.join("index.js").exists().then(|| "index.js".to_owned()));
    let program = match (file, start) {
        (Some(file), _) => format!("script = \"{file}\"              # a .js file runs through node\n"),
        (None, Some(_)) => "script = \"npm\"\nargs = [\"start\"]\n".into(),
        (None, None) => "script = \"index.js\"\n".into(),
    };
    Some(Project {
        program,
        extra: String::new(),
        env: "NODE_ENV = \"production\"",
        development: "watch = true                    # restart on file changes (node_modules/, logs, .git/ ignored)\nenv = { NODE_ENV = \"development\" }\n".into(),
        production: CLUSTER,
        what: "a Node project: it listens on its port unmodified (chatctl's preload)",
    })
}

/// A Python project: its `app.py`, `main.py` or `server.py` through python3, binding `$PORT` itself
/// (a Python server takes an inherited socket only when told: gunicorn --bind fd://3, uvicorn --fd 3).
fn python(dir: &Path) -> Option<Project> {
    let markers = ["pyproject.toml", "requirements.txt", "app.py", "main.py", "server.py"];
    if !markers.iter().any(|m| dir.join(m).exists()) {
        return None;
    }
    let file = ["app.py", "main.py", "server.py"].into_iter().find(|f| dir.join(f).exists()).unwrap_or("app.py");
    Some(Project {
        program: format!("script = \"python3\"\nargs = [\"{file}\"]\n"),
        extra: "# It binds $PORT itself; for cluster mode serve with gunicorn --bind fd://3 or uvicorn --fd 3\n\
                # and remove this line.\ninherit_socket = false\n"
            .into(),
        env: "PYTHONUNBUFFERED = \"1\"",
        development: "watch = true                    # restart on file changes\n".into(),
        // Each instance binds its own port (3000, 3001, ...): put a balancer in front.
        production: "instances = \"max\"               # one per CPU, on ports 3000, 3001, ...\n",
        what: "a Python project",
    })
}

pub(super) fn startup(args: StartupArgs, home: &Home) -> anyhow::Result<ExitCode> {
    let config = std::path::absolute(&args.config).context("config path")?;
    if let Err(e) = Ecosystem::load(&config) {
        eprintln!("{e}");
        return Ok(ExitCode::from(super::exit::CONFIG));
    }
    let exe = std::env::current_exe().context("cannot find the chatctl executable")?;
    let user = service_user(args.user.as_deref())?;
    // Under sudo, HOME is root's: the unit's user gets their own home unless CHATCTL_HOME says.
    let home = match std::env::var_os(HOME_VAR).filter(|d| !d.is_empty()) {
        None if !user.is_current => user.dir.join(".chatctl"),
        _ => home.dir().to_owned(),
    };
    if user.name == "root" {
        eprintln!("warning: the unit runs chatctl and every app as root; pass --user NAME to run them as a user");
    }
    let unit = unit_text(&Unit {
        config: &config,
        dir: config.parent().unwrap_or(Path::new("/")),
        home: &home,
        exe: &exe,
        profile: args.profile.as_deref(),
        user: &user.name,
    });
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

/// The account a unit runs as: `--user NAME`, else the one who ran `sudo`, else whoever runs this.
struct ServiceUser {
    name: String,
    dir: std::path::PathBuf,
    /// The account running this command (then `CHATCTL_HOME` and `HOME` are already its own).
    is_current: bool,
}

fn service_user(wanted: Option<&str>) -> anyhow::Result<ServiceUser> {
    use nix::unistd::{Uid, User};
    let current = Uid::current();
    let sudo = std::env::var("SUDO_USER").ok().filter(|u| current.is_root() && !u.is_empty() && u != "root");
    let found = match wanted.map(str::to_owned).or(sudo) {
        Some(name) => User::from_name(&name)
            .with_context(|| format!("cannot look up user {name:?}"))?
            .with_context(|| format!("no user named {name:?}"))?,
        None => User::from_uid(current)
            .context("cannot look up the current user")?
            .with_context(|| format!("uid {current} has no user name"))?,
    };
    Ok(ServiceUser { is_current: found.uid == current, name: found.name, dir: found.dir })
}

/// What differs between two units.
struct Unit<'a> {
    config: &'a Path,
    dir: &'a Path,
    home: &'a Path,
    exe: &'a Path,
    profile: Option<&'a str>,
    user: &'a str,
}

/// The open files each service gets. systemd's default soft limit is 1024, which a chat server
/// with one socket per connected client passes at about a thousand clients.
const LIMIT_NOFILE: u32 = 65_536;

/// A systemd unit for `chatctl run`, hardened as far as a process manager allows: it forks apps
/// that bind ports and write where they were deployed, so the file system stays writable outside
/// the system directories.
fn unit_text(u: &Unit<'_>) -> String {
    let profile = u.profile.map(|p| format!(" {p}")).unwrap_or_default();
    format!(
        r#"[Unit]
Description=chatctl apps of {config}
After=network-online.target
Wants=network-online.target

[Service]
# chatctl run sends READY=1 once every instance is online.
Type=notify
NotifyAccess=main
User={user}
WorkingDirectory={dir}
Environment={HOME_VAR}={home}
ExecStart={exe} run{profile} -c {config}
ExecReload={exe} reload all{profile} -c {config}
# chatctl stops every instance itself (stop signal, then SIGKILL after each app's kill_timeout);
# systemd only steps in if that takes longer than this.
KillMode=mixed
TimeoutStopSec=60
Restart=on-failure
# Every app inherits this; systemd's default soft limit (1024) is about a thousand clients.
LimitNOFILE={LIMIT_NOFILE}
# chatctl may manage the cgroup below its own (one per instance, to kill what escapes a group).
Delegate=yes

# Hardening that leaves a process manager working: apps still fork, bind ports and write files.
NoNewPrivileges=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=full
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# Not set, on purpose:
# - ProtectSystem=strict: apps write where they are deployed (uploads, caches), which the unit
#   cannot know; "full" keeps /usr, /boot and /etc read-only.
# - ProtectHome: the chatctl home (logs, socket) and often the apps live under /home.
# - ProtectControlGroups: it makes /sys/fs/cgroup read-only, and chatctl uses its delegated cgroup.
# - MemoryDenyWriteExecute: breaks JIT runtimes (Node).
# - RestrictNamespaces: breaks sandboxes apps may start (headless Chromium).

[Install]
WantedBy=multi-user.target
"#,
        config = u.config.display(),
        dir = u.dir.display(),
        home = u.home.display(),
        exe = u.exe.display(),
        user = u.user,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_templates_validate() {
        let kinds: &[(&[(&str, &str)], &str)] = &[
            (&[], "script = \"./run.sh\""),
            (&[("Cargo.toml", "[package]\nname = \"demo\"\n")], "script = \"target/release/demo\""),
            (&[("package.json", r#"{"scripts": {"start": "node server.js"}}"#)], "script = \"server.js\""),
            (&[("package.json", r#"{"main": "lib/app.js"}"#)], "script = \"lib/app.js\""),
            (&[("package.json", r#"{"scripts": {"start": "next start"}}"#)], "args = [\"start\"]"),
            (&[("requirements.txt", ""), ("main.py", "")], "args = [\"main.py\"]"),
        ];
        for (files, expected) in kinds {
            let dir = tempfile::tempdir().expect("tempdir");
            for (name, text) in *files {
                std::fs::write(dir.path().join(name), text).expect("write");
            }
            let text = super::template(dir.path());
            assert!(text.contains(expected), "{files:?}: {expected} in\n{text}");
            let eco = chat_shared::ecosystem::Ecosystem::parse(&text, std::path::Path::new("e.toml"));
            let eco = eco.unwrap_or_else(|e| panic!("{files:?}: {e}\n{text}"));
            for profile in [None, Some("development"), Some("production")] {
                assert!(eco.resolve(profile, None, &Default::default()).is_ok(), "{files:?} {profile:?}");
            }
        }
    }

    #[test]
    fn the_unit_runs_as_a_user_with_a_file_limit_and_hardening() {
        use std::path::Path;
        let text = super::unit_text(&super::Unit {
            config: Path::new("/srv/chat/ecosystem.toml"),
            dir: Path::new("/srv/chat"),
            home: Path::new("/home/chat/.chatctl"),
            exe: Path::new("/usr/local/bin/chatctl"),
            profile: Some("production"),
            user: "chat",
        });
        let keys: Vec<(&str, &str)> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).collect();
        for wanted in [
            ("User", "chat"),
            ("LimitNOFILE", "65536"),
            ("NoNewPrivileges", "yes"),
            ("PrivateTmp", "yes"),
            ("ProtectSystem", "full"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("RestrictSUIDSGID", "yes"),
            ("LockPersonality", "yes"),
            ("Delegate", "yes"),
            ("ExecStart", "/usr/local/bin/chatctl run production -c /srv/chat/ecosystem.toml"),
            ("Environment", "CHATCTL_HOME=/home/chat/.chatctl"),
        ] {
            assert!(keys.contains(&wanted), "{wanted:?} missing:\n{text}");
        }
        // Keys that would break a process manager that manages cgroups or runs apps from /home.
        for absent in ["ProtectControlGroups", "ProtectHome", "MemoryDenyWriteExecute"] {
            assert!(!keys.iter().any(|(k, _)| *k == absent), "{absent} set:\n{text}");
        }
    }
}
