//! Checks that need more than one key, or the meaning of a value: run on the base table of every app
//! and on every profile merged over it, so a broken `loadbalanced` profile is reported even by
//! `chatctl start production`.

use std::collections::BTreeSet;

use super::defaults::{self, cpu_count};
use super::model::AppEntry;
use super::names::env_name;
use super::schema::{AppConfig, ExecMode, Readiness};
use crate::limits::MAX_DURATION;
use crate::units::HumanDuration;

/// A semantic problem; `key_candidates` are dotted paths, most specific first, the first that exists
/// in the file gives the location.
pub(crate) struct Problem {
    pub key_candidates: Vec<String>,
    pub message: String,
}

/// Every semantic problem of every app under every profile (and without one).
pub(crate) fn all_profiles(apps: &[AppEntry]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let profile_names: BTreeSet<&str> = apps.iter().flat_map(|a| a.profiles.iter().map(|(p, _)| p.as_str())).collect();
    for profile in std::iter::once(None).chain(profile_names.iter().copied().map(Some)) {
        let mut claimed: Vec<(String, std::net::IpAddr, u32, u32)> = Vec::new();
        for app in apps {
            let (merged, prefix) = match profile.and_then(|p| app.profiles.iter().find(|(n, _)| n == p)) {
                Some((name, over)) => (app.base.overlay(over), Some(name.as_str())),
                None => (app.base.clone(), None),
            };
            for problem in one(&app.name, prefix, &merged) {
                // The same base problem would otherwise be reported once per profile.
                if seen.insert((problem.key_candidates[0].clone(), problem.message.clone())) {
                    problems.push(problem);
                }
            }
            if let Some(range) = port_range(&merged) {
                if let Some((other, ..)) =
                    claimed.iter().find(|(_, host, lo, hi)| *host == range.0 && range.1 <= *hi && *lo <= range.2)
                {
                    let key = keys(&app.name, prefix, "port");
                    let message = format!(
                        "ports {}-{} overlap those of app `{other}`{}",
                        range.1,
                        range.2,
                        profile.map(|p| format!(" in profile `{p}`")).unwrap_or_default()
                    );
                    if seen.insert((key[0].clone(), message.clone())) {
                        problems.push(Problem { key_candidates: key, message });
                    }
                }
                claimed.push((app.name.clone(), range.0, range.1, range.2));
            }
        }
    }
    problems
}

/// Ports an app occupies under a config, for conflict detection (port 0 claims nothing).
fn port_range(config: &AppConfig) -> Option<(std::net::IpAddr, u32, u32)> {
    let port = u32::from(config.port.filter(|p| *p != 0)?);
    let host = config.host.unwrap_or(defaults::DEFAULT_HOST);
    let count = match config.exec_mode.unwrap_or(defaults::DEFAULT_EXEC_MODE) {
        ExecMode::Cluster => 1,
        ExecMode::Fork => config.instances.map_or(1, |i| i.resolve(cpu_count())) as u32,
    };
    Some((host, port, port + count - 1))
}

pub(crate) fn keys(app: &str, profile: Option<&str>, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = profile {
        out.push(format!("apps.{app}.profiles.{p}.{key}"));
    }
    out.push(format!("apps.{app}.{key}"));
    if let Some(p) = profile {
        out.push(format!("apps.{app}.profiles.{p}"));
    }
    out.push(format!("apps.{app}"));
    out
}

/// The problems found in one app's config so far, each located at its key under the app (and the
/// profile being checked).
struct Found<'a> {
    app: &'a str,
    profile: Option<&'a str>,
    /// " (profile `p`)" for messages that would otherwise not say which profile.
    within: String,
    out: Vec<Problem>,
}

impl Found<'_> {
    fn problem(&mut self, key: &str, message: String) {
        self.out.push(Problem { key_candidates: keys(self.app, self.profile, key), message });
    }
}

/// Every problem of one app under one profile, in the order the file's reader expects them.
fn one(app: &str, profile: Option<&str>, c: &AppConfig) -> Vec<Problem> {
    let within = profile.map(|p| format!(" (profile `{p}`)")).unwrap_or_default();
    let mut found = Found { app, profile, within, out: Vec::new() };
    program_and_sockets(&mut found, c);
    health(&mut found, c);
    formats(&mut found, c);
    limits(&mut found, c);
    readiness(&mut found, c);
    found.out
}

/// A script to run, sockets the mode can have, variable names an instance gets.
fn program_and_sockets(f: &mut Found<'_>, c: &AppConfig) {
    let within = f.within.clone();
    match c.script.as_deref() {
        None => f.problem("script", format!("missing `script`: the program to run{within}")),
        Some(s) if s.trim().is_empty() => f.problem("script", "`script` is empty".to_owned()),
        _ => {}
    }
    let mode = c.exec_mode.unwrap_or(defaults::DEFAULT_EXEC_MODE);
    let instances = c.instances.map_or(1, |i| i.resolve(cpu_count()));
    if mode == ExecMode::Cluster && c.inherit_socket == Some(false) && c.port.is_some() {
        f.problem(
            "inherit_socket",
            format!(
                "cluster mode shares one socket the supervisor binds: `inherit_socket = false` needs exec_mode = \"fork\"{within}"
            ),
        );
    }
    if let Some(port) = c.port {
        if mode == ExecMode::Fork && port != 0 && usize::from(port) + instances - 1 > usize::from(u16::MAX) {
            f.problem("port", format!("port {port} + {instances} instances runs past 65535{within}"));
        }
        if mode == ExecMode::Fork && port == 0 && c.inherit_socket == Some(false) {
            f.problem(
                "port",
                "port 0 (any free port) needs the supervisor to bind it: leave inherit_socket on".to_owned(),
            );
        }
    }
    for (key, value) in [("increment_var", &c.increment_var), ("instance_var", &c.instance_var)] {
        if let Some(Err(why)) = value.as_deref().map(env_name) {
            f.problem(key, why);
        }
    }
}

/// The HTTP health check: a port to probe, a path, thresholds that can be met.
fn health(f: &mut Found<'_>, c: &AppConfig) {
    let within = f.within.clone();
    if let Some(h) = &c.health
        && h.enabled != Some(false)
    {
        if c.port.is_none() {
            f.problem(
                "health",
                format!("an HTTP health check needs `port`; set `health = {{ enabled = false }}` or a port{within}"),
            );
        }
        if let Some(path) = &h.path
            && !path.starts_with('/')
        {
            f.problem("health.path", format!("health path {path:?} must start with '/'"));
        }
        if h.unhealthy_threshold == Some(0) {
            f.problem("health.unhealthy_threshold", "must be at least 1".to_owned());
        }
        let interval = h.interval.unwrap_or(defaults::DEFAULT_HEALTH_INTERVAL);
        if interval.0.is_zero() {
            f.problem("health.interval", "must be more than 0s".to_owned());
        }
        if let Some(timeout) = h.timeout
            && (timeout.0.is_zero() || timeout > interval)
        {
            f.problem("health.timeout", format!("must be more than 0s and at most the interval ({interval})"));
        }
    }
}

/// Values read by a parser of their own: the log date format, the watch globs.
fn formats(f: &mut Found<'_>, c: &AppConfig) {
    if let Some(format) = &c.log_date_format {
        use chrono::format::{Item, StrftimeItems};
        if StrftimeItems::new(format).any(|item| matches!(item, Item::Error)) {
            f.problem(
                "log_date_format",
                format!("invalid strftime format {format:?} (e.g. \"%Y-%m-%d %H:%M:%S%.3f\")"),
            );
        }
    }
    for pattern in c.ignore_watch.iter().flatten() {
        if let Err(e) = globset::Glob::new(pattern) {
            f.problem("ignore_watch", format!("invalid glob {pattern:?}: {}", e.kind()));
        }
    }
}

/// Durations the daemon can keep as deadlines, and counts and sizes that make sense.
fn limits(f: &mut Found<'_>, c: &AppConfig) {
    let health = c.health.as_ref();
    for (key, value) in [
        ("kill_timeout", c.kill_timeout),
        ("restart_delay", c.restart_delay),
        ("max_restart_delay", c.max_restart_delay),
        ("min_uptime", c.min_uptime),
        ("listen_timeout", c.listen_timeout),
        ("memory_check_interval", c.memory_check_interval),
        ("watch_delay", c.watch_delay),
        ("health.interval", health.and_then(|h| h.interval)),
        ("health.timeout", health.and_then(|h| h.timeout)),
        ("health.grace", health.and_then(|h| h.grace)),
    ] {
        // The daemon refuses longer ones too (`AppSpec::validate`): deadlines are Instant + duration.
        if let Some(d) = value.filter(|d| d.0 > MAX_DURATION) {
            f.problem(key, format!("{d} is longer than the limit of {}", HumanDuration(MAX_DURATION)));
        }
    }
    if let Some(Err(why)) = c.cron_restart.as_deref().map(crate::cron::CronSchedule::parse) {
        f.problem("cron_restart", why);
    }
    if c.reload_batch == Some(0) {
        f.problem("reload_batch", "must be at least 1".to_owned());
    }
    if c.memory_check_interval.is_some_and(|i| i.0 < std::time::Duration::from_millis(100)) {
        f.problem("memory_check_interval", "must be at least 100ms".to_owned());
    }
    if c.max_size.is_some_and(|s| s.0 < 4096) {
        f.problem("max_size", "a log file of less than 4K would rotate on nearly every line".to_owned());
    }
}

/// Readiness by probe needs a health check; a listen timeout must be able to pass.
fn readiness(f: &mut Found<'_>, c: &AppConfig) {
    let within = f.within.clone();
    let health_on = c.port.is_some() && c.health.as_ref().is_none_or(|h| h.enabled != Some(false));
    if c.readiness == Some(Readiness::Probe) && !health_on {
        f.problem("readiness", format!("readiness = \"probe\" needs a health check, so a `port`{within}"));
    }
    if let Some(t) = c.listen_timeout
        && t.0.is_zero()
    {
        f.problem("listen_timeout", "must be more than 0s".to_owned());
    }
}
