//! The lifecycle of one instance slot as a pure state machine: `step(input, now)` returns what to do,
//! and the daemon does it. No clock, no I/O here, so every transition is tested with a table.
//!
//! ```text
//!            Start                 Spawned              probe passed
//!  Stopped ─────────► Launching ─────────► Starting ──────────────► Online
//!     ▲                  │ SpawnFailed        │ not ready in           │ N failed probes /
//!     │ exit (Stay)      ▼                    │ listen_timeout         │ Stop / Restart
//!     │               Errored                 ▼                        ▼
//!     └──────────────────────────────── Stopping ◄─────────────────────┘
//!                                      (signal, then SIGKILL at kill_at)
//!  Starting/Online ── exit ──► Waiting (restart_delay) ── Tick ──► Launching
//! ```

use std::time::{Duration, Instant};

use chat_shared::ecosystem::{Readiness, StopSignal};
use chat_shared::spec::AppSpec;
use chat_shared::status::{ExitKind, Phase};

use crate::pid::Pid;

/// How often a starting instance is probed until its first success: readiness in tens of ms.
pub(crate) const READY_PROBE_EVERY: Duration = Duration::from_millis(20);
/// Smallest first delay of a crash loop's backoff, however small `restart_delay` is.
const BACKOFF_FLOOR: Duration = Duration::from_millis(100);

/// The parts of an [`AppSpec`] the state machine needs.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) autorestart: bool,
    pub(crate) restart_delay: Duration,
    pub(crate) max_restart_delay: Duration,
    pub(crate) stop_exit_codes: Vec<i32>,
    pub(crate) min_uptime: Duration,
    pub(crate) max_restarts: u32,
    pub(crate) kill_signal: StopSignal,
    pub(crate) kill_timeout: Duration,
    pub(crate) listen_timeout: Duration,
    pub(crate) health: Option<HealthPolicy>,
    pub(crate) readiness: Option<Readiness>,
}

#[derive(Clone, Debug)]
pub(crate) struct HealthPolicy {
    pub(crate) interval: Duration,
    pub(crate) threshold: u32,
    pub(crate) grace: Duration,
}

impl Policy {
    /// A successor (replacement) either comes up or fails once; it is never restarted.
    pub(crate) fn for_successor(policy: &Policy) -> Policy {
        Policy { autorestart: false, max_restarts: 1, ..policy.clone() }
    }

    pub(crate) fn of(spec: &AppSpec) -> Policy {
        Policy {
            autorestart: spec.autorestart,
            restart_delay: spec.restart_delay.0,
            max_restart_delay: spec.max_restart_delay.0,
            stop_exit_codes: spec.stop_exit_codes.clone(),
            min_uptime: spec.min_uptime.0,
            max_restarts: spec.max_restarts,
            kill_signal: spec.kill_signal,
            kill_timeout: spec.kill_timeout.0,
            listen_timeout: spec.listen_timeout.0,
            readiness: spec.readiness,
            health: spec.health.as_ref().map(|h| HealthPolicy {
                interval: h.interval.0,
                threshold: h.unhealthy_threshold,
                grace: h.grace.0,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Not running and not wanted.
    Stopped,
    /// Wanted; the next spawn happens at `until`.
    Waiting {
        until: Instant,
    },
    /// The daemon is spawning the process right now (transient within one daemon turn).
    Launching,
    /// Running; not ready until a probe passes (or `deadline` passes, which restarts it).
    Starting {
        pid: Pid,
        since: Instant,
        deadline: Instant,
        probe: Probe,
    },
    Online {
        pid: Pid,
        since: Instant,
        ready_at: Instant,
        failures: u32,
        probe: Probe,
    },
    /// Asked to stop; SIGKILL to the group at `kill_at` unless it has exited by then.
    Stopping {
        pid: Pid,
        since: Instant,
        kill_at: Instant,
        killed: bool,
        then: AfterStop,
        /// Stopped because of an incident (not an operator): a forced kill adds to that note.
        unplanned: bool,
    },
    /// Cannot run as configured (the spawn itself failed); needs an explicit start or restart.
    Errored,
}

/// When an instance is probed next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The next probe is due at this moment.
    At(Instant),
    /// A probe is out (one at a time); its result schedules the next.
    InFlight,
    /// Not probed: no health check, or a notifying instance that has not said it is ready.
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterStop {
    Stay,
    Restart,
    /// Gave up (crash loop): `errored` once it has exited.
    GiveUp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    Start,
    Stop,
    Restart,
    Spawned {
        pid: Pid,
    },
    SpawnFailed(String),
    Exited(ExitKind),
    /// It exited, and its output shows why restarting cannot help (it binds the port chatctl
    /// holds): errored at once with `why`, which says what to change.
    Misconfigured {
        kind: ExitKind,
        why: String,
    },
    ProbePassed,
    ProbeFailed(String),
    /// `READY=1` arrived on the instance's notify socket.
    Ready,
    /// Time has passed; deadlines at or before `now` are due.
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Spawn,
    /// The stop signal to the process group.
    Signal {
        pid: Pid,
        signal: StopSignal,
    },
    /// SIGKILL to the process group (also sweeps what is left of a group whose leader exited).
    KillGroup {
        pid: Pid,
    },
    Probe {
        pid: Pid,
    },
}

/// One instance slot: its state plus what `chatctl list` reports about its history.
#[derive(Clone, Debug)]
pub(crate) struct Instance {
    pub(crate) state: State,
    /// Spawns after the first one.
    pub(crate) restarts: u32,
    pub(crate) spawned_once: bool,
    pub(crate) last_exit: Option<ExitKind>,
    /// Why the last unplanned restart, stop or error happened.
    pub(crate) note: Option<String>,
    /// Unplanned events so far (crashes, failed readiness or health, forced kills, spawn failures).
    pub(crate) incidents: u64,
    /// Consecutive unstable starts: runs that ended (or never got ready) before `min_uptime`.
    pub(crate) unstable: u32,
}

impl Instance {
    pub(crate) fn new() -> Self {
        Instance {
            state: State::Stopped,
            restarts: 0,
            spawned_once: false,
            last_exit: None,
            note: None,
            incidents: 0,
            unstable: 0,
        }
    }

    pub(crate) fn pid(&self) -> Option<Pid> {
        match self.state {
            State::Starting { pid, .. } | State::Online { pid, .. } | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// When the process started, for uptime.
    pub(crate) fn since(&self) -> Option<Instant> {
        match self.state {
            State::Starting { since, .. } | State::Online { since, .. } => Some(since),
            _ => None,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        match self.state {
            State::Stopped => Phase::Stopped,
            State::Waiting { .. } | State::Launching => Phase::Waiting,
            State::Starting { .. } => Phase::Starting,
            State::Online { .. } => Phase::Online,
            State::Stopping { .. } => Phase::Stopping,
            State::Errored => Phase::Errored,
        }
    }

    /// The earliest moment a `Tick` would change something.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { until } => Some(*until),
            State::Starting { deadline, probe: Probe::At(next), .. } => Some((*deadline).min(*next)),
            State::Starting { deadline, .. } => Some(*deadline),
            State::Online { probe: Probe::At(next), .. } => Some(*next),
            State::Stopping { kill_at, killed: false, .. } => Some(*kill_at),
            _ => None,
        }
    }

    /// Applies `input` at `now`; returns the effects for the daemon to carry out, in order.
    pub(crate) fn step(&mut self, input: Input, now: Instant, policy: &Policy) -> Vec<Effect> {
        let mut effects = Vec::new();
        let state = std::mem::replace(&mut self.state, State::Stopped);
        self.state = match (state, input) {
            // Wanting it to run.
            (State::Stopped | State::Errored | State::Waiting { .. }, Input::Start | Input::Restart) => {
                // An operator asking again starts a fresh crash-loop budget.
                self.unstable = 0;
                self.launch(&mut effects)
            }
            (State::Waiting { until }, Input::Tick) if now >= until => self.launch(&mut effects),
            (State::Launching, Input::Spawned { pid }) => match policy.readiness {
                Some(readiness) => State::Starting {
                    pid,
                    since: now,
                    deadline: now + policy.listen_timeout,
                    // A notifying instance is not probed until it has said it is ready.
                    probe: match readiness {
                        Readiness::Probe => Probe::At(now),
                        Readiness::Notify => Probe::Never,
                    },
                },
                // Nothing to wait for: running is all "online" can mean.
                None => self.online(pid, now, now, policy),
            },
            (State::Launching, Input::SpawnFailed(why)) => {
                self.incident(format!("spawn failed: {why}"));
                State::Errored
            }

            // Readiness and liveness.
            (State::Starting { pid, since, deadline, probe }, Input::Tick) => {
                if now >= deadline {
                    self.unstable += 1;
                    let then =
                        if self.unstable >= policy.max_restarts { AfterStop::GiveUp } else { AfterStop::Restart };
                    self.incident(format!(
                        "not ready within listen_timeout ({} ms){}",
                        policy.listen_timeout.as_millis(),
                        self.crash_loop_note(then, policy)
                    ));
                    self.stop(pid, now, then, true, policy, &mut effects)
                } else {
                    State::Starting { pid, since, deadline, probe: probe_if_due(probe, pid, now, &mut effects) }
                }
            }
            (State::Starting { pid, since, .. }, Input::ProbePassed) if policy.readiness == Some(Readiness::Probe) => {
                self.online(pid, since, now, policy)
            }
            (State::Starting { pid, since, .. }, Input::Ready) => self.online(pid, since, now, policy),
            (State::Starting { pid, since, deadline, .. }, Input::ProbeFailed(_)) => {
                State::Starting { pid, since, deadline, probe: Probe::At(now + READY_PROBE_EVERY) }
            }
            (State::Online { pid, since, ready_at, failures, probe }, Input::Tick) => {
                State::Online { pid, since, ready_at, failures, probe: probe_if_due(probe, pid, now, &mut effects) }
            }
            (State::Online { pid, since, ready_at, .. }, Input::ProbePassed) => {
                let probe = policy.health.as_ref().map_or(Probe::Never, |h| Probe::At(now + h.interval));
                State::Online { pid, since, ready_at, failures: 0, probe }
            }
            (State::Online { pid, since, ready_at, failures, .. }, Input::ProbeFailed(why)) => {
                let Some(health) = &policy.health else {
                    return effects;
                };
                let in_grace = now < ready_at + health.grace;
                let failures = if in_grace { failures } else { failures + 1 };
                if failures >= health.threshold {
                    self.incident(format!("{failures} health checks failed in a row, last: {why}"));
                    self.stop(pid, now, AfterStop::Restart, true, policy, &mut effects)
                } else {
                    State::Online { pid, since, ready_at, failures, probe: Probe::At(now + health.interval) }
                }
            }

            // Exits.
            // Only before it was ever ready: a program that served and later crashes gets the usual
            // restarts, whatever it may have logged along the way.
            (State::Starting { pid, .. }, Input::Misconfigured { kind, why }) => {
                self.last_exit = Some(kind);
                effects.push(Effect::KillGroup { pid });
                self.incident(format!("exited ({kind}): {why}"));
                State::Errored
            }
            // Elsewhere (online, a stop under way) it is an exit like any other.
            (state, Input::Misconfigured { kind, .. }) => {
                self.state = state;
                return self.step(Input::Exited(kind), now, policy);
            }
            (State::Starting { pid, since, .. } | State::Online { pid, since, .. }, Input::Exited(kind)) => {
                self.last_exit = Some(kind);
                effects.push(Effect::KillGroup { pid });
                let ran = now.saturating_duration_since(since);
                let done = matches!(kind, ExitKind::Code(code) if policy.stop_exit_codes.contains(&code));
                self.unstable = if ran < policy.min_uptime { self.unstable + 1 } else { 0 };
                if done {
                    // The program said it is finished: not an incident, not restarted.
                    self.note = Some(format!("{kind}: a stop_exit_code, not restarted"));
                    State::Stopped
                } else if !policy.autorestart {
                    self.incident(format!("exited unexpectedly ({kind}); autorestart is off"));
                    State::Stopped
                } else if self.unstable >= policy.max_restarts {
                    self.incident(format!(
                        "exited unexpectedly ({kind}){}",
                        self.crash_loop_note(AfterStop::GiveUp, policy)
                    ));
                    State::Errored
                } else {
                    let delay = self.backoff(pid, policy);
                    self.incident(format!(
                        "exited unexpectedly ({kind}) after {} ms; restart in {} ms",
                        ran.as_millis(),
                        delay.as_millis()
                    ));
                    State::Waiting { until: now + delay }
                }
            }
            (State::Stopping { pid, then, .. }, Input::Exited(kind)) => {
                self.last_exit = Some(kind);
                effects.push(Effect::KillGroup { pid });
                match then {
                    AfterStop::Stay => State::Stopped,
                    AfterStop::Restart => self.launch(&mut effects),
                    AfterStop::GiveUp => State::Errored,
                }
            }
            (State::Stopping { pid, since, kill_at, killed: false, then, unplanned }, Input::Tick)
                if now >= kill_at =>
            {
                let killed =
                    format!("did not stop within kill_timeout ({} ms): killed", policy.kill_timeout.as_millis());
                let why = match (&self.note, unplanned) {
                    (Some(cause), true) => format!("{cause}; {killed}"),
                    _ => killed,
                };
                self.incident(why);
                effects.push(Effect::KillGroup { pid });
                State::Stopping { pid, since, kill_at, killed: true, then, unplanned }
            }

            // Operator requests while running or stopping.
            (State::Starting { pid, .. } | State::Online { pid, .. }, Input::Stop) => {
                self.stop(pid, now, AfterStop::Stay, false, policy, &mut effects)
            }
            (State::Starting { pid, .. } | State::Online { pid, .. }, Input::Restart) => {
                self.stop(pid, now, AfterStop::Restart, false, policy, &mut effects)
            }
            (State::Stopping { pid, since, kill_at, killed, unplanned, .. }, Input::Stop) => {
                State::Stopping { pid, since, kill_at, killed, then: AfterStop::Stay, unplanned }
            }
            (State::Stopping { pid, since, kill_at, killed, unplanned, .. }, Input::Start | Input::Restart) => {
                State::Stopping { pid, since, kill_at, killed, then: AfterStop::Restart, unplanned }
            }
            (State::Waiting { .. } | State::Errored, Input::Stop) => State::Stopped,

            // Anything else changes nothing: a late probe result, a Tick before a deadline, Start
            // on a running instance.
            (state, _) => state,
        };
        effects
    }

    /// The restart delay after `self.unstable` consecutive unstable starts: `restart_delay` (at
    /// least [`BACKOFF_FLOOR`]) doubled per unstable start, capped, with ±25 % jitter so a crashing cluster does not restart
    /// in lockstep. The jitter is derived from the pid: deterministic, so tests need no clock or RNG.
    fn backoff(&self, pid: Pid, policy: &Policy) -> Duration {
        if self.unstable == 0 {
            // A crash after a stable run: replace it at once (the default delay is 0).
            return policy.restart_delay;
        }
        let doublings = self.unstable.saturating_sub(1).min(20);
        let first = policy.restart_delay.max(BACKOFF_FLOOR);
        let base = first.saturating_mul(1 << doublings).min(policy.max_restart_delay);
        let hash = u64::from(pid.raw()).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(self.unstable);
        let permille = 750 + (hash >> 32) % 500;
        base.mul_f64(permille as f64 / 1000.0)
    }

    fn crash_loop_note(&self, then: AfterStop, policy: &Policy) -> String {
        match then {
            AfterStop::GiveUp => format!(
                "; crash loop: {} consecutive starts ended within min_uptime ({} ms), max_restarts is {}: errored until `chatctl restart`",
                self.unstable,
                policy.min_uptime.as_millis(),
                policy.max_restarts
            ),
            _ => String::new(),
        }
    }

    fn incident(&mut self, why: String) {
        self.note = Some(why);
        self.incidents += 1;
    }

    /// Online since `ready_at`; the first health probe (if any) one interval later.
    fn online(&self, pid: Pid, since: Instant, ready_at: Instant, policy: &Policy) -> State {
        let probe = match &policy.health {
            Some(h) => Probe::At(ready_at + h.interval),
            None => Probe::Never,
        };
        State::Online { pid, since, ready_at, failures: 0, probe }
    }

    fn launch(&mut self, effects: &mut Vec<Effect>) -> State {
        if self.spawned_once {
            self.restarts += 1;
        }
        self.spawned_once = true;
        effects.push(Effect::Spawn);
        State::Launching
    }

    /// Stop signal now, SIGKILL at `kill_timeout`. An operator's stop passes `Stay`/`Restart` from a
    /// request; the machine's own stops (health, readiness) are `unplanned`.
    fn stop(
        &mut self,
        pid: Pid,
        now: Instant,
        then: AfterStop,
        unplanned: bool,
        policy: &Policy,
        effects: &mut Vec<Effect>,
    ) -> State {
        effects.push(Effect::Signal { pid, signal: policy.kill_signal });
        State::Stopping { pid, since: now, kill_at: now + policy.kill_timeout, killed: false, then, unplanned }
    }
}

fn probe_if_due(probe: Probe, pid: Pid, now: Instant, effects: &mut Vec<Effect>) -> Probe {
    match probe {
        Probe::At(next) if now >= next => {
            effects.push(Effect::Probe { pid });
            Probe::InFlight
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
