//! From a validated file to the [`AppSpec`]s one `chatctl start PROFILE` runs: profile overlay,
//! defaults, absolute paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::defaults::*;
use super::model::{AppEntry, Ecosystem};
use super::schema::{AppConfig, LogType, Readiness, StopSignal, Watch};
use crate::spec::{AppSpec, HealthSpec, ListenSpec, LogSpec, WatchSpec};
use crate::worker_env::{DEFAULT_INSTANCE_VAR, DEFAULT_PORT_VAR};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("no app defines profile `{profile}`; profiles in {file}: {known}")]
    UnknownProfile { profile: String, file: String, known: String },
    #[error("no app named `{name}` in {file}; apps: {known}")]
    UnknownApp { name: String, file: String, known: String },
}

impl Ecosystem {
    /// The specs to run for `profile` (base config where an app lacks it), restricted to `only`.
    ///
    /// `inherited_env` is the environment of the `chatctl` invocation, which apps receive as PM2's do,
    /// under the file's `env`.
    pub fn resolve(
        &self,
        profile: Option<&str>,
        only: Option<&str>,
        inherited_env: &BTreeMap<String, String>,
    ) -> Result<Vec<AppSpec>, ResolveError> {
        let file = self.file.display().to_string();
        if let Some(p) = profile
            && !self.apps.iter().any(|a| a.profiles.iter().any(|(n, _)| n == p))
        {
            let mut known: Vec<&str> =
                self.apps.iter().flat_map(|a| a.profiles.iter().map(|(n, _)| n.as_str())).collect();
            known.sort_unstable();
            known.dedup();
            let known = if known.is_empty() { "(none)".to_owned() } else { known.join(", ") };
            return Err(ResolveError::UnknownProfile { profile: p.to_owned(), file, known });
        }
        if let Some(name) = only
            && !self.apps.iter().any(|a| a.name == name)
        {
            let known = self.apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(ResolveError::UnknownApp { name: name.to_owned(), file, known });
        }
        let cpus = cpu_count();
        let specs = self
            .apps
            .iter()
            .filter(|a| only.is_none_or(|n| a.name == n))
            .map(|app| {
                let over = profile.and_then(|p| app.profiles.iter().find(|(n, _)| n == p));
                let config = match over {
                    Some((_, over)) => app.base.overlay(over),
                    None => app.base.clone(),
                };
                self.spec(app, over.map(|(n, _)| n.clone()), &config, inherited_env, cpus)
            })
            .collect();
        Ok(specs)
    }

    /// One app's spec from its config with the profile laid over it: defaults applied, paths made
    /// absolute against the file's directory.
    fn spec(
        &self,
        app: &AppEntry,
        profile: Option<String>,
        c: &AppConfig,
        inherited_env: &BTreeMap<String, String>,
        cpus: usize,
    ) -> AppSpec {
        let cwd = match &c.cwd {
            Some(dir) => self.dir.join(dir),
            None => self.dir.clone(),
        };
        // Pinned: an app started through a deploy's `current` link runs in the release the link
        // names now. A crash-restart after the link moved on (before the new release is built and
        // reloaded) must not start the unbuilt release; the next start or reload resolves again.
        let cwd = pinned(&std::path::absolute(&cwd).unwrap_or(cwd));
        let (script, args, interpreted) = program(c, &cwd);
        let node_preload = c.node_preload != Some(false) && runs_node(&script);
        let mut env = inherited_env.clone();
        env.extend(c.env.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
        let listen = c.port.map(|port| ListenSpec {
            host: c.host.unwrap_or(DEFAULT_HOST),
            port,
            inherit: c.inherit_socket.unwrap_or(true),
        });
        let health = health(c, listen.as_ref());
        let readiness = c.readiness.or(health.as_ref().map(|_| Readiness::Probe));
        AppSpec {
            name: app.name.clone(),
            profile,
            script,
            args,
            interpreted,
            node_preload,
            source: Some(logical_absolute(&self.file, inherited_env)),
            watch: watch(c, &cwd),
            cwd,
            env_from_file: c.env.iter().flatten().map(|(k, _)| k.clone()).collect(),
            env,
            instances: c.instances.map_or(1, |i| i.resolve(cpus)),
            exec_mode: c.exec_mode.unwrap_or(DEFAULT_EXEC_MODE),
            listen,
            increment_var: c.increment_var.clone().unwrap_or_else(|| DEFAULT_PORT_VAR.to_owned()),
            instance_var: c.instance_var.clone().unwrap_or_else(|| DEFAULT_INSTANCE_VAR.to_owned()),
            kill_signal: c.kill_signal.unwrap_or(StopSignal::Term),
            kill_timeout: c.kill_timeout.unwrap_or(DEFAULT_KILL_TIMEOUT),
            restart_delay: c.restart_delay.unwrap_or(DEFAULT_RESTART_DELAY),
            max_restart_delay: c.max_restart_delay.unwrap_or(DEFAULT_MAX_RESTART_DELAY),
            stop_exit_codes: c.stop_exit_codes.clone().unwrap_or_default(),
            min_uptime: c.min_uptime.unwrap_or(DEFAULT_MIN_UPTIME),
            max_restarts: c.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS),
            autorestart: c.autorestart.unwrap_or(true),
            listen_timeout: c.listen_timeout.unwrap_or(DEFAULT_LISTEN_TIMEOUT),
            reload_batch: c.reload_batch.map_or(1, |b| b.max(1) as usize),
            build: c.build.clone(),
            cron_restart: c.cron_restart.clone(),
            readiness,
            health,
            max_memory: c.max_memory_restart,
            memory_check_interval: c.memory_check_interval.unwrap_or(DEFAULT_MEMORY_CHECK_INTERVAL),
            logs: self.logs(c),
        }
    }

    /// Log settings; a relative `out_file`/`error_file` is relative to the file's directory.
    fn logs(&self, c: &AppConfig) -> LogSpec {
        let path = |p: &Option<std::path::PathBuf>| {
            p.as_ref().map(|p| {
                let path = self.dir.join(p);
                std::path::absolute(&path).unwrap_or(path)
            })
        };
        LogSpec {
            out_file: path(&c.out_file),
            error_file: path(&c.error_file),
            merge: c.merge_logs.unwrap_or(true),
            date_format: c.log_date_format.clone(),
            json: c.log_type == Some(LogType::Json),
            max_size: c.max_size.unwrap_or(DEFAULT_LOG_MAX_SIZE),
            retain: c.retain.unwrap_or(DEFAULT_LOG_RETAIN),
            compress: c.compress.unwrap_or(false),
            daily: c.rotate_daily.unwrap_or(true),
        }
    }
}

/// What runs: (program, its arguments, the script when an interpreter runs it). A script with a
/// `/`, or run by an interpreter, is a path relative to `cwd`; a bare name is looked up in `PATH`.
fn program(c: &AppConfig, cwd: &Path) -> (String, Vec<String>, Option<String>) {
    // Validation guarantees a script.
    let script = c.script.clone().unwrap_or_default();
    let script = if script.contains('/') || interpreter_of(c).is_some() {
        let path = cwd.join(&script);
        pinned_file(&std::path::absolute(&path).unwrap_or(path)).display().to_string()
    } else {
        script
    };
    // An interpreter runs the script: it becomes the program, the script its argument.
    match interpreter_of(c) {
        Some(interpreter) => {
            let mut args = c.interpreter_args.clone().unwrap_or_default();
            args.push(script.clone());
            args.extend(c.args.clone().unwrap_or_default());
            (interpreter, args, Some(script))
        }
        None => (script, c.args.clone().unwrap_or_default(), None),
    }
}

/// `dir` with every symlink resolved, when it exists (else as it is: `check_files` reports it).
fn pinned(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
}

/// A program's path with its directory pinned (see [`pinned`]) and its own name kept: a program
/// that is itself a link (`node_modules/.bin/x`, a multi-call binary) still sees the name it was
/// started by.
fn pinned_file(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => pinned(dir).join(name),
        _ => path.to_owned(),
    }
}

/// `file` made absolute as the shell that ran chatctl sees it (`pwd -L`): through a deploy's
/// `current` link when the operator (or a post-deploy hook) changed into it. It is the file an app
/// is reloaded from later (`chatctl reload APP`, from anywhere), which must be the one the link
/// names then, not the release it named at start.
fn logical_absolute(file: &Path, env: &BTreeMap<String, String>) -> PathBuf {
    let physical = || std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    if file.is_absolute() {
        return file.to_owned();
    }
    let Some(pwd) = env.get("PWD").map(Path::new).filter(|p| p.is_absolute()) else { return physical() };
    let same = match (std::fs::canonicalize(pwd), std::env::current_dir().and_then(std::fs::canonicalize)) {
        (Ok(logical), Ok(here)) => logical == here,
        _ => false,
    };
    if same { std::path::absolute(pwd.join(file)).unwrap_or_else(|_| physical()) } else { physical() }
}

/// The HTTP health check: on by default for an app with a port, unless `enabled = false`.
fn health(c: &AppConfig, listen: Option<&ListenSpec>) -> Option<HealthSpec> {
    match (&c.health, listen) {
        (Some(h), _) if h.enabled == Some(false) => None,
        (_, None) => None,
        (h, Some(_)) => {
            let h = h.clone().unwrap_or_default();
            Some(HealthSpec {
                path: h.path.unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_owned()),
                any_answer: h.any_answer.unwrap_or(false),
                interval: h.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL),
                timeout: h.timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
                unhealthy_threshold: h.unhealthy_threshold.unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD),
                grace: h.grace.unwrap_or(DEFAULT_HEALTH_GRACE),
            })
        }
    }
}

/// Watch mode: `watch = true` watches `cwd`, a list watches those paths under it.
fn watch(c: &AppConfig, cwd: &Path) -> Option<WatchSpec> {
    let paths = match &c.watch {
        Some(Watch::Enabled(true)) => vec![cwd.to_owned()],
        Some(Watch::Paths(paths)) if !paths.is_empty() => paths.iter().map(|p| cwd.join(p)).collect(),
        _ => return None,
    };
    Some(WatchSpec {
        paths,
        ignore: c.ignore_watch.clone().unwrap_or_default(),
        delay: c.watch_delay.unwrap_or(DEFAULT_WATCH_DELAY),
    })
}

/// The program that runs `c`'s script: its `interpreter`, or `node` for a JavaScript file (PM2's
/// rule); `None` when the script runs itself (`interpreter = "none"`, or any other file).
fn interpreter_of(c: &AppConfig) -> Option<String> {
    match c.interpreter.as_deref() {
        Some("none") => None,
        Some(interpreter) => Some(interpreter.to_owned()),
        None => {
            let script = c.script.as_deref().unwrap_or_default();
            [".js", ".mjs", ".cjs"].iter().any(|ext| script.ends_with(ext)).then(|| "node".to_owned())
        }
    }
}

/// Whether `program` is Node itself, or a package manager that runs a Node program (`npm start`).
fn runs_node(program: &str) -> bool {
    let name = program.rsplit('/').next().unwrap_or(program);
    matches!(name, "node" | "nodejs" | "npm" | "npx" | "yarn" | "pnpm")
}
