//! The worker's configuration, from environment variables only (the supervisor's contract, plus the
//! app's own settings). A bad value is refused with the variable's name.

use std::net::IpAddr;
use std::time::Duration;

use chat_shared::units::{ByteSize, HumanDuration};
use chat_shared::worker_env;

#[derive(Clone, Debug)]
pub struct Config {
    /// Used only when no socket is inherited.
    pub host: IpAddr,
    pub port: u16,
    pub instance: Option<String>,
    /// How long a graceful stop may take before the worker exits anyway.
    pub shutdown_timeout: Duration,
    /// Tokio worker threads; 1 (the default) runs one event loop per process, as Node does, which is
    /// what a cluster of one process per core wants.
    pub threads: usize,
    /// Signs guest session tokens; every instance of an app must have the same one. `None`: a random
    /// one (tokens then die with this process).
    pub session_secret: Option<Vec<u8>>,
    /// How long a guest session token stays valid.
    pub session_ttl: Duration,
    /// Largest engine.io packet accepted; a larger one closes that connection.
    pub max_payload: u64,
    /// Rooms whose recent messages are kept (`HISTORY_ROOMS`), and their JSON bytes over all
    /// rooms (`HISTORY_BYTES`): the least recently active go first.
    pub history_rooms: usize,
    pub history_bytes: u64,
    /// File sharing: where files live and their limits (see `files`).
    pub files: crate::files::FileConfig,
    /// How long a call nobody accepted rings before it ends (`CALL_RING_TIMEOUT`).
    pub call_ring: Duration,
    /// Public connections open at once (`MAX_CONNECTIONS`); `None`: the descriptor limit less a
    /// reserve for the admin listener, the bus and the logs (see `admission`).
    pub max_connections: Option<usize>,
    /// Messages, typing and DMs a socket may send (`MESSAGE_RATE`, `N/s`, `N/m` or `off`).
    pub message_rate: Option<crate::realtime::Rate>,
    /// `guest:join`, `room:join` and `room:leave` a socket may send (`JOIN_RATE`).
    pub join_rate: Option<crate::realtime::Rate>,
    /// Call signals a socket may send (`SIGNAL_RATE`).
    pub signal_rate: Option<crate::realtime::Rate>,
    /// The same for all sockets of one client address (`ADDRESS_RATE`).
    pub address_rate: Option<crate::realtime::Rate>,
    /// Reverse proxies whose `X-Forwarded-For` / `CF-Connecting-IP` are believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// The daemon's local bus (`CHATCTL_BUS`): rooms shared with the other workers of this host.
    pub bus: Option<std::path::PathBuf>,
    /// The app's handoff directory (`CHATCTL_HANDOFF`, cluster mode): polling sessions work across
    /// the instances of the shared port.
    pub handoff: Option<std::path::PathBuf>,
    /// Redis (`REDIS_URL`, Redis 7 or later: one URL, or several comma-separated seed nodes of a
    /// Redis Cluster, which one node's URL also finds): rooms, sessions and history shared with
    /// every worker of every host; replaces the local bus. Checked at start; never logged (it may hold a password).
    pub redis_url: Option<String>,
    /// The app's name under chatctl (`CHATCTL_APP`): its channels on the bus, which every app of
    /// the daemon shares, so that two apps never see each other's rooms.
    pub app: Option<String>,
    /// How often clients get the `stats` broadcast.
    pub stats_interval: Duration,
    /// Web origins allowed to connect (`None`: any).
    pub origins: Option<crate::origins::Origins>,
    /// STUN and TURN urls for WebRTC clients.
    pub ice_servers: Vec<String>,
    /// Shared secret of the TURN server (TURN REST credentials).
    pub turn_secret: Option<Vec<u8>>,
    pub turn_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?}: {why}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub why: String,
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `lookup` stands in for the process environment, so tests need not mutate it.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let kill_timeout_ms: Option<u64> = match lookup(worker_env::KILL_TIMEOUT_MS) {
            None => None,
            Some(_) => Some(parse(&lookup, worker_env::KILL_TIMEOUT_MS, 0u64)?),
        };
        // Leave a fifth of the supervisor's kill_timeout for the process to exit after draining.
        let default_shutdown = kill_timeout_ms.map_or(Duration::from_secs(10), |ms| Duration::from_millis(ms * 4 / 5));
        let threads = parse(&lookup, "CHAT_WORKER_THREADS", 1usize)?;
        if threads == 0 {
            return Err(ConfigError {
                name: "CHAT_WORKER_THREADS",
                value: "0".into(),
                why: "must be at least 1".into(),
            });
        }
        let mut config = Config {
            host: parse(&lookup, "HOST", IpAddr::from([127, 0, 0, 1]))?,
            port: parse(&lookup, worker_env::DEFAULT_PORT_VAR, 3000u16)?,
            instance: lookup(worker_env::INSTANCE).or_else(|| lookup(worker_env::DEFAULT_INSTANCE_VAR)),
            shutdown_timeout: parse(&lookup, "SHUTDOWN_TIMEOUT", HumanDuration(default_shutdown))?.0,
            threads,
            session_secret: lookup("CHAT_SESSION_SECRET")
                .or_else(|| lookup(worker_env::APP_SECRET))
                .filter(|s| !s.is_empty())
                .map(String::into_bytes),
            session_ttl: parse(&lookup, "SESSION_TTL", HumanDuration(Duration::from_secs(86_400)))?.0,
            max_payload: parse(&lookup, "MAX_PAYLOAD", ByteSize(64 << 10))?.0,
            history_rooms: parse(&lookup, "HISTORY_ROOMS", crate::realtime::HISTORY_ROOMS)?.max(1),
            history_bytes: parse(&lookup, "HISTORY_BYTES", ByteSize(crate::realtime::HISTORY_BYTES as u64))?.0,
            call_ring: parse(&lookup, "CALL_RING_TIMEOUT", HumanDuration(crate::realtime::CALL_RING))?.0,
            files: crate::files::FileConfig {
                // Every instance of a host shares the supervisor's data directory for the app.
                dir: file_dir(&lookup),
                // Set below, from REDIS_URL, FILE_STORE and the app's name.
                redis: None,
                app: String::new(),
                max_size: parse(&lookup, "FILE_MAX_SIZE", ByteSize(25 << 20))?.0,
                quota: parse(&lookup, "FILE_QUOTA", ByteSize(100 << 20))?.0,
                store_max: parse(&lookup, "FILE_STORE_MAX", ByteSize(1 << 30))?.0,
                retention: parse(&lookup, "FILE_RETENTION", HumanDuration(Duration::from_secs(24 * 3600)))?.0,
                upload_rate: rate(&lookup, "FILE_UPLOAD_RATE", crate::realtime::Rate { per_second: 0.5, burst: 10.0 })?,
            },
            max_connections: match lookup("MAX_CONNECTIONS") {
                None => None,
                Some(_) => Some(parse(&lookup, "MAX_CONNECTIONS", 0usize)?.max(1)),
            },
            bus: lookup(worker_env::BUS).filter(|p| !p.is_empty()).map(std::path::PathBuf::from),
            handoff: lookup(worker_env::HANDOFF).filter(|p| !p.is_empty()).map(std::path::PathBuf::from),
            redis_url: redis_url(&lookup)?,
            app: lookup(worker_env::APP_NAME).filter(|a| !a.is_empty()),
            stats_interval: parse(&lookup, "STATS_INTERVAL", HumanDuration(Duration::from_secs(5)))?
                .0
                .max(Duration::from_millis(100)),
            origins: match lookup("CORS_ORIGINS") {
                None => None,
                Some(list) => crate::origins::Origins::parse(&list).map_err(|why| ConfigError {
                    name: "CORS_ORIGINS",
                    value: list.clone(),
                    why,
                })?,
            },
            ice_servers: ice_servers(&lookup)?,
            message_rate: rate(&lookup, "MESSAGE_RATE", crate::realtime::SOCKET_RATE)?,
            join_rate: rate(&lookup, "JOIN_RATE", crate::realtime::JOIN_RATE)?,
            signal_rate: rate(&lookup, "SIGNAL_RATE", crate::realtime::SIGNAL_RATE)?,
            address_rate: rate(&lookup, "ADDRESS_RATE", crate::realtime::ADDRESS_RATE)?,
            turn_secret: lookup("TURN_SECRET").filter(|s| !s.is_empty()).map(String::into_bytes),
            turn_ttl: parse(&lookup, "TURN_TTL", HumanDuration(Duration::from_secs(3600)))?.0,
            trusted_proxies: trusted_proxies(&lookup)?,
        };
        config.files.app = config.app.clone().unwrap_or_else(|| "chat".to_owned());
        config.files.redis = file_store(&lookup, config.redis_url.as_deref())?;
        Ok(config)
    }
}

fn parse<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match lookup(name) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| ConfigError { name, why: e.to_string(), value }),
    }
}

/// `FILE_DIR`, else `files` in the supervisor's data directory for the app (which every instance
/// of a host shares), else in a directory of this user's.
fn file_dir(lookup: &impl Fn(&str) -> Option<String>) -> std::path::PathBuf {
    if let Some(dir) = lookup("FILE_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    let data = lookup(worker_env::DATA_DIR).filter(|d| !d.is_empty()).map(std::path::PathBuf::from);
    data.unwrap_or_else(|| std::env::temp_dir().join(format!("chat-worker-{}", nix::unistd::getuid()))).join("files")
}

/// `REDIS_URL`, checked to be one, or several comma-separated (seed nodes of a Redis Cluster; its
/// password kept out of the error).
fn redis_url(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(url) = lookup("REDIS_URL").filter(|u| !u.trim().is_empty()) else { return Ok(None) };
    match crate::redis_conn::Target::parse(url.trim()) {
        Ok(_) => Ok(Some(url.trim().to_owned())),
        Err(e) => Err(ConfigError { name: "REDIS_URL", value: redact(&url), why: e.to_string() }),
    }
}

/// Where shared files live: Redis (its url) or the directory (`None`), from `FILE_STORE`.
fn file_store(lookup: &impl Fn(&str) -> Option<String>, redis: Option<&str>) -> Result<Option<String>, ConfigError> {
    match lookup("FILE_STORE").as_deref().map(str::trim) {
        None | Some("" | "auto") => Ok(redis.map(str::to_owned)),
        Some("redis") if redis.is_some() => Ok(redis.map(str::to_owned)),
        Some("dir") => Ok(None),
        Some(other) => Err(ConfigError {
            name: "FILE_STORE",
            value: other.to_owned(),
            why: "must be dir or redis (redis needs REDIS_URL); by default, redis when REDIS_URL is set".into(),
        }),
    }
}

/// `ICE_SERVERS`: comma-separated stun:, turn: or turns: urls.
fn ice_servers(lookup: &impl Fn(&str) -> Option<String>) -> Result<Vec<String>, ConfigError> {
    let Some(list) = lookup("ICE_SERVERS") else { return Ok(Vec::new()) };
    let urls: Vec<String> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let url = |u: &String| u.starts_with("stun:") || u.starts_with("turn:") || u.starts_with("turns:");
    match urls.iter().find(|u| !url(u)) {
        Some(bad) => Err(ConfigError {
            name: "ICE_SERVERS",
            value: list.clone(),
            why: format!("{bad:?} is not a stun:, turn: or turns: url"),
        }),
        None => Ok(urls),
    }
}

/// `TRUSTED_PROXIES`: comma-separated addresses.
fn trusted_proxies(lookup: &impl Fn(&str) -> Option<String>) -> Result<Vec<IpAddr>, ConfigError> {
    let Some(list) = lookup("TRUSTED_PROXIES") else { return Ok(Vec::new()) };
    let address = |s: &str| {
        s.parse().map_err(|e: std::net::AddrParseError| ConfigError {
            name: "TRUSTED_PROXIES",
            value: list.clone(),
            why: format!("{s:?}: {e}"),
        })
    };
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(address).collect()
}

fn rate(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: crate::realtime::Rate,
) -> Result<Option<crate::realtime::Rate>, ConfigError> {
    match lookup(name) {
        None => Ok(Some(default)),
        Some(value) => crate::realtime::Rate::parse(&value).map_err(|why| ConfigError { name, value, why }),
    }
}

/// A URL with its password, if any, replaced by `***`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &credentials[..colon], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn defaults_and_overrides() {
        let c = with(&[]).expect("defaults are valid");
        assert_eq!((c.port, c.threads, c.shutdown_timeout), (3000, 1, Duration::from_secs(10)));
        let c = with(&[("PORT", "3004"), ("CHATCTL_KILL_TIMEOUT_MS", "5000"), ("INSTANCE_ID", "3")]).expect("valid");
        assert_eq!((c.port, c.shutdown_timeout, c.instance.as_deref()), (3004, Duration::from_secs(4), Some("3")));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("PORT", "70000"),
            ("HOST", "nowhere"),
            ("SHUTDOWN_TIMEOUT", "5"),
            ("CHAT_WORKER_THREADS", "0"),
            ("REDIS_URL", "http://x"),
        ] {
            let err = with(&[(name, value)]).expect_err("refused").to_string();
            assert!(err.starts_with(&format!("environment variable {name}=")), "{err}");
        }
    }

    #[test]
    fn a_redis_password_never_shows() {
        let err = with(&[("REDIS_URL", "redis://user:s3cret@localhost:notaport")]).expect_err("refused").to_string();
        assert!(!err.contains("s3cret") && err.contains("user:***@"), "{err}");
        assert_eq!(redact("redis://s3cret@h"), "redis://***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let ok = with(&[("REDIS_URL", "redis://127.0.0.1:6379/0")]).expect("valid");
        assert_eq!(ok.redis_url.as_deref(), Some("redis://127.0.0.1:6379/0"));
    }

    #[test]
    fn files_go_to_redis_when_there_is_one_unless_told_otherwise() {
        let url = ("REDIS_URL", "redis://127.0.0.1:6379");
        assert_eq!(with(&[]).expect("valid").files.redis, None);
        assert_eq!(with(&[url]).expect("valid").files.redis.as_deref(), Some(url.1));
        assert_eq!(with(&[url, ("FILE_STORE", "redis")]).expect("valid").files.redis.as_deref(), Some(url.1));
        assert_eq!(with(&[url, ("FILE_STORE", "dir")]).expect("valid").files.redis, None);
        let err = with(&[("FILE_STORE", "redis")]).expect_err("no Redis").to_string();
        assert!(err.contains("FILE_STORE") && err.contains("REDIS_URL"), "{err}");
        assert!(with(&[("FILE_STORE", "s3")]).is_err());
        assert_eq!(with(&[(worker_env::APP_NAME, "support")]).expect("valid").files.app, "support");
    }
}
