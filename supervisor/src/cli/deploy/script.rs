//! The remote half of a deploy: one small POSIX `sh` script per step, sent to `sh -s` over ssh.
//! Nothing of chatctl needs to be installed on a host for these mechanics (git, tar, mv, ln do the
//! work); the hooks call chatctl themselves.
//!
//! Every value from the file is single-quoted into a variable at the top, so no path, ref or hook
//! text is ever parsed as script. A script reports what it did on lines starting with
//! [`MARKER`]; everything else is output shown to the operator. Layout on a host:
//! `path/repo` (a mirror of the repository), `path/releases/<stamp>-<sha>` (one exported tree per
//! deploy, with a `REVISION` file), `path/shared` (kept across releases, for the hooks' use) and
//! `path/current`, a relative link to the live release, replaced by a rename so that it always
//! names one release or the other.

use chat_shared::ecosystem::DeploySpec;

/// Lines a script prints for the CLI: `::chatctl:: KEY VALUE`.
pub(super) const MARKER: &str = "::chatctl::";

/// What a step runs on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Script<'a> {
    /// A hook (`pre-setup`, `post-setup`, `post-deploy`, `exec`'s command) in a directory.
    Hook { command: &'a str, dir: HookDir },
    /// `releases/`, `shared/` and the repository's mirror (cloned, or updated to `repo`).
    Prepare,
    /// Fetch into the mirror and export `git_ref` into a new release named `<stamp>-<sha>`.
    Fetch { git_ref: &'a str, stamp: &'a str },
    /// Point `current` at this release; reports the one it named before and every release.
    Switch { release: &'a str },
    /// Remove `current` (a first deploy that failed: there is nothing to go back to).
    Unlink,
    /// Delete these releases.
    Remove { releases: &'a [String] },
    /// Report the releases and which one is current.
    Inspect,
}

/// Where a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HookDir {
    /// The login directory (`pre-setup`: nothing exists yet).
    Login,
    /// `path`.
    Root,
    /// `path/current`, the live release; `path` when there is none yet (`exec`).
    Current,
}

/// The whole script for one step of `spec`.
pub(super) fn render(spec: &DeploySpec, script: &Script<'_>) -> String {
    let mut out = prelude(spec);
    match script {
        Script::Hook { command, dir } => {
            out.push_str(match dir {
                HookDir::Login => "",
                HookDir::Root => "enter\n",
                HookDir::Current => "cd \"$P/current\" 2>/dev/null || enter\n",
            });
            out.push_str(&format!("hook {}\n", quote(command)));
        }
        Script::Prepare => out.push_str(PREPARE),
        Script::Fetch { git_ref, stamp } => {
            out.push_str(&format!("REF={}\nSTAMP={}\n", quote(git_ref), quote(stamp)));
            out.push_str(FETCH);
        }
        Script::Switch { release } => {
            out.push_str(&format!("R={}\n", quote(release)));
            out.push_str(SWITCH);
        }
        Script::Unlink => out.push_str("enter\nrm -f current || exit 1\n"),
        Script::Remove { releases } => {
            out.push_str("enter\n");
            for release in releases.iter() {
                out.push_str(&format!("rm -rf \"releases/\"{} || exit 1\n", quote(release)));
            }
        }
        Script::Inspect => out.push_str(INSPECT),
    }
    out
}

/// Variables and helpers every step starts with. Errors go to stdout too, so the operator reads
/// output in the order it was written.
fn prelude(spec: &DeploySpec) -> String {
    let mut out = String::from("exec 2>&1\n");
    for (name, value) in &spec.env {
        // Names are checked to be shell names when the file is loaded.
        out.push_str(&format!("export {name}={}\n", quote(value)));
    }
    let path = match spec.path.strip_prefix("~/") {
        Some(under_home) => format!("\"$HOME\"/{}", quote(under_home)),
        None => quote(&spec.path),
    };
    out.push_str(&format!("P={path}\nREPO={}\nTARGET={}\n", quote(&spec.repo), quote(&spec.name)));
    out.push_str(HELPERS);
    out
}

const HELPERS: &str = r#"say() { printf '::chatctl:: %s\n' "$*"; }
enter() { cd "$P" 2>/dev/null || { echo "$P does not exist on this host: run \`chatctl deploy $TARGET setup\` first"; exit 3; }; }
hook() { sh -c "$1" </dev/null; }
releases() { for r in releases/*; do [ -d "$r" ] && say release "${r#releases/}"; done; }
"#;

const PREPARE: &str = r#"mkdir -p "$P/releases" "$P/shared" || exit 1
cd "$P" || exit 1
if [ -d repo ]; then
  echo "updating the mirror of the repository in $P/repo"
  git -C repo remote set-url origin "$REPO" && git -C repo fetch --prune --quiet origin || exit 1
else
  echo "cloning the repository into $P/repo"
  rm -rf repo.tmp
  git clone --mirror --quiet "$REPO" repo.tmp && mv repo.tmp repo || { rm -rf repo.tmp; exit 1; }
fi
"#;

const FETCH: &str = r#"enter
[ -d repo ] || { echo "no repository mirror in $P: run \`chatctl deploy $TARGET setup\` first"; exit 3; }
git -C repo remote set-url origin "$REPO" && git -C repo fetch --prune --quiet origin || exit 1
sha=$(git -C repo rev-parse --verify --quiet "$REF^{commit}" || git -C repo rev-parse --verify --quiet "${REF#origin/}^{commit}") || {
  echo "$REF: no such branch, tag or commit in the repository"; exit 1; }
name="$STAMP-$(printf '%.7s' "$sha")"
[ ! -e "releases/$name" ] || { echo "release $name exists already"; exit 1; }
tmp="releases/.$name.tmp"
rm -rf "$tmp" "$tmp.tar" && mkdir -p "$tmp" || exit 1
git -C repo archive --format=tar "$sha" >"$tmp.tar" && tar -xf "$tmp.tar" -C "$tmp" || { rm -rf "$tmp" "$tmp.tar"; exit 1; }
rm -f "$tmp.tar"
printf '%s\n' "$sha" >"$tmp/REVISION" && mv "$tmp" "releases/$name" || { rm -rf "$tmp"; exit 1; }
echo "commit $sha into releases/$name"
say commit "$sha"
say new "$name"
"#;

/// `mv -T` (GNU, busybox) or `mv -h` (BSD) renames the new link over the old one without following
/// it: readers see the old link or the new one, never none.
const SWITCH: &str = r#"enter
[ -d "releases/$R" ] || { echo "no release $R on this host"; exit 1; }
prev=$(readlink current 2>/dev/null) || prev=
rm -f .current.tmp && ln -s "releases/$R" .current.tmp || exit 1
if mv -T .current.tmp current 2>/dev/null; then :
elif mv -h .current.tmp current 2>/dev/null; then :
else rm -f .current.tmp; echo "cannot point $P/current at releases/$R (is current a directory?)"; exit 1
fi
echo "current -> releases/$R"
say previous "${prev##*/}"
releases
"#;

const INSPECT: &str = r#"enter
cur=$(readlink current 2>/dev/null) || cur=
say current "${cur##*/}"
releases
"#;

/// `text` as one single-quoted shell word.
pub(super) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// One line of a step's output: a report of the script's, or output to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Line {
    Marker { key: String, value: String },
    Output(String),
}

impl Line {
    pub(super) fn parse(line: &str) -> Line {
        match line.strip_prefix(MARKER).and_then(|rest| rest.strip_prefix(' ')) {
            Some(rest) => {
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                Line::Marker { key: key.to_owned(), value: value.to_owned() }
            }
            None => Line::Output(line.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DeploySpec {
        super::super::test_spec(
            "host = \"h\"\nrepo = \"/srv/git/app.git\"\npath = \"/srv/it's here\"\n\
             env = { TOKEN = \"a'b $HOME `x`\" }",
        )
    }

    /// Runs `script` with the local `sh`, printing only what the script echoes.
    fn run(script: &str) -> String {
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().expect("sh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn values_reach_the_script_as_they_were_written() {
        let mut spec = spec();
        let script = render(&spec, &Script::Hook { command: "echo \"$TOKEN\"; echo \"it's\"", dir: HookDir::Login });
        assert_eq!(run(&script), "a'b $HOME `x`\nit's\n", "the env exported, the hook's text as written");
        let refused = run(&render(&spec, &Script::Inspect));
        assert_eq!(refused, "/srv/it's here does not exist on this host: run `chatctl deploy prod setup` first\n");
        spec.path = "~/it's".into();
        let home = std::env::var("HOME").unwrap_or_default();
        let refused = run(&render(&spec, &Script::Inspect));
        assert!(refused.starts_with(&format!("{home}/it's does not exist")), "{refused}");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn markers_are_told_from_output() {
        assert_eq!(
            Line::parse("::chatctl:: new 20261202-x"),
            Line::Marker { key: "new".into(), value: "20261202-x".into() }
        );
        assert_eq!(Line::parse("::chatctl:: previous"), Line::Marker { key: "previous".into(), value: String::new() });
        assert_eq!(Line::parse("  ::chatctl:: new x"), Line::Output("  ::chatctl:: new x".into()));
        assert_eq!(Line::parse("compiling"), Line::Output("compiling".into()));
    }

    /// The link switch and the inspection, run by the local `sh` on a temp directory: the link is
    /// replaced (never followed into the old release), the previous one is reported, and a release
    /// that is not there is refused with the link untouched.
    #[test]
    fn switch_replaces_the_link_and_reports_the_previous_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = spec();
        spec.path = dir.path().display().to_string();
        for release in ["20261201-000000-aaaaaaa", "20261202-000000-bbbbbbb"] {
            std::fs::create_dir_all(dir.path().join("releases").join(release)).expect("release");
        }
        let switch = |release: &str| run(&render(&spec, &Script::Switch { release }));
        let first = switch("20261201-000000-aaaaaaa");
        assert!(first.contains("::chatctl:: previous \n"), "{first}");
        let second = switch("20261202-000000-bbbbbbb");
        assert!(second.contains("::chatctl:: previous 20261201-000000-aaaaaaa\n"), "{second}");
        assert!(
            second.contains("::chatctl:: release 20261201-000000-aaaaaaa\n::chatctl:: release 20261202-000000-bbbbbbb")
        );
        let link = std::fs::read_link(dir.path().join("current")).expect("link");
        assert_eq!(link, std::path::Path::new("releases/20261202-000000-bbbbbbb"));
        assert!(!dir.path().join("releases/20261201-000000-aaaaaaa/20261202-000000-bbbbbbb").exists());
        let refused = switch("nothing");
        assert!(refused.contains("no release nothing"), "{refused}");
        let inspect = run(&render(&spec, &Script::Inspect));
        assert!(inspect.starts_with("::chatctl:: current 20261202-000000-bbbbbbb\n"), "{inspect}");
    }
}
