//! What `describe` and the chat figures read from an app.

use std::net::TcpListener;
use std::time::Instant;

use chat_shared::status::Phase;

use super::model::App;
use crate::daemon::effects::Effects;
use crate::daemon::msg::Msg;
use crate::metrics::Usage;

impl App {
    /// `chatctl describe`: the spec in effect, the status, and each slot's details and history.
    pub(in crate::daemon) fn describe(
        &self,
        now: Instant,
        usage: &std::collections::HashMap<u32, Usage>,
    ) -> chat_shared::status::AppDescription {
        let files = self.logs.current_files(self.slots.len());
        let instances = self
            .slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let mut sockets = Vec::new();
                let addr = |l: &TcpListener| l.local_addr().map_or("?".into(), |a| a.to_string());
                if let Some(shared) = &self.shared {
                    sockets.push(format!("fd 3 http {} (shared)", addr(shared)));
                }
                if let Some(own) = &slot.own {
                    sockets.push(format!("fd 3 http {}", addr(own)));
                }
                if let Some(admin) = &slot.current.admin {
                    sockets.push(format!("fd 4 admin {} (health probes)", addr(admin)));
                }
                let log_files = files
                    .iter()
                    .filter(|(_, instance, _)| instance.is_none_or(|i| i == index))
                    .map(|(_, _, path)| path.display().to_string())
                    .collect();
                chat_shared::status::InstanceDetail {
                    index,
                    sockets,
                    log_files,
                    history: slot.history.iter().cloned().collect(),
                    probes: slot.probes.iter().cloned().collect(),
                    memory_peak_bytes: slot.memory_peak,
                }
            })
            .collect();
        chat_shared::status::AppDescription { spec: self.spec.clone(), status: self.status(now, usage), instances }
    }

    /// Fetches the chat figures of every online instance known to report them (a chat worker);
    /// the answers come back as `Msg::Stats`.
    pub(in crate::daemon) fn fetch_chat_figures(&self, fx: &Effects) {
        let Some(health) = &self.spec.health else { return };
        for slot in self.slots.iter().filter(|s| s.chat.is_some()) {
            let (Some(pid), Some(addr)) = (slot.current.instance.pid(), slot.current.probe_addr) else { continue };
            if slot.current.instance.phase() != Phase::Online {
                continue;
            }
            let (prober, tx, app_id, path, timeout) =
                (fx.prober.clone(), fx.tx.clone(), self.id, health.path.clone(), health.timeout.0);
            tokio::spawn(async move {
                if let Ok(Some(body)) = prober.probe(addr, &path, timeout, false).await {
                    let _ = tx.send(Msg::Stats { app_id, pid, body });
                }
            });
        }
    }
}
