//! What the daemon task hears: requests from connections, and news from the tasks it started
//! (exit waiters, probes, notify sockets, watchers, builds). A module of its own so that those tasks
//! and the connection handlers depend on the message, not on the daemon that reads it.

use std::path::PathBuf;
use std::sync::Arc;

use chat_shared::health::HealthBody;
use chat_shared::ipc::{Event, LogRecord, LogStream, LogTail, Request, Response, ScaleTo};
use chat_shared::spec::AppSpec;
use chat_shared::status::ExitKind;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::notify::Notice;

pub(crate) enum Msg {
    /// A one-shot request: one answer, nothing before it.
    Request(Request, oneshot::Sender<Response>),
    /// An app's development build ended (see `build`).
    Built {
        app_id: u64,
        result: Result<(), String>,
    },
    /// A successful build waited for another reload of its app to end: reload it now.
    BuiltWaiting {
        app_id: u64,
    },
    /// Processes are found by pid: a slot may hold two (a replacement), and slots move on.
    Exited {
        app_id: u64,
        pid: u32,
        status: ExitKind,
        /// What its output showed is wrong with how it is set up (see `diagnose`).
        misconfigured: Option<String>,
    },
    Probe {
        app_id: u64,
        pid: u32,
        result: Result<Option<HealthBody>, String>,
        latency_ms: u64,
    },
    /// A chat worker's figures, fetched with the memory samples.
    Stats {
        app_id: u64,
        pid: u32,
        body: HealthBody,
    },
    /// `key` names the process (see `slot::Proc::key`): a notify socket belongs to one process.
    Notify {
        app_id: u64,
        key: u64,
        notice: Notice,
    },
    /// Watch mode saw these files change (after the debounce).
    Changed {
        app_id: u64,
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

/// A request that replaces or adds instances over time, reporting each step: a reload of specs, of
/// one instance, or a scale. Taken apart from [`Request`] where the connection routes it, so the
/// daemon never matches a request that cannot be a rollout.
pub(crate) enum Rollout {
    Reload { apps: Vec<AppSpec>, batch: Option<usize> },
    Instance { app: String, instance: usize },
    Scale { app: String, to: ScaleTo },
}
