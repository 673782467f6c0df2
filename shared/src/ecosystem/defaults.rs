//! The value of every key a file leaves out. A leaf: the checks need some of them (ports a fork-mode
//! app claims, the health interval a timeout must fit in) and the resolution applies them all.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::schema::ExecMode;
use crate::units::{ByteSize, HumanDuration};

/// Fork mode is PM2's default too: one process per instance, no shared socket.
pub(crate) const DEFAULT_EXEC_MODE: ExecMode = ExecMode::Fork;
/// Loopback by default: a chat backend normally sits behind a reverse proxy; set `host` to expose it.
pub(crate) const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub(crate) const DEFAULT_KILL_TIMEOUT: HumanDuration = HumanDuration(Duration::from_secs(5));
pub(crate) const DEFAULT_RESTART_DELAY: HumanDuration = HumanDuration(Duration::ZERO);
pub(crate) const DEFAULT_MAX_RESTART_DELAY: HumanDuration = HumanDuration(Duration::from_secs(15));
pub(crate) const DEFAULT_MIN_UPTIME: HumanDuration = HumanDuration(Duration::from_secs(10));
pub(crate) const DEFAULT_MAX_RESTARTS: u32 = 5;
pub(crate) const DEFAULT_LISTEN_TIMEOUT: HumanDuration = HumanDuration(Duration::from_secs(10));
pub(crate) const DEFAULT_LOG_MAX_SIZE: ByteSize = ByteSize(10 << 20);
pub(crate) const DEFAULT_LOG_RETAIN: u32 = 30;
pub(crate) const DEFAULT_MEMORY_CHECK_INTERVAL: HumanDuration = HumanDuration(Duration::from_secs(2));
pub(crate) const DEFAULT_WATCH_DELAY: HumanDuration = HumanDuration(Duration::from_millis(500));
pub(crate) const DEFAULT_HEALTH_PATH: &str = "/health";
pub(crate) const DEFAULT_HEALTH_INTERVAL: HumanDuration = HumanDuration(Duration::from_secs(30));
pub(crate) const DEFAULT_HEALTH_TIMEOUT: HumanDuration = HumanDuration(Duration::from_secs(5));
pub(crate) const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
pub(crate) const DEFAULT_HEALTH_GRACE: HumanDuration = HumanDuration(Duration::from_secs(5));

/// CPUs this process may run on (cgroup and affinity aware), as `instances = "max"` counts them.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
