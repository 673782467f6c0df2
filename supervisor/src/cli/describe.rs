//! `describe APP[:INDEX]`: every setting in effect and each instance's details and recent history.

use std::fmt::Write;
use std::process::ExitCode;

use anyhow::Context;

use chat_shared::status::{AppDescription, InstanceDetail, InstanceStatus};
use chat_shared::units::mebibytes;

use super::target::InstanceTarget;
use crate::client::Client;
use crate::home::Home;

pub(super) async fn describe(target: InstanceTarget, json: bool, home: &Home) -> anyhow::Result<ExitCode> {
    let app = target.one_app().map_err(anyhow::Error::msg)?.to_owned();
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    let mut description = client.describe(&app).await?;
    if let Some(index) = target.index {
        only_instance(&mut description, index).map_err(anyhow::Error::msg)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&description)?);
    } else {
        print!("{}", render(&description));
    }
    Ok(ExitCode::SUCCESS)
}

/// `describe APP:INDEX`: the app's settings and that one instance.
fn only_instance(d: &mut AppDescription, index: usize) -> Result<(), String> {
    let count = d.instances.len();
    if !d.instances.iter().any(|i| i.index == index) {
        return Err(format!(
            "`{}` has no instance {index}: it has {count} instance(s){}",
            d.spec.name,
            if count > 0 { format!(", 0 to {}", count - 1) } else { String::new() }
        ));
    }
    d.instances.retain(|i| i.index == index);
    d.status.instances.retain(|i| i.index == index);
    Ok(())
}

fn render(d: &AppDescription) -> String {
    let mut out = String::new();
    settings(&mut out, d);
    for (detail, status) in d.instances.iter().zip(&d.status.instances) {
        instance(&mut out, detail, status);
    }
    out
}

/// The settings in effect, one `name value` line each.
fn settings(out: &mut String, d: &AppDescription) {
    let s = &d.spec;
    let profile = s.profile.as_deref().map(|p| format!("profile {p}, ")).unwrap_or_default();
    let _ = writeln!(out, "{} ({profile}{:?} mode, {} instance(s))", s.name, s.exec_mode, s.instances);
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<12} {value}");
    };
    field("script", format!("{} {}", s.script, s.args.join(" ")).trim_end().to_owned());
    field("cwd", s.cwd.display().to_string());
    field(
        "listen",
        match &s.listen {
            Some(l) if l.inherit => {
                format!("{}:{} bound by the supervisor, passed as fd 3", l.host, d.status.port.unwrap_or(l.port))
            }
            Some(l) => format!("{}:{} bound by the program ({} set)", l.host, l.port, s.increment_var),
            None => "none".into(),
        },
    );
    let signal =
        serde_json::to_value(s.kill_signal).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    field("stop", format!("{signal}, then SIGKILL after {}", s.kill_timeout));
    field(
        "restarts",
        format!(
            "autorestart {}, delay {} doubling up to {}, errored after {} starts shorter than {}, done on exit codes {:?}",
            s.autorestart, s.restart_delay, s.max_restart_delay, s.max_restarts, s.min_uptime, s.stop_exit_codes
        ),
    );
    field(
        "readiness",
        format!(
            "{}, within {}",
            s.readiness.map_or("none (online when running)".into(), |r| format!("{r:?}")),
            s.listen_timeout
        ),
    );
    field(
        "health",
        match &s.health {
            Some(h) => format!(
                "GET {} every {}, timeout {}, restart after {} failures (grace {})",
                h.path, h.interval, h.timeout, h.unhealthy_threshold, h.grace
            ),
            None => "off".into(),
        },
    );
    field(
        "memory",
        s.max_memory.map_or("no limit".into(), |m| {
            format!("max {m} (process tree), checked every {}", s.memory_check_interval)
        }),
    );
    field(
        "logs",
        format!(
            "{}{}{}, rotate at {}{}, keep {}{}",
            if s.logs.merge { "merged" } else { "per instance" },
            if s.logs.json { ", json" } else { "" },
            s.logs.date_format.as_deref().map(|f| format!(", dated {f:?}")).unwrap_or_default(),
            s.logs.max_size,
            if s.logs.daily { " and daily" } else { "" },
            s.logs.retain,
            if s.logs.compress { ", gzip" } else { "" }
        ),
    );
    if let Some(issue) = &d.status.log_issue {
        field("log problem", issue.clone());
    }
    field(
        "reload",
        format!(
            "{} at a time{}{}",
            s.reload_batch,
            s.build.as_deref().map(|b| format!(", build: {b}")).unwrap_or_default(),
            s.cron_restart.as_deref().map(|c| format!(", on schedule: {c}")).unwrap_or_default()
        ),
    );
    field(
        "watch",
        s.watch.as_ref().map_or("off".into(), |w| {
            let paths: Vec<String> = w.paths.iter().map(|p| p.display().to_string()).collect();
            format!("{} (ignoring {:?}, delay {})", paths.join(", "), w.ignore, w.delay)
        }),
    );
    field("env", format!("{} variables (--json lists them)", s.env.len()));
}

/// One instance: its state, sockets, log files, recent probes and history.
fn instance(out: &mut String, detail: &InstanceDetail, status: &InstanceStatus) {
    let _ = writeln!(
        out,
        "\ninstance {}: {} pid {} restarts {}{}{}",
        detail.index,
        status.status.as_str(),
        status.pid.map_or("-".into(), |p| p.to_string()),
        status.restarts,
        status.memory_bytes.map(|m| format!(", memory {}", mebibytes(m))).unwrap_or_default(),
        detail.memory_peak_bytes.map(|m| format!(" (peak {})", mebibytes(m))).unwrap_or_default(),
    );
    for socket in &detail.sockets {
        let _ = writeln!(out, "  socket   {socket}");
    }
    for file in &detail.log_files {
        let _ = writeln!(out, "  log      {file}");
    }
    let failed = detail.probes.iter().filter(|p| !p.ok).count();
    if !detail.probes.is_empty() {
        let mut latencies: Vec<u64> = detail.probes.iter().map(|p| p.latency_ms).collect();
        latencies.sort_unstable();
        let last_failure = detail.probes.iter().rev().find_map(|p| p.error.as_ref());
        let _ = writeln!(
            out,
            "  probes   last {}: {} failed, median {} ms{}",
            detail.probes.len(),
            failed,
            latencies[latencies.len() / 2],
            last_failure.map(|e| format!("; last failure: {e}")).unwrap_or_default()
        );
    }
    for entry in &detail.history {
        let _ = writeln!(out, "  {}  {}", entry.at, entry.event);
    }
}
