//! What the daemon task hears: requests from connections, and news from the tasks it started
//! (exit waiters, probes, notify sockets, watchers, builds). A module of its own so that those tasks
//! and the connection handlers depend on the message, not on the daemon that reads it.

use std::path::PathBuf;
use std::sync::Arc;

use chat_shared::health::HealthBody;
use chat_shared::ipc::{Call, Event, LogRecord, LogStream, LogTail, Response, Rollout};
use chat_shared::status::ExitKind;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::notify::Notice;
use crate::pid::Pid;

/// An app as the daemon's messages name it: unique for the daemon's life, so news about a deleted
/// app cannot reach a new one of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AppId(pub(super) u64);

impl AppId {
    pub(super) const FIRST: AppId = AppId(1);

    pub(super) fn next(self) -> AppId {
        AppId(self.0 + 1)
    }
}

impl std::fmt::Display for AppId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

pub(crate) enum Msg {
    /// A call: one answer, nothing before it.
    Call(Call, oneshot::Sender<Response>),
    /// An app's development build ended (see `build`).
    Built {
        app_id: AppId,
        result: Result<(), String>,
    },
    /// Processes are found by pid: a slot may hold two (a replacement), and slots move on.
    Exited {
        app_id: AppId,
        pid: Pid,
        status: ExitKind,
        /// What its output showed is wrong with how it is set up (see `diagnose`).
        misconfigured: Option<String>,
    },
    Probe {
        app_id: AppId,
        pid: Pid,
        result: Result<Option<HealthBody>, String>,
        latency_ms: u64,
    },
    /// A chat worker's figures, fetched with the memory samples.
    Stats {
        app_id: AppId,
        pid: Pid,
        body: HealthBody,
    },
    /// `key` names the process (see `slot::Proc::key`): a notify socket belongs to one process.
    Notify {
        app_id: AppId,
        key: u64,
        notice: Notice,
    },
    /// Watch mode saw these files change (after the debounce).
    Changed {
        app_id: AppId,
        paths: Vec<PathBuf>,
    },
    /// A `chatctl reload` or `chatctl scale`: progress goes to `events`, the outcome to `reply`.
    Rollout {
        rollout: Rollout,
        events: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Response>,
    },
    /// A `/metrics` scrape.
    Metrics(oneshot::Sender<String>),
    /// A `logs --follow` connection subscribing to captured lines.
    Follow(oneshot::Sender<broadcast::Receiver<Arc<LogRecord>>>),
    /// A `logs` connection asking which files to tail (it reads them itself, off this thread).
    LogFiles {
        app: Option<String>,
        stream: Option<LogStream>,
        reply: oneshot::Sender<Result<Vec<LogTail>, Response>>,
    },
}
