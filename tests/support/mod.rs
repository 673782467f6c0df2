//! Test harness: the real binaries, a private `CHATCTL_HOME` per test, free ports, bounded waits,
//! and cleanup of every process a test started (by pid).

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) mod redis;

use chat_shared::status::{AppStatus, Phase};

/// A binary of this workspace, built next to the test executable (`cargo build --workspace`).
pub(crate) fn bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test executable path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build first with `cargo build --workspace`", path.display());
    path
}

/// An `[apps.chat]` table running this build's chat-worker: `mode` is "cluster" or "fork"; `extra`
/// holds more keys, one per line.
pub(crate) fn chat_app(port: u16, mode: &str, instances: usize, extra: &str) -> String {
    format!(
        "[apps.chat]\nscript = \"{}\"\nport = {port}\ninstances = {instances}\nexec_mode = \"{mode}\"\n{extra}\n",
        bin("chat-worker").display()
    )
}

/// An `[apps.NAME]` table running the fixture program with `args`; `extra` holds more keys.
pub(crate) fn fixture_app(name: &str, args: &[&str], extra: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!("[apps.{name}]\nscript = \"{}\"\nargs = [{}]\n{extra}\n", bin("fixture-app").display(), args.join(", "))
}

/// The directory of this test crate (where `package.json` and `clients/` live).
pub(crate) fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `check` every 20 ms until it returns `Some`, panicking with `what` after `timeout`.
#[track_caller]
pub(crate) fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let begun = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(begun.elapsed() < timeout, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Held by a test that puts heavy load on the machine, so that two such tests never run at once:
/// side by side on two cores they would starve each other (and every test beside them).
pub(crate) fn heavy_load() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A panicking heavy test poisons the lock; the next one may still run.
    HEAVY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ports handed out by this test process, below the kernel's ephemeral range (32768 and up on
/// Linux). A port the kernel picked for `bind(:0)` and we released is also a candidate for the next
/// outgoing connection's local port: with tests running side by side, a client of another test took
/// one between our check and the daemon's `bind` (EADDRINUSE in CI). Below the range no outgoing
/// connection lands, and the counter keeps two tests of this process apart; the pid spreads two test
/// processes of one machine apart.
static NEXT_PORT: std::sync::OnceLock<std::sync::atomic::AtomicU16> = std::sync::OnceLock::new();
const PORTS: std::ops::Range<u16> = 12_000..32_000;

/// `n` consecutive ports of 127.0.0.1, free now and handed to no other test of this process.
pub(crate) fn free_ports(n: u16) -> u16 {
    use std::sync::atomic::Ordering;
    let next = NEXT_PORT.get_or_init(|| {
        let spread = (std::process::id() % 40) as u16 * 500;
        std::sync::atomic::AtomicU16::new(PORTS.start + spread)
    });
    for _ in 0..2_000 {
        let base = next.fetch_add(n, Ordering::Relaxed);
        if base.checked_add(n).is_none_or(|end| end > PORTS.end) {
            // At the top: start over at the bottom (tests are short-lived; those ports are long free).
            next.store(PORTS.start, Ordering::Relaxed);
            continue;
        }
        let held: Vec<_> = (base..base + n).map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok()).collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports found in {PORTS:?}");
}

/// A port of 127.0.0.1, free now and handed to no other test of this process.
pub(crate) fn free_port() -> u16 {
    free_ports(1)
}

/// The start time of `pid` (clock ticks since boot, `/proc/PID/stat` field 22): with the pid, it
/// names one process, where a pid alone may since have been reused.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    stat.rsplit(')').next()?.split_whitespace().nth(19)?.parse().ok()
}

/// True while `pid` exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

pub(crate) fn sigkill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`: status code and body.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Runs a command to completion, killing it (and failing the test) after `timeout`.
#[track_caller]
pub(crate) fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let begun = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if begun.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{command:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One test's world: a temp dir holding `CHATCTL_HOME`, config files and logs.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    /// Every process seen in `list` output (pid and start time), killed on drop in case the test
    /// failed half-way, but only if it is still the same process.
    pids: RefCell<Vec<(u32, u64)>>,
}

impl Env {
    pub(crate) fn new() -> Env {
        Env { dir: tempfile::tempdir().expect("temp dir"), pids: RefCell::new(Vec::new()) }
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the file's directory");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(bin("chatctl"));
        command.env("CHATCTL_HOME", self.home()).current_dir(self.dir.path());
        command
    }

    /// `chatctl ARGS`, bounded to 60 s.
    #[track_caller]
    pub(crate) fn chatctl(&self, args: &[&str]) -> Output {
        run_bounded(self.command().args(args), Duration::from_secs(60))
    }

    /// `chatctl ARGS`, which must succeed; returns stdout.
    #[track_caller]
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.chatctl(args);
        if out.status.success() && args.first() == Some(&"start") {
            // The daemon is alive right now: its pid names it (see `remember`).
            if let Some(daemon) = self.daemon_pid() {
                self.remember(daemon);
            }
        }
        assert!(
            out.status.success(),
            "chatctl {args:?} failed ({})\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    pub(crate) fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.home().join("daemon.log")).unwrap_or_default()
    }

    /// `chatctl list --json`, remembering every pid for cleanup.
    #[track_caller]
    pub(crate) fn list(&self) -> Vec<AppStatus> {
        let apps: Vec<AppStatus> = serde_json::from_str(&self.ok(&["list", "--json"])).expect("list --json parses");
        for pid in apps.iter().flat_map(|a| a.instances.iter().filter_map(|i| i.pid)) {
            self.remember(pid);
        }
        apps
    }

    /// Pids of `app`'s instances once all are online.
    #[track_caller]
    pub(crate) fn online_pids(&self, app: &str, count: usize) -> Vec<u32> {
        wait_until(&format!("{count} instance(s) of {app} online"), Duration::from_secs(30), || {
            let apps = self.list();
            let app = apps.iter().find(|a| a.name == app)?;
            let pids: Vec<u32> =
                app.instances.iter().filter(|i| i.status == Phase::Online).filter_map(|i| i.pid).collect();
            (pids.len() == count && app.instances.len() == count).then_some(pids)
        })
    }

    pub(crate) fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.home().join("daemon.pid")).ok()?.trim().parse().ok()
    }

    /// The `n` pids a fixture wrote to `path` (`--pid-file`), once all are there; remembered for
    /// cleanup.
    pub(crate) fn pids_in(&self, path: &std::path::Path, n: usize) -> Vec<u32> {
        let pids: Vec<u32> = wait_until("pid file", Duration::from_secs(10), || {
            let text = std::fs::read_to_string(path).ok()?;
            let pids: Vec<u32> = text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
            (pids.len() == n).then_some(pids)
        });
        for pid in &pids {
            self.remember(*pid);
        }
        pids
    }

    pub(crate) fn remember(&self, pid: u32) {
        if let Some(start) = start_time(pid) {
            self.pids.borrow_mut().push((pid, start));
        }
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.home().join("daemon.sock").exists() {
            let _ = self.command().arg("kill").stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        for (pid, start) in self.pids.borrow().iter().copied() {
            // Another test may have been given this pid since: kill only the process we saw.
            if alive(pid) && start_time(pid) == Some(start) {
                sigkill(pid);
            }
        }
    }
}

/// A chat-worker on its own (bound to a port, as it runs outside chatctl), killed on drop.
pub(crate) struct Worker {
    pub(crate) child: std::process::Child,
    pub(crate) addr: SocketAddr,
}

impl Worker {
    /// Starts one with `env` added to `PORT` and `RUST_LOG=warn`; returns once it answers.
    pub(crate) fn start(env: &[(&str, &str)]) -> Worker {
        let port = free_port();
        let child = Command::new(bin("chat-worker"))
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chat-worker");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let worker = Worker { child, addr };
        wait_until("the worker answers", Duration::from_secs(15), || http_get(addr, "/health").ok().map(|_| ()));
        worker
    }

    /// Its resident memory now, in bytes.
    pub(crate) fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("worker status");
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
        kib.and_then(|k| k.parse::<u64>().ok()).expect("VmRSS") * 1024
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        sigkill(self.child.id());
        let _ = self.child.wait();
    }
}

/// A Node script from `tests/clients` driven line by line: the test reads what it prints and
/// writes words to its stdin (the phases of an outage, say). Killed (by pid) when dropped.
pub(crate) struct Scripted {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Scripted {
    pub(crate) fn start(script: &str, args: &[&str]) -> Scripted {
        use std::io::BufRead;
        let dir = tests_dir();
        // A group of its own: what the script starts (a browser) goes with it on drop.
        let mut child = Command::new("node")
            .arg(dir.join("clients").join(script))
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Scripted { child, stdin, lines }
    }

    /// The next line it prints, within 40 s.
    pub(crate) fn next_line(&self) -> String {
        self.lines.recv_timeout(Duration::from_secs(40)).unwrap_or_else(|_| "(no line: node timed out)".into())
    }

    pub(crate) fn say(&mut self, word: &str) {
        writeln!(self.stdin, "{word}").expect("write to the script");
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        // Asked first (SIGTERM, up to 3 s), so that a script that started a browser closes it: a
        // browser starts a process group of its own, which killing the script's would not reach.
        let Ok(pid) = i32::try_from(self.child.id()).map(nix::unistd::Pid::from_raw) else { return };
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let begun = Instant::now();
        while self.child.try_wait().is_ok_and(|exited| exited.is_none()) && begun.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Then its whole group (its pid), whatever else it started.
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs a Node script from `tests/clients` with the real npm socket.io-client.
#[track_caller]
pub(crate) fn node(script: &str, args: &[&str]) -> Output {
    let dir = tests_dir();
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci --prefix tests` (the README's test command does)"
    );
    run_bounded(
        Command::new("node").arg(dir.join("clients").join(script)).args(args).current_dir(&dir),
        Duration::from_secs(30),
    )
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `chatctl reload APP` in `env` while the paced keep-alive load (`connections` connections,
/// each pausing up to 20 ms between requests) asks `addrs` for `paths`, from 500 answers before
/// to 500 after; asserts that no request failed and every answer was 2xx, and says what `what`
/// saw. Returns the reload's output.
pub(crate) fn reload_under_keep_alive_load(
    env: &Env,
    app: &str,
    addrs: Vec<SocketAddr>,
    paths: &'static [&'static str],
    connections: usize,
    what: &str,
) -> String {
    under_keep_alive_load(addrs, paths, connections, what, || env.ok(&["reload", app]))
}

/// Runs `act` (a reload, a deploy) while the paced keep-alive load of
/// [`reload_under_keep_alive_load`] asks `addrs` for `paths`; asserts that no request failed and
/// every answer was 2xx, and says what `what` saw. Returns what `act` returned.
pub(crate) fn under_keep_alive_load(
    addrs: Vec<SocketAddr>,
    paths: &'static [&'static str],
    connections: usize,
    what: &str,
    act: impl FnOnce() -> String,
) -> String {
    let load = chat_bench::load::Load::paced(addrs, paths, connections, Duration::from_millis(20));
    load.wait_for(500);
    let out = act();
    load.wait_for(500);
    let outcome = load.finish();
    eprintln!(
        "{what}: {} ok, {} refused, {} failed, {} non-2xx",
        outcome.ok, outcome.refused, outcome.failed, outcome.non_2xx
    );
    assert_eq!(
        (outcome.refused, outcome.failed, outcome.non_2xx),
        (0, 0, 0),
        "{what}: under keep-alive load nothing fails and every answer is 2xx\n{out}"
    );
    out
}
