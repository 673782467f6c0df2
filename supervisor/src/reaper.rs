//! Process groups die with the daemon, grandchildren included, however the daemon dies.
//!
//! `PR_SET_PDEATHSIG` reaches only the daemon's direct children; a worker's own children would be
//! orphaned and keep running (and keep ports, files, memory) after a `kill -9` of the daemon. So the
//! daemon starts one small companion process, `chatctl __reaper`, in its own process group, and
//! tells it over a pipe which process groups exist (`+PGID` / `-PGID` lines). The pipe's write end
//! lives only in the daemon (close-on-exec keeps it out of instances), so when the daemon dies for
//! any reason the reaper reads end-of-file and SIGKILLs every group it still knows, then exits.
//! A graceful daemon stop leaves it nothing to do.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The daemon's end.
pub struct Reaper {
    pipe: Option<ChildStdin>,
    child: Child,
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
        let pipe = child.stdin.take();
        Ok(Reaper { pipe, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn watch(&mut self, pgid: u32) {
        self.send('+', pgid);
    }

    pub fn forget(&mut self, pgid: u32) {
        self.send('-', pgid);
    }

    fn send(&mut self, op: char, pgid: u32) {
        let Some(pipe) = self.pipe.as_mut() else { return };
        // A few bytes into a pipe the reaper drains continuously: this does not block in practice.
        if let Err(e) = writeln!(pipe, "{op}{pgid}") {
            tracing::error!(error = %e, "the reaper is gone: process groups will not be swept if the daemon dies");
            self.pipe = None;
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the pipe is the reaper's cue; by now every group is down, so it just exits.
        self.pipe = None;
        let _ = self.child.wait();
    }
}

/// `chatctl __reaper`: follow the daemon's list of groups until end-of-file, then kill them all.
pub fn main() -> ExitCode {
    let mut groups = BTreeSet::new();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.parse::<i32>() else { continue };
        match op {
            "+" => groups.insert(pgid),
            "-" => groups.remove(&pgid),
            _ => continue,
        };
    }
    for pgid in &groups {
        match killpg(Pid::from_raw(*pgid), Signal::SIGKILL) {
            Ok(()) => eprintln!("chatctl reaper: the daemon died; killed process group {pgid}"),
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => eprintln!("chatctl reaper: cannot kill process group {pgid}: {e}"),
        }
    }
    ExitCode::SUCCESS
}
