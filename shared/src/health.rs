//! The body of a worker's `GET /health`, which the supervisor's probe and operators both read.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthBody {
    pub status: HealthStatus,
    pub uptime_ms: u64,
    pub version: String,
    pub pid: u32,
    pub instance: Option<String>,
    /// Socket.IO connections open on this process.
    pub connections: usize,
    /// Rooms with at least one member on this process.
    #[serde(default)]
    pub rooms: usize,
    /// Room messages this process has delivered since it started (a counter).
    #[serde(default)]
    pub messages: u64,
    /// How this worker reaches the others (absent from workers that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
    /// Polling sessions' connections passed between the instances of a shared port (cluster mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffHealth>,
}

/// Counters since the worker started, of connections whose first request named another
/// instance's session (see the worker's `handoff` module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffHealth {
    /// Accepted here and handed to the instance with the session.
    pub handed: u64,
    /// Handed in by another instance.
    pub taken: u64,
    /// Offered to an instance that never answered: closed (the client retries).
    pub lost: u64,
}

/// The link that shares rooms with the other workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    /// `redis`, `local` (the daemon's bus) or `none` (a worker run alone).
    pub via: String,
    pub connected: bool,
    /// Why the link is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For how long it has been down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_ms: Option<u64>,
    /// Messages from the other workers dropped because this worker fell behind (a counter).
    #[serde(default)]
    pub dropped: u64,
    /// Commands Redis refused while connected (a counter): what the chat keeps there was not kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: u64,
    /// The latest refusal, while recent; the worker then reports itself `degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    /// Serving its own clients, but cut off from the other workers (Redis or the local bus is down).
    /// Served with HTTP 200: restarting the worker would not bring the link back.
    Degraded,
    /// Shutting down: no new work should be sent here. Served with HTTP 503.
    Draining,
}
