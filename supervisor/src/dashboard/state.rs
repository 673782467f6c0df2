//! What the dashboard knows and how keys and daemon events change it: a pure reducer, rendered by
//! `view` and driven by `mod`.

use std::collections::{HashMap, VecDeque};

use chat_shared::ipc::{LogRecord, Snapshot};
use chat_shared::status::InstanceStatus;

/// Samples kept per instance for the sparklines.
pub(crate) const HISTORY: usize = 120;
/// Log lines kept for the log pane.
const LOG_LINES: usize = 500;

/// What a key asks the daemon to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Restart { app: String, index: usize },
    Stop { app: String, index: usize },
    Reload { app: String },
    Quit,
}

/// A key, as the dashboard understands it (independent of the terminal library).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Up,
    Down,
    Char(char),
    Enter,
    Esc,
    Backspace,
}

pub(crate) struct Dashboard {
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) selected: usize,
    /// (app, index) → (cpu %, memory bytes), oldest first.
    pub(crate) history: HashMap<(String, usize), VecDeque<(f32, u64)>>,
    pub(crate) logs: VecDeque<LogRecord>,
    pub(crate) show_logs: bool,
    pub(crate) filter: String,
    pub(crate) editing_filter: bool,
    /// A reload waiting for `y`.
    pub(crate) confirm: Option<String>,
    /// Feedback for the operator (what was sent, what failed).
    pub(crate) message: Option<String>,
    /// The chat workers' message counters at the previous snapshot, for a rate.
    previous_messages: Option<(u64, std::time::Instant)>,
    /// Room messages per second across the workers, from the last two snapshots.
    pub(crate) messages_per_second: Option<f64>,
}

impl Dashboard {
    pub(crate) fn new() -> Dashboard {
        Dashboard {
            snapshot: None,
            selected: 0,
            history: HashMap::new(),
            logs: VecDeque::new(),
            show_logs: true,
            filter: String::new(),
            editing_filter: false,
            confirm: None,
            message: None,
            previous_messages: None,
            messages_per_second: None,
        }
    }

    /// Sums over the chat workers: (connections, rooms), if any reports them.
    pub(crate) fn chat_totals(&self) -> Option<(usize, usize)> {
        let snapshot = self.snapshot.as_ref()?;
        let figures: Vec<_> = snapshot.apps.iter().flat_map(|a| &a.instances).filter_map(|i| i.chat.as_ref()).collect();
        (!figures.is_empty())
            .then(|| (figures.iter().map(|f| f.connections).sum(), figures.iter().map(|f| f.rooms).sum()))
    }

    /// The rows shown: (app, instance), filtered by app name.
    pub(crate) fn rows(&self) -> Vec<(&str, &InstanceStatus)> {
        let Some(snapshot) = &self.snapshot else { return Vec::new() };
        snapshot
            .apps
            .iter()
            .filter(|a| self.filter.is_empty() || a.name.contains(&self.filter))
            .flat_map(|a| a.instances.iter().map(move |i| (a.name.as_str(), i)))
            .collect()
    }

    /// What concerns a whole app: a development build under way or failed, or a log problem.
    pub(crate) fn app_note(&self, app: &str) -> Option<&str> {
        let app = self.snapshot.as_ref()?.apps.iter().find(|a| a.name == app)?;
        app.build.as_deref().or(app.log_issue.as_deref())
    }

    pub(crate) fn selected_row(&self) -> Option<(String, usize)> {
        self.rows().get(self.selected).map(|(app, i)| ((*app).to_owned(), i.index))
    }

    pub(crate) fn on_snapshot(&mut self, snapshot: Snapshot) {
        let now = std::time::Instant::now();
        let total: u64 =
            snapshot.apps.iter().flat_map(|a| &a.instances).filter_map(|i| i.chat.as_ref()).map(|c| c.messages).sum();
        if let Some((before, at)) = self.previous_messages {
            let seconds = now.duration_since(at).as_secs_f64();
            // A restarted worker starts its counter again: never a negative rate.
            if seconds > 0.0 {
                self.messages_per_second = Some(total.saturating_sub(before) as f64 / seconds);
            }
        }
        self.previous_messages = Some((total, now));
        for app in &snapshot.apps {
            for i in &app.instances {
                let series = self.history.entry((app.name.clone(), i.index)).or_default();
                if series.len() == HISTORY {
                    series.pop_front();
                }
                series.push_back((i.cpu_percent.unwrap_or(0.0), i.memory_bytes.unwrap_or(0)));
            }
        }
        self.snapshot = Some(snapshot);
        self.selected = self.selected.min(self.rows().len().saturating_sub(1));
    }

    pub(crate) fn on_log(&mut self, record: LogRecord) {
        if self.logs.len() == LOG_LINES {
            self.logs.pop_front();
        }
        self.logs.push_back(record);
    }

    /// The selected instance's log lines, newest last.
    pub(crate) fn selected_logs(&self) -> Vec<&LogRecord> {
        let Some((app, index)) = self.selected_row() else { return Vec::new() };
        self.logs.iter().filter(|r| r.app == app && r.instance == index).collect()
    }

    pub(crate) fn on_key(&mut self, key: Key) -> Option<Command> {
        if self.editing_filter {
            match key {
                Key::Enter | Key::Esc => self.editing_filter = false,
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.selected = 0;
            return None;
        }
        if let Some(app) = self.confirm.take() {
            if key == Key::Char('y') {
                self.message = Some(format!("reloading {app}..."));
                return Some(Command::Reload { app });
            }
            self.message = Some("reload cancelled".into());
            return None;
        }
        let rows = self.rows().len();
        match key {
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => self.selected = (self.selected + 1).min(rows.saturating_sub(1)),
            Key::Char('q') | Key::Esc => return Some(Command::Quit),
            Key::Char('l') => self.show_logs = !self.show_logs,
            Key::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            Key::Char('r') => {
                let (app, index) = self.selected_row()?;
                self.message = Some(format!("restarting {app}[{index}]..."));
                return Some(Command::Restart { app, index });
            }
            Key::Char('s') => {
                let (app, index) = self.selected_row()?;
                self.message = Some(format!("stopping {app}[{index}]..."));
                return Some(Command::Stop { app, index });
            }
            Key::Char('R') => {
                let (app, _) = self.selected_row()?;
                self.message = Some(format!("reload {app} (every instance, one at a time)? y/n"));
                self.confirm = Some(app);
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chat_shared::ecosystem::ExecMode;
    use chat_shared::status::{AppStatus, Phase};

    use super::*;

    pub(crate) fn snapshot(apps: &[(&str, &[u32])]) -> Snapshot {
        Snapshot {
            apps: apps
                .iter()
                .map(|(name, pids)| AppStatus {
                    name: (*name).into(),
                    profile: None,
                    exec_mode: ExecMode::Cluster,
                    script: "x".into(),
                    port: Some(3000),
                    log_issue: None,
                    build: None,
                    instances: pids
                        .iter()
                        .enumerate()
                        .map(|(index, pid)| InstanceStatus {
                            index,
                            status: Phase::Online,
                            pid: Some(*pid),
                            port: Some(3000),
                            admin_addr: None,
                            uptime_ms: Some(61_000),
                            restarts: 0,
                            memory_bytes: Some(5 << 20),
                            cpu_percent: Some(1.5),
                            last_exit: None,
                            note: None,
                            last_probe: Some((true, 2)),
                            chat: Some(chat_shared::status::ChatFigures {
                                connections: 3,
                                rooms: 1,
                                messages: 10,
                                dropped: 0,
                                handed: 0,
                                taken: 0,
                                degraded: None,
                            }),
                        })
                        .collect(),
                })
                .collect(),
            daemon_pid: 1,
            daemon_memory_bytes: Some(10 << 20),
            daemon_cpu_percent: Some(0.1),
        }
    }

    #[test]
    fn keys_select_filter_and_ask_before_reloading() {
        let mut d = Dashboard::new();
        d.on_snapshot(snapshot(&[("chat", &[10, 11]), ("api", &[20])]));
        assert_eq!(d.on_key(Key::Char('j')), None);
        assert_eq!(d.on_key(Key::Char('r')), Some(Command::Restart { app: "chat".into(), index: 1 }));
        d.on_key(Key::Down);
        d.on_key(Key::Down);
        assert_eq!(d.selected_row(), Some(("api".into(), 0)), "stops at the last row");
        assert_eq!(d.on_key(Key::Char('R')), None, "a reload needs confirmation");
        assert_eq!(d.on_key(Key::Char('y')), Some(Command::Reload { app: "api".into() }));
        assert_eq!(d.on_key(Key::Char('R')), None);
        assert_eq!(d.on_key(Key::Char('n')), None, "anything but y cancels");
        d.on_key(Key::Char('/'));
        for c in "cha".chars() {
            d.on_key(Key::Char(c));
        }
        d.on_key(Key::Enter);
        assert_eq!(d.rows().len(), 2);
        assert_eq!(d.on_key(Key::Char('q')), Some(Command::Quit));
        assert_eq!(d.history[&("chat".to_owned(), 0)].len(), 1);
    }
}
