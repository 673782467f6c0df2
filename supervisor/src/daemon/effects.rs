//! What carrying out the instance machine's effects needs (spawning, probing, capturing output,
//! tracking descendants), held by the daemon in one field. Apart from the apps, so that a method
//! can borrow `apps` mutably and the effects beside it, plainly disjoint.

use std::sync::Arc;

use chat_shared::ipc::LogRecord;
use tokio::sync::{broadcast, mpsc};

use super::msg::Msg;
use crate::descendants::Descendants;
use crate::home::Home;
use crate::probe::Prober;
use crate::reaper::Reaper;

pub(super) struct Effects {
    /// Where the tasks an effect starts (exit waiters, probes, notify sockets) report back.
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) prober: Prober,
    /// Marks every instance as this home's (see `leftovers`).
    pub(super) home: Home,
    /// Every captured line, for `chatctl logs --follow`; costs nothing while nobody follows.
    pub(super) follow: broadcast::Sender<Arc<LogRecord>>,
    /// Told about every process group, so they die with the daemon; `None` when it could not start.
    pub(super) reaper: Option<Reaper>,
    /// Each spawn's cgroup or launch id, so that its descendants die with it.
    pub(super) descendants: Descendants,
}
