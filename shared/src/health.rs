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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    /// Shutting down: no new work should be sent here. Served with HTTP 503.
    Draining,
}
