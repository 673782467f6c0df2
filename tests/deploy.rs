//! `chatctl deploy`, as the original deployment used `pm2 deploy`: a real `sshd` started by the test
//! (a throwaway host key, user key and config, on a free loopback port; nothing of the system's ssh
//! setup or the user's `~/.ssh` is used), a bare git repository holding a small Node app
//! (`tests/apps/versioned.js`: its `/health` reports the version its build step produced), and each
//! "host" with its own `CHATCTL_HOME` and this build's `chatctl` on its `PATH`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::{
    Env, bin, free_port, http_get, run_bounded, sigkill, tests_dir, under_keep_alive_load, wait_until,
};

const SSHD: &str = "/usr/sbin/sshd";
/// A deploy runs a few ssh round trips and a build and reload per host.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether sshd can run here. Without it a test is skipped with a message, but never in CI, whose
/// `.ci/run` installs it.
fn sshd_or_skip(test: &str) -> bool {
    if Path::new(SSHD).exists() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{SSHD} is missing: CI installs openssh-server (.ci/run)");
    eprintln!("{test}: skipped: {SSHD} is missing (apt-get install openssh-server)");
    false
}

/// Throwaway keys for one test's sshds: a host key, the user's key (authorized), `known_hosts`.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["host_key", "id"] {
            let out = run_bounded(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "chatctl-test", "-f"])
                    .arg(dir.path().join(name)),
                Duration::from_secs(20),
            );
            assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::copy(dir.path().join("id.pub"), dir.path().join("authorized_keys")).expect("authorized_keys");
        std::fs::write(dir.path().join("known_hosts"), "").expect("known_hosts");
        Keys { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The deploy table's `ssh_options`: these keys, and a host key that must match.
    fn ssh_options(&self) -> String {
        let options = [
            format!("UserKnownHostsFile={}", self.path("known_hosts").display()),
            "StrictHostKeyChecking=yes".to_owned(),
            format!("IdentityFile={}", self.path("id").display()),
            "IdentitiesOnly=yes".to_owned(),
        ];
        format!("[{}]", options.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>().join(", "))
    }
}

/// One sshd on 127.0.0.1, killed (by pid) when dropped.
struct Sshd {
    child: Child,
    port: u16,
}

impl Sshd {
    /// `extra`: more `sshd_config` lines (`SetEnv HOME=...` makes a second "host").
    fn start(keys: &Keys, name: &str, extra: &str) -> Sshd {
        if nix::unistd::Uid::effective().is_root() {
            // sshd refuses to start as root without its privilege separation directory.
            std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        }
        let port = free_port();
        let config = keys.path(&format!("{name}.sshd_config"));
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nHostKey {}\nPidFile none\nAuthorizedKeysFile {}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 PrintMotd no\nPrintLastLog no\nLogLevel ERROR\n{extra}\n",
                keys.path("host_key").display(),
                keys.path("authorized_keys").display()
            ),
        )
        .expect("sshd_config");
        let log = std::fs::File::create(keys.path(&format!("{name}.sshd.log"))).expect("sshd log");
        let mut child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd");
        let host_key = std::fs::read_to_string(keys.path("host_key.pub")).expect("host key");
        let known = std::fs::read_to_string(keys.path("known_hosts")).expect("known_hosts");
        std::fs::write(keys.path("known_hosts"), format!("{known}[127.0.0.1]:{port} {host_key}")).expect("known_hosts");
        wait_until("sshd accepting", Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(keys.path(&format!("{name}.sshd.log"))).unwrap_or_default();
                panic!("sshd exited ({status}):\n{log}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        Sshd { child, port }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git ARGS` in `dir`, with an identity of its own; stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = run_bounded(
        Command::new("git")
            .args(["-c", "user.name=chatctl tests", "-c", "user.email=tests@chatctl.invalid"])
            .args(args)
            .current_dir(dir),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The app's repository: a work tree here, pushed to a bare repository the hosts fetch from.
struct Repo {
    work: PathBuf,
    bare: PathBuf,
}

impl Repo {
    /// The app (`versioned.js`) and its build script, which "builds" `src/version.txt` into
    /// `built/` and fails on a source saying `broken`; the app drains on SIGTERM.
    fn new(root: &Path) -> Repo {
        let (work, bare) = (root.join("work"), root.join("app.git"));
        std::fs::create_dir_all(work.join("src")).expect("work tree");
        git(root, &["init", "-q", "--bare", "-b", "main", bare.to_str().expect("utf-8")]);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().expect("utf-8")]);
        std::fs::copy(tests_dir().join("apps/versioned.js"), work.join("app.js")).expect("app.js");
        let repo = Repo { work, bare };
        // The app exits on SIGTERM after linger.txt milliseconds (at once without it). The drain
        // of chatctl's Node preload needs 500 ms: kept-alive connections are told to close on
        // their next answer, and those still idle then are closed.
        repo.write("linger.txt", "1000");
        repo.write(
            "build.sh",
            "if grep -q broken src/version.txt; then echo 'build: the source is broken' >&2; exit 1; fi\n\
             mkdir -p built && cp src/version.txt built/version.txt && echo 'build: done'\n",
        );
        repo
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.work.join(name), text).expect("write");
    }

    /// Commits the work tree with `version` as the source and pushes it; the commit's sha.
    fn commit(&self, version: &str) -> String {
        self.write("src/version.txt", version);
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", version]);
        git(&self.work, &["push", "-q", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// `PATH` on the hosts: this build's binaries first, then what the tests run with (node, git).
fn host_path() -> String {
    let bins = bin("chatctl").parent().expect("bin dir").display().to_string();
    format!("{bins}:{}", std::env::var("PATH").unwrap_or_default())
}

/// One host behind one sshd: its `CHATCTL_HOME` (the `Env`, which kills its daemon on drop), the
/// deploy path, the repository, the app's port.
struct World {
    host: Env,
    repo: Repo,
    port: u16,
    _sshd: Sshd,
    _keys: Keys,
}

impl World {
    /// `None` where sshd is missing (outside CI).
    fn new(test: &str) -> Option<World> {
        if !sshd_or_skip(test) {
            return None;
        }
        let keys = Keys::new();
        let sshd = Sshd::start(&keys, "host", "");
        let host = Env::new();
        let repo = Repo::new(&host.path("git"));
        let port = free_port();
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::effective()).ok().flatten().expect("user").name;
        // The app and where it is deployed, in one file, committed with the app as a PM2 user's
        // ecosystem.config.js was.
        repo.write(
            "ecosystem.toml",
            &format!(
                "[apps.web]\nscript = \"app.js\"\nport = {port}\ninstances = 2\nexec_mode = \"cluster\"\n\
                 health = {{ path = \"/health\", interval = \"300ms\", timeout = \"300ms\" }}\n\n\
                 [deploy.production]\nuser = {user:?}\nhost = \"127.0.0.1\"\nport = {ssh_port}\nssh_options = {options}\n\
                 repo = {repo:?}\nref = \"main\"\npath = {path:?}\nkeep_releases = 3\n\
                 post-deploy = \"sh build.sh && chatctl start --reload\"\n\
                 env = {{ CHATCTL_HOME = {home:?}, PATH = {host_path:?} }}\n",
                ssh_port = sshd.port,
                options = keys.ssh_options(),
                repo = repo.bare.display().to_string(),
                path = host.path("srv/app").display().to_string(),
                home = host.home().display().to_string(),
                host_path = host_path(),
            ),
        );
        Some(World { host, repo, port, _sshd: sshd, _keys: keys })
    }

    /// `chatctl deploy production ARGS`, run from the work tree as a developer would.
    fn deploy(&self, args: &[&str]) -> Output {
        let mut command = Command::new(bin("chatctl"));
        command
            .args(["deploy", "production"])
            .args(args)
            .current_dir(&self.repo.work)
            .env("CHATCTL_HOME", self.host.path("local-home"));
        let out = run_bounded(&mut command, DEPLOY_TIMEOUT);
        if let Some(daemon) = self.host.daemon_pid() {
            self.host.remember(daemon);
        }
        out
    }

    #[track_caller]
    fn deploy_ok(&self, args: &[&str]) -> String {
        let out = self.deploy(args);
        let text = said(&out);
        assert!(out.status.success(), "chatctl deploy production {args:?} failed ({}):\n{text}", out.status);
        text
    }

    fn path(&self) -> PathBuf {
        self.host.path("srv/app")
    }

    /// The release `current` names.
    fn current(&self) -> String {
        let link = std::fs::read_link(self.path().join("current")).expect("current is a link");
        link.file_name().expect("release name").to_string_lossy().into_owned()
    }

    fn releases(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path().join("releases"))
            .expect("releases")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Waits until both instances are online in `release`'s directory (where each was started:
    /// its working directory); their pids.
    #[track_caller]
    fn instances_in(&self, release: &str) -> Vec<u32> {
        let dir = std::fs::canonicalize(self.path().join("releases").join(release)).expect("release dir");
        wait_until(&format!("both instances running in {release}"), Duration::from_secs(30), || {
            let pids = self.host.online_pids("web", 2);
            pids.iter().all(|pid| cwd(*pid).as_deref() == Some(dir.as_path())).then_some(pids)
        })
    }
}

fn cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// stdout then stderr.
fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The version the app serves on `addr`.
fn version(addr: SocketAddr) -> Option<String> {
    let (_, body) = http_get(addr, "/health").ok()?;
    let health: serde_json::Value = serde_json::from_str(&body).ok()?;
    health["version"].as_str().map(str::to_owned)
}

/// The release a deploy of `sha` made: `<stamp>-<short sha>`.
fn release_of(releases: &[String], sha: &str) -> String {
    releases
        .iter()
        .find(|r| r.ends_with(&format!("-{}", &sha[..7])))
        .cloned()
        .unwrap_or_else(|| panic!("no release of {sha} in {releases:?}"))
}

/// The original flow, step by step: setup, a first deploy that starts the app, a second deploy of a
/// new version under keep-alive load (no request fails), list, revert, exec. Then the pinning: with
/// `current` switched under running instances, a crash-restart stays in the release the instances
/// were started from, and a reload (by name, from anywhere) moves them to the one the link names.
#[test]
fn setup_deploy_under_load_list_revert_exec_and_releases_pinned_until_reloaded() {
    let Some(w) = World::new("deploy flow") else { return };
    let out = w.deploy_ok(&["setup"]);
    assert!(out.contains("127.0.0.1: ok: set up"), "{out}");
    for dir in ["releases", "shared", "repo"] {
        assert!(w.path().join(dir).is_dir(), "setup made {dir}:\n{out}");
    }

    let v1 = w.repo.commit("v1");
    let out = w.deploy_ok(&[]);
    let r1 = release_of(&w.releases(), &v1);
    assert!(out.contains(&format!("127.0.0.1: ok: deployed {v1}: current -> {r1}")), "{out}");
    assert!(out.contains("127.0.0.1 | build: done"), "the hook's output is shown as it runs:\n{out}");
    assert_eq!(version(w.addr()).as_deref(), Some("v1"));
    w.instances_in(&r1);

    let v2 = w.repo.commit("v2");
    let what = "a deploy of a new version (build, then reload of 2 instances) under 8 kept-alive connections";
    let out = under_keep_alive_load(vec![w.addr()], &["/health"], 8, what, || w.deploy_ok(&[]));
    let r2 = release_of(&w.releases(), &v2);
    assert_eq!(w.current(), r2, "{out}");
    w.instances_in(&r2);
    assert_eq!(version(w.addr()).as_deref(), Some("v2"));

    let out = w.deploy_ok(&["list"]);
    assert!(out.contains(&format!("127.0.0.1:\n    {r1}\n  * {r2}")), "{out}");

    let out = w.deploy_ok(&["revert"]);
    assert!(out.contains(&format!("127.0.0.1: ok: current -> {r1}")), "{out}");
    assert_eq!(w.current(), r1);
    w.instances_in(&r1);
    assert_eq!(version(w.addr()).as_deref(), Some("v1"));

    let out = w.deploy_ok(&["exec", "cat REVISION"]);
    assert!(out.contains(&format!("127.0.0.1 | {v1}")), "exec runs in the current release:\n{out}");

    // The link moves on (as a deploy's switch does before its post-deploy reloads) and an
    // instance crashes meanwhile: it comes back in the release it was started from. Twice: after
    // a start in the release (the post-deploy's `cd current`), and after a reload by name, whose
    // file is read through the link.
    for (pinned, next) in [(&r1, &r2), (&r2, &r1)] {
        switch_current(&w.path(), next);
        let before = w.instances_in(pinned);
        sigkill(before[0]);
        wait_until("instance 0 restarted", Duration::from_secs(20), || {
            let pids = w.host.online_pids("web", 2);
            (!pids.contains(&before[0])).then_some(())
        });
        w.instances_in(pinned);
        // A reload by name (from anywhere) reads the file through the link: the new release.
        w.host.ok(&["reload", "web"]);
        w.instances_in(next);
    }
    assert_eq!(version(w.addr()).as_deref(), Some("v1"));
}

/// Points `path/current` at `release` as the deploy does: a new link renamed over the old one.
fn switch_current(path: &Path, release: &str) {
    let next = path.join(".current.test");
    std::os::unix::fs::symlink(format!("releases/{release}"), &next).expect("link");
    std::fs::rename(&next, path.join("current")).expect("switch");
}

/// A release whose reload breaks half-way (its instance 1 exits at start, after instance 0 was
/// replaced): the deploy fails at post-deploy, the host's `current` goes back to the previous
/// release, and that release's post-deploy runs again, reloading instance 0 back onto it.
#[test]
fn a_deploy_failing_at_post_deploy_switches_back_and_reloads_the_previous_release() {
    let Some(w) = World::new("deploy failure") else { return };
    w.deploy_ok(&["setup"]);
    let v1 = w.repo.commit("v1");
    w.deploy_ok(&[]);
    let r1 = release_of(&w.releases(), &v1);
    w.instances_in(&r1);

    w.repo.write("fail-on-instance-1", "");
    w.repo.commit("v2");
    let out = w.deploy(&[]);
    let text = said(&out);
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(text.contains("127.0.0.1: post-deploy failed (exit 6)"), "host, step and exit code:\n{text}");
    assert!(text.contains("the new process failed"), "the reload's own words:\n{text}");
    assert!(
        text.contains(&format!(
            "127.0.0.1: FAILED: failed at post-deploy (exit 6); switched back to {r1} and ran its post-deploy again"
        )),
        "{text}"
    );
    assert_eq!(w.current(), r1, "{text}");
    assert_eq!(w.releases(), std::slice::from_ref(&r1), "the failed release is deleted once the host is back:\n{text}");
    w.instances_in(&r1);
    assert_eq!(version(w.addr()).as_deref(), Some("v1"));
}

/// Two hosts (two sshds, each with a home of its own, `path = "~/app"`) deployed one after the
/// other, the second with the commit the first resolved; a release whose build fails on the first
/// stops the rollout there (back to its previous release) and leaves the second untouched. `--json`
/// tells the same as events.
#[test]
fn hosts_are_deployed_one_after_the_other_and_a_failure_stops_the_rollout() {
    if !sshd_or_skip("deploy to two hosts") {
        return;
    }
    let keys = Keys::new();
    let root = tempfile::tempdir().expect("temp dir");
    let homes = [root.path().join("a"), root.path().join("b")];
    let sshds: Vec<Sshd> = homes
        .iter()
        .zip(["a", "b"])
        .map(|(home, name)| {
            std::fs::create_dir_all(home).expect("home");
            Sshd::start(&keys, name, &format!("SetEnv HOME={}", home.display()))
        })
        .collect();
    let hosts: Vec<String> = sshds.iter().map(|s| format!("ssh://127.0.0.1:{}", s.port)).collect();
    let repo = Repo::new(&root.path().join("git"));
    repo.write(
        "ecosystem.toml",
        &format!(
            "[deploy.production]\nhost = {hosts:?}\nssh_options = {}\nrepo = {:?}\npath = \"~/app\"\n\
             post-deploy = \"sh build.sh\"\nenv = {{ PATH = {:?} }}\n",
            keys.ssh_options(),
            repo.bare.display().to_string(),
            host_path()
        ),
    );
    let deploy = |args: &[&str]| {
        let mut command = Command::new(bin("chatctl"));
        command
            .args(["deploy", "production"])
            .args(args)
            .current_dir(&repo.work)
            .env("CHATCTL_HOME", root.path().join("local"));
        run_bounded(&mut command, DEPLOY_TIMEOUT)
    };
    let releases = |home: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(home.join("app/releases"))
            .map(|d| d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    for args in [&["setup"][..], &[]] {
        if args.is_empty() {
            repo.commit("v1");
        }
        let out = deploy(args);
        assert!(out.status.success(), "{args:?}: {}", said(&out));
    }
    let r1 = releases(&homes[0]);
    assert_eq!(r1.len(), 1);
    assert_eq!(releases(&homes[1]), r1, "one rollout, one release name and commit on every host");

    repo.commit("broken");
    let out = deploy(&["--json"]);
    assert_eq!(out.status.code(), Some(7), "{}", said(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let find = |kind: &str, host: &str| {
        events
            .iter()
            .find(|e| e["event"] == kind && e["host"] == host)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} of {host}: {events:#?}"))
    };
    let failed = find("step_failed", &hosts[0]);
    assert_eq!((failed["step"].as_str(), failed["exit_code"].as_i64()), (Some("post-deploy"), Some(1)));
    assert!(failed["output"].to_string().contains("build: the source is broken"), "{failed}");
    let first = find("host", &hosts[0]);
    assert_eq!((first["ok"].as_bool(), first["current"].as_str()), (Some(false), Some(r1[0].as_str())), "{first}");
    let second = find("skipped", &hosts[1]);
    assert!(second["reason"].as_str().is_some_and(|r| r.contains("stays on its current release")), "{second}");
    assert!(!events.iter().any(|e| e["event"] == "step" && e["host"] == hosts[1]), "no step ran on the second host");
    let end = events.last().expect("events");
    assert_eq!(
        (end["event"].as_str(), end["failed"].as_u64(), end["skipped"].as_u64()),
        (Some("end"), Some(1), Some(1))
    );
    for home in &homes {
        assert_eq!(releases(home), r1, "{}: still (only) the first release", home.display());
    }

    let out = deploy(&["list", "--parallel"]);
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    for host in &hosts {
        assert!(text.contains(&format!("{host}:\n  * {}", r1[0])), "{text}");
    }
}
