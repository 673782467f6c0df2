//! Ending what a previous daemon of the same home left behind (it was killed together with its
//! reaper, or the machine's pid namespace outlived both): every process whose environment carries
//! this home's supervisor mark. Runs once, when a daemon starts, before it binds any port.

use std::path::Path;
use std::time::{Duration, Instant};

use chat_shared::worker_env::SUPERVISOR_MARK;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long leftovers get to exit on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// Stops every process marked with `home`; returns how many there were.
pub(crate) fn end(home: &Path) -> usize {
    let mark = format!("{SUPERVISOR_MARK}={}", home.display());
    let me = std::process::id();
    let pids = marked(&mark, me);
    if pids.is_empty() {
        return 0;
    }
    tracing::warn!(count = pids.len(), ?pids, "ending processes left by a previous daemon of this home");
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids.iter().filter(|p| alive(**p)) {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    pids.len()
}

/// Pids (other than ours) whose environment holds `mark` exactly as one entry.
fn marked(mark: &str, me: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid as u32 != me)
        .filter(|pid| {
            // Other users' processes are unreadable (EACCES): they are not ours anyway.
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|entry| entry == mark.as_bytes()))
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}
