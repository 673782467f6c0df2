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

/// Readiness from a Node program, PM2's way (`wait_ready`): Node cannot send datagrams to
/// `NOTIFY_SOCKET`, but a program started with an IPC channel (`NODE_CHANNEL_FD`) has
/// `process.send`, and `process.send('ready')` writes the line `"ready"` on it (JSON serialization).
/// Returns the child's end, to pass at spawn; `on_notice` gets `READY` for that line.
pub(crate) fn node_channel(on_notice: impl Fn(Notice) + Send + 'static) -> io::Result<std::os::unix::net::UnixStream> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let ours = tokio::net::UnixStream::from_std(ours)?;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(ours.take(MAX_CHANNEL_BYTES)).lines();
        // Ends when the program (and whatever inherited the channel) has closed it.
        while let Ok(Some(line)) = lines.next_line().await {
            if is_ready(&line) {
                on_notice(Notice { ready: true, status: None });
            }
        }
    });
    Ok(theirs)
}

/// The most a program's channel is read, in all: it says `ready` once, not a stream.
const MAX_CHANNEL_BYTES: u64 = 1 << 20;

/// `process.send('ready')`, or PM2's `{ type: 'process:msg', data: 'ready' }`.
fn is_ready(line: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::String(text)) => text == "ready",
        Ok(value) => value.get("data").and_then(serde_json::Value::as_str) == Some("ready"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_programs_ready_message() {
        assert!(is_ready("\"ready\""));
        assert!(is_ready(r#"{"type":"process:msg","data":"ready"}"#));
        assert!(!is_ready("\"starting\"") && !is_ready("ready") && !is_ready("{}"));
    }

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
