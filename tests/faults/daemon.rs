//! Faults of the daemon and its control plane: requests it must refuse, state files it must keep
//! private, descendants it must not lose.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use chat_shared::ipc::{Call, Hello, PROTOCOL_VERSION, Request, Response, Rollout, ScaleTo, Subscription, Welcome};
use chat_shared::status::Phase;

use crate::support::{Env, alive, bin, sigkill, wait_until};

fn fixture_config(name: &str, args: &[&str], extra: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!("[apps.{name}]\nscript = \"{}\"\nargs = [{}]\n{extra}\n", bin("fixture-app").display(), args.join(", "))
}

/// A control connection spoken by hand: what any process of the daemon's user can send.
struct Raw {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Raw {
    fn connect(env: &Env) -> Raw {
        let stream = UnixStream::connect(env.home().join("daemon.sock")).expect("control socket");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        let mut raw = Raw { reader: BufReader::new(stream.try_clone().expect("clone")), writer: stream };
        raw.send(serde_json::to_value(Hello { protocol: PROTOCOL_VERSION, version: "test".into() }).expect("json"));
        let welcome: Welcome = serde_json::from_str(&raw.line().expect("a welcome")).expect("welcome");
        assert!(matches!(welcome, Welcome::Accepted { .. }), "{welcome:?}");
        raw
    }

    fn send(&mut self, frame: serde_json::Value) {
        let mut bytes = serde_json::to_vec(&frame).expect("json");
        bytes.push(b'\n');
        self.writer.write_all(&bytes).expect("write a frame");
    }

    /// The next line; `None` once the daemon closed the connection.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line),
            Err(e) => panic!("no answer from the daemon: {e}"),
        }
    }

    fn request(&mut self, request: impl Into<Request>) -> Response {
        self.send(serde_json::to_value(request.into()).expect("json"));
        let line = self.line().expect("an answer before the daemon hung up");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }
}

/// The spec `chatctl start` would send for `ecosystem.toml` in `env`.
fn resolved(env: &Env) -> chat_shared::spec::AppSpec {
    let eco = chat_shared::ecosystem::Ecosystem::load(&env.path("ecosystem.toml")).expect("valid file");
    eco.resolve(None, None, &Default::default()).expect("resolves").remove(0)
}

#[test]
fn start_and_scale_requests_past_the_instance_limit_are_refused_and_the_daemon_lives() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_config("steady", &[], ""));
    env.ok(&["start"]);
    let before = env.online_pids("steady", 1);
    let mut raw = Raw::connect(&env);

    let mut huge = resolved(&env);
    huge.name = "huge".into();
    huge.instances = 1 << 62;
    match raw.request(Call::Start { apps: vec![huge] }) {
        Response::Error { message, .. } => assert!(message.contains("instances"), "{message}"),
        other => panic!("a start of 2^62 instances was not refused: {other:?}"),
    }
    for to in [ScaleTo::By(i64::MAX), ScaleTo::Exactly(usize::MAX)] {
        match raw.request(Rollout::Scale { app: "steady".into(), to }) {
            Response::Error { message, .. } => assert!(message.contains("steady"), "{message}"),
            other => panic!("scale {to:?} was not refused: {other:?}"),
        }
    }
    // The daemon still answers on the same connection and on a new one, and nothing was touched.
    assert!(matches!(raw.request(Call::List), Response::List { .. }));
    let apps = env.list();
    assert_eq!(apps.len(), 1, "{apps:?}");
    let pids: Vec<u32> = apps[0].instances.iter().filter_map(|i| i.pid).collect();
    assert_eq!((pids, apps[0].instances[0].status), (before, Phase::Online));
}

#[test]
fn save_writes_the_dump_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_config("steady", &[], "env = { SECRET_TOKEN = \"hunter2\" }"));
    env.ok(&["start"]);
    env.online_pids("steady", 1);
    // The daemon runs with the test's umask (022 usually): only a mode given at creation makes it 0600.
    env.ok(&["save"]);
    let dump = env.home().join("dump.json");
    let mode = std::fs::metadata(&dump).expect("dump.json").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "dump.json mode {:o}", mode & 0o777);
    assert!(std::fs::read_to_string(&dump).expect("dump").contains("hunter2"), "the dump holds the env");
}

/// Soft and hard `Max open files` of `pid`.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

#[test]
fn the_daemon_raises_its_own_open_file_limit_and_apps_keep_the_one_it_was_started_with() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_config("steady", &[], ""));
    let (_, hard) = nofile(std::process::id());
    let soft = 777.min(hard);
    // `chatctl start` starts the daemon, which inherits the shell's soft limit.
    let mut command = std::process::Command::new("sh");
    command
        .args([
            "-c",
            &format!("ulimit -Sn {soft} && exec \"$0\" \"$@\""),
            bin("chatctl").to_str().expect("utf-8"),
            "start",
        ])
        .env("CHATCTL_HOME", env.home())
        .current_dir(env.dir.path());
    let out = crate::support::run_bounded(&mut command, Duration::from_secs(60));
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let daemon = env.daemon_pid().expect("daemon pid");
    env.remember(daemon);
    let app = env.online_pids("steady", 1)[0];
    assert_eq!(nofile(app), (soft, hard), "the app gets the limit the daemon was started with");
    assert_eq!(nofile(daemon), (hard, hard), "the daemon raised its own soft limit");
}

#[test]
fn an_idle_control_connection_is_closed_and_a_quiet_subscription_is_not() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_config("steady", &[], ""));
    // The daemon inherits the environment of the `chatctl` that starts it.
    let out = crate::support::run_bounded(
        env.command().env("CHATCTL_IPC_IDLE_TIMEOUT_MS", "300").arg("start"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    env.remember(env.daemon_pid().expect("daemon pid"));
    env.online_pids("steady", 1);

    let mut idle = Raw::connect(&env);
    // Requests keep it open well past the timeout.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(150));
        assert!(matches!(idle.request(Call::List), Response::List { .. }));
    }
    let last_request = Instant::now();
    let mut follower = Raw::connect(&env);
    let logs = Subscription::Logs { app: Some("steady".into()), lines: 0, stream: None, follow: true };
    assert!(matches!(follower.request(logs), Response::Logs { .. }));

    assert_eq!(idle.line(), None, "the daemon closes a connection that sends nothing");
    let took = last_request.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(5), "closed after {took:?}");
    // The subscription, silent for as long, is still open: a read times out instead of ending.
    follower.writer.set_read_timeout(Some(Duration::from_millis(700))).expect("read timeout");
    let mut line = String::new();
    match follower.reader.read_line(&mut line) {
        Err(e) => assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}"),
        Ok(n) => assert!(n > 0, "the daemon closed a log subscription as idle"),
    }
}

#[test]
fn a_missing_cwd_or_a_script_that_cannot_run_is_a_config_error_at_its_key() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    // Not a .js file: those run through node, as under PM2.
    let script = env.write("server.sh", "echo hi\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    for (text, (line, key, message)) in [
        (
            format!("[apps.a]\nscript = \"{}\"\ncwd = \"missing\"\n", bin("fixture-app").display()),
            (3, "apps.a.cwd", "no such directory"),
        ),
        ("[apps.a]\nscript = \"./server.sh\"\n".to_owned(), (2, "apps.a.script", "is not executable")),
    ] {
        env.write("ecosystem.toml", &text);
        let out = env.chatctl(&["start"]);
        let stderr = crate::support::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{text}\n{stderr}");
        let wanted = format!("ecosystem.toml:{line}:1: error: {key}: ");
        assert!(stderr.contains(&wanted) && stderr.contains(message), "{text}\nwanted {wanted} … {message}:\n{stderr}");
    }
    assert!(!env.home().join("daemon.sock").exists(), "nothing was started");
}

/// How the test ends the app whose grandchild escaped its process group.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Stop,
    Kill,
    DaemonSigkill,
}

/// Starts an instance with a `setsid` grandchild, ends it as `ending` says, and waits (bounded)
/// for the grandchild to be gone. `cgroups: false` forces the environment-marker mechanism.
fn escaped_grandchild_is_gone_after(ending: Ending, cgroups: bool) {
    let env = Env::new();
    let pid_file = env.path("pids");
    let pid_arg = pid_file.to_str().expect("utf-8");
    env.write("ecosystem.toml", &fixture_config("family", &["--setsid-grandchild", "--pid-file", pid_arg], ""));
    let mut start = env.command();
    if !cgroups {
        start.env("CHATCTL_CGROUP", "off");
    }
    let out = crate::support::run_bounded(start.arg("start"), Duration::from_secs(60));
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let daemon = env.daemon_pid().expect("daemon pid");
    env.remember(daemon);
    env.online_pids("family", 1);
    let pids = env.pids_in(&pid_file, 2);
    let grandchild = pids[1];
    assert!(alive(grandchild), "the grandchild runs");
    match ending {
        Ending::Stop => {
            env.ok(&["stop", "family"]);
        }
        Ending::Kill => {
            env.ok(&["kill"]);
        }
        Ending::DaemonSigkill => sigkill(daemon),
    }
    wait_until(
        &format!("the setsid grandchild gone after {ending:?} (cgroups: {cgroups})"),
        Duration::from_secs(10),
        || (!alive(grandchild)).then_some(()),
    );
    if let Ending::DaemonSigkill = ending {
        wait_until("the reaper exits", Duration::from_secs(10), || (!alive(daemon)).then_some(()));
    }
}

#[test]
fn a_setsid_grandchild_dies_with_its_instance_on_stop() {
    escaped_grandchild_is_gone_after(Ending::Stop, true);
    escaped_grandchild_is_gone_after(Ending::Stop, false);
}

#[test]
fn a_setsid_grandchild_dies_with_its_instance_on_kill() {
    escaped_grandchild_is_gone_after(Ending::Kill, true);
    escaped_grandchild_is_gone_after(Ending::Kill, false);
}

#[test]
fn a_setsid_grandchild_dies_when_the_daemon_is_sigkilled() {
    escaped_grandchild_is_gone_after(Ending::DaemonSigkill, true);
    escaped_grandchild_is_gone_after(Ending::DaemonSigkill, false);
}

#[test]
fn a_client_of_another_user_is_refused_by_its_credentials() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running a client as another user needs root");
        return;
    }
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_config("steady", &[], ""));
    env.ok(&["start"]);
    env.online_pids("steady", 1);
    // Open the way to the socket, so that only the daemon's credential check stands in between.
    for (path, mode) in
        [(env.dir.path().to_owned(), 0o711), (env.home(), 0o711), (env.home().join("daemon.sock"), 0o666)]
    {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let mut other = env.command();
    other.uid(65_534).gid(65_534).arg("list");
    let out = crate::support::run_bounded(&mut other, Duration::from_secs(30));
    assert!(!out.status.success(), "uid 65534 listed the apps: {}", String::from_utf8_lossy(&out.stdout));
    assert!(env.daemon_log().contains("refused a control connection from another user"), "{}", env.daemon_log());
    assert_eq!(env.list().len(), 1, "the daemon still serves its own user");
}
