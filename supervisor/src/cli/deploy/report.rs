//! What a deploy tells the operator as it happens: one [`Event`] per step, output line and host
//! outcome, printed as lines for a person or, with `--json`, as one JSON object per line. Hook
//! output is shown as the host printed it; the deploy's `env` values never are (they are only in
//! the scripts sent to the hosts).

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

/// Lines of a failed step repeated in its failure event (the whole output was shown live).
const TAIL_LINES: usize = 20;

/// The last [`TAIL_LINES`] lines of a step's output, for its failure event.
#[derive(Debug, Default)]
pub(super) struct Tail(Vec<String>);

impl Tail {
    pub(super) fn push(&mut self, line: String) {
        if self.0.len() == TAIL_LINES {
            self.0.remove(0);
        }
        self.0.push(line);
    }

    pub(super) fn lines(&self) -> &[String] {
        &self.0
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(super) enum Event<'a> {
    /// The rollout begins.
    Begin { target: &'a str, action: &'a str, hosts: &'a [String], parallel: bool },
    /// A step begins on a host (`host` is `local` for `pre-deploy-local`).
    Step { host: &'a str, step: &'a str, detail: String },
    /// A line a host (or the local hook) printed during a step.
    Output { host: &'a str, step: &'a str, line: &'a str },
    /// A step failed: its exit code (`null`: killed) and its last lines.
    StepFailed { host: &'a str, step: &'a str, exit_code: Option<i32>, output: &'a [String] },
    /// A host's releases, oldest first (`list`).
    Releases { host: &'a str, releases: &'a [String], current: Option<&'a str> },
    /// How a host ended: `ok`, and the release its `current` link names when this run moved or
    /// read it (`null`: a failure before the switch left it as it was).
    Host { host: &'a str, ok: bool, current: Option<&'a str>, message: &'a str },
    /// A host not touched because an earlier one failed.
    Skipped { host: &'a str, reason: &'a str },
    /// The end: hosts done, failed and skipped.
    End { ok: bool, done: usize, failed: usize, skipped: usize },
}

/// Prints events; shared by the hosts of a `--parallel` rollout (one line at a time).
pub(super) struct Reporter {
    json: bool,
    out: Mutex<()>,
}

impl Reporter {
    pub(super) fn new(json: bool) -> Reporter {
        Reporter { json, out: Mutex::new(()) }
    }

    pub(super) fn emit(&self, event: &Event<'_>) {
        let text = if self.json { serde_json::to_string(event).unwrap_or_default() } else { human(event) };
        let _held = self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (`| head`) must not stop a rollout half-way.
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }
}

/// The event as a person reads it.
fn human(event: &Event<'_>) -> String {
    match event {
        Event::Begin { target, action, hosts, parallel } => {
            let how = match (hosts.len(), parallel) {
                (1, _) => "",
                (_, true) => " (at once)",
                (_, false) => " (one after another)",
            };
            format!("{action} {target}: {}{how}", hosts.join(", "))
        }
        Event::Step { host, step, detail } if detail.is_empty() => format!("{host}: {step}"),
        Event::Step { host, step, detail } => format!("{host}: {step}: {detail}"),
        Event::Output { host, line, .. } => format!("{host} | {line}"),
        Event::StepFailed { host, step, exit_code, .. } => match exit_code {
            Some(code) => format!("{host}: {step} failed (exit {code})"),
            None => format!("{host}: {step} failed (killed)"),
        },
        Event::Releases { host, releases, current } => {
            let mut text = format!("{host}:");
            if releases.is_empty() {
                text.push_str(" no releases");
            }
            for release in releases.iter() {
                let mark = if Some(release.as_str()) == *current { "* " } else { "  " };
                text.push_str(&format!("\n  {mark}{release}"));
            }
            text
        }
        Event::Host { host, ok, message, .. } => format!("{host}: {} {message}", if *ok { "ok:" } else { "FAILED:" }),
        Event::Skipped { host, reason } => format!("{host}: not touched: {reason}"),
        Event::End { ok, done, failed, skipped } => {
            let mut text = format!("{} host(s) done", done);
            if *failed > 0 {
                text.push_str(&format!(", {failed} failed"));
            }
            if *skipped > 0 {
                text.push_str(&format!(", {skipped} not touched"));
            }
            if !ok {
                text.push_str(" (see above: host, step and output)");
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json_objects_and_readable_lines() {
        let hosts = vec!["web1".to_owned(), "web2".to_owned()];
        let begin = Event::Begin { target: "production", action: "deploy", hosts: &hosts, parallel: false };
        assert_eq!(
            serde_json::to_string(&begin).expect("json"),
            r#"{"event":"begin","target":"production","action":"deploy","hosts":["web1","web2"],"parallel":false}"#
        );
        assert_eq!(human(&begin), "deploy production: web1, web2 (one after another)");
        let releases = vec!["r1".to_owned(), "r2".to_owned()];
        let list = Event::Releases { host: "web1", releases: &releases, current: Some("r1") };
        assert_eq!(human(&list), "web1:\n  * r1\n    r2");
        let failed = Event::StepFailed { host: "web1", step: "post-deploy", exit_code: Some(2), output: &[] };
        assert_eq!(human(&failed), "web1: post-deploy failed (exit 2)");
    }
}
