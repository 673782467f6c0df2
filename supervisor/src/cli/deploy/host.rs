//! One host's run: the plan's steps carried out over ssh, each announced, its output streamed, its
//! markers fed back to the plan.

use chat_shared::ecosystem::DeploySpec;

use super::plan::{Action, Current, HostPlan, Next, Outcome, Report, Step};
use super::report::{Event, Reporter, Tail};
use super::script::{HookDir, Line, Script, render};
use super::ssh;

/// How a host ended, for the rollout.
pub(super) struct HostResult {
    pub ok: bool,
    /// The commit a deploy's fetch resolved (the next hosts deploy the same one).
    pub commit: Option<String>,
}

/// Runs `action` on `host` to its end, reporting every step.
pub(super) fn run(spec: &DeploySpec, host: &str, action: &Action, reporter: &Reporter) -> HostResult {
    let mut plan = HostPlan::new(action.clone());
    let mut step = plan.first();
    // The exit code of the first step that failed, for the summary.
    let mut first_failure = None;
    loop {
        let (report, code) = run_step(spec, host, &step, reporter);
        if !report.ok && first_failure.is_none() {
            first_failure = Some(code);
        }
        match plan.next(&step, &report) {
            Next::Run(next) => step = next,
            Next::Finish(outcome) => {
                let ok = matches!(outcome, Outcome::Done { .. });
                if let (Action::List, true) = (action, ok) {
                    let current = report.current.as_deref().filter(|c| !c.is_empty());
                    let mut releases = report.releases.clone();
                    releases.sort();
                    reporter.emit(&Event::Releases { host, releases: &releases, current });
                } else {
                    let current = match &outcome {
                        Outcome::Done { current, .. } => current.clone(),
                        Outcome::Failed { current: Current::RolledBack(c), .. } => c.clone(),
                        Outcome::Failed { current: Current::BackButNotReloaded(c) | Current::Stuck(c), .. } => {
                            Some(c.clone())
                        }
                        Outcome::Failed { current: Current::Unchanged, .. } => None,
                    };
                    let message = describe(action, &outcome, plan.commit.as_deref(), first_failure.flatten());
                    reporter.emit(&Event::Host { host, ok, current: current.as_deref(), message: &message });
                }
                return HostResult { ok, commit: plan.commit.clone() };
            }
        }
    }
}

/// One ssh round trip: announced, output streamed, markers collected; a failure shows its exit
/// code and last lines. Returns the report and the exit code.
fn run_step(spec: &DeploySpec, host: &str, step: &Step, reporter: &Reporter) -> (Report, Option<i32>) {
    let name = step.name();
    let (script, detail) = script(spec, step);
    reporter.emit(&Event::Step { host, step: name, detail });
    let mut report = Report::default();
    let mut tail = Tail::default();
    let code = ssh::stream(ssh::command(spec, host), Some(render(spec, &script)), |line| match Line::parse(line) {
        Line::Marker { key, value } => match key.as_str() {
            "new" => report.new = Some(value),
            "commit" => report.commit = Some(value),
            "previous" => report.previous = Some(value),
            "current" => report.current = Some(value),
            "release" => report.releases.push(value),
            _ => {}
        },
        Line::Output(text) => {
            reporter.emit(&Event::Output { host, step: name, line: &text });
            tail.push(text);
        }
    });
    let code = code.unwrap_or_else(|e| {
        tail.push(format!("cannot run ssh: {e}"));
        Some(ssh::SSH_FAILED)
    });
    report.ok = code == Some(0);
    if !report.ok {
        if code == Some(ssh::SSH_FAILED) {
            tail.push(
                "(exit 255: ssh itself failed: connection, host key or authentication; see ssh's message above)".into(),
            );
        }
        reporter.emit(&Event::StepFailed { host, step: name, exit_code: code, output: tail.lines() });
    }
    (report, code)
}

/// The script of `step`, and what its progress line says.
fn script<'a>(spec: &'a DeploySpec, step: &'a Step) -> (Script<'a>, String) {
    let hook = |command: &'a str, dir| (Script::Hook { command, dir }, command.to_owned());
    // The plan runs a hook's step only when the hook is set.
    let configured = |hook: &'a Option<String>| hook.as_deref().unwrap_or("true");
    match step {
        Step::PreSetup => hook(configured(&spec.pre_setup), HookDir::Login),
        Step::Prepare => (Script::Prepare, format!("{}/releases, shared, repo", spec.path)),
        Step::PostSetup => hook(configured(&spec.post_setup), HookDir::Root),
        Step::Fetch { git_ref, stamp } => (Script::Fetch { git_ref, stamp }, git_ref.clone()),
        Step::Inspect => (Script::Inspect, String::new()),
        Step::Switch(release) | Step::SwitchBack(release) => {
            (Script::Switch { release }, format!("current -> releases/{release}"))
        }
        Step::PostDeploy | Step::RedoPostDeploy => hook(configured(&spec.post_deploy), HookDir::Current),
        Step::Unlink => (Script::Unlink, "no release to go back to: current removed".to_owned()),
        Step::Remove(releases) => (Script::Remove { releases }, releases.join(", ")),
        Step::Exec(command) => hook(command, HookDir::Current),
    }
}

/// The host's line in the summary; `code`: the exit code of the step that failed.
fn describe(action: &Action, outcome: &Outcome, commit: Option<&str>, code: Option<i32>) -> String {
    match outcome {
        Outcome::Done { current, note } => {
            let mut text = match (action, current) {
                (Action::Setup { .. }, _) => "set up".to_owned(),
                (Action::Exec { .. }, _) => "ran".to_owned(),
                (Action::Deploy { .. }, Some(current)) => match commit {
                    Some(commit) => format!("deployed {commit}: current -> {current}"),
                    None => format!("current -> {current}"),
                },
                (_, Some(current)) => format!("current -> {current}"),
                (_, None) => "done".to_owned(),
            };
            if let Some(note) = note {
                text.push_str(&format!(" ({note})"));
            }
            text
        }
        Outcome::Failed { step, current, why } => {
            let mut text = format!("failed at {step}");
            if let Some(code) = code {
                text.push_str(&format!(" (exit {code})"));
            }
            if let Some(why) = why {
                text.push_str(&format!(": {why}"));
            }
            text.push_str(&match current {
                Current::Unchanged => "; nothing was switched".to_owned(),
                Current::RolledBack(Some(previous)) => {
                    format!("; switched back to {previous} and ran its post-deploy again")
                }
                Current::RolledBack(None) => "; it was the first release: current removed".to_owned(),
                Current::BackButNotReloaded(previous) => format!(
                    "; switched back to {previous}, but its post-deploy failed too: check the instances (chatctl list)"
                ),
                Current::Stuck(failed) => format!("; current still names the failed release {failed}: fix it by hand"),
            });
            text
        }
    }
}
