//! The daemon task's state: the apps, the effects beside them, what is parked until it holds, and
//! the housekeeping between messages (deadlines, usage samples, memory limits). Apart from
//! `daemon::run`, which owns the loop, so that the modules adding methods to [`Daemon`] (`handle`,
//! `requests`, `build`, `cron`) import a sibling, not the module that declares them.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chat_shared::ipc::Response;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::app::App;
use super::effects::Effects;
use super::msg::{AppId, Msg};
use super::slot::{self, Which};
use super::{cron, reload};
use crate::home::Home;
use crate::instance::Input;
use crate::metrics::{Sampler, Usage};
use crate::pid::Pid;
use crate::probe::Prober;

/// Lines a follower may fall behind by before it loses some (and is told how many).
pub(super) const FOLLOW_BUFFER: usize = 8192;

/// How often memory and CPU are sampled for `list`.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// A `list` that finds a pid without usage samples at once unless the last sample is this recent
/// (a CLI polling for readiness must not turn into a sampling loop).
const FRESH_ENOUGH: Duration = Duration::from_millis(250);

/// How the daemon ended, for `chatctl run`'s exit code.
#[derive(Debug, Default)]
pub struct Outcome {
    pub instances_stopped: usize,
    /// Instances that had to be SIGKILLed after `kill_timeout`.
    pub forced: usize,
    /// `chatctl run` only: every instance is errored or stopped, nothing is left to supervise.
    pub nothing_left: bool,
    /// Some instance ended `errored` (a crash loop, a failed spawn).
    pub errored: bool,
}

/// A reply parked until a condition over some apps holds.
pub(super) struct Waiter {
    pub(super) app_ids: Vec<AppId>,
    /// Only this slot of the app (an instance-level stop or restart).
    pub(super) slot: Option<usize>,
    pub(super) until: Until,
    pub(super) reply: oneshot::Sender<Response>,
    pub(super) response: Response,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Every instance stopped or errored.
    Down,
    /// No instance stopping any more (a restart has spawned the new processes).
    Restarted,
}

/// Serving requests, or on the way out.
pub(super) enum Lifecycle {
    Serving,
    /// A kill began: every app is stopping, and the daemon exits once all are down.
    Killing(KilledBy),
    /// Every instance went down after a kill, and the kill's answer is sent.
    Stopped,
}

/// Who asked the daemon to exit: a signal has nobody to answer, a request has.
pub(super) enum KilledBy {
    Signal,
    Request(oneshot::Sender<Response>),
}

pub(crate) struct Daemon {
    pub(super) apps: Vec<App>,
    /// Apart from `apps`, so a method can drive an app and hand it the effects at once.
    pub(super) effects: Effects,
    pub(super) next_app_id: AppId,
    pub(super) sampler: Sampler,
    pub(super) usage: HashMap<u32, Usage>,
    pub(super) next_sample: Instant,
    pub(super) waiters: Vec<Waiter>,
    /// Rolling reloads under way.
    pub(super) reloads: Vec<reload::Job>,
    /// Apps whose new build waits for another reload of theirs to end (see `build`).
    pub(super) built_waiting: BTreeSet<AppId>,
    /// When each app with a `cron_restart` is reloaded next.
    pub(super) crons: cron::Crons,
    pub(super) lifecycle: Lifecycle,
    /// Instances that had to be SIGKILLed after `kill_timeout`, for the outcome.
    pub(super) forced: usize,
}

impl Daemon {
    /// `/metrics`: every instance's and app's figures.
    pub(super) fn metrics_text(&self, now: Instant) -> String {
        use crate::exporter::{AppFigures, InstanceFigures};
        let mut instances = Vec::new();
        let mut apps = Vec::new();
        for app in &self.apps {
            let status = app.status(now, &self.usage);
            for (slot, i) in app.slots.iter().zip(status.instances) {
                instances.push(InstanceFigures {
                    app: app.spec.name.clone(),
                    instance: i.index,
                    up: i.status == chat_shared::status::Phase::Online,
                    restarts: u64::from(i.restarts),
                    memory_bytes: i.memory_bytes,
                    cpu_percent: i.cpu_percent,
                    health_latency_seconds: slot.probes.back().map(|p| p.latency_ms as f64 / 1000.0),
                    health_failures: slot.probe_failures,
                    chat: slot.chat.clone(),
                });
            }
            let (log_lines, log_bytes) = app.logs.counts();
            apps.push(AppFigures { app: app.spec.name.clone(), reloads: app.reloads, log_lines, log_bytes });
        }
        crate::exporter::render(&instances, &apps)
    }

    /// The status table and the daemon's own footprint.
    pub(super) fn snapshot(&self, now: Instant) -> chat_shared::ipc::Snapshot {
        let me = std::process::id();
        let own = self.usage.get(&me);
        chat_shared::ipc::Snapshot {
            apps: self.apps.iter().map(|a| a.status(now, &self.usage)).collect(),
            daemon_pid: me,
            daemon_memory_bytes: own.map(|u| u.memory_bytes),
            daemon_cpu_percent: own.map(|u| u.cpu_percent),
        }
    }

    /// Every instance of every app online (and at least one app).
    pub(super) fn all_online(&self) -> bool {
        !self.apps.is_empty()
            && self
                .apps
                .iter()
                .flat_map(|a| &a.slots)
                .all(|s| s.current.instance.phase() == chat_shared::status::Phase::Online)
    }

    pub(super) fn new(home: Home, tx: mpsc::UnboundedSender<Msg>) -> Daemon {
        Daemon::new_with(Effects {
            descendants: crate::descendants::Descendants::setup(home.dir()),
            home,
            tx,
            prober: Prober::new(),
            follow: broadcast::channel(FOLLOW_BUFFER).0,
            reaper: None,
        })
    }

    /// A daemon with no app yet, carrying out effects with `effects`.
    pub(super) fn new_with(effects: Effects) -> Daemon {
        Daemon {
            apps: Vec::new(),
            effects,
            next_app_id: AppId::FIRST,
            sampler: Sampler::new(),
            usage: HashMap::new(),
            next_sample: Instant::now(),
            waiters: Vec::new(),
            reloads: Vec::new(),
            built_waiting: BTreeSet::new(),
            crons: cron::Crons::default(),
            lifecycle: Lifecycle::Serving,
            forced: 0,
        }
    }

    pub(super) fn next_deadline(&self) -> Instant {
        let nearest = self.apps.iter().filter_map(App::next_deadline).chain(self.crons.next()).min();
        nearest.map_or(self.next_sample, |d| d.min(self.next_sample))
    }

    /// Gives every instance whose deadline passed a `Tick`; samples usage when due.
    pub(super) fn tick(&mut self, now: Instant) {
        for app in &mut self.apps {
            let due: Vec<(usize, Which)> = app
                .procs()
                .filter(|(_, _, p)| p.instance.next_deadline().is_some_and(|d| d <= now))
                .map(|(index, which, _)| (index, which))
                .collect();
            for (index, which) in due {
                app.drive(index, which, Input::Tick, now, &mut self.effects);
            }
        }
        if now >= self.next_sample {
            self.sample(now);
        }
    }

    /// Samples now unless a sample covering every running pid is recent enough for `list`.
    pub(super) fn refresh_usage(&mut self, now: Instant) {
        let missing = self
            .apps
            .iter()
            .flat_map(|a| a.procs().filter_map(|(_, _, p)| p.instance.pid()))
            .any(|p| !self.usage.contains_key(&p.raw()));
        let recent = self.next_sample.saturating_duration_since(now) > SAMPLE_EVERY - FRESH_ENOUGH;
        if missing && !recent {
            self.sample(now);
        }
    }

    pub(super) fn sample(&mut self, now: Instant) {
        let pids: Vec<u32> =
            self.apps.iter().flat_map(|a| a.procs().filter_map(|(_, _, p)| p.instance.pid())).map(Pid::raw).collect();
        self.usage = if pids.is_empty() { HashMap::new() } else { self.sampler.sample(&pids) };
        // The daemon alone, for `monit`'s footprint line (its tree holds every instance).
        if let Some(own) = self.sampler.sample_self() {
            self.usage.insert(std::process::id(), own);
        }
        // Sample as often as the most demanding memory limit asks, and at least every SAMPLE_EVERY.
        let every = self
            .apps
            .iter()
            .filter(|a| a.spec.max_memory.is_some())
            .map(|a| a.spec.memory_check_interval.0)
            .fold(SAMPLE_EVERY, Duration::min);
        self.next_sample = now + every;
        self.enforce_memory(now);
        for app in &self.apps {
            app.fetch_chat_figures(&self.effects);
        }
    }

    /// Replaces every online instance whose process tree passed its app's `max_memory_restart`.
    pub(super) fn enforce_memory(&mut self, now: Instant) {
        for app in &mut self.apps {
            let Some(limit) = app.spec.max_memory else { continue };
            for index in 0..app.slots.len() {
                let slot = &app.slots[index];
                let online = slot.current.instance.phase() == chat_shared::status::Phase::Online;
                let Some(used) =
                    slot.current.instance.pid().and_then(|p| self.usage.get(&p.raw())).map(|u| u.memory_bytes)
                else {
                    continue;
                };
                if online && slot.successor.is_none() && used > limit.0 {
                    let reason = format!(
                        "memory {} over max_memory_restart {limit}",
                        chat_shared::units::ByteSize(used).to_string_rounded()
                    );
                    app.replace(index, reason, slot::OnFailure::Restart, now, &mut self.effects);
                }
            }
        }
    }

    pub(super) fn outcome(&self, nothing_left: bool) -> Outcome {
        let instances_stopped = self.apps.iter().map(|a| a.slots.len()).sum();
        let errored = self
            .apps
            .iter()
            .flat_map(|a| &a.slots)
            .any(|s| s.current.instance.phase() == chat_shared::status::Phase::Errored);
        Outcome { instances_stopped, forced: self.forced, nothing_left, errored }
    }

    /// Reloads every app whose `cron_restart` fired, and schedules the apps that gained one.
    ///
    /// An app that is down (stopped by an operator, errored) is left down: a schedule restarts
    /// what runs, it does not undo a stop. One already being reloaded is left to that reload.
    pub(super) fn run_crons(&mut self, now: Instant) {
        let wall = chrono::Local::now();
        self.crons.sync(self.apps.iter().map(|a| (a.id, a.spec.cron_restart.as_deref())), now, wall);
        for app_id in self.crons.take_due(now, wall) {
            let Some(app) = super::app::app(&self.apps, app_id) else { continue };
            if app.is_down() || app.deleting {
                tracing::info!(app = %app.spec.name, "cron_restart fired; the app is down, left as it is");
                continue;
            }
            if self.reloads.iter().any(|j| j.covers(app_id)) {
                tracing::info!(app = %app.spec.name, "cron_restart fired during a reload; that reload serves");
                continue;
            }
            tracing::info!(app = %app.spec.name, expression = ?app.spec.cron_restart, "cron_restart: reloading");
            // Nobody waits on this reload: its progress and outcome go to the daemon's log.
            let (events, _) = tokio::sync::mpsc::unbounded_channel();
            let (reply, _) = tokio::sync::oneshot::channel();
            let spec = app.spec.clone();
            self.reload(vec![spec], None, events, reply, now);
        }
    }
}
