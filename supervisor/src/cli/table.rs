//! The `chatctl list` table.

use chat_shared::ecosystem::ExecMode;
use chat_shared::status::{AppStatus, Phase};
use chat_shared::units;

pub(super) fn render(apps: &[AppStatus]) -> String {
    if apps.is_empty() {
        return "no apps running\n".to_owned();
    }
    let header =
        ["app", "#", "mode", "pid", "status", "uptime", "restarts", "memory", "cpu", "port", "last exit / note"];
    let mut rows: Vec<[String; 11]> = Vec::new();
    for app in apps {
        for i in &app.instances {
            let mode = match app.exec_mode {
                ExecMode::Cluster => "cluster",
                ExecMode::Fork => "fork",
            };
            let note = match (i.status, &i.note, &i.last_exit) {
                // Online but cut off from the other workers (its /health says why).
                (Phase::Online, _, _) => match i.chat.as_ref().and_then(|c| c.degraded.as_deref()) {
                    Some(why) => format!("degraded: {why}"),
                    None => String::new(),
                },
                (_, Some(note), _) => note.clone(),
                (_, None, Some(exit)) => exit.to_string(),
                _ => String::new(),
            };
            rows.push([
                app.name.clone(),
                i.index.to_string(),
                mode.to_owned(),
                i.pid.map_or("-".into(), |p| p.to_string()),
                i.status.as_str().to_owned(),
                i.uptime_ms.map_or("-".into(), units::short_duration),
                i.restarts.to_string(),
                i.memory_bytes.map_or("-".into(), units::memory),
                i.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
                i.port.map_or("-".into(), |p| p.to_string()),
                note,
            ]);
        }
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    // App-level: a log file failing concerns every instance writing to it.
    for app in apps {
        if let Some(issue) = &app.log_issue {
            out.push_str(&format!("{}: log problem: {issue}\n", app.name));
        }
        if let Some(build) = &app.build {
            out.push_str(&format!("{}: {build}\n", app.name));
        }
    }
    out
}
