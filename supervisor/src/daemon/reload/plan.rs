//! The reload of one app as a pure plan: given what the app shows now ([`Seen`]) and the time, it
//! says what to do next ([`Action`]s) and remembers where it is. The caller (`reload::Job`)
//! gathers `Seen` from the app, carries the actions out and calls [`Plan::step`] again after every
//! change the daemon makes; nothing here touches a process, a channel or a clock.
//!
//! An app's reload goes: replace `pending` instances, `batch` at a time, each one either by a
//! successor beside it (ready before the old process drains) or, where two cannot run at once,
//! in place; stop at the first failure (fail-closed: the instances not yet replaced keep serving);
//! then add or remove instances to reach the new count; then finish.

use std::collections::VecDeque;
use std::time::Instant;

use chat_shared::ipc::{ReloadPhase, ReloadSummary};
use chat_shared::status::Phase;

use crate::pid::Pid;

/// What the plan needs to know of one slot of the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SlotView {
    pub(super) phase: Phase,
    pub(super) pid: Option<Pid>,
    /// Why the current process stopped or errored, for the failure message.
    pub(super) note: Option<String>,
    /// The successor beside the current process, if any: its pid and phase.
    pub(super) successor: Option<(Option<Pid>, Phase)>,
    /// Being removed (a scale down), not yet gone.
    pub(super) retiring: bool,
}

/// The app as it stands, each time the plan is stepped.
#[derive(Clone, Debug, Default)]
pub(super) struct Seen {
    pub(super) slots: Vec<SlotView>,
    /// Replacements finished since the last step: (slot, the successor's pid, or why it failed).
    pub(super) outcomes: Vec<(usize, Result<Option<Pid>, String>)>,
    /// Whether a successor can run beside the current process (see `App::can_surge`).
    pub(super) can_surge: bool,
}

/// One step to report to the operator (the caller names the app).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Report {
    pub(super) index: usize,
    pub(super) step: ReloadPhase,
    pub(super) old_pid: Option<Pid>,
    pub(super) new_pid: Option<Pid>,
    pub(super) ready_ms: Option<u64>,
    pub(super) message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Report(Report),
    /// Run instance `index` in place with the new spec: restarted when a process runs, else started.
    InPlace {
        index: usize,
        restart: bool,
    },
    /// Start a successor for instance `index` beside its current process.
    Replace {
        index: usize,
    },
    /// Add an instance at the end (the caller reports it with its new pid).
    AddSlot,
    /// Stop and remove instance `index` (its report is already among the actions).
    Retire {
        index: usize,
    },
    /// The reload of this app failed: the caller restores the previous spec for what starts next
    /// and answers with `why` and the count of instances already replaced.
    Fail {
        why: String,
        replaced: usize,
    },
    /// The reload of this app is done.
    Finish(ReloadSummary),
}

/// An instance being replaced.
#[derive(Clone, Debug)]
struct Active {
    index: usize,
    old_pid: Option<Pid>,
    started: Instant,
    new_pid: Option<Pid>,
    ready_ms: Option<u64>,
    /// No successor possible (the program binds its own port, or nothing ran): run in place.
    in_place: bool,
}

/// Where the reload of one app stands.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    name: String,
    started: Instant,
    batch: usize,
    pending: VecDeque<usize>,
    active: Vec<Active>,
    failed: Option<String>,
    /// Instance count of the new spec.
    target: usize,
    replaced: usize,
    added: usize,
    removed: usize,
}

impl Plan {
    /// A reload of `name` from `old_count` instances to `target`: every instance replaced (or only
    /// `only`) when `replace`, none for a scale.
    pub(super) fn new(
        name: String,
        old_count: usize,
        target: usize,
        replace: bool,
        only: Option<usize>,
        batch: usize,
        now: Instant,
    ) -> Plan {
        let pending = match (replace, only) {
            (false, _) => VecDeque::new(),
            (true, Some(index)) => (index..(index + 1).min(old_count.min(target))).collect(),
            (true, None) => (0..old_count.min(target)).collect(),
        };
        Plan {
            name,
            started: now,
            batch: batch.max(1),
            pending,
            active: Vec::new(),
            failed: None,
            target,
            replaced: 0,
            added: 0,
            removed: 0,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// What to do now that the app is as `seen` shows. After a `Fail` or a `Finish` the plan is done.
    pub(super) fn step(&mut self, seen: &Seen, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.finished_replacements(seen, &mut actions);
        self.observe_active(seen, now, &mut actions);
        self.start_more(seen, now, &mut actions);
        if !self.active.is_empty() || (self.failed.is_none() && !self.pending.is_empty()) {
            return actions;
        }
        if let Some(why) = self.failed.take() {
            actions.push(Action::Fail { why, replaced: self.replaced });
            return actions;
        }
        if self.rescale(seen, &mut actions) {
            actions.push(Action::Finish(ReloadSummary {
                app: self.name.clone(),
                replaced: self.replaced,
                added: self.added,
                removed: self.removed,
                duration_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            }));
        }
        actions
    }

    fn failure(&mut self, index: usize, why: &str) {
        let message = format!("instance {index} of {}: {why}", self.name);
        self.failed.get_or_insert(message);
    }

    /// Successors that took over, or failed.
    fn finished_replacements(&mut self, seen: &Seen, actions: &mut Vec<Action>) {
        for (index, result) in &seen.outcomes {
            let Some(pos) = self.active.iter().position(|a| a.index == *index && !a.in_place) else { continue };
            let active = self.active.remove(pos);
            match result {
                Ok(new_pid) => {
                    self.replaced += 1;
                    actions.push(report(&active, ReloadPhase::Done, *new_pid, active.ready_ms, None));
                }
                Err(why) => {
                    self.failure(*index, &format!("the new process failed: {why}"));
                    actions.push(report(&active, ReloadPhase::Failed, active.new_pid, None, Some(why.clone())));
                }
            }
        }
    }

    /// Successors that came up, and in-place restarts that came up or failed. Reports go out in
    /// slot order as seen, the in-place restarts that came up last.
    fn observe_active(&mut self, seen: &Seen, now: Instant, actions: &mut Vec<Action>) {
        let mut failures = Vec::new();
        let mut ended = Vec::new();
        for active in &mut self.active {
            let Some(slot) = seen.slots.get(active.index) else { continue };
            let since = now.saturating_duration_since(active.started).as_millis() as u64;
            if active.in_place {
                match slot.phase {
                    Phase::Online if slot.pid != active.old_pid => {
                        active.ready_ms = Some(since);
                        active.new_pid = slot.pid;
                        ended.push(active.index);
                    }
                    Phase::Errored | Phase::Stopped => {
                        let why = slot.note.clone().unwrap_or_else(|| "stopped".into());
                        actions.push(report(active, ReloadPhase::Failed, None, None, Some(why.clone())));
                        failures.push((active.index, why));
                        ended.push(active.index);
                    }
                    _ => {}
                }
                continue;
            }
            let Some((successor_pid, successor_phase)) = slot.successor else { continue };
            if active.new_pid.is_none() {
                active.new_pid = successor_pid;
            }
            if active.ready_ms.is_none() && successor_phase == Phase::Online {
                active.ready_ms = Some(since);
                let message = Some("old process draining".into());
                actions.push(report(active, ReloadPhase::Ready, active.new_pid, Some(since), message));
            }
        }
        for (index, why) in failures {
            self.failure(index, &why);
        }
        for active in self.active.iter().filter(|a| a.in_place && a.new_pid.is_some()) {
            self.replaced += 1;
            let message = Some("restarted in place".into());
            actions.push(report(active, ReloadPhase::Done, active.new_pid, active.ready_ms, message));
        }
        self.active.retain(|a| !ended.contains(&a.index));
    }

    /// More replacements, `batch` at a time, unless one failed.
    fn start_more(&mut self, seen: &Seen, now: Instant, actions: &mut Vec<Action>) {
        while self.failed.is_none() && self.active.len() < self.batch {
            let Some(index) = self.pending.pop_front() else { break };
            let old_pid = seen.slots.get(index).and_then(|s| s.pid);
            let in_place = !seen.can_surge || old_pid.is_none();
            let active = Active { index, old_pid, started: now, new_pid: None, ready_ms: None, in_place };
            actions.push(report(&active, ReloadPhase::Starting, None, None, None));
            actions.push(if in_place {
                Action::InPlace { index, restart: old_pid.is_some() }
            } else {
                Action::Replace { index }
            });
            self.active.push(active);
        }
    }

    /// Instances added or removed to reach the target; true once the count is the target.
    fn rescale(&mut self, seen: &Seen, actions: &mut Vec<Action>) -> bool {
        let count = seen.slots.len();
        for _ in count..self.target {
            self.added += 1;
            actions.push(Action::AddSlot);
        }
        if count <= self.target {
            return true;
        }
        for (index, slot) in seen.slots.iter().enumerate().skip(self.target) {
            if !slot.retiring {
                self.removed += 1;
                actions.push(Action::Report(Report {
                    index,
                    step: ReloadPhase::Scaled,
                    old_pid: slot.pid,
                    new_pid: None,
                    ready_ms: None,
                    message: Some("removed".into()),
                }));
                actions.push(Action::Retire { index });
            }
        }
        // Retired slots are reaped by the daemon; the count is checked again then.
        false
    }
}

fn report(
    active: &Active,
    step: ReloadPhase,
    new_pid: Option<Pid>,
    ready_ms: Option<u64>,
    message: Option<String>,
) -> Action {
    Action::Report(Report { index: active.index, step, old_pid: active.old_pid, new_pid, ready_ms, message })
}

#[cfg(test)]
mod tests;
