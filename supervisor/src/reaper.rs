//! Process groups die with the daemon, grandchildren included, however the daemon dies.
//!
//! `PR_SET_PDEATHSIG` reaches only the daemon's direct children; a worker's own children would be
//! orphaned and keep running (and keep ports, files, memory) after a `kill -9` of the daemon. So the
//! daemon starts one small companion process, `chatctl __reaper`, in its own process group, and
//! tells it over a pipe which process groups exist (`+PGID` / `-PGID` lines). The pipe's write end
//! lives only in the daemon (close-on-exec keeps it out of instances), so when the daemon dies for
//! any reason the reaper reads end-of-file and SIGKILLs every group it still knows, then exits.
//! A graceful daemon stop leaves it nothing to do.
//!
//! Processes that left their group (`setsid`) are not in any group it knows: the daemon also tells
//! it (`c<dir>`, `d<pid>`) where they are (see `descendants`), and after the groups it kills every
//! process of the daemon's cgroup directory and every process launched by that daemon.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid as NixPid;

use crate::pid::Pid;

/// The daemon's end.
pub struct Reaper {
    pipe: Option<std::fs::File>,
    /// Our child (waited on by pid: a daemon that re-executed itself did not spawn it).
    pid: u32,
}

impl Reaper {
    /// Starts `chatctl __reaper` with its stderr going to `log`.
    pub fn start(log: Stdio) -> io::Result<Reaper> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("__reaper")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own group: no signal meant for the daemon's group or an instance's reaches it.
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take().map(|p| std::fs::File::from(std::os::fd::OwnedFd::from(p)));
        Ok(Reaper { pipe, pid: child.id() })
    }

    /// The reaper the previous image of this daemon started (`chatctl update`), and its pipe.
    pub(crate) fn adopt(pid: u32, pipe: std::os::fd::OwnedFd) -> Reaper {
        Reaper { pipe: Some(pipe.into()), pid }
    }

    /// Its pipe, for the next image of this daemon.
    pub(crate) fn pipe(&self) -> Option<&std::fs::File> {
        self.pipe.as_ref()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn watch(&mut self, pgid: Pid) {
        self.send('+', pgid);
    }

    pub(crate) fn forget(&mut self, pgid: Pid) {
        self.send('-', pgid);
    }

    /// Where the daemon's instances' descendants are: its cgroup directory, if any, and its pid
    /// (the prefix of every `CHATCTL_LAUNCH`).
    pub(crate) fn sweep(&mut self, cgroup: Option<&std::path::Path>, daemon_pid: u32) {
        if let Some(dir) = cgroup {
            self.send('c', dir.display());
        }
        self.send('d', daemon_pid);
    }

    fn send(&mut self, op: char, arg: impl std::fmt::Display) {
        let Some(pipe) = self.pipe.as_mut() else { return };
        // A few bytes into a pipe the reaper drains continuously: this does not block in practice.
        if let Err(e) = writeln!(pipe, "{op}{arg}") {
            tracing::error!(error = %e, "the reaper is gone: process groups will not be swept if the daemon dies");
            self.pipe = None;
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the pipe is the reaper's cue; by now every group is down, so it just exits.
        self.pipe = None;
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::wait::waitpid(NixPid::from_raw(pid), None);
        }
    }
}

/// `chatctl __reaper`: follow the daemon's list of groups until end-of-file, then kill them all.
pub fn main() -> ExitCode {
    let mut groups = BTreeSet::new();
    let mut cgroup = None;
    let mut daemon_pid = None;
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, arg) = line.split_at(line.chars().next().map_or(0, char::len_utf8));
        match (op, arg.parse::<i32>()) {
            ("+", Ok(pgid)) => {
                groups.insert(pgid);
            }
            ("-", Ok(pgid)) => {
                groups.remove(&pgid);
            }
            ("d", Ok(pid)) => daemon_pid = u32::try_from(pid).ok(),
            ("c", _) => cgroup = Some(std::path::PathBuf::from(arg)),
            _ => {}
        }
    }
    for pgid in &groups {
        match killpg(NixPid::from_raw(*pgid), Signal::SIGKILL) {
            Ok(()) => eprintln!("chatctl reaper: the daemon died; killed process group {pgid}"),
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => eprintln!("chatctl reaper: cannot kill process group {pgid}: {e}"),
        }
    }
    if let Some(pid) = daemon_pid {
        let killed = crate::descendants::end_all(cgroup.as_deref(), pid);
        if killed > 0 {
            eprintln!("chatctl reaper: killed {killed} process(es) that had left their instance's group");
        }
    }
    ExitCode::SUCCESS
}
