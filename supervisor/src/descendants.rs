//! Every process an instance starts dies with it, including those that left its process group
//! (`setsid`, a daemonizing helper): a stop, a crash, `chatctl kill` and a SIGKILL of the daemon all
//! end them, like systemd's `KillMode=control-group`.
//!
//! Two mechanisms, the first that works:
//! - **cgroup v2**, where the daemon may create directories below its own cgroup (root, or a
//!   systemd service with `Delegate=yes`): a directory `chatctl-<home hash>-<daemon pid>` below the
//!   daemon's cgroup, a leaf per spawn inside it, joined by the child between fork and exec (it
//!   writes "0" to the leaf's `cgroup.procs`). Membership is inherited and cannot be left without
//!   write access to another cgroup, so nothing escapes; `cgroup.kill` ends a whole leaf at once.
//!   No controller is enabled, so cgroup v2's "no internal processes" rule does not apply and the
//!   daemon stays where it is.
//! - **the environment**, elsewhere: every instance gets `CHATCTL_LAUNCH=<daemon pid>.<n>`, which
//!   its descendants inherit unless they clear their environment; a sweep of `/proc` finds them.
//!
//! When an instance's main process has exited, what is left of its leaf (or carries its launch id)
//! is SIGKILLed. When the daemon dies, the reaper does the same for every instance at once.
//! `CHATCTL_CGROUP=off` in the daemon's environment forces the second mechanism.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_shared::worker_env::LAUNCH;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Set to `off` in the daemon's environment to track descendants by environment only.
pub(crate) const CGROUP_VAR: &str = "CHATCTL_CGROUP";

/// How long killed processes get to leave their cgroup before its directory is given up on.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(2);

/// The daemon's tracking of instances' descendants.
pub(crate) struct Descendants {
    /// `None` where cgroups cannot be used (not v2, not writable, or turned off).
    cgroups: Option<PathBuf>,
    daemon_pid: u32,
    next: AtomicU64,
}

/// How one spawned process's descendants are found again.
#[derive(Debug)]
pub(crate) enum Tracked {
    /// Its leaf cgroup directory.
    Cgroup(PathBuf),
    /// Its `CHATCTL_LAUNCH` value.
    Launch(String),
}

/// What a spawn needs: the launch id for the environment, and the leaf to join, if any.
pub(crate) struct Prepared {
    pub(crate) id: String,
    pub(crate) leaf: Option<Leaf>,
}

pub(crate) struct Leaf {
    pub(crate) dir: PathBuf,
    /// `<dir>/cgroup.procs`, ready for `open(2)` in the child, where nothing may allocate.
    pub(crate) procs: CString,
}

impl Descendants {
    /// Sets up the cgroup directory of this daemon, or the environment fallback, and ends what
    /// earlier daemons of `home` left in their cgroup directories.
    pub(crate) fn setup(home: &Path) -> Descendants {
        let daemon_pid = std::process::id();
        let wanted = std::env::var(CGROUP_VAR).map_or(true, |v| v != "off");
        let cgroups = if wanted { cgroup_base(home, daemon_pid) } else { None };
        match &cgroups {
            Some(base) => tracing::info!(cgroup = %base.display(), "descendants tracked by cgroup"),
            None => tracing::info!("descendants tracked by environment (no writable cgroup v2 hierarchy)"),
        }
        Descendants { cgroups, daemon_pid, next: AtomicU64::new(0) }
    }

    /// The cgroup directory and launch numbering of the previous image of this daemon
    /// (`chatctl update`): nothing is swept, every instance in it is ours.
    pub(crate) fn adopt(cgroups: Option<PathBuf>, next: u64) -> Descendants {
        Descendants { cgroups, daemon_pid: std::process::id(), next: AtomicU64::new(next) }
    }

    /// The next launch number, for the next image of this daemon.
    pub(crate) fn next_launch(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// The cgroup directory holding every leaf, for the reaper.
    pub(crate) fn base(&self) -> Option<&Path> {
        self.cgroups.as_deref()
    }

    /// A fresh launch id and, with cgroups, a fresh leaf for instance `index` of `app`.
    pub(crate) fn prepare(&self, app: &str, index: usize) -> Prepared {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}.{n}", self.daemon_pid);
        let leaf = self.cgroups.as_ref().and_then(|base| {
            let dir = base.join(format!("{app}.{index}.{n}"));
            let made = std::fs::create_dir(&dir)
                .and_then(|()| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).map_err(io::Error::other));
            match made {
                Ok(procs) => Some(Leaf { dir, procs }),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot create a cgroup: tracking by environment");
                    None
                }
            }
        });
        Prepared { id, leaf }
    }

    /// How to find `pid`'s descendants: its leaf if the child really joined it (checked in
    /// `/proc`, so a failed join in the child falls back instead of losing track), else its id.
    pub(crate) fn tracked(&self, launch: Prepared, pid: u32) -> Tracked {
        if let Some(leaf) = launch.leaf {
            if joined(pid, &leaf.dir) {
                return Tracked::Cgroup(leaf.dir);
            }
            tracing::warn!(pid, dir = %leaf.dir.display(), "the instance did not join its cgroup: tracking by environment");
            let _ = std::fs::remove_dir(&leaf.dir);
        }
        Tracked::Launch(launch.id)
    }

    /// The leaf of a spawn that failed.
    pub(crate) fn discard(&self, launch: Prepared) {
        if let Some(leaf) = launch.leaf {
            let _ = std::fs::remove_dir(&leaf.dir);
        }
    }
}

impl Drop for Descendants {
    fn drop(&mut self) {
        if let Some(base) = &self.cgroups {
            end_cgroup_tree(base);
        }
    }
}

/// Ends what is left of a process whose main process exited: SIGKILL to every member of its leaf
/// (then the leaf is removed once empty) or to every process carrying its launch id.
pub(crate) fn end(tracked: Tracked) {
    match tracked {
        Tracked::Cgroup(dir) => {
            let killed = kill_cgroup(&dir);
            if killed > 0 {
                tracing::warn!(killed, cgroup = %dir.display(), "killed processes the instance left behind");
            }
            // Members take a moment to die; the directory goes once it is empty.
            tokio::spawn(async move {
                let deadline = Instant::now() + EMPTY_TIMEOUT;
                while !try_remove(&dir) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        Tracked::Launch(id) => {
            let killed = kill_marked(&format!("{LAUNCH}={id}"), false);
            if killed > 0 {
                tracing::warn!(killed, launch = id, "killed processes the instance left behind");
            }
        }
    }
}

/// The reaper's sweep when the daemon died: every leaf under `base`, and every process launched by
/// daemon `daemon_pid` (`CHATCTL_LAUNCH=<pid>.*`). Blocking; returns how many processes were killed.
pub(crate) fn end_all(base: Option<&Path>, daemon_pid: u32) -> usize {
    let mut killed = base.map_or(0, end_cgroup_tree);
    killed += kill_marked(&format!("{LAUNCH}={daemon_pid}."), true);
    killed
}

/// Kills every process in `base` and below, then removes the directories (leaves first).
fn end_cgroup_tree(base: &Path) -> usize {
    let leaves: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    let mut killed = kill_cgroup(base);
    for leaf in &leaves {
        killed += kill_cgroup(leaf);
    }
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    for dir in leaves.iter().chain(std::iter::once(&base.to_path_buf())) {
        while !try_remove(dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    killed
}

/// SIGKILLs every process in the cgroup `dir` (and below): `cgroup.kill` where the kernel has it
/// (5.14+), else each pid of `cgroup.procs`. Returns how many were listed.
fn kill_cgroup(dir: &Path) -> usize {
    let members = procs(dir);
    if members.is_empty() {
        return 0;
    }
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in &members {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    members.len()
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// True once `dir` is gone (an empty cgroup can be removed; one with members is EBUSY).
fn try_remove(dir: &Path) -> bool {
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// SIGKILLs every process (but this one) whose environment has an entry equal to `mark`, or, with
/// `prefix`, starting with it. Other users' processes are unreadable, and not ours anyway.
fn kill_marked(mark: &str, prefix: bool) -> usize {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|entry| if prefix { entry.starts_with(mark.as_bytes()) } else { entry == mark.as_bytes() })
            })
        })
        .collect();
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    pids.len()
}

/// Whether `pid` is a member of the cgroup directory `dir`.
fn joined(pid: u32, dir: &Path) -> bool {
    let Some((mount, _)) = own_cgroup() else { return false };
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return false };
    text.lines().filter_map(|l| l.strip_prefix("0::")).any(|rel| join(&mount, rel) == dir)
}

/// Creates this daemon's directory below its own cgroup, after ending the directories of earlier
/// daemons of the same home (a daemon and its reaper both SIGKILLed leave theirs).
fn cgroup_base(home: &Path, daemon_pid: u32) -> Option<PathBuf> {
    let (mount, rel) = own_cgroup()?;
    let parent = join(&mount, &rel);
    let prefix = format!("chatctl-{:016x}-", fnv1a(home.as_os_str().as_bytes()));
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
                let killed = end_cgroup_tree(&entry.path());
                tracing::warn!(killed, cgroup = %entry.path().display(), "ended the cgroup of a previous daemon of this home");
            }
        }
    }
    let base = parent.join(format!("{prefix}{daemon_pid}"));
    match std::fs::create_dir(&base) {
        Ok(()) => Some(base),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Some(base),
        Err(e) => {
            tracing::debug!(dir = %base.display(), error = %e, "cgroup not writable");
            None
        }
    }
}

/// The cgroup v2 mount point and this process's cgroup path relative to it.
fn own_cgroup() -> Option<(PathBuf, String)> {
    let rel = cgroup_v2_path(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?;
    let mount = cgroup_v2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
    Some((mount, rel))
}

/// The v2 entry (`0::PATH`) of a `/proc/PID/cgroup`.
fn cgroup_v2_path(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid system), from `/proc/self/mountinfo`.
fn cgroup_v2_mount(mountinfo: &str) -> Option<PathBuf> {
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPEROPTS"
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        if rest.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = fields.split_whitespace().collect();
        let (root, mount_point) = (*fields.get(3)?, *fields.get(4)?);
        // Only a mount of the hierarchy's root (or of our cgroup namespace's root) maps paths 1:1.
        (root == "/").then(|| PathBuf::from(mount_point))
    })
}

fn join(mount: &Path, rel: &str) -> PathBuf {
    mount.join(rel.trim_start_matches('/'))
}

/// A stable 64-bit hash (FNV-1a): the home's directory name must not change between daemons.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_hierarchy_is_found_on_pure_and_hybrid_systems() {
        let pure = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let v1_only = "27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let bind_of_a_subtree = "30 23 0:26 /user.slice /mnt/cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup_v2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup_v2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup_v2_mount(v1_only), None);
        assert_eq!(cgroup_v2_mount(bind_of_a_subtree), None);
        let cgroup = "4:memory:/x\n0::/system.slice/chat.service\n";
        assert_eq!(cgroup_v2_path(cgroup).as_deref(), Some("/system.slice/chat.service"));
        assert_eq!(
            join(Path::new("/sys/fs/cgroup"), "/system.slice/chat.service"),
            PathBuf::from("/sys/fs/cgroup/system.slice/chat.service")
        );
        assert_eq!(join(Path::new("/sys/fs/cgroup"), "/"), PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn a_home_names_the_same_directory_in_every_daemon() {
        assert_eq!(fnv1a(b"/srv/chat/.chatctl"), fnv1a(b"/srv/chat/.chatctl"));
        assert_ne!(fnv1a(b"/srv/chat/.chatctl"), fnv1a(b"/srv/chat/.chatctl2"));
    }
}
