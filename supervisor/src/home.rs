//! `$CHATCTL_HOME` (default `~/.chatctl`): the control socket, the daemon's lock and log, app logs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chat_shared::ipc::SOCKET_FILE;

pub(crate) const HOME_VAR: &str = "CHATCTL_HOME";

#[derive(Clone, Debug)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// `$CHATCTL_HOME`, else `$HOME/.chatctl`.
    pub fn from_env() -> io::Result<Home> {
        if let Some(dir) = std::env::var_os(HOME_VAR).filter(|d| !d.is_empty()) {
            return Ok(Home { dir: std::path::absolute(PathBuf::from(dir))? });
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("neither {HOME_VAR} nor HOME is set")))?;
        Ok(Home { dir: PathBuf::from(home).join(".chatctl") })
    }

    pub fn at(dir: impl Into<PathBuf>) -> Home {
        Home { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET_FILE)
    }

    /// Holds the daemon's pid under an exclusive lock: one daemon per home.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }

    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Creates the directories, private to this user (the socket controls every process it runs).
    pub fn ensure(&self) -> io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(self.logs_dir())?;
        Ok(())
    }
}

/// Open options for a state file of the home (dump, pid files, the daemon's log): created readable
/// by its owner only. The mode goes to open(2), so the file is never readable by others, not even
/// between a create and a chmod; the dump holds every app's environment, secrets included, and
/// survives being copied out of the 0700 home into a backup.
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

/// Tightens a state file an older chatctl created with the umask's mode (an open does not change
/// the mode of a file that exists).
pub fn keep_private(file: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if file.metadata()?.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
