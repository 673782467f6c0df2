//! An app as the daemon runs it: one profile of one `ecosystem.toml` app, with every default applied
//! and every path made absolute. The CLI resolves it (so errors are reported where the user typed the
//! command) and sends it to the daemon, which needs no access to the file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ecosystem::{ExecMode, Readiness, StopSignal};
use crate::units::{ByteSize, HumanDuration};

pub use crate::limits::{MAX_DURATION, MAX_INSTANCES};

/// A spec the daemon refuses: `key` is the `ecosystem.toml` key at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SpecError {
    pub key: &'static str,
    pub message: String,
}

fn refuse(key: &'static str, message: impl Into<String>) -> Result<(), SpecError> {
    Err(SpecError { key, message: message.into() })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    pub name: String,
    /// The profile this spec was resolved with, if any.
    pub profile: Option<String>,
    /// An absolute path, or a bare command name looked up in the app's `PATH`.
    pub script: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment: the environment `chatctl start` ran in, then the file's `env`.
    pub env: BTreeMap<String, String>,
    /// Which names of `env` the ecosystem file set (its `env` table, after the profile); the others
    /// came from the environment `chatctl start` ran in. A reload keeps those (PM2's rule, see
    /// [`AppSpec::with_started_env`]) unless `--update-env`. Empty in a spec saved before this
    /// existed: then the whole started environment is kept and the file's table applied over it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub env_from_file: std::collections::BTreeSet<String>,
    pub instances: usize,
    pub exec_mode: ExecMode,
    pub listen: Option<ListenSpec>,
    pub increment_var: String,
    pub instance_var: String,
    pub kill_signal: StopSignal,
    pub kill_timeout: HumanDuration,
    pub restart_delay: HumanDuration,
    pub max_restart_delay: HumanDuration,
    pub autorestart: bool,
    pub stop_exit_codes: Vec<i32>,
    pub min_uptime: HumanDuration,
    pub max_restarts: u32,
    pub listen_timeout: HumanDuration,
    pub reload_batch: usize,
    pub build: Option<String>,
    /// A cron expression: the daemon reloads the app each time it fires (see [`crate::cron`]).
    #[serde(default)]
    pub cron_restart: Option<String>,
    /// `None`: online as soon as it runs (no health check, no notify).
    pub readiness: Option<Readiness>,
    pub health: Option<HealthSpec>,
    pub logs: LogSpec,
    /// Replace an instance whose process group uses more resident memory than this.
    pub max_memory: Option<ByteSize>,
    pub memory_check_interval: HumanDuration,
    /// Restart on file changes (development).
    pub watch: Option<WatchSpec>,
    /// The script an interpreter runs (then `script` is the interpreter and this is in `args`).
    #[serde(default)]
    pub interpreted: Option<String>,
    /// Spawn Node with chatctl's preload (see the supervisor's `spawn::node`).
    #[serde(default)]
    pub node_preload: bool,
    /// The ecosystem file the app was resolved from (absolute), which `chatctl reload APP` reads
    /// again from any directory; `None` for a program started on its own (`chatctl start app.js`).
    #[serde(default)]
    pub source: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// Absolute paths, watched recursively.
    pub paths: Vec<PathBuf>,
    /// Glob patterns: without a `/` they match any file or directory name (`*.tmp`, `cache`); with
    /// one, a path relative to `cwd` (`public/uploads`). Matching a directory ignores what is in it.
    pub ignore: Vec<String>,
    /// Changes are gathered for this long after the last one, then restart once.
    pub delay: HumanDuration,
}

/// Where and how an app's output is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// stdout; `None` = the daemon's default `<home>/logs/<name>-out.log`.
    pub out_file: Option<PathBuf>,
    /// stderr; `None` = `<home>/logs/<name>-error.log`. May equal `out_file` (one file).
    pub error_file: Option<PathBuf>,
    /// One file for all instances, or `-<index>` before the extension per instance.
    pub merge: bool,
    pub date_format: Option<String>,
    pub json: bool,
    pub max_size: ByteSize,
    pub retain: u32,
    pub compress: bool,
    pub daily: bool,
}

/// Where an app's instances receive connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenSpec {
    pub host: IpAddr,
    /// Cluster: the one shared port. Fork: the port of instance 0; instance i gets `port + i`.
    /// `0` asks the kernel for a free port (cluster mode; tests use it).
    pub port: u16,
    /// The supervisor binds and passes the socket (fd 3); otherwise the program binds the port itself.
    pub inherit: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub path: String,
    /// Any HTTP answer passes (a 404 too), not only 2xx/3xx: for programs without a health route.
    #[serde(default)]
    pub any_answer: bool,
    pub interval: HumanDuration,
    pub timeout: HumanDuration,
    pub unhealthy_threshold: u32,
    pub grace: HumanDuration,
}

impl AppSpec {
    /// Checks what the config validation checks and what the daemon relies on to do arithmetic and
    /// spawn without panicking. The daemon runs it on every spec a request carries: a spec comes
    /// from whoever can connect to the socket, or from an old dump, not only from a validated file.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.check_names_and_counts()?;
        self.check_durations()?;
        self.check_health()?;
        self.check_formats()
    }

    /// Names, the program, counts, and the ports a fork-mode app claims.
    fn check_names_and_counts(&self) -> Result<(), SpecError> {
        use crate::ecosystem::names;
        names::app_name(&self.name).or_else(|why| refuse("name", why))?;
        if let Some(profile) = &self.profile {
            names::profile_name(profile).or_else(|why| refuse("profile", why))?;
        }
        if self.script.trim().is_empty() {
            refuse("script", "`script` is empty")?;
        }
        if !self.cwd.is_absolute() {
            refuse("cwd", format!("{} is not an absolute path", self.cwd.display()))?;
        }
        if !(1..=MAX_INSTANCES).contains(&self.instances) {
            refuse("instances", format!("{} instances: must be 1 to {MAX_INSTANCES}", self.instances))?;
        }
        if self.reload_batch == 0 {
            refuse("reload_batch", "must be at least 1")?;
        }
        if let Some(listen) = &self.listen
            && self.exec_mode == ExecMode::Fork
            && listen.port != 0
            && usize::from(listen.port).checked_add(self.instances - 1).is_none_or(|last| last > usize::from(u16::MAX))
        {
            refuse("port", format!("port {} + {} instances runs past 65535", listen.port, self.instances))?;
        }
        for (key, name) in [("increment_var", &self.increment_var), ("instance_var", &self.instance_var)] {
            names::env_name(name).or_else(|why| refuse(key, why))?;
        }
        if let Some(bad) = self.env.keys().find(|k| names::env_name(k).is_err()) {
            refuse("env", format!("invalid environment variable name {bad:?}"))?;
        }
        Ok(())
    }

    /// Every duration fits a deadline, and those that must not be zero are not.
    fn check_durations(&self) -> Result<(), SpecError> {
        let mut durations = vec![
            ("kill_timeout", self.kill_timeout),
            ("restart_delay", self.restart_delay),
            ("max_restart_delay", self.max_restart_delay),
            ("min_uptime", self.min_uptime),
            ("listen_timeout", self.listen_timeout),
            ("memory_check_interval", self.memory_check_interval),
        ];
        if let Some(watch) = &self.watch {
            durations.push(("watch_delay", watch.delay));
        }
        if let Some(h) = &self.health {
            durations.extend([
                ("health.interval", h.interval),
                ("health.timeout", h.timeout),
                ("health.grace", h.grace),
            ]);
        }
        if let Some((key, d)) = durations.iter().find(|(_, d)| d.0 > MAX_DURATION) {
            refuse(key, format!("{d} is longer than the limit of {}", HumanDuration(MAX_DURATION)))?;
        }
        if self.listen_timeout.0.is_zero() {
            refuse("listen_timeout", "must be more than 0s")?;
        }
        if self.memory_check_interval.0 < std::time::Duration::from_millis(100) {
            refuse("memory_check_interval", "must be at least 100ms")?;
        }
        Ok(())
    }

    /// A health check that can run: a path, non-zero timings, a threshold that can be reached.
    fn check_health(&self) -> Result<(), SpecError> {
        if let Some(h) = &self.health {
            if !h.path.starts_with('/') {
                refuse("health.path", format!("health path {:?} must start with '/'", h.path))?;
            }
            // The file may leave the default timeout above a short interval; zero is what breaks.
            if h.interval.0.is_zero() || h.timeout.0.is_zero() {
                refuse("health.interval", "interval and timeout must be more than 0s")?;
            }
            if h.unhealthy_threshold == 0 {
                refuse("health.unhealthy_threshold", "must be at least 1")?;
            }
        }
        Ok(())
    }

    /// Values read by a parser of their own (date format, cron, globs), and a rotation size.
    fn check_formats(&self) -> Result<(), SpecError> {
        if let Some(format) = &self.logs.date_format {
            use chrono::format::{Item, StrftimeItems};
            // chrono panics when an invalid format is displayed.
            if StrftimeItems::new(format).any(|item| matches!(item, Item::Error)) {
                refuse("log_date_format", format!("invalid strftime format {format:?}"))?;
            }
        }
        if let Some(Err(why)) = self.cron_restart.as_deref().map(crate::cron::CronSchedule::parse) {
            refuse("cron_restart", why)?;
        }
        if self.logs.max_size.0 < 4096 {
            refuse("max_size", "a log file of less than 4K would rotate on nearly every line")?;
        }
        for pattern in self.watch.iter().flat_map(|w| &w.ignore) {
            if let Err(e) = globset::Glob::new(pattern) {
                refuse("ignore_watch", format!("invalid glob {pattern:?}: {}", e.kind()))?;
            }
        }
        Ok(())
    }

    /// This spec (read again from its file for a reload) with the environment `started` was
    /// started with, as PM2 keeps it unless `--update-env`: what `started` inherited from the shell
    /// that ran `chatctl start`, then this file's `env` table over it (a key the file set before
    /// and no longer sets is gone, as it would be from a fresh start).
    pub fn with_started_env(mut self, started: &AppSpec) -> AppSpec {
        let mut env: BTreeMap<String, String> = started
            .env
            .iter()
            .filter(|(k, _)| !started.env_from_file.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(
            self.env.iter().filter(|(k, _)| self.env_from_file.contains(*k)).map(|(k, v)| (k.clone(), v.clone())),
        );
        self.env = env;
        self
    }

    /// Whether `other` can replace this spec's processes on the same sockets (a reload): same
    /// listening address, mode and socket passing.
    pub fn same_sockets(&self, other: &AppSpec) -> bool {
        self.listen == other.listen && self.exec_mode == other.exec_mode
    }

    /// The port instance `index` serves on, if the app listens.
    pub fn port_of(&self, index: usize) -> Option<u16> {
        let listen = self.listen.as_ref()?;
        match self.exec_mode {
            ExecMode::Cluster => Some(listen.port),
            ExecMode::Fork if listen.port == 0 => Some(0),
            // Validation guarantees port + instances - 1 fits in a u16.
            ExecMode::Fork => u16::try_from(usize::from(listen.port) + index).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AppSpec {
        let text = "[apps.a]\nscript = \"x\"\nport = 3000\ninstances = 2\n";
        let eco = crate::ecosystem::Ecosystem::parse(text, std::path::Path::new("/srv/e.toml")).expect("valid");
        eco.resolve(None, None, &BTreeMap::new()).expect("resolves").remove(0)
    }

    #[test]
    fn a_reload_keeps_the_started_environment_and_applies_the_files_table() {
        let text = "[apps.a]\nscript = \"x\"\nenv = { FILE = \"1\", OLD = \"o\", SHELL_TOO = \"file\" }\n";
        let eco = crate::ecosystem::Ecosystem::parse(text, std::path::Path::new("/srv/e.toml")).expect("valid");
        let shell = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let started = eco
            .resolve(None, None, &shell(&[("FROM_SHELL", "start"), ("SHELL_TOO", "shell"), ("PATH", "/a")]))
            .expect("resolves")
            .remove(0);
        assert_eq!(started.env_from_file.iter().collect::<Vec<_>>(), ["FILE", "OLD", "SHELL_TOO"]);

        let text = "[apps.a]\nscript = \"x\"\nenv = { FILE = \"2\", NEW = \"n\" }\n";
        let eco = crate::ecosystem::Ecosystem::parse(text, std::path::Path::new("/srv/e.toml")).expect("valid");
        let reread = eco.resolve(None, None, &shell(&[("FROM_SHELL", "reload"), ("PATH", "/b")])).expect("resolves");
        let kept = reread[0].clone().with_started_env(&started);
        let want = shell(&[("FILE", "2"), ("FROM_SHELL", "start"), ("NEW", "n"), ("PATH", "/a")]);
        assert_eq!(kept.env, want, "the shell of the start, the file of now");
        // --update-env is the spec as read.
        assert_eq!(reread[0].env.get("FROM_SHELL").map(String::as_str), Some("reload"));

        // A spec from an older dump knows no file keys: all of it is kept, the file's table over it.
        let old = AppSpec { env_from_file: Default::default(), ..started };
        let kept = reread[0].clone().with_started_env(&old);
        assert_eq!(kept.env.get("OLD").map(String::as_str), Some("o"));
        assert_eq!(kept.env.get("FILE").map(String::as_str), Some("2"));
    }

    /// A dump written before `cron_restart` and `env_from_file` existed (dump version 1 all
    /// along) still reads, and means what it meant: no schedule, the whole environment started.
    #[test]
    fn a_spec_saved_before_cron_restart_and_env_from_file_reads() {
        let mut value = serde_json::to_value(spec()).expect("UNWRAP: a spec serializes");
        let object = value.as_object_mut().expect("UNWRAP: a struct serializes as an object");
        object.remove("cron_restart");
        object.remove("env_from_file");
        let old: AppSpec = serde_json::from_value(value).expect("an older spec reads");
        assert_eq!((old.cron_restart, old.env_from_file.len()), (None, 0));
    }

    #[test]
    fn a_resolved_spec_is_valid() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn what_a_request_may_not_carry_is_refused_by_key() {
        type Edit = fn(&mut AppSpec);
        let cases: &[(&str, Edit)] = &[
            ("instances", |s| s.instances = 1 << 62),
            ("instances", |s| s.instances = 0),
            ("instances", |s| s.instances = MAX_INSTANCES + 1),
            ("port", |s| {
                s.instances = 100;
                s.listen.as_mut().expect("listens").port = 65_500;
            }),
            ("reload_batch", |s| s.reload_batch = 0),
            ("cron_restart", |s| s.cron_restart = Some("61 * * * *".into())),
            ("name", |s| s.name = "../x".into()),
            ("cwd", |s| s.cwd = "relative".into()),
            ("script", |s| s.script = " ".into()),
            ("instance_var", |s| s.instance_var = "A=B".into()),
            ("env", |s| {
                s.env.insert("X\0".into(), "y".into());
            }),
            ("kill_timeout", |s| s.kill_timeout = HumanDuration(std::time::Duration::from_secs(u64::MAX))),
            ("health.interval", |s| s.health.as_mut().expect("health").interval = HumanDuration::default()),
            ("memory_check_interval", |s| s.memory_check_interval = HumanDuration::default()),
            ("log_date_format", |s| s.logs.date_format = Some("%Q".into())),
        ];
        for (key, edit) in cases {
            let mut spec = spec();
            edit(&mut spec);
            assert_eq!(spec.validate().map_err(|e| e.key), Err(*key), "{spec:?}");
        }
    }

    #[test]
    fn scale_arithmetic_cannot_wrap() {
        use crate::ipc::ScaleTo;
        assert_eq!(ScaleTo::By(2).from(3), Some(5));
        assert_eq!(ScaleTo::By(-9).from(3), Some(1));
        assert_eq!(ScaleTo::By(i64::MAX).from(3), None);
        assert_eq!(ScaleTo::By(i64::MIN).from(3), Some(1));
        assert_eq!(ScaleTo::Exactly(0).from(3), Some(1));
    }
}
