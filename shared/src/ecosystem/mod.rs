//! The `ecosystem.toml` schema: what an operator may write, how it is checked, and how one profile of
//! it becomes the [`AppSpec`](crate::spec::AppSpec)s the daemon runs.
//!
//! # Layout
//! - `schema`: serde types of one app table (and of a profile's overrides).
//! - `model`: a loaded file, its apps and their profiles as written.
//! - `names`: what app, profile and environment variable names may be (the daemon checks them too).
//! - `defaults`: the value of every key left out.
//! - `load`: parse, type-check key by key, collect every issue with its location.
//! - `validate`: checks across keys and across apps (ports), for every profile.
//! - `resolve`: defaults, profile overlay, absolute paths (symlinked release directories resolved).
//! - `deploy`: `[deploy.NAME]` tables (`chatctl deploy`): their shape, checks and resolution.
//!
//! Imports run one way: `load` → `validate` → (`model`, `names`, `defaults`, `schema`), and
//! `resolve`/`files` → `model`; nothing below `load` imports it.
//! - `files`: the resolved `cwd` and `script` exist and can run (the file system, not the text).
//! - `issue`: located errors and warnings, rendered like a compiler's.

mod defaults;
mod deploy;
mod files;
mod issue;
mod json_schema;
mod load;
mod model;
pub(crate) mod names;
mod resolve;
mod schema;
mod validate;

pub use defaults::cpu_count;
pub use deploy::{DEFAULT_KEEP_RELEASES, DEFAULT_REF, DeployConfig, DeploySpec, UnknownDeploy};
pub use issue::{ConfigErrors, ConfigIssue, Severity};
pub use json_schema::ecosystem_schema;
pub use model::{AppEntry, Ecosystem};
pub use resolve::ResolveError;
pub use schema::{AppConfig, EnvValue, ExecMode, HealthConfig, Instances, LogType, Readiness, StopSignal, Watch};

#[cfg(test)]
mod tests;
