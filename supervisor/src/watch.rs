//! Watch mode (the development profile): file changes under the watched paths restart the app once
//! they settle. The daemon's home, the log directories, `target/`, `.git/` and `node_modules/` are always ignored, so an
//! app's own logs or a build never cause a restart loop (PM2 users' classic trap).

use std::path::{Path, PathBuf};

use chat_shared::spec::WatchSpec;
use globset::{Glob, GlobSet, GlobSetBuilder};
use notify_debouncer_full::notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

/// Names ignored wherever they appear.
const ALWAYS_IGNORED: &[&str] = &["target", ".git", "node_modules"];

/// A running watch; dropping it stops watching.
pub(crate) struct AppWatcher {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    #[error("invalid ignore_watch pattern {pattern:?}")]
    Pattern {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("cannot watch {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify_debouncer_full::notify::Error,
    },
}

/// What is not a reason to restart.
pub(crate) struct Ignore {
    globs: GlobSet,
    /// Absolute directories (the log directories).
    dirs: Vec<PathBuf>,
    cwd: PathBuf,
}

impl Ignore {
    pub(crate) fn new(patterns: &[String], dirs: Vec<PathBuf>, cwd: &Path) -> Result<Ignore, WatchError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in ALWAYS_IGNORED.iter().map(|p| (*p).to_owned()).chain(patterns.iter().cloned()) {
            // A bare name matches any component; a path is relative to cwd. Either ignores a matched
            // directory's whole content.
            let anchored = if pattern.contains('/') {
                format!("{}/{}", cwd.display(), pattern.trim_start_matches("./"))
            } else {
                format!("**/{pattern}")
            };
            for glob in [anchored.clone(), format!("{anchored}/**")] {
                let glob =
                    Glob::new(&glob).map_err(|source| WatchError::Pattern { pattern: pattern.clone(), source })?;
                builder.add(glob);
            }
        }
        let globs = builder.build().map_err(|source| WatchError::Pattern { pattern: patterns.join(", "), source })?;
        Ok(Ignore { globs, dirs, cwd: cwd.to_owned() })
    }

    pub(crate) fn ignores(&self, path: &Path) -> bool {
        let absolute = if path.is_absolute() { path.to_owned() } else { self.cwd.join(path) };
        self.dirs.iter().any(|d| absolute.starts_with(d)) || self.globs.is_match(&absolute)
    }
}

impl AppWatcher {
    /// Watches `spec.paths`; `on_change` gets the changed paths of each settled burst that is not
    /// entirely ignored.
    pub(crate) fn start(
        spec: &WatchSpec,
        ignore: Ignore,
        on_change: impl Fn(Vec<PathBuf>) + Send + 'static,
    ) -> Result<AppWatcher, WatchError> {
        let handler = move |result: DebounceEventResult| match result {
            Ok(events) => {
                let mut changed: Vec<PathBuf> = events
                    .iter()
                    // Reads and opens are not changes.
                    .filter(|e| !matches!(e.kind, EventKind::Access(_)))
                    .flat_map(|e| e.paths.iter())
                    .filter(|p| !ignore.ignores(p))
                    .cloned()
                    .collect();
                changed.sort();
                changed.dedup();
                if !changed.is_empty() {
                    on_change(changed);
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "file watching");
                }
            }
        };
        let mut debouncer = new_debouncer(spec.delay.0, None, handler)
            .map_err(|source| WatchError::Watch { path: spec.paths.first().cloned().unwrap_or_default(), source })?;
        for path in &spec.paths {
            debouncer
                .watch(path, RecursiveMode::Recursive)
                .map_err(|source| WatchError::Watch { path: path.clone(), source })?;
        }
        Ok(AppWatcher { _debouncer: debouncer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_logs_builds_vcs_and_patterns() {
        let cwd = Path::new("/srv/app");
        let ignore = Ignore::new(&["*.tmp".into(), "public/uploads".into()], vec!["/srv/app/logs".into()], cwd)
            .expect("valid patterns");
        for path in [
            "/srv/app/logs/chat-out.log",
            "/srv/app/target/debug/chat-worker",
            "/srv/app/.git/index",
            "/srv/app/web/node_modules/x/index.js",
            "/srv/app/src/a.tmp",
            "/srv/app/public/uploads/cat.png",
            "/srv/app/target",
        ] {
            assert!(ignore.ignores(Path::new(path)), "{path} should be ignored");
        }
        for path in
            ["/srv/app/src/main.rs", "/srv/app/public/index.html", "/srv/app/targets.txt", "/srv/app/src/logs.rs"]
        {
            assert!(!ignore.ignores(Path::new(path)), "{path} should restart");
        }
    }
}
