//! The contract between `chatctl` and `chat-worker`: what both sides must agree on and nothing else
//! (no runtime, no I/O beyond the framing helpers).
//!
//! # Layout
//! - [`bus`]: the local bus's frames (workers of one host share rooms through it).
//! - [`cron`]: `cron_restart` expressions and their next time.
//! - [`ecosystem`]: the `ecosystem.toml` schema, its validation and its resolution into specs.
//! - [`spec`]: an app as the daemon runs it.
//! - [`limits`]: bounds every spec respects (instances, durations).
//! - [`ipc`]: the CLI ↔ daemon protocol and its framing.
//! - [`status`]: what `chatctl list` shows.
//! - [`worker_env`]: environment variables the supervisor sets for its programs.
//! - [`health`]: the `/health` body.
//! - [`units`]: human durations and sizes, and their short forms in tables.
//! - [`sync`]: locks, held one way.
//! - [`time`]: moments as both programs show and store them (RFC 3339 text made from a time).

pub mod bus;
pub mod cron;
pub mod ecosystem;
pub mod health;
pub mod ipc;
pub mod limits;
pub mod spec;
pub mod status;
pub mod sync;
pub mod time;
pub mod units;
pub mod worker_env;
