//! The `ecosystem.toml` schema: what an operator may write, how it is checked, and how one profile of
//! it becomes the [`AppSpec`](crate::spec::AppSpec)s the daemon runs.
//!
//! # Layout
//! - `schema`: serde types of one app table (and of a profile's overrides).
//! - `load`: parse, type-check key by key, collect every issue with its location.
//! - `validate`: checks across keys and across apps (ports), for every profile.
//! - `resolve`: defaults, profile overlay, absolute paths.
//! - `files`: the resolved `cwd` and `script` exist and can run (the file system, not the text).
//! - `issue`: located errors and warnings, rendered like a compiler's.

mod files;
mod issue;
mod json_schema;
mod load;
mod resolve;
mod schema;
pub(crate) mod validate;

pub use issue::{ConfigErrors, ConfigIssue, Severity};
pub use json_schema::ecosystem_schema;
pub use load::{AppEntry, Ecosystem};
pub use resolve::{ResolveError, cpu_count};
pub use schema::{AppConfig, EnvValue, ExecMode, HealthConfig, Instances, LogType, Readiness, StopSignal, Watch};

#[cfg(test)]
mod tests;
