//! Readiness from the program itself: systemd's sd_notify protocol. An instance with
//! `readiness = "notify"` gets `NOTIFY_SOCKET`, the path of a datagram socket of its own, and sends
//! `READY=1` (newline-separated `KEY=VALUE` assignments) when it can serve.
//!
//! One socket per instance slot means the sender needs no identification (no SCM_CREDENTIALS); the
//! directory holding the sockets is private to the daemon's user.

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixDatagram;
use tokio::task::JoinHandle;

/// sd_notify messages are small; systemd itself reads at most a page.
const MAX_MESSAGE: usize = 4096;

/// What a notify message asked for, in the parts the supervisor acts on.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) ready: bool,
    pub(crate) status: Option<String>,
}

impl Notice {
    pub(crate) fn parse(message: &str) -> Notice {
        let mut notice = Notice::default();
        for line in message.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => notice.ready = true,
                Some(("STATUS", text)) => notice.status = Some(text.to_owned()),
                _ => {}
            }
        }
        notice
    }
}

/// A bound notify socket; its file is removed when this is dropped.
pub(crate) struct NotifySocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl NotifySocket {
    /// Binds `path` (replacing a stale file) and calls `on_notice` for every message.
    pub(crate) fn bind(path: PathBuf, on_notice: impl Fn(Notice) + Send + 'static) -> io::Result<NotifySocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let socket = UnixDatagram::bind(&path)?;
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                match socket.recv(&mut buf).await {
                    Ok(n) => on_notice(Notice::parse(&String::from_utf8_lossy(&buf[..n]))),
                    Err(e) => {
                        tracing::warn!(error = %e, "notify socket failed");
                        return;
                    }
                }
            }
        });
        Ok(NotifySocket { path, task })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_assignments_we_act_on() {
        assert_eq!(Notice::parse("READY=1\nSTATUS=serving"), Notice { ready: true, status: Some("serving".into()) });
        assert_eq!(
            Notice::parse("STATUS=warming up\nREADY=0"),
            Notice { ready: false, status: Some("warming up".into()) }
        );
        assert_eq!(Notice::parse("garbage"), Notice::default());
    }
}
