//! The typed shape of one app table in `ecosystem.toml` (and of a profile's overrides, which have the
//! same keys). Every field is optional here so that a profile can override any subset; defaults are
//! applied when a profile is resolved into an [`AppSpec`](crate::spec::AppSpec).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, HumanDuration};

/// One `[apps.NAME]` table, or one `[apps.NAME.profiles.PROFILE]` table of overrides.
///
/// `deny_unknown_fields` and no `flatten` (which would bypass it, serde-rs/serde#2283): a misspelt key
/// is an error, never a silently ignored setting.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Program to run: a path (relative to `cwd`) or a command looked up in `PATH`.
    pub script: Option<String>,
    pub args: Option<Vec<String>>,
    /// Runs `script` through this program: `node` by default for a `.js`, `.mjs` or `.cjs` script
    /// (as PM2 does), `"none"` to run the script itself.
    pub interpreter: Option<String>,
    /// Arguments for the interpreter, before the script (PM2's `node_args` is the same key).
    #[serde(alias = "node_args")]
    pub interpreter_args: Option<Vec<String>>,
    /// For a Node program: load chatctl's preload, so that its listen on its port takes the
    /// inherited socket (the default); `false` leaves the program as it is.
    pub node_preload: Option<bool>,
    /// Working directory, relative to the directory of `ecosystem.toml`.
    pub cwd: Option<PathBuf>,
    /// Added to the environment; a profile's `env` is merged key by key over the base `env`.
    pub env: Option<BTreeMap<String, EnvValue>>,
    pub instances: Option<Instances>,
    pub exec_mode: Option<ExecMode>,
    pub port: Option<u16>,
    /// Address the supervisor binds `port` on.
    pub host: Option<IpAddr>,
    pub increment_var: Option<String>,
    pub instance_var: Option<String>,
    /// Pass the listening socket as an inherited fd (the default); `false` only sets the port variable
    /// and lets the program bind it (fork mode only).
    pub inherit_socket: Option<bool>,
    pub kill_signal: Option<StopSignal>,
    pub kill_timeout: Option<HumanDuration>,
    /// First delay before restarting a crashed instance; doubles with each consecutive unstable start.
    pub restart_delay: Option<HumanDuration>,
    /// Cap of the doubling restart delay.
    pub max_restart_delay: Option<HumanDuration>,
    pub autorestart: Option<bool>,
    /// Exit codes that mean "done": the instance is not restarted.
    pub stop_exit_codes: Option<Vec<i32>>,
    /// A run shorter than this is an unstable start.
    pub min_uptime: Option<HumanDuration>,
    /// Restarts allowed after consecutive unstable starts before the instance is `errored`.
    pub max_restarts: Option<u32>,
    /// Instances replaced at once by `chatctl reload`.
    pub reload_batch: Option<u32>,
    /// A deploy step `chatctl reload --build` runs (through `sh -c`, in `cwd`) before touching any
    /// instance, e.g. `cargo build --release`.
    pub build: Option<String>,
    /// Reload the app (zero downtime) when this cron expression fires, in local time: five fields
    /// (`"0 4 * * *"`: every day at 04:00), or six with seconds first (`"*/30 * * * * *"`).
    pub cron_restart: Option<String>,
    /// How long a new instance may take to become ready.
    pub listen_timeout: Option<HumanDuration>,
    /// How an instance says it is ready: its first passing health probe, or `READY=1` on
    /// `NOTIFY_SOCKET` (systemd's sd_notify protocol).
    pub readiness: Option<Readiness>,
    pub health: Option<HealthConfig>,
    pub out_file: Option<PathBuf>,
    pub error_file: Option<PathBuf>,
    /// One file for all instances (`true`), or one per instance (`NAME-out-3.log`).
    pub merge_logs: Option<bool>,
    /// Prefix every line with the time it was read, in this strftime format (local time).
    pub log_date_format: Option<String>,
    /// `"raw"` lines as written, or `"json"` records `{time, app, instance, stream, message}`.
    pub log_type: Option<LogType>,
    /// Rotate a log file when it would grow past this size.
    pub max_size: Option<ByteSize>,
    /// Rotated files kept per log file; older ones are deleted.
    pub retain: Option<u32>,
    /// Gzip rotated files, off the write path.
    pub compress: Option<bool>,
    /// Also rotate at the first write of every new (local) day.
    pub rotate_daily: Option<bool>,
    /// Replace an instance whose process group's RSS passes this.
    pub max_memory_restart: Option<ByteSize>,
    /// How often memory is sampled.
    pub memory_check_interval: Option<HumanDuration>,
    pub watch: Option<Watch>,
    pub ignore_watch: Option<Vec<String>>,
    pub watch_delay: Option<HumanDuration>,
}

impl AppConfig {
    /// `self` with every key that `over` sets replaced; `env` is merged key by key.
    pub fn overlay(&self, over: &AppConfig) -> AppConfig {
        let mut env = self.env.clone();
        if let Some(extra) = &over.env {
            let merged = env.get_or_insert_with(BTreeMap::new);
            merged.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        macro_rules! pick {
            ($($field:ident),*) => {
                AppConfig { env, $($field: over.$field.clone().or_else(|| self.$field.clone()),)* }
            };
        }
        pick!(
            script,
            args,
            interpreter,
            interpreter_args,
            node_preload,
            cwd,
            instances,
            exec_mode,
            port,
            host,
            increment_var,
            instance_var,
            inherit_socket,
            kill_signal,
            kill_timeout,
            restart_delay,
            max_restart_delay,
            autorestart,
            stop_exit_codes,
            listen_timeout,
            reload_batch,
            build,
            cron_restart,
            readiness,
            health,
            out_file,
            error_file,
            merge_logs,
            log_date_format,
            log_type,
            max_size,
            retain,
            compress,
            rotate_daily,
            max_restarts,
            min_uptime,
            max_memory_restart,
            memory_check_interval,
            watch,
            ignore_watch,
            watch_delay
        )
    }
}

/// `instances`: a count, `"max"` (one per CPU), or a negative number (CPUs minus n). `0` means `"max"`,
/// as in PM2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instances {
    Count(u32),
    Max,
    LessThanMax(u32),
}

impl Instances {
    /// The number of instances on a machine with `cpus` CPUs: never below 1.
    pub fn resolve(self, cpus: usize) -> usize {
        let cpus = cpus.max(1);
        match self {
            Instances::Count(0) | Instances::Max => cpus,
            Instances::Count(n) => n as usize,
            Instances::LessThanMax(n) => cpus.saturating_sub(n as usize).max(1),
        }
    }
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InstancesVisitor;
        impl Visitor<'_> for InstancesVisitor {
            type Value = Instances;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of instances, \"max\" (one per CPU) or a negative number (CPUs minus n)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Instances, E> {
                // The daemon refuses more too (`AppSpec::validate`); lossless, the limit is small.
                const LIMIT: i64 = crate::limits::MAX_INSTANCES as i64;
                if !(-LIMIT..=LIMIT).contains(&v) {
                    return Err(E::custom(format!("{v} instances is out of range (-{LIMIT}..={LIMIT})")));
                }
                // In range, so the casts are lossless.
                Ok(if v >= 0 { Instances::Count(v as u32) } else { Instances::LessThanMax(v.unsigned_abs() as u32) })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Instances, E> {
                match v {
                    "max" => Ok(Instances::Max),
                    other => Err(E::custom(format!(
                        "invalid instances {other:?}: expected a number, \"max\" or a negative number"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(InstancesVisitor)
    }
}

impl schemars::JsonSchema for Instances {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Instances".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number of instances, \"max\" (one per CPU), or a negative number (CPUs minus n); never below 1.",
            "oneOf": [{ "type": "integer", "minimum": -4096, "maximum": 4096 }, { "const": "max" }]
        })
    }
}

impl Serialize for Instances {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Instances::Count(n) => s.serialize_i64(i64::from(*n)),
            Instances::Max => s.serialize_str("max"),
            Instances::LessThanMax(n) => s.serialize_i64(-i64::from(*n)),
        }
    }
}

/// How instances of an app receive connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecMode {
    /// Every instance accepts on one listening socket that the supervisor bound once.
    Cluster,
    /// Instance `i` listens on `port + i`.
    Fork,
}

/// The signal that asks an instance to stop; SIGKILL follows after `kill_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
pub enum StopSignal {
    #[serde(rename = "SIGTERM", alias = "TERM")]
    Term,
    #[serde(rename = "SIGINT", alias = "INT")]
    Int,
    #[serde(rename = "SIGQUIT", alias = "QUIT")]
    Quit,
    #[serde(rename = "SIGHUP", alias = "HUP")]
    Hup,
    #[serde(rename = "SIGUSR1", alias = "USR1")]
    Usr1,
    #[serde(rename = "SIGUSR2", alias = "USR2")]
    Usr2,
    #[serde(rename = "SIGKILL", alias = "KILL")]
    Kill,
}

/// How captured lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogType {
    Raw,
    Json,
}

/// How readiness is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// The first passing health probe (needs `port`).
    Probe,
    /// `READY=1` sent to `NOTIFY_SOCKET`.
    Notify,
}

/// `health = { ... }`: the per-instance HTTP probe.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `false` turns probing off: an instance is online as soon as it is spawned.
    pub enabled: Option<bool>,
    pub path: Option<String>,
    /// Any HTTP answer passes (a 404 too): the program is up and serving, though it has no health
    /// route. What `chatctl start app.js`, `init` and `import` use.
    pub any_answer: Option<bool>,
    pub interval: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub unhealthy_threshold: Option<u32>,
    /// After an instance first passes, failures during this period are not counted.
    pub grace: Option<HumanDuration>,
}

/// An environment value: TOML strings, integers, floats and booleans are all accepted, because PM2
/// configs write `PORT: 3000` and operators expect that to work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl Visitor<'_> for EnvVisitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                if v.contains('\0') {
                    return Err(E::custom("an environment value cannot contain a NUL byte"));
                }
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(EnvVisitor)
    }
}

impl schemars::JsonSchema for EnvValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EnvValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

impl schemars::JsonSchema for Watch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Watch".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "true (the app's cwd), false, or paths to watch",
            "oneOf": [{ "type": "boolean" }, { "type": "array", "items": { "type": "string" } }]
        })
    }
}

/// `watch = true | false | ["src", "config"]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Watch {
    Enabled(bool),
    Paths(Vec<String>),
}

impl Watch {
    pub fn is_on(&self) -> bool {
        match self {
            Watch::Enabled(on) => *on,
            Watch::Paths(paths) => !paths.is_empty(),
        }
    }
}

impl<'de> Deserialize<'de> for Watch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WatchVisitor;
        impl<'de> Visitor<'de> for WatchVisitor {
            type Value = Watch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a list of paths")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Watch, E> {
                Ok(Watch::Enabled(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Watch, A::Error> {
                let mut paths = Vec::new();
                while let Some(path) = seq.next_element::<String>()? {
                    paths.push(path);
                }
                Ok(Watch::Paths(paths))
            }
        }
        deserializer.deserialize_any(WatchVisitor)
    }
}
