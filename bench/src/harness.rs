//! Running the release binaries in a private home, and reading /proc.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use chat_shared::status::{AppStatus, InstanceStatus};

/// A binary of this workspace's release build.
pub(crate) fn release_bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("bench executable path");
    dir.pop();
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: cargo build --release --workspace", path.display());
    path
}

pub(crate) struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    pub(crate) fn new() -> Bench {
        Bench { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub(crate) fn config(&self, text: &str) {
        std::fs::write(self.dir.path().join("ecosystem.toml"), text).expect("write config");
    }

    pub(crate) fn chatctl(&self, args: &[&str]) -> String {
        let out = Command::new(release_bin("chatctl"))
            .args(args)
            .env("CHATCTL_HOME", self.home())
            .current_dir(self.dir.path())
            .output()
            .expect("run chatctl");
        assert!(out.status.success(), "chatctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn instance(&self, index: usize) -> InstanceStatus {
        let apps: Vec<AppStatus> = serde_json::from_str(&self.chatctl(&["list", "--json"])).expect("list json");
        apps[0].instances[index].clone()
    }

    pub(crate) fn daemon_pid(&self) -> u32 {
        std::fs::read_to_string(self.home().join("daemon.pid")).expect("daemon.pid").trim().parse().expect("pid")
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if self.home().join("daemon.sock").exists() {
            let _ = Command::new(release_bin("chatctl")).arg("kill").env("CHATCTL_HOME", self.home()).output();
        }
    }
}

pub(crate) fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

pub(crate) fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// The pid in a `/health` answer, if one came.
pub(crate) fn health_pid(addr: SocketAddr) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(100)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_millis(500))).ok()?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    let health: chat_shared::health::HealthBody = serde_json::from_str(body).ok()?;
    Some(health.pid)
}

/// (VmRSS, RssAnon) in KiB.
pub(crate) fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix(" kB")?.parse().ok()).unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// utime + stime of `pid`, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

pub(crate) fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100.0, |t| t as f64)
}

/// Lines in a file, by counting newlines in blocks.
pub(crate) fn count_lines(path: &std::path::Path) -> u64 {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else { return 0 };
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0;
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    lines
}

/// CPU used by `pids` together over `window`, percent of one core.
pub(crate) fn cpu_percent(pids: &[u32], window: std::time::Duration) -> f64 {
    let before: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    std::thread::sleep(window);
    let after: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    after.saturating_sub(before) as f64 / ticks_per_second() / window.as_secs_f64() * 100.0
}
