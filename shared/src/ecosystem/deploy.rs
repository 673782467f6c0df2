//! `[deploy.NAME]` tables: where and how `chatctl deploy NAME` ships the app (PM2's `deploy`
//! section, same keys): the typed table, its checks, and the resolved [`DeploySpec`] the CLI runs.
//!
//! The values end up in a shell script and on ssh's command line, so the checks refuse what could be
//! read as something else there: a host or user starting with `-` (an ssh option), control
//! characters, a relative `path` (it would depend on the remote login directory).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::model::Ecosystem;
use super::schema::EnvValue;
use super::validate::Problem;

/// Releases kept on each host when the table does not say: the current one and four to revert to.
pub const DEFAULT_KEEP_RELEASES: u32 = 5;
/// What is deployed when the table names no `ref`: the repository's default branch.
pub const DEFAULT_REF: &str = "HEAD";

/// One `[deploy.NAME]` table, as written. PM2's key names (`pre-setup`, `ssh_options`, ...), so
/// that an operator coming from `ecosystem.config.js` finds them where they were.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// The ssh user (default: ssh's own choice, from `~/.ssh/config` or the local user).
    pub user: Option<String>,
    /// One host or a list of hosts, deployed one after the other (or at once with `--parallel`);
    /// `user@host` and `ssh://[user@]host:port` are passed to ssh as they are.
    pub host: Option<OneOrMany>,
    /// The ssh port (default: ssh's own, usually 22).
    pub port: Option<u16>,
    /// Options passed to ssh as `-o OPTION` (`"StrictHostKeyChecking=yes"`): one string or a list.
    pub ssh_options: Option<OneOrMany>,
    /// A private key for ssh (`-i`); relative to the ecosystem file, `~/` is the home directory.
    pub key: Option<PathBuf>,
    /// Forward the ssh agent to the hosts (`-A`), so they can fetch a private repository with your
    /// keys; `false` refuses it (`-a`); unset leaves it to your ssh configuration.
    pub forward_agent: Option<bool>,
    /// The git repository the hosts fetch from (they need read access to it).
    pub repo: Option<String>,
    /// The branch, tag or commit to deploy (`origin/` is optional); default: the default branch.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The directory on each host, absolute or under the login's home (`~/app`): `releases/`,
    /// `shared/`, `repo` (a mirror) and the `current` link.
    pub path: Option<String>,
    /// Run on each host before `setup` creates anything, in the login directory.
    #[serde(rename = "pre-setup")]
    pub pre_setup: Option<String>,
    /// Run on each host after `setup`, in `path`.
    #[serde(rename = "post-setup")]
    pub post_setup: Option<String>,
    /// Run here, in the ecosystem file's directory, once before any host is touched.
    #[serde(rename = "pre-deploy-local")]
    pub pre_deploy_local: Option<String>,
    /// Run on each host in the new release (`path/current`) once the link points at it: the build
    /// and the zero-downtime reload, e.g. `cargo build --release && chatctl start production --reload`.
    #[serde(rename = "post-deploy")]
    pub post_deploy: Option<String>,
    /// Exported on the hosts for every step and hook (values as written: no shell expansion).
    pub env: Option<BTreeMap<String, EnvValue>>,
    /// Releases kept on each host (the current one included); older ones are deleted after a deploy.
    pub keep_releases: Option<u32>,
}

/// A string or a list of strings: PM2's `host` and `ssh_options` may be either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    out.push(item);
                }
                Ok(OneOrMany(out))
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

impl schemars::JsonSchema for OneOrMany {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OneOrMany".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "oneOf": [{ "type": "string" }, { "type": "array", "items": { "type": "string" } }]
        })
    }
}

/// A deploy target ready to run: defaults applied, the key's path made absolute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploySpec {
    pub name: String,
    pub user: Option<String>,
    /// At least one, in the file's order.
    pub hosts: Vec<String>,
    pub port: Option<u16>,
    pub ssh_options: Vec<String>,
    pub key: Option<PathBuf>,
    pub forward_agent: Option<bool>,
    pub repo: String,
    pub git_ref: String,
    /// On the hosts: absolute, or `~/...` under the login's home.
    pub path: String,
    pub pre_setup: Option<String>,
    pub post_setup: Option<String>,
    pub pre_deploy_local: Option<String>,
    pub post_deploy: Option<String>,
    pub env: BTreeMap<String, String>,
    pub keep_releases: usize,
    /// Where `pre-deploy-local` runs: the ecosystem file's directory.
    pub local_dir: PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no deploy target `{name}` in {file}; targets: {known}")]
pub struct UnknownDeploy {
    pub name: String,
    pub file: String,
    pub known: String,
}

impl Ecosystem {
    /// The `[deploy.NAME]` table, resolved. `home` expands a `key` written `~/...`.
    pub fn deploy(&self, name: &str, home: Option<&Path>) -> Result<DeploySpec, UnknownDeploy> {
        let Some((_, c)) = self.deploys.iter().find(|(n, _)| n == name) else {
            let known = self.deploys.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>();
            let known =
                if known.is_empty() { "(none: add a [deploy.NAME] table)".to_owned() } else { known.join(", ") };
            return Err(UnknownDeploy { name: name.to_owned(), file: self.file.display().to_string(), known });
        };
        let key = c.key.as_ref().map(|key| match (key.strip_prefix("~"), home) {
            (Ok(rest), Some(home)) => home.join(rest),
            _ => std::path::absolute(self.dir.join(key)).unwrap_or_else(|_| self.dir.join(key)),
        });
        // Validation guarantees the required keys; the defaults below are never used for them.
        Ok(DeploySpec {
            name: name.to_owned(),
            user: c.user.clone(),
            hosts: c.host.clone().map(|h| h.0).unwrap_or_default(),
            port: c.port,
            ssh_options: c.ssh_options.clone().map(|w| w.0).unwrap_or_default(),
            key,
            forward_agent: c.forward_agent,
            repo: c.repo.clone().unwrap_or_default(),
            git_ref: c.git_ref.clone().unwrap_or_else(|| DEFAULT_REF.to_owned()),
            path: c.path.clone().unwrap_or_default().trim_end_matches('/').to_owned(),
            pre_setup: c.pre_setup.clone(),
            post_setup: c.post_setup.clone(),
            pre_deploy_local: c.pre_deploy_local.clone(),
            post_deploy: c.post_deploy.clone(),
            env: c.env.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
            keep_releases: c.keep_releases.unwrap_or(DEFAULT_KEEP_RELEASES) as usize,
            local_dir: std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone()),
        })
    }
}

/// Every problem of one `[deploy.NAME]` table, located at its keys.
pub(crate) fn problems(name: &str, c: &DeployConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |key: &str, message: String| {
        let key_candidates = vec![format!("deploy.{name}.{key}"), format!("deploy.{name}")];
        out.push(Problem { key_candidates, message });
    };
    match c.host.as_ref().map(|h| h.0.as_slice()) {
        None | Some([]) => problem("host", "missing `host`: a host name or a list of them".to_owned()),
        Some(hosts) => {
            for host in hosts {
                if let Err(why) = ssh_word(host) {
                    problem("host", format!("host {host:?}: {why}"));
                }
            }
            if let Some(twice) = hosts.iter().enumerate().find_map(|(i, h)| hosts[..i].contains(h).then_some(h)) {
                problem("host", format!("host {twice:?} is listed twice"));
            }
        }
    }
    if let Some(Err(why)) = c.user.as_deref().map(ssh_word) {
        problem("user", why);
    }
    for option in c.ssh_options.iter().flat_map(|w| &w.0) {
        if !option.contains('=') || option.starts_with('-') || has_control(option) {
            problem("ssh_options", format!("{option:?}: write each as Name=value (it is passed as -o Name=value)"));
        }
    }
    match c.repo.as_deref() {
        None => problem("repo", "missing `repo`: the git repository the hosts fetch".to_owned()),
        Some(repo) if repo.trim().is_empty() || repo.starts_with('-') || has_control(repo) => {
            problem("repo", format!("{repo:?} is not a repository address"))
        }
        Some(_) => {}
    }
    if let Some(git_ref) = &c.git_ref
        && (git_ref.is_empty()
            || git_ref.starts_with('-')
            || git_ref.contains(char::is_whitespace)
            || has_control(git_ref))
    {
        problem("ref", format!("{git_ref:?} is not a branch, tag or commit"));
    }
    match c.path.as_deref() {
        None => problem("path", "missing `path`: the directory on the hosts".to_owned()),
        Some(path) if !remote_dir(path) => problem(
            "path",
            format!("{path:?}: an absolute directory on the hosts other than /, or one under the login's home (~/app)"),
        ),
        Some(_) => {}
    }
    for (key, hook) in [
        ("pre-setup", &c.pre_setup),
        ("post-setup", &c.post_setup),
        ("pre-deploy-local", &c.pre_deploy_local),
        ("post-deploy", &c.post_deploy),
    ] {
        if hook.as_deref().is_some_and(|h| h.trim().is_empty() || h.contains('\0')) {
            problem(key, "an empty command: leave the key out instead".to_owned());
        }
    }
    // Exported by the hosts' shell: names it can export.
    for var in c.env.iter().flat_map(BTreeMap::keys) {
        let exportable = var.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !exportable {
            problem(&format!("env.{var}"), format!("{var:?}: a shell cannot export it (letters, digits, '_')"));
        }
    }
    if c.keep_releases == Some(0) {
        problem("keep_releases", "must be at least 1 (the current release)".to_owned());
    }
    out
}

/// `/srv/app` or `~/app`: where a deploy lives cannot depend on the directory ssh logs in to.
fn remote_dir(path: &str) -> bool {
    let rest = path.strip_prefix("~/").or_else(|| path.strip_prefix('/'));
    rest.is_some_and(|rest| !rest.trim_end_matches('/').is_empty()) && !has_control(path)
}

/// A host or user name as ssh's command line takes it: never an option, one word.
fn ssh_word(word: &str) -> Result<(), String> {
    if word.is_empty() {
        Err("empty".to_owned())
    } else if word.starts_with('-') {
        Err("cannot start with '-' (ssh would read it as an option)".to_owned())
    } else if word.contains(char::is_whitespace) || has_control(word) {
        Err("cannot contain spaces or control characters".to_owned())
    } else {
        Ok(())
    }
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}
