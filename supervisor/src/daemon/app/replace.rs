//! Replacing and rescaling an app's processes: a slot's successor (memory limits, reloads), the
//! switch to a new spec, instances added and retired.

use std::time::Instant;

use chat_shared::ecosystem::ExecMode;
use chat_shared::spec::AppSpec;
use chat_shared::status::Phase;

use super::model::App;
use crate::daemon::effects::Effects;
use crate::daemon::slot::{Next, OnFailure, Slot, Successor, Which};
use crate::instance::{Input, Policy};
use crate::pid::Pid;

impl App {
    /// Whether two processes can serve one slot at once (all but fork mode where the program binds
    /// its own port).
    pub(in crate::daemon) fn can_surge(&self) -> bool {
        !matches!((&self.spec.listen, self.spec.exec_mode), (Some(l), ExecMode::Fork) if !l.inherit)
    }

    /// Makes `spec` the one new processes run (a reload); sockets stay as they are.
    pub(in crate::daemon) fn retarget(&mut self, spec: AppSpec) {
        self.policy = Policy::of(&spec);
        self.successor_policy = Policy::for_successor(&self.policy);
        self.spec = spec;
    }

    /// A new slot at the end (scaling up), started.
    pub(in crate::daemon) fn add_slot(&mut self, now: Instant, fx: &mut Effects) -> usize {
        let index = self.slots.len();
        let shared_port = self.shared.as_ref().and_then(|s| s.local_addr().ok()).map(|a| a.port());
        let slot = Self::own_socket(&self.spec, index).and_then(|own| {
            let port = own.as_ref().map(|(_, p)| *p).or(shared_port).or_else(|| self.spec.port_of(index));
            self.next_key += 1;
            let current = Self::new_proc(self.id, self.next_key, &self.spec, port, None, fx)?;
            Ok(Slot::new(current, own.map(|(socket, _)| socket), port))
        });
        match slot {
            Ok(slot) => {
                self.slots.push(slot);
                self.drive(index, Which::Current, Input::Start, now, fx);
            }
            Err(e) => tracing::error!(app = %self.spec.name, index, error = %e, "cannot add an instance"),
        }
        index
    }

    /// Stops slot `index` for good (scaling down); `reap_retired` removes it once it is down.
    pub(in crate::daemon) fn retire(&mut self, index: usize, now: Instant, fx: &mut Effects) {
        self.slots[index].retiring = true;
        self.cancel_successor(index, now, fx);
        self.drive(index, Which::Current, Input::Stop, now, fx);
    }

    /// Removes retired slots that are down, from the end (slot indices stay stable).
    pub(in crate::daemon) fn reap_retired(&mut self) {
        while self.slots.last().is_some_and(|s| s.retiring && s.is_down()) {
            self.slots.pop();
        }
    }

    /// Starts replacing slot `index` surge-first (see `slot`): a successor on the same socket, then
    /// the current process stops once the successor is online. Where two processes cannot share the
    /// slot (fork mode where the program binds its own port), the current one restarts in place.
    pub(in crate::daemon) fn replace(
        &mut self,
        index: usize,
        reason: String,
        on_failure: OnFailure,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some(slot) = self.slots.get(index) else { return };
        if slot.successor.is_some() {
            return;
        }
        if !self.can_surge() {
            tracing::warn!(app = %self.spec.name, index, reason, "restarting in place (the program binds its own port)");
            self.slots[index].current.instance.note = Some(format!("restarted: {reason}"));
            self.drive(index, Which::Current, Input::Restart, now, fx);
            return;
        }
        self.next_key += 1;
        let proc = match Self::new_proc(self.id, self.next_key, &self.spec, slot.port, None, fx) {
            Ok(proc) => proc,
            Err(e) => {
                tracing::error!(app = %self.spec.name, index, error = %e, "cannot prepare a replacement");
                return;
            }
        };
        tracing::warn!(app = %self.spec.name, index, reason, "replacing: starting a successor first");
        self.slots[index].successor = Some(Successor { proc, reason, on_failure });
        self.drive(index, Which::Successor, Input::Start, now, fx);
    }

    /// Cancels a replacement in progress (an operator's stop, restart or delete wins).
    pub(in crate::daemon) fn cancel_successor(&mut self, index: usize, now: Instant, fx: &mut Effects) {
        if let Some(successor) = self.slots.get_mut(index).and_then(|s| s.successor.as_mut()) {
            successor.on_failure = OnFailure::Leave;
            self.drive(index, Which::Successor, Input::Stop, now, fx);
        }
    }

    /// Carries a replacement forward after one of the slot's processes changed.
    pub(super) fn advance(&mut self, index: usize, now: Instant, fx: &mut Effects) {
        // Each step changes a phase, so this ends; the bound documents it.
        for _ in 0..4 {
            let Some(slot) = self.slots.get_mut(index) else { return };
            match slot.next() {
                Next::Nothing => return,
                Next::StopCurrent => {
                    let reason = slot.successor.as_ref().map(|s| s.reason.clone()).unwrap_or_default();
                    tracing::info!(app = %self.spec.name, index, reason, "successor online: stopping the process it replaces");
                    self.drive_one(index, Which::Current, Input::Stop, now, fx);
                }
                Next::HoldCurrent => self.drive_one(index, Which::Current, Input::Stop, now, fx),
                Next::Promote => {
                    slot.promote();
                    let pid = slot.current.instance.pid();
                    tracing::info!(app = %self.spec.name, index, pid = pid.map(Pid::raw), "replacement done");
                    self.outcomes.push((index, Ok(pid)));
                    return;
                }
                Next::Abandon => {
                    let Some(successor) = slot.successor.as_ref() else { return };
                    let running = successor.proc.instance.pid().is_some();
                    let on_failure = successor.on_failure;
                    if running {
                        // Let it stop; the next change of its phase comes back here.
                        self.drive_one(index, Which::Successor, Input::Stop, now, fx);
                        if self.slots[index].successor.as_ref().is_some_and(|s| s.proc.instance.pid().is_some()) {
                            return;
                        }
                    }
                    let slot = &mut self.slots[index];
                    let failed =
                        slot.successor.take().map(|s| s.proc.instance.note.unwrap_or_default()).unwrap_or_default();
                    tracing::warn!(app = %self.spec.name, index, failed, ?on_failure, "replacement abandoned");
                    self.outcomes.push((index, Err(if failed.is_empty() { "stopped".to_owned() } else { failed })));
                    let current_down = matches!(slot.current.instance.phase(), Phase::Stopped | Phase::Errored);
                    match on_failure {
                        OnFailure::Restart => self.drive_one(index, Which::Current, Input::Restart, now, fx),
                        // Held back for the successor: it must serve again.
                        OnFailure::Keep if current_down => self.drive_one(index, Which::Current, Input::Start, now, fx),
                        OnFailure::Keep | OnFailure::Leave => {}
                    }
                    return;
                }
            }
        }
    }
}
