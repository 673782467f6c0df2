//! What happens on one host, step by step: a pure machine (`next(step, result) -> Next`), tested as
//! a table; `host.rs` runs the steps over ssh. Deploy and revert share the activation part: point
//! `current` at a release, run `post-deploy` there; if that fails, point `current` back and run
//! the previous release's `post-deploy` again, so that instances a reload had already moved to the
//! failed release are reloaded onto the previous one.

use super::release;

/// A verb, as one host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Setup {
        pre: bool,
        post: bool,
    },
    /// `git_ref`: the file's ref, or the commit the first host resolved it to.
    Deploy {
        git_ref: String,
        stamp: String,
        post_deploy: bool,
        keep: usize,
    },
    Revert {
        back: usize,
        post_deploy: bool,
    },
    List,
    Exec {
        command: String,
    },
}

/// One ssh round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    PreSetup,
    Prepare,
    PostSetup,
    /// Export `git_ref` into a new release, `<stamp>-<short commit>`.
    Fetch {
        git_ref: String,
        stamp: String,
    },
    /// Read the releases and the current one (`list`, and `revert` before choosing).
    Inspect,
    Switch(String),
    PostDeploy,
    /// The failure path: `current` back to this release...
    SwitchBack(String),
    /// ...or removed, when the failed deploy was the host's first.
    Unlink,
    /// ...then the previous release's `post-deploy` again.
    RedoPostDeploy,
    /// Delete releases: a failed one once the host is back, or those beyond `keep_releases`.
    Remove(Vec<String>),
    Exec(String),
}

impl Step {
    /// The step's name in progress lines and JSON events.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Step::PreSetup => "pre-setup",
            Step::Prepare => "prepare",
            Step::PostSetup => "post-setup",
            Step::Fetch { .. } => "fetch",
            Step::Inspect => "inspect",
            Step::Switch(_) => "switch",
            Step::PostDeploy => "post-deploy",
            Step::SwitchBack(_) => "switch-back",
            Step::Unlink => "unlink",
            Step::RedoPostDeploy => "post-deploy (previous release)",
            Step::Remove(_) => "remove",
            Step::Exec(_) => "exec",
        }
    }
}

/// What a step reported: whether it succeeded, and its markers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Report {
    pub ok: bool,
    /// `new` (the release a fetch created), `commit`, `previous`, `current`.
    pub new: Option<String>,
    pub commit: Option<String>,
    pub previous: Option<String>,
    pub current: Option<String>,
    /// Every release on the host (`release` markers).
    pub releases: Vec<String>,
}

/// How a host ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Everything ran; `current` is the live release (for deploy and revert).
    Done { current: Option<String>, note: Option<String> },
    /// `step` failed; `current` says where the host was left.
    Failed { step: &'static str, current: Current, why: Option<String> },
}

/// Where a failure left a host's `current` link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Current {
    /// Not moved (the failure came before the switch).
    Unchanged,
    /// Back on the previous release (or on none, after a failed first deploy), post-deploy re-run.
    RolledBack(Option<String>),
    /// Back on the previous release, but its post-deploy failed too: instances may be on either.
    BackButNotReloaded(String),
    /// Still on the failed release: the switch back failed.
    Stuck(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Next {
    Run(Step),
    Finish(Outcome),
}

/// One host's run of one action: what it learned so far.
#[derive(Clone, Debug)]
pub(super) struct HostPlan {
    action: Action,
    /// The release being activated (a fetched one, or a revert's target).
    target: Option<String>,
    /// The release `current` named before the switch (`None`: none).
    previous: Option<String>,
    releases: Vec<String>,
    /// The commit a fetch resolved.
    pub commit: Option<String>,
    /// The first failure, kept while the failure path runs.
    failed: Option<&'static str>,
}

impl HostPlan {
    pub(super) fn new(action: Action) -> HostPlan {
        HostPlan { action, target: None, previous: None, releases: Vec::new(), commit: None, failed: None }
    }

    pub(super) fn first(&self) -> Step {
        match &self.action {
            Action::Setup { pre: true, .. } => Step::PreSetup,
            Action::Setup { .. } => Step::Prepare,
            Action::Deploy { git_ref, stamp, .. } => Step::Fetch { git_ref: git_ref.clone(), stamp: stamp.clone() },
            Action::Revert { .. } | Action::List => Step::Inspect,
            Action::Exec { command } => Step::Exec(command.clone()),
        }
    }

    /// The next step after `step` reported `report`.
    pub(super) fn next(&mut self, step: &Step, report: &Report) -> Next {
        if !report.ok {
            return self.failed(step);
        }
        let done = |current: Option<String>| Next::Finish(Outcome::Done { current, note: None });
        match (step, &self.action) {
            (Step::PreSetup, _) => Next::Run(Step::Prepare),
            (Step::Prepare, Action::Setup { post: true, .. }) => Next::Run(Step::PostSetup),
            (Step::Prepare | Step::PostSetup | Step::Exec(_), _) => done(None),
            (Step::Fetch { .. }, _) => match &report.new {
                Some(release) if release::plausible(release) => {
                    self.commit = report.commit.clone();
                    self.target = Some(release.clone());
                    Next::Run(Step::Switch(release.clone()))
                }
                _ => Next::Finish(Outcome::Failed {
                    step: "fetch",
                    current: Current::Unchanged,
                    why: Some("the fetch reported no release".to_owned()),
                }),
            },
            (Step::Inspect, Action::Revert { back, .. }) => {
                match release::revert_target(&report.releases, report.current.as_deref(), *back) {
                    Ok(target) => {
                        self.target = Some(target.clone());
                        Next::Run(Step::Switch(target))
                    }
                    Err(why) => {
                        Next::Finish(Outcome::Failed { step: "revert", current: Current::Unchanged, why: Some(why) })
                    }
                }
            }
            (Step::Inspect, _) => done(report.current.clone().filter(|c| !c.is_empty())),
            (Step::Switch(_), Action::Deploy { post_deploy, .. } | Action::Revert { post_deploy, .. }) => {
                self.previous = report.previous.clone().filter(|p| !p.is_empty());
                self.releases = report.releases.clone();
                if *post_deploy { Next::Run(Step::PostDeploy) } else { self.activated() }
            }
            (Step::PostDeploy, _) => self.activated(),
            (Step::SwitchBack(_), _) => Next::Run(Step::RedoPostDeploy),
            (Step::Unlink, _) | (Step::RedoPostDeploy, _) => self.rolled_back(),
            (Step::Remove(_), _) => self.after_remove(),
            (Step::Switch(_), _) => done(self.target.clone()),
        }
    }

    /// `current` names the target and its post-deploy passed: prune beyond `keep` (deploy only).
    fn activated(&mut self) -> Next {
        let current = self.target.clone();
        if let (Action::Deploy { keep, .. }, Some(live)) = (&self.action, &current) {
            let prune = release::to_prune(&self.releases, live, self.previous.as_deref(), *keep);
            if !prune.is_empty() {
                return Next::Run(Step::Remove(prune));
            }
        }
        Next::Finish(Outcome::Done { current, note: None })
    }

    /// The host is back where it was: a failed fetched release is deleted (it never served).
    fn rolled_back(&mut self) -> Next {
        match (&self.action, &self.target) {
            (Action::Deploy { .. }, Some(failed)) => Next::Run(Step::Remove(vec![failed.clone()])),
            _ => self.finish_failed(Current::RolledBack(self.previous.clone()), None),
        }
    }

    fn after_remove(&mut self) -> Next {
        match self.failed {
            Some(_) => self.finish_failed(Current::RolledBack(self.previous.clone()), None),
            None => Next::Finish(Outcome::Done { current: self.target.clone(), note: None }),
        }
    }

    fn finish_failed(&self, current: Current, why: Option<String>) -> Next {
        Next::Finish(Outcome::Failed { step: self.failed.unwrap_or("?"), current, why })
    }

    /// `step` failed.
    fn failed(&mut self, step: &Step) -> Next {
        match step {
            Step::PostDeploy => {
                self.failed = Some(step.name());
                match self.previous.clone() {
                    Some(previous) => Next::Run(Step::SwitchBack(previous)),
                    None => Next::Run(Step::Unlink),
                }
            }
            Step::SwitchBack(_) | Step::Unlink => {
                let on = self.target.clone().unwrap_or_default();
                self.finish_failed(Current::Stuck(on), Some(format!("{} failed", step.name())))
            }
            Step::RedoPostDeploy => {
                let on = self.previous.clone().unwrap_or_default();
                self.finish_failed(Current::BackButNotReloaded(on), Some(format!("{} failed", step.name())))
            }
            // Deleting releases is housekeeping: the deploy (or the rollback) stands.
            Step::Remove(releases) if self.failed.is_none() => Next::Finish(Outcome::Done {
                current: self.target.clone(),
                note: Some(format!("could not delete old releases {}", releases.join(", "))),
            }),
            Step::Remove(_) => self.finish_failed(Current::RolledBack(self.previous.clone()), None),
            other => Next::Finish(Outcome::Failed { step: other.name(), current: Current::Unchanged, why: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Report {
        Report { ok: true, ..Report::default() }
    }

    fn fail() -> Report {
        Report::default()
    }

    fn deploy(post_deploy: bool, keep: usize) -> HostPlan {
        HostPlan::new(Action::Deploy { git_ref: "main".into(), stamp: "s".into(), post_deploy, keep })
    }

    fn switched(previous: &str, releases: &[&str]) -> Report {
        Report {
            ok: true,
            previous: Some(previous.to_owned()),
            releases: releases.iter().map(|r| (*r).to_owned()).collect(),
            ..Report::default()
        }
    }

    fn fetched(release: &str) -> Report {
        Report { ok: true, new: Some(release.to_owned()), commit: Some("c0ffee".into()), ..Report::default() }
    }

    /// Feeds `reports` to `plan` from its first step; returns the steps run and how it ended.
    fn drive(mut plan: HostPlan, reports: &[Report]) -> (Vec<Step>, Outcome) {
        let mut step = plan.first();
        let mut steps = vec![step.clone()];
        for report in reports {
            match plan.next(&step, report) {
                Next::Run(next) => {
                    steps.push(next.clone());
                    step = next;
                }
                Next::Finish(outcome) => return (steps, outcome),
            }
        }
        panic!("unfinished after {steps:?}");
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    fn fetch() -> Step {
        Step::Fetch { git_ref: s("main"), stamp: s("s") }
    }

    #[test]
    fn a_deploy_fetches_switches_runs_post_deploy_and_prunes() {
        let (steps, outcome) =
            drive(deploy(true, 2), &[fetched("r3"), switched("r2", &["r1", "r2", "r3"]), ok(), ok()]);
        assert_eq!(steps, [fetch(), Step::Switch(s("r3")), Step::PostDeploy, Step::Remove(vec![s("r1")])]);
        assert_eq!(outcome, Outcome::Done { current: Some(s("r3")), note: None });
        let (steps, _) = drive(deploy(false, 5), &[fetched("r1"), switched("", &["r1"])]);
        assert_eq!(steps, [fetch(), Step::Switch(s("r1"))], "no hook, nothing to prune");
    }

    /// The failure paths, as (reports after the fetch and switch, steps after them, the outcome).
    #[test]
    fn a_failed_post_deploy_switches_back_and_reloads_the_previous_release() {
        type Case = (Vec<Report>, Vec<Step>, Outcome);
        let failed = |current| Outcome::Failed { step: "post-deploy", current, why: None };
        let table: Vec<Case> = vec![
            // back to r1, its post-deploy again, the failed release deleted
            (
                vec![fail(), ok(), ok(), ok()],
                vec![Step::SwitchBack(s("r1")), Step::RedoPostDeploy, Step::Remove(vec![s("r2")])],
                failed(Current::RolledBack(Some(s("r1")))),
            ),
            // the previous release's post-deploy fails too: said, the release kept for a look
            (
                vec![fail(), ok(), fail()],
                vec![Step::SwitchBack(s("r1")), Step::RedoPostDeploy],
                Outcome::Failed {
                    step: "post-deploy",
                    current: Current::BackButNotReloaded(s("r1")),
                    why: Some(s("post-deploy (previous release) failed")),
                },
            ),
            // the link cannot be switched back
            (
                vec![fail(), fail()],
                vec![Step::SwitchBack(s("r1"))],
                Outcome::Failed {
                    step: "post-deploy",
                    current: Current::Stuck(s("r2")),
                    why: Some(s("switch-back failed")),
                },
            ),
        ];
        for (reports, after, outcome) in table {
            let mut all = vec![fetched("r2"), switched("r1", &["r1", "r2"])];
            all.extend(reports);
            let (steps, got) = drive(deploy(true, 5), &all);
            assert_eq!(steps[3..], after[..]);
            assert_eq!(got, outcome);
        }
        // A first deploy has nothing to go back to: the link goes.
        let (steps, got) = drive(deploy(true, 5), &[fetched("r1"), switched("", &["r1"]), fail(), ok(), ok()]);
        assert_eq!(steps[3..], [Step::Unlink, Step::Remove(vec![s("r1")])]);
        assert_eq!(got, failed(Current::RolledBack(None)));
    }

    #[test]
    fn failures_before_the_switch_leave_the_host_as_it_was() {
        assert_eq!(
            drive(deploy(true, 5), &[fail()]).1,
            Outcome::Failed { step: "fetch", current: Current::Unchanged, why: None }
        );
        assert_eq!(
            drive(deploy(true, 5), &[fetched("r2"), fail()]).1,
            Outcome::Failed { step: "switch", current: Current::Unchanged, why: None }
        );
        let pruned = drive(deploy(true, 1), &[fetched("r2"), switched("r1", &["r1", "r2"]), ok(), fail()]).1;
        assert!(matches!(pruned, Outcome::Done { current: Some(ref c), note: Some(_) } if c == "r2"), "{pruned:?}");
    }

    #[test]
    fn a_revert_chooses_its_target_from_the_hosts_releases_and_deletes_nothing() {
        let inspected =
            Report { ok: true, current: Some(s("r3")), releases: vec![s("r1"), s("r2"), s("r3")], ..Report::default() };
        let revert = |back| HostPlan::new(Action::Revert { back, post_deploy: true });
        let (steps, outcome) = drive(revert(2), &[inspected.clone(), switched("r3", &["r1", "r2", "r3"]), ok()]);
        assert_eq!(steps, [Step::Inspect, Step::Switch(s("r1")), Step::PostDeploy]);
        assert_eq!(outcome, Outcome::Done { current: Some(s("r1")), note: None });
        let (steps, outcome) =
            drive(revert(1), &[inspected.clone(), switched("r3", &["r1", "r2", "r3"]), fail(), ok(), ok()]);
        assert_eq!(steps[2..], [Step::PostDeploy, Step::SwitchBack(s("r3")), Step::RedoPostDeploy]);
        assert_eq!(
            outcome,
            Outcome::Failed { step: "post-deploy", current: Current::RolledBack(Some(s("r3"))), why: None }
        );
        let (_, outcome) = drive(revert(3), &[inspected]);
        assert!(matches!(outcome, Outcome::Failed { step: "revert", current: Current::Unchanged, why: Some(_) }));
    }

    #[test]
    fn setup_runs_its_hooks_around_the_preparation() {
        let setup = |pre, post| HostPlan::new(Action::Setup { pre, post });
        assert_eq!(drive(setup(true, true), &[ok(), ok(), ok()]).0, [Step::PreSetup, Step::Prepare, Step::PostSetup]);
        assert_eq!(drive(setup(false, false), &[ok()]).0, [Step::Prepare]);
        assert_eq!(
            drive(setup(true, true), &[ok(), fail()]).1,
            Outcome::Failed { step: "prepare", current: Current::Unchanged, why: None }
        );
    }
}
