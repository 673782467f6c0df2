//! Checks against the file system, run by the CLI on the specs it is about to send: a missing `cwd`
//! or a script that cannot run would otherwise pass validation and fail at spawn time, in the
//! daemon, as a bare "No such file or directory" (and spawn's ENOENT names the script even when the
//! missing path is the working directory). Kept apart from `parse`, which checks text only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::issue::{ConfigErrors, ConfigIssue, Severity};
use super::model::Ecosystem;
use super::validate::keys;
use crate::spec::AppSpec;

impl Ecosystem {
    /// Every `cwd` that is not a directory and every `script` that is missing or not executable
    /// (a bare command name is looked up in the app's `PATH`, as spawning it will), located at the
    /// key that set it.
    pub fn check_files(&self, specs: &[AppSpec]) -> Result<(), ConfigErrors> {
        let mut issues = Vec::new();
        for spec in specs {
            let mut problem = |key: &str, message: String| {
                let candidates = keys(&spec.name, spec.profile.as_deref(), key);
                let span = candidates.iter().find_map(|k| self.spans.get(k).cloned()).unwrap_or(0..0);
                issues.push(ConfigIssue::at(Severity::Error, &self.file, &self.text, span, &candidates[0], message));
            };
            if !spec.cwd.is_dir() {
                let why = if spec.cwd.exists() { "not a directory" } else { "no such directory" };
                problem("cwd", format!("{}: {why}", spec.cwd.display()));
                // A relative script is resolved against the cwd: its error would only repeat this one.
                continue;
            }
            match &spec.interpreted {
                // The interpreter must run, and the script must be there (it need not be executable).
                Some(file) => {
                    if let Err(why) = runnable(&spec.script, spec.env.get("PATH").map(String::as_str)) {
                        problem("interpreter", format!("{why} (it runs {file}; set `interpreter`)"));
                    }
                    if !Path::new(file).is_file() {
                        problem("script", format!("{file}: no such file"));
                    }
                }
                None => {
                    if let Err(why) = runnable(&spec.script, spec.env.get("PATH").map(String::as_str)) {
                        problem("script", why);
                    }
                }
            }
        }
        if issues.is_empty() { Ok(()) } else { Err(ConfigErrors { issues }) }
    }
}

/// Whether `script` (a path, or a command name looked up in `path`) names an executable file.
fn runnable(script: &str, path: Option<&str>) -> Result<(), String> {
    if script.contains('/') {
        return executable(Path::new(script));
    }
    // Without a PATH the spawn falls back to the C library's default: nothing to check against.
    let Some(path) = path else { return Ok(()) };
    let found = std::env::split_paths(path).map(|dir| dir.join(script)).find(|p| executable(p).is_ok());
    match found {
        Some(_) => Ok(()),
        None => Err(format!("`{script}` is not an executable in the app's PATH")),
    }
}

fn executable(path: &Path) -> Result<(), String> {
    let shown = PathBuf::from(path).display().to_string();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{shown}: no such file")),
        Err(e) => Err(format!("{shown}: {e}")),
        Ok(meta) if !meta.is_file() => Err(format!("{shown}: not a file")),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => Err(format!(
            "{shown} is not executable: `chmod +x` it, or run it through its interpreter (script = \"node\", args = [\"{}\"])",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use super::Ecosystem;

    /// (line, column, key, message) of every problem `check_files` finds in `text`, written as
    /// `eco.toml` into a temp dir holding `run.sh` (executable) and `data.txt` (not executable).
    fn problems(text: &str) -> Vec<(usize, usize, String, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, mode) in [("run.sh", 0o755), ("data.txt", 0o644)] {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let file = dir.path().join("eco.toml");
        std::fs::write(&file, text).expect("write");
        let eco = Ecosystem::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let env = BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]);
        let mut found = Vec::new();
        for profile in [None, Some("p")] {
            let Ok(specs) = eco.resolve(profile, None, &env) else { continue };
            if let Err(e) = eco.check_files(&specs) {
                found.extend(e.issues.into_iter().map(|i| (i.line, i.column, i.key, i.message)));
            }
        }
        found
    }

    #[test]
    fn a_missing_cwd_or_a_script_that_cannot_run_is_located_at_its_key() {
        assert_eq!(problems("[apps.a]\nscript = \"./run.sh\"\n"), vec![]);
        assert_eq!(problems("[apps.a]\nscript = \"sh\"\n"), vec![]);
        /// A file, and the (line, column, key, part of the message) of its one problem.
        type Case = (&'static str, (usize, usize, &'static str, &'static str));
        let cases: &[Case] = &[
            ("[apps.a]\nscript = \"./run.sh\"\ncwd = \"gone\"\n", (3, 1, "apps.a.cwd", "gone: no such directory")),
            ("[apps.a]\nscript = \"./data.txt\"\n", (2, 1, "apps.a.script", "data.txt is not executable")),
            ("[apps.a]\nscript = \"gone.js\"\n", (2, 1, "apps.a.script", "gone.js: no such file")),
            (
                "[apps.a]\nscript = \"run.sh\"\ninterpreter = \"no-such-interpreter\"\n",
                (3, 1, "apps.a.interpreter", "not an executable in the app's PATH"),
            ),
            ("[apps.a]\nscript = \"./nothing\"\n", (2, 1, "apps.a.script", "nothing: no such file")),
            (
                "[apps.a]\nscript = \"no-such-command-x\"\n",
                (2, 1, "apps.a.script", "not an executable in the app's PATH"),
            ),
            (
                "[apps.a]\nscript = \"./run.sh\"\n[apps.a.profiles.p]\ncwd = \"gone\"\n",
                (4, 1, "apps.a.profiles.p.cwd", "no such directory"),
            ),
        ];
        for (text, (line, column, key, message)) in cases {
            let found = problems(text);
            assert_eq!(found.len(), 1, "{text}: {found:?}");
            let (l, c, k, m) = &found[0];
            assert_eq!((*l, *c, k.as_str()), (*line, *column, *key), "{text}: {m}");
            assert!(m.contains(message), "{text}: {m}");
        }
    }
}
