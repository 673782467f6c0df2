//! Exit codes of `chatctl run` (and of `start` and `reload` where they apply), for scripts and unit
//! files.

/// The ecosystem file is invalid, or the apps could not be started (a port in use).
pub(crate) const CONFIG: u8 = 1;
/// Stopped on request, but some instance had to be SIGKILLed after kill_timeout.
pub(crate) const FORCED: u8 = 3;
/// Nothing left to supervise and some instance is errored (crash loop, failed spawn).
pub(crate) const ERRORED: u8 = 4;
/// `start`: some instance did not come online in time.
pub(crate) const NOT_ONLINE: u8 = 5;
/// `reload`: a new process failed; the reload stopped and the old ones keep serving.
pub(crate) const RELOAD_FAILED: u8 = 6;
/// `deploy`: a host failed (or a local hook did); the hosts after it were not touched.
pub(crate) const DEPLOY_FAILED: u8 = 7;
/// `update`: the daemon refused the new binary (or it refused the daemon's state); nothing changed.
pub(crate) const UPDATE_REFUSED: u8 = 8;
