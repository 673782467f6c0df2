//! An instance slot: the process serving it and, during a replacement, its successor.
//!
//! A replacement (today: a memory limit; later: rolling reloads) is *surge first*: the successor is
//! started on the same listening socket while the current process keeps serving; only once the
//! successor is online is the current one stopped, and only once that one has exited does the
//! successor take the slot. Capacity never drops. A successor that fails before it is online is
//! stopped and the slot stays as it was (fail-closed); what follows is the caller's choice.

use std::net::{SocketAddr, TcpListener};

use chat_shared::status::Phase;

use crate::instance::Instance;
use crate::notify::NotifySocket;

/// One process of a slot, with what belongs to that process alone.
pub(super) struct Proc {
    pub(super) instance: Instance,
    /// What this process runs (and reruns on a crash): a reload gives successors a new spec while
    /// the processes not yet replaced keep theirs.
    pub(super) spec: std::sync::Arc<chat_shared::spec::AppSpec>,
    /// Routes notify messages to this process; unique within the app.
    pub(super) key: u64,
    /// Cluster mode: private loopback listener for this process's health probes.
    pub(super) admin: Option<TcpListener>,
    pub(super) probe_addr: Option<SocketAddr>,
    /// `readiness = "notify"`: this process's `NOTIFY_SOCKET`.
    pub(super) notify: Option<NotifySocket>,
    /// How the running process's descendants are found once it exits (set at each spawn).
    pub(super) tracked: Option<crate::descendants::Tracked>,
}

pub(super) struct Slot {
    pub(super) current: Proc,
    pub(super) successor: Option<Successor>,
    /// Fork mode with `inherit_socket`: this slot's own `port + i`, shared by current and successor.
    pub(super) own: Option<TcpListener>,
    pub(super) port: Option<u16>,
    /// Scaled away: removed once it is down.
    pub(super) retiring: bool,
    /// For `describe`: recent transitions and probe results, newest last, bounded.
    pub(super) history: std::collections::VecDeque<chat_shared::status::HistoryEntry>,
    pub(super) probes: std::collections::VecDeque<chat_shared::status::ProbeRecord>,
    pub(super) memory_peak: Option<u64>,
    /// Failed health probes since the slot was created.
    pub(super) probe_failures: u64,
    /// What the current process last reported on `/health`, when it is a chat worker.
    pub(super) chat: Option<chat_shared::status::ChatFigures>,
}

/// Entries kept per slot for `describe`.
const HISTORY: usize = 50;
const PROBES: usize = 20;

impl Slot {
    pub(super) fn new(current: Proc, own: Option<TcpListener>, port: Option<u16>) -> Slot {
        Slot {
            current,
            successor: None,
            own,
            port,
            retiring: false,
            history: Default::default(),
            probes: Default::default(),
            memory_peak: None,
            probe_failures: 0,
            chat: None,
        }
    }

    pub(super) fn record(&mut self, event: String) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history
            .push_back(chat_shared::status::HistoryEntry { at: chat_shared::time::Timestamp::now_millis(), event });
    }

    pub(super) fn record_probe(&mut self, latency_ms: u64, error: Option<String>) {
        self.probe_failures += u64::from(error.is_some());
        if self.probes.len() == PROBES {
            self.probes.pop_front();
        }
        self.probes.push_back(chat_shared::status::ProbeRecord {
            at: chat_shared::time::Timestamp::now_millis(),
            ok: error.is_none(),
            latency_ms,
            error,
        });
    }
}

pub(super) struct Successor {
    pub(super) proc: Proc,
    /// Why the slot is being replaced, for the log and `list`.
    pub(super) reason: String,
    /// What to do with the current process if the successor fails.
    pub(super) on_failure: OnFailure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OnFailure {
    /// Restart the current process in place (a memory limit must be enforced even so).
    Restart,
    /// Leave the current process serving (a failed deploy must not make things worse).
    Keep,
    /// Leave the current process to what it was told (the replacement was cancelled by a stop, a
    /// restart or a kill, which decided the current process's fate).
    Leave,
}

/// Which process of a slot an input is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Which {
    Current,
    Successor,
}

/// What a slot needs done after one of its processes changed state.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Nothing,
    /// The successor is online: stop the current process.
    StopCurrent,
    /// The current process left on its own during a replacement: keep it from restarting, the
    /// successor will take over.
    HoldCurrent,
    /// The current process is down and the successor online: swap them.
    Promote,
    /// The successor failed before it was online: stop it (if it runs) and forget it.
    Abandon,
}

impl Slot {
    pub(super) fn proc(&self, which: Which) -> Option<&Proc> {
        match which {
            Which::Current => Some(&self.current),
            Which::Successor => self.successor.as_ref().map(|s| &s.proc),
        }
    }

    pub(super) fn proc_mut(&mut self, which: Which) -> Option<&mut Proc> {
        match which {
            Which::Current => Some(&mut self.current),
            Which::Successor => self.successor.as_mut().map(|s| &mut s.proc),
        }
    }

    /// The replacement rule, from the two phases (pure).
    pub(super) fn next(&self) -> Next {
        let Some(successor) = &self.successor else { return Next::Nothing };
        let (current, next) = (self.current.instance.phase(), successor.proc.instance.phase());
        match (current, next) {
            (_, Phase::Errored | Phase::Stopped) => Next::Abandon,
            // Started once and already waiting for another try: it crashed before being online.
            (_, Phase::Waiting)
                if successor.proc.instance.restarts > 0 || successor.proc.instance.last_exit.is_some() =>
            {
                Next::Abandon
            }
            (Phase::Stopped | Phase::Errored, Phase::Online) => Next::Promote,
            (Phase::Waiting, _) => Next::HoldCurrent,
            (Phase::Starting | Phase::Online, Phase::Online) => Next::StopCurrent,
            _ => Next::Nothing,
        }
    }

    /// Swaps the successor in; it inherits the slot's history.
    pub(super) fn promote(&mut self) {
        let Some(successor) = self.successor.take() else { return };
        let old = std::mem::replace(&mut self.current, successor.proc);
        self.current.instance.restarts = old.instance.restarts + 1;
        self.current.instance.last_exit = old.instance.last_exit;
        self.current.instance.note = Some(format!("replaced: {}", successor.reason));
    }

    /// Every process of the slot is down.
    pub(super) fn is_down(&self) -> bool {
        let down = |p: &Proc| matches!(p.instance.phase(), Phase::Stopped | Phase::Errored);
        down(&self.current) && self.successor.as_ref().is_none_or(|s| down(&s.proc))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::instance::{AfterStop, Probe, State};
    use crate::pid::Pid;

    fn proc(state: State, crashed: bool) -> Proc {
        let mut instance = Instance::new();
        instance.state = state;
        if crashed {
            instance.last_exit = Some(chat_shared::status::ExitKind::Code(1));
        }
        let spec = std::sync::Arc::new(test_spec());
        Proc { instance, spec, key: 0, admin: None, probe_addr: None, notify: None, tracked: None }
    }

    fn test_spec() -> chat_shared::spec::AppSpec {
        let eco =
            chat_shared::ecosystem::Ecosystem::parse("[apps.a]\nscript = \"x\"\n", std::path::Path::new("e.toml"));
        eco.expect("valid").resolve(None, None, &Default::default()).expect("resolves").remove(0)
    }

    #[test]
    fn replacement_rule() {
        let now = Instant::now();
        let probe = Probe::At(now);
        let online = || State::Online { pid: Pid::new(1), since: now, ready_at: now, failures: 0, probe };
        let starting = || State::Starting { pid: Pid::new(2), since: now, deadline: now, probe };
        let stopping = || State::Stopping {
            pid: Pid::new(1),
            since: now,
            kill_at: now,
            killed: false,
            then: AfterStop::Stay,
            unplanned: false,
        };
        let waiting = || State::Waiting { until: now };
        let cases = [
            // (current, successor, successor crashed before, expected)
            (online(), State::Launching, false, Next::Nothing),
            (online(), starting(), false, Next::Nothing),
            (online(), online(), false, Next::StopCurrent),
            (stopping(), online(), false, Next::Nothing),
            (State::Stopped, online(), false, Next::Promote),
            (waiting(), starting(), false, Next::HoldCurrent),
            (online(), waiting(), true, Next::Abandon),
            (online(), State::Errored, false, Next::Abandon),
            (online(), State::Stopped, false, Next::Abandon),
        ];
        for (i, (current, successor, crashed, expected)) in cases.into_iter().enumerate() {
            let mut slot = Slot::new(proc(current, false), None, None);
            slot.successor =
                Some(Successor { proc: proc(successor, crashed), reason: String::new(), on_failure: OnFailure::Keep });
            assert_eq!(slot.next(), expected, "case {i}");
        }
    }
}
