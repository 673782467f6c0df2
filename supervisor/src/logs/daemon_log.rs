//! `daemon.log`, rotated by size like an app's log. tracing-appender's `RollingFileAppender`
//! rotates by time only, and a daemon that runs for months (or one whose apps' logs are failing,
//! before their reports were throttled) grew it without bound. Rather than a second rotation
//! scheme, this is the apps' [`RotatingFile`] (rename, reopen, keep `retain`) behind
//! `std::io::Write`, so tracing-appender's non-blocking writer drives it from its own thread: the
//! daemon's thread never waits for this disk either.

use std::io;
use std::path::PathBuf;

use super::rotate::{RotatePolicy, RotatingFile};

/// `daemon.log` rotates when a line would take it past this...
const DAEMON_LOG_MAX: u64 = 10 << 20;
/// ...and this many rotated files are kept.
const DAEMON_LOG_RETAIN: u32 = 3;

/// The daemon's log file, as the inner writer of `tracing_appender::non_blocking`.
pub struct DaemonLog {
    file: RotatingFile,
    /// The daemon's stdout and stderr point at `daemon.log` (the CLI started it so): after a
    /// rotation they are pointed at the new file too, so a panic lands where operators look.
    follow_stdio: bool,
    rotations: u64,
}

impl DaemonLog {
    /// Opens `path` (0600) for appending.
    pub fn open(path: PathBuf) -> io::Result<DaemonLog> {
        let policy = RotatePolicy {
            max_size: DAEMON_LOG_MAX,
            retain: DAEMON_LOG_RETAIN,
            compress: false,
            daily: false,
            private: true,
        };
        let follow_stdio = same_file(&path, io::stderr());
        Ok(DaemonLog { file: RotatingFile::open(path, policy)?, follow_stdio, rotations: 0 })
    }
}

/// Whether `fd` is open on the file at `path`.
fn same_file(path: &std::path::Path, fd: impl std::os::fd::AsFd) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(on_disk) = std::fs::metadata(path) else { return false };
    match nix::sys::stat::fstat(fd) {
        Ok(open) => open.st_dev == on_disk.dev() && open.st_ino == on_disk.ino(),
        Err(_) => false,
    }
}

impl io::Write for DaemonLog {
    /// Takes one formatted event (whole lines). Never fails: a line that cannot be written is
    /// counted and reported like an app's (there is nowhere else to say it).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf);
        if self.follow_stdio && self.file.rotations() != self.rotations {
            self.rotations = self.file.rotations();
            self.file.flush();
            if let Some(file) = self.file.file() {
                // A failure leaves stdout or stderr on the rotated file: nothing is lost.
                let _ = nix::unistd::dup2_stdout(file);
                let _ = nix::unistd::dup2_stderr(file);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush();
        Ok(())
    }
}
