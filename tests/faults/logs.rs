//! Log faults (issue 11, items 6 and 7): a huge tail must not stop the daemon; a log that cannot be
//! rotated or written must neither lose the lines it can still write nor flood `daemon.log`, and
//! must resume by itself; `flush` must free a full disk; `daemon.log` itself rotates.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_shared::status::{AppStatus, Phase};

use crate::support::{Env, alive, sigkill, wait_until};

/// The fixture program, done when it exits 0 (these print and stop).
fn app(name: &str, args: &[&str], extra: &str) -> String {
    crate::support::fixture_app(name, args, &format!("stop_exit_codes = [0]\n{extra}"))
}

fn find<'a>(apps: &'a [AppStatus], name: &str) -> &'a AppStatus {
    apps.iter().find(|a| a.name == name).unwrap_or_else(|| panic!("{name} in {apps:?}"))
}

/// Rotated siblings of `path` (`NAME.<stamp>`).
fn rotated(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    let Ok(entries) = std::fs::read_dir(path.parent().expect("dir")) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{name}.2"))))
        .collect();
    files.sort();
    files
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Lines of `daemon.log` at WARN or ERROR that mention `needle`.
fn complaints(env: &Env, needle: &str) -> usize {
    env.daemon_log().lines().filter(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains(needle)).count()
}

/// Kills `pid` after `after` unless disarmed (dropped) first: a blocking read of a child's output
/// then ends instead of hanging the test.
struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(pid: u32, after: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
                sigkill(pid);
            }
        });
        Watchdog { _disarm: tx }
    }
}

#[test]
fn list_answers_while_a_huge_tail_is_still_streaming() {
    const LINES: usize = 400_000;
    let env = Env::new();
    let log = env.path("big-out.log");
    // 40 MB of 100-byte lines, already in the app's current file.
    let mut text = String::with_capacity(LINES * 100);
    for i in 0..LINES {
        text.push_str(&format!("line {i:07} {}\n", "x".repeat(87)));
    }
    std::fs::write(&log, &text).expect("a 40 MB log");
    drop(text);
    env.write(
        "ecosystem.toml",
        &app("big", &[], &format!("out_file = {:?}\nmax_size = \"1G\"", log.display().to_string())),
    );
    env.ok(&["start"]);

    let mut logs = env
        .command()
        .args(["logs", "big", "--out", "--lines", "100000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chatctl logs");
    env.remember(logs.id());
    let _watchdog = Watchdog::arm(logs.id(), Duration::from_secs(120));
    let mut out = BufReader::new(logs.stdout.take().expect("stdout"));
    let mut header = String::new();
    out.read_line(&mut header).expect("read");
    assert!(header.starts_with("==> ") && header.trim_end().ends_with("big-out.log <=="), "{header:?}");
    let mut first = String::new();
    out.read_line(&mut first).expect("read");
    assert!(first.starts_with("line "), "the tail's first line: {first:?}");

    // Nobody reads the rest for now: the tail stops part-way (its pipe and socket are full) and must
    // stop nothing else.
    let begun = Instant::now();
    let listed = env.chatctl(&["list", "--json"]);
    let took = begun.elapsed();
    assert!(
        listed.status.success(),
        "list during a tail: {}\n{}",
        String::from_utf8_lossy(&listed.stderr),
        env.daemon_log()
    );
    assert!(logs.try_wait().expect("try_wait").is_none(), "the tail was still under way when list answered");
    eprintln!("list answered in {} ms during a 40 MB tail", took.as_millis());

    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("the rest of the tail");
    let status = logs.wait().expect("wait");
    let mut stderr = String::new();
    logs.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    assert!(status.success(), "{status}: {stderr}");
    let lines: Vec<&str> = std::iter::once(first.trim_end()).chain(rest.lines()).collect();
    assert_eq!(lines.len(), 100_000, "capped at 100000 lines: {stderr}");
    assert!(lines[0].starts_with(&format!("line {:07} ", LINES - 100_000)), "{}", lines[0]);
    assert!(lines[lines.len() - 1].starts_with(&format!("line {:07} ", LINES - 1)), "{}", lines[lines.len() - 1]);
    assert!(stderr.contains("100000"), "the cap is said: {stderr:?}");
}

#[test]
fn a_log_directory_replaced_by_a_file_and_back_loses_no_writable_line_and_resumes() {
    let env = Env::new();
    let dir = env.path("applogs");
    std::fs::create_dir(&dir).expect("log dir");
    let out = dir.join("tick-out.log");
    env.write(
        "ecosystem.toml",
        &app(
            "tick",
            &["--tick", "1"],
            &format!(
                "out_file = {:?}\nerror_file = {:?}\nmax_size = \"4K\"\nretain = 1000",
                out.display().to_string(),
                dir.join("tick-err.log").display().to_string()
            ),
        ),
    );
    env.ok(&["start"]);
    wait_until("a first rotation", Duration::from_secs(30), || (!rotated(&out).is_empty()).then_some(()));

    // The directory becomes a file: a rotation (rename into it) fails, even for root.
    let away = env.path("applogs.away");
    std::fs::rename(&dir, &away).expect("move the log dir");
    std::fs::write(&dir, "not a directory").expect("a file in its place");
    let current = away.join("tick-out.log");
    // The open file (now under `away`) keeps taking lines past max_size instead of dropping them.
    wait_until("lines appended past max_size while rotation fails", Duration::from_secs(30), || {
        (size(&current) > 12 * 1024).then_some(())
    });
    let issue = wait_until("the problem shown in list", Duration::from_secs(10), || {
        find(&env.list(), "tick").log_issue.clone()
    });
    assert!(issue.contains("tick-out.log") && issue.contains("rotat"), "{issue}");
    let described = env.ok(&["describe", "tick"]);
    assert!(described.contains(&format!("log problem  {issue}")), "{described}");
    let table = env.ok(&["list"]);
    assert!(table.contains(&format!("tick: log problem: {issue}")), "{table}");
    // Hundreds of lines failed to rotate by now: daemon.log got a line or two, not one per line.
    let logged = complaints(&env, "tick-out.log");
    assert!((1..=3).contains(&logged), "{logged} complaints:\n{}", env.daemon_log());

    // Back to normal: rotation resumes by itself, the note goes away, nothing restarted.
    std::fs::remove_file(&dir).expect("remove the file");
    std::fs::rename(&away, &dir).expect("the log dir back");
    let before = rotated(&out).len();
    wait_until("rotation resumed and the problem cleared", Duration::from_secs(30), || {
        let apps = env.list();
        let tick = find(&apps, "tick");
        (rotated(&out).len() > before + 1 && tick.log_issue.is_none()).then_some(())
    });
    assert!(size(&out) <= 4096, "the current file is small again: {}", size(&out));
    let apps = env.list();
    let instance = &find(&apps, "tick").instances[0];
    assert_eq!((instance.status, instance.restarts), (Phase::Online, 0), "{instance:?}");
}

/// A size-limited tmpfs at `path`, unmounted on drop; `None` (the test skips) where mounting is
/// not allowed, except under `CI=true`, where the test must run.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mount point");
        let ran = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stdout(Stdio::null())
            .output();
        match ran {
            Ok(out) if out.status.success() => Some(Tmpfs(path.to_owned())),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run this test (as root): mount: {why}");
                eprintln!("skipped: a size-limited tmpfs needs root (mount: {})", why.trim());
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the daemon may still hold a file open here; the mount goes once it closes it.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn flush_on_a_full_disk_frees_it_and_logging_resumes() {
    let env = Env::new();
    let Some(_disk) = Tmpfs::mount(&env.path("disk"), "256k") else { return };
    let out = env.path("disk/fill-out.log");
    env.write(
        "ecosystem.toml",
        &app(
            "fill",
            &["--lines", "20000", "--line-bytes", "100", "--tick", "20"],
            &format!(
                "out_file = {:?}\nerror_file = {:?}\nmax_size = \"1G\"",
                out.display().to_string(),
                env.path("fill-err.log").display().to_string()
            ),
        ),
    );
    env.ok(&["start"]);
    wait_until("the disk full", Duration::from_secs(30), || (size(&out) > 200 * 1024).then_some(()));
    let issue = wait_until("the write failure shown in list", Duration::from_secs(10), || {
        find(&env.list(), "fill").log_issue.clone()
    });
    assert!(issue.contains("fill-out.log") && issue.contains("dropped"), "{issue}");

    let flushed = env.chatctl(&["flush", "fill"]);
    assert!(flushed.status.success(), "flush on a full disk: {}", String::from_utf8_lossy(&flushed.stderr));
    wait_until("new lines after the flush, and the problem cleared", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&out).ok()?;
        let ticks = text.lines().filter(|l| l.starts_with("tick ")).count();
        (ticks >= 3 && find(&env.list(), "fill").log_issue.is_none()).then_some(())
    });
    let logged = complaints(&env, "fill-out.log");
    assert!((1..=3).contains(&logged), "{logged} complaints:\n{}", env.daemon_log());
    assert!(env.daemon_log().contains("dropped"), "the dropped count is in daemon.log:\n{}", env.daemon_log());
    // Stop the app before the tmpfs goes.
    env.ok(&["kill"]);
    if let Some(pid) = env.daemon_pid() {
        wait_until("the daemon gone", Duration::from_secs(30), || (!alive(pid)).then_some(()));
    }
}

#[test]
fn daemon_log_rotates_by_size_and_keeps_a_few() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let home = env.home();
    std::fs::create_dir_all(&home).expect("home");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod home");
    let log = home.join("daemon.log");
    // Older rotations, and a current file past the 10 MB limit.
    for day in 1..=4 {
        std::fs::write(home.join(format!("daemon.log.2020010{day}-000000.000")), "old\n").expect("old rotation");
    }
    std::fs::write(&log, "a line of a previous daemon\n".repeat(400_000)).expect("a big daemon.log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o600)).expect("chmod log");
    env.write("ecosystem.toml", &app("quiet", &[], ""));
    env.ok(&["start"]);

    let files = wait_until("daemon.log rotated", Duration::from_secs(30), || {
        let files = rotated(&log);
        files.iter().any(|f| size(f) > 10 << 20).then_some(files)
    });
    assert_eq!(files.len(), 3, "a few rotations kept, the oldest deleted: {files:?}");
    assert!(size(&log) < 1 << 20, "a fresh daemon.log: {}", size(&log));
    assert!(env.daemon_log().contains("daemon starting"), "{}", env.daemon_log());
    let mode = std::fs::metadata(&log).expect("daemon.log").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "daemon.log stays private");
}
