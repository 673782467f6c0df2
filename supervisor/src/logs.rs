//! Capturing instances' stdout and stderr into the app's log files, line by line.
//!
//! One writer task per app owns its files; readers (one per pipe) send it whole lines over a bounded
//! channel. Whole lines mean lines of different instances never interleave mid-line; a bounded
//! channel means a worker that writes faster than the disk is slowed down (its pipe fills), never
//! silently dropped. Writes are plain blocking `write`s into the page cache, as nginx does for its
//! logs; `tokio::fs` would cost a thread hop per write.
//! Rotation, timestamps and JSON records are not done yet (they are parsed by no key yet either).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use tokio::sync::mpsc;

/// A longer line is cut into pieces of this size, each written as a line.
const MAX_LINE: usize = 64 * 1024;
/// Lines buffered per app between the pipes and the files.
const QUEUE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Out,
    Err,
}

struct Line {
    stream: Stream,
    bytes: Vec<u8>,
}

/// Handle to an app's log writer; cheap to clone, one per pipe reader.
#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::Sender<Line>,
}

/// Where an app's output goes.
#[derive(Clone, Debug)]
pub(crate) struct LogPaths {
    pub(crate) out: PathBuf,
    pub(crate) err: PathBuf,
}

impl LogSink {
    /// Opens (appending) both files and starts the writer task.
    pub(crate) fn open(app: &str, paths: &LogPaths) -> io::Result<LogSink> {
        let out = open_append(&paths.out)?;
        let err = if paths.err == paths.out { None } else { Some(open_append(&paths.err)?) };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(app.to_owned(), rx, out, err));
        Ok(LogSink { tx })
    }

    /// Reads `pipe` to its end, forwarding each line.
    pub(crate) fn capture(&self, pipe: impl AsyncRead + Unpin + Send + 'static, stream: Stream) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::with_capacity(64 * 1024, pipe);
            loop {
                let mut bytes = Vec::new();
                match read_line(&mut reader, &mut bytes).await {
                    Ok(0) => break,
                    Ok(_) => {
                        if tx.send(Line { stream, bytes }).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading an instance's output failed");
                        break;
                    }
                }
            }
        });
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes, always newline-terminated; 0 at the end.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let n = reader.take(MAX_LINE as u64).read_until(b'\n', buf).await?;
    if n > 0 && buf.last() != Some(&b'\n') {
        // Cut here (or the pipe ended without a final newline): terminate the piece.
        buf.push(b'\n');
    }
    Ok(n)
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

async fn write_lines(app: String, mut rx: mpsc::Receiver<Line>, out: File, err: Option<File>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut err = err.map(|f| BufWriter::with_capacity(64 * 1024, f));
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Write everything queued, then flush once: few syscalls under load, nothing held back when idle.
        while let Some(line) = next {
            let file = match (line.stream, err.as_mut()) {
                (Stream::Err, Some(e)) => e,
                _ => &mut out,
            };
            if let Err(e) = file.write_all(&line.bytes) {
                tracing::error!(app, error = %e, "writing a log line failed");
            }
            next = rx.try_recv().ok();
        }
        for file in std::iter::once(&mut out).chain(err.as_mut()) {
            if let Err(e) = file.flush() {
                tracing::error!(app, error = %e, "flushing a log file failed");
            }
        }
    }
}
