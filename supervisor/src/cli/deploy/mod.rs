//! `deploy`: PM2's `pm2 deploy` with the system `ssh` and `git`. `chatctl deploy NAME setup`
//! prepares every host of a `[deploy.NAME]` table, `chatctl deploy NAME` ships the table's `ref`
//! into a new release on each host and runs `post-deploy` there (the build and the zero-downtime
//! reload), `revert [N]` goes back, `list` shows the releases, `exec` runs a command.
//!
//! Hosts are done one after another: a failure stops the rollout, and the hosts after it stay on
//! their release. The first host's commit is the one every later host deploys, so a push during a
//! rollout never gives two hosts different code. `--parallel` does every host at once (each
//! resolves the ref itself).
//!
//! # Layout
//! - `plan`: one host's steps, a pure machine (the failure path included), tested as a table.
//! - `release`: release names, which to prune, which one a revert goes back to.
//! - `script`: the POSIX `sh` each step sends to a host.
//! - `ssh`: the ssh command line, and streaming a process's output line by line.
//! - `host`: one host's run: steps over ssh, their output and markers.
//! - `report`: progress events, as lines or JSON.

mod host;
mod plan;
mod release;
mod report;
mod script;
mod ssh;

use std::process::{Command, ExitCode};

use chat_shared::ecosystem::{DeploySpec, Ecosystem};

use super::args::{DeployAction, DeployArgs};
use super::exit;
use plan::Action;
use report::{Event, Reporter, Tail};

pub(super) fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let eco = match Ecosystem::load(&args.config) {
        Ok(eco) => eco,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(exit::CONFIG));
        }
    };
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let spec = match eco.deploy(&args.target, home.as_deref()) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(exit::CONFIG));
        }
    };
    let (verb, action) = action(&spec, args.action);
    let reporter = Reporter::new(args.json);
    reporter.emit(&Event::Begin { target: &spec.name, action: verb, hosts: &spec.hosts, parallel: args.parallel });
    if let (Action::Deploy { .. }, Some(hook)) = (&action, &spec.pre_deploy_local)
        && !pre_deploy_local(&spec, hook, &reporter)
    {
        for host in &spec.hosts {
            reporter.emit(&Event::Skipped { host, reason: "pre-deploy-local failed" });
        }
        reporter.emit(&Event::End { ok: false, done: 0, failed: 0, skipped: spec.hosts.len() });
        return Ok(ExitCode::from(exit::DEPLOY_FAILED));
    }
    let results =
        if args.parallel { parallel(&spec, &action, &reporter) } else { one_by_one(&spec, action, &reporter) };
    let done = results.iter().filter(|ok| **ok == Some(true)).count();
    let failed = results.iter().filter(|ok| **ok == Some(false)).count();
    let skipped = results.len() - done - failed;
    let ok = failed == 0 && skipped == 0;
    reporter.emit(&Event::End { ok, done, failed, skipped });
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(exit::DEPLOY_FAILED) })
}

/// The verb's name in the progress lines, and what each host does.
fn action(spec: &DeploySpec, action: Option<DeployAction>) -> (&'static str, Action) {
    let post_deploy = spec.post_deploy.is_some();
    match action {
        None | Some(DeployAction::Update) => {
            let stamp = release::stamp(chrono::Utc::now());
            let keep = spec.keep_releases;
            ("deploy", Action::Deploy { git_ref: spec.git_ref.clone(), stamp, post_deploy, keep })
        }
        Some(DeployAction::Setup) => {
            ("setup", Action::Setup { pre: spec.pre_setup.is_some(), post: spec.post_setup.is_some() })
        }
        Some(DeployAction::Revert { back }) => ("revert", Action::Revert { back: usize::from(back), post_deploy }),
        Some(DeployAction::List) => ("list", Action::List),
        Some(DeployAction::Exec { command }) => ("exec", Action::Exec { command }),
    }
}

/// Every host in the file's order; the first failure leaves the rest untouched. Returns each
/// host's result (`None`: not touched).
fn one_by_one(spec: &DeploySpec, mut action: Action, reporter: &Reporter) -> Vec<Option<bool>> {
    let mut results = Vec::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        let result = host::run(spec, host, &action, reporter);
        results.push(Some(result.ok));
        if !result.ok {
            for rest in &spec.hosts[i + 1..] {
                let reason = format!("{host} failed; this host stays on its current release");
                reporter.emit(&Event::Skipped { host: rest, reason: &reason });
                results.push(None);
            }
            break;
        }
        // Later hosts deploy the very commit the first one resolved.
        if let (Action::Deploy { git_ref, .. }, Some(commit)) = (&mut action, result.commit) {
            *git_ref = commit;
        }
    }
    results
}

/// Every host at once, each on a thread of its own.
fn parallel(spec: &DeploySpec, action: &Action, reporter: &Reporter) -> Vec<Option<bool>> {
    std::thread::scope(|scope| {
        let runs: Vec<_> =
            spec.hosts.iter().map(|host| scope.spawn(move || host::run(spec, host, action, reporter))).collect();
        // A host thread that panicked counts as failed.
        runs.into_iter().map(|run| Some(run.join().is_ok_and(|r| r.ok))).collect()
    })
}

/// `pre-deploy-local`, here, in the file's directory, before any host: its output streamed.
fn pre_deploy_local(spec: &DeploySpec, hook: &str, reporter: &Reporter) -> bool {
    let (host, step) = ("local", "pre-deploy-local");
    reporter.emit(&Event::Step { host, step, detail: hook.to_owned() });
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(hook).current_dir(&spec.local_dir);
    let mut tail = Tail::default();
    let code = ssh::stream(sh, None, |line| {
        reporter.emit(&Event::Output { host, step, line });
        tail.push(line.to_owned());
    });
    let code = code.unwrap_or_else(|e| {
        tail.push(format!("cannot run sh: {e}"));
        Some(127)
    });
    if code != Some(0) {
        reporter.emit(&Event::StepFailed { host, step, exit_code: code, output: tail.lines() });
    }
    code == Some(0)
}

/// The `[deploy.prod]` table of these lines, loaded and resolved as a file's (for the parts' tests).
#[cfg(test)]
fn test_spec(lines: &str) -> DeploySpec {
    let text = format!("[deploy.prod]\n{lines}\n");
    let eco = Ecosystem::parse(&text, std::path::Path::new("/e.toml")).unwrap_or_else(|e| panic!("{e}"));
    eco.deploy("prod", None).expect("prod")
}
