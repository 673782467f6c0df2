//! Capturing instances' stdout and stderr into the app's log files.
//!
//! One reader task per pipe cuts the stream into chunks of whole lines and sends them, over a
//! bounded channel, to the app's one writer thread, which owns the app's files. Whole lines mean lines
//! of different instances never interleave mid-line; the bounded channel means a worker that writes
//! faster than the disk is slowed down (its pipe fills and its `write` blocks), never silently
//! dropped. Followers (`chatctl logs --follow`) get the lines through a broadcast channel; one that
//! falls behind loses lines and is told how many.
//!
//! Writes are plain blocking `write`s into the page cache, as nginx does for its logs, on a thread
//! of the app's own: a disk that stalls (full, remote, failing) stalls that thread, never the
//! daemon's, which supervises, probes and answers `chatctl`. Rotation (`rotate`) renames and
//! reopens; compression runs on the blocking pool. A file that cannot be written or rotated is
//! reported without flooding (`trouble`), shown in `chatctl list`, and retried by itself.

mod daemon_log;
pub(crate) mod rotate;
mod tail;
mod trouble;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chat_shared::ipc::{LogRecord, LogStream};
use chat_shared::spec::LogSpec;
use chat_shared::sync::Locked;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use daemon_log::DaemonLog;
use rotate::{RotatePolicy, RotatingFile};
pub(crate) use tail::{last_lines, stream_tail};

/// A line longer than this is cut, each piece written as a line.
const MAX_LINE: usize = 64 * 1024;
/// Chunks buffered per app between the pipes and the files.
const QUEUE: usize = 1024;

/// Where an app's output goes, defaults resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogPaths {
    pub(crate) out: PathBuf,
    pub(crate) err: PathBuf,
}

impl LogPaths {
    /// The file of `stream` for `instance` (per-instance files insert `-N` before the extension).
    pub(crate) fn file(&self, stream: LogStream, instance: Option<usize>) -> PathBuf {
        let base = match stream {
            LogStream::Out => &self.out,
            LogStream::Err => &self.err,
        };
        match instance {
            None => base.clone(),
            Some(i) => per_instance(base, i),
        }
    }
}

fn per_instance(path: &Path, index: usize) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("log");
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-{index}.{ext}"),
        None => format!("{stem}-{index}"),
    };
    path.with_file_name(name)
}

struct Chunk {
    stream: LogStream,
    instance: usize,
    /// One or more whole lines, each ending in `\n`.
    bytes: Vec<u8>,
}

enum Control {
    Reopen(oneshot::Sender<io::Result<()>>),
    Truncate(oneshot::Sender<io::Result<()>>),
    /// Everything queued before it written out (before the daemon re-executes itself).
    Flush(oneshot::Sender<io::Result<()>>),
}

/// What the writer thread receives: lines, and requests that act on the files after the lines
/// queued before them.
enum Item {
    Chunk(Chunk),
    Control(Control),
}

/// Handle to an app's log writer; cheap to clone.
#[derive(Clone)]
pub(crate) struct LogSink {
    items: mpsc::Sender<Item>,
    pub(crate) paths: LogPaths,
    pub(crate) merge: bool,
    /// Lines and bytes captured so far (for `/metrics`).
    counts: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
    /// What the writer cannot write or rotate now (see [`LogSink::issue`]). A std mutex: held for
    /// a clone, never across an await.
    issue: Arc<std::sync::Mutex<Option<String>>>,
    /// Set when the daemon hands its instances' pipes to its next image (`chatctl update`).
    handing: Arc<tokio::sync::watch::Sender<bool>>,
    /// The pipes the capture tasks gave back then, and how many tasks are still reading.
    handed: Arc<std::sync::Mutex<Vec<Handed>>>,
    live: Arc<std::sync::atomic::AtomicUsize>,
}

/// An instance's pipe given back by its capture task, with the start of a line it had not
/// finished (its end comes with the next read, by the next daemon image).
pub(crate) struct Handed {
    pub(crate) pid: u32,
    pub(crate) stream: LogStream,
    pub(crate) fd: std::os::fd::OwnedFd,
    pub(crate) pending: Vec<u8>,
}

/// A child's stdout or stderr as a pipe the capture tasks read.
pub(crate) fn pipe(fd: io::Result<std::os::fd::OwnedFd>) -> io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd?)
}

/// Counts a capture task while it runs.
struct Live(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl LogSink {
    /// Opens (appending) the app's files and starts its writer thread; `counts` carries the
    /// counters over from the previous daemon image.
    pub(crate) fn open(
        app: &str,
        paths: LogPaths,
        spec: &LogSpec,
        instances: usize,
        follow: broadcast::Sender<Arc<LogRecord>>,
        counts: (u64, u64),
    ) -> io::Result<LogSink> {
        let policy = RotatePolicy {
            max_size: spec.max_size.0,
            retain: spec.retain,
            compress: spec.compress,
            daily: spec.daily,
            private: false,
        };
        let mut files = HashMap::new();
        let same = paths.out == paths.err;
        for stream in [LogStream::Out, LogStream::Err] {
            for instance in instance_keys(spec.merge, instances) {
                let key = FileKey { stream: if same { LogStream::Out } else { stream }, instance };
                if let std::collections::hash_map::Entry::Vacant(slot) = files.entry(key) {
                    slot.insert(RotatingFile::open(paths.file(key.stream, instance), policy.clone())?);
                }
            }
        }
        let counts =
            Arc::new((std::sync::atomic::AtomicU64::new(counts.0), std::sync::atomic::AtomicU64::new(counts.1)));
        let issue = Arc::new(std::sync::Mutex::new(None));
        let (items, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            app: app.into(),
            files,
            paths: paths.clone(),
            policy,
            same,
            merge: spec.merge,
            format: Format::of(spec),
            follow,
            counts: counts.clone(),
            issue: issue.clone(),
            shown: None,
        };
        // Compression of rotated files goes to this runtime's blocking pool (else to a thread).
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new().name(format!("log-{app}")).spawn(move || {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            writer.run(rx);
        })?;
        Ok(LogSink {
            items,
            paths,
            merge: spec.merge,
            counts,
            issue,
            handing: Arc::new(tokio::sync::watch::channel(false).0),
            handed: Arc::default(),
            live: Arc::default(),
        })
    }

    /// Reads `pipe` to its end, forwarding whole lines (and showing them to `watch`); the task
    /// ends at the end of the pipe, or gives the pipe back when the daemon hands over (see
    /// [`LogSink::hand_over`]; only the pipes of a process, `pid`). `pending`: the start of a line
    /// the previous daemon image read.
    pub(crate) fn capture(
        &self,
        pipe: tokio::net::unix::pipe::Receiver,
        stream: LogStream,
        instance: usize,
        pid: Option<u32>,
        watch: Option<Arc<crate::diagnose::BindWatch>>,
        pending: Vec<u8>,
    ) -> tokio::task::JoinHandle<()> {
        let tx = self.items.clone();
        let mut handing = self.handing.subscribe();
        let handed = self.handed.clone();
        // Only an instance's pipes are handed over (a build's output stays with this image).
        let live = pid.map(|_| {
            self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Live(self.live.clone())
        });
        tokio::spawn(async move {
            let _live = live;
            let mut pipe = pipe;
            let mut pending = pending;
            pending.reserve(MAX_LINE);
            loop {
                if pending.capacity() - pending.len() < 4096 {
                    pending.reserve(MAX_LINE);
                }
                let read = tokio::select! {
                    // First: a pipe that never stops must not hold the hand-over back.
                    biased;
                    _ = handing.wait_for(|h| *h), if pid.is_some() => None,
                    read = pipe.read_buf(&mut pending) => Some(read),
                };
                let Some(read) = read else {
                    match (pid, pipe.into_nonblocking_fd()) {
                        (Some(pid), Ok(fd)) => handed.locked().push(Handed { pid, stream, fd, pending }),
                        (_, Err(e)) => tracing::warn!(error = %e, "cannot hand an instance's pipe over"),
                        (None, _) => {}
                    }
                    return;
                };
                let n = match read {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading an instance's output failed");
                        0
                    }
                };
                let ready = if n == 0 {
                    // End of the stream: a last line without its newline still counts.
                    if pending.is_empty() {
                        return;
                    }
                    pending.push(b'\n');
                    std::mem::take(&mut pending)
                } else if let Some(last) = pending.iter().rposition(|b| *b == b'\n') {
                    let rest = pending.split_off(last + 1);
                    std::mem::replace(&mut pending, rest)
                } else if pending.len() >= MAX_LINE {
                    pending.push(b'\n');
                    std::mem::take(&mut pending)
                } else {
                    continue;
                };
                if let Some(watch) = &watch {
                    watch.scan(&ready);
                }
                if tx.send(Item::Chunk(Chunk { stream, instance, bytes: ready })).await.is_err() || n == 0 {
                    return;
                }
            }
        })
    }

    /// Stops every capture task of an instance, which give their pipes back, waits (at most
    /// `within`) until all have, writes out what they captured, and returns the pipes. On an error
    /// the pipes given back so far stay here for [`LogSink::resume`].
    pub(crate) async fn hand_over(&self, within: std::time::Duration) -> io::Result<Vec<Handed>> {
        self.handing.send_replace(true);
        let begun = std::time::Instant::now();
        while self.live.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if begun.elapsed() > within {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "an instance's pipe was not given back"));
            }
            // The tasks give their pipes back within a turn of the runtime: a short poll.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        self.ask(Control::Flush).await?;
        Ok(std::mem::take(&mut *self.handed.locked()))
    }

    /// After a hand-over that did not happen: capturing goes on, and the pipes already given back
    /// (still here when the hand-over failed half-way) are returned to be read again.
    pub(crate) fn resume(&self) -> Vec<Handed> {
        self.handing.send_replace(false);
        std::mem::take(&mut *self.handed.locked())
    }

    /// (lines, bytes) captured so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.counts.0.load(Relaxed), self.counts.1.load(Relaxed))
    }

    /// What keeps some of this app's output from its files right now, for `list` and `describe`.
    pub(crate) fn issue(&self) -> Option<String> {
        self.issue.locked().clone()
    }

    /// Reopens every file (after an external logrotate moved them).
    pub(crate) async fn reopen(&self) -> io::Result<()> {
        self.ask(Control::Reopen).await
    }

    /// Empties every current file.
    pub(crate) async fn truncate(&self) -> io::Result<()> {
        self.ask(Control::Truncate).await
    }

    async fn ask(&self, make: fn(oneshot::Sender<io::Result<()>>) -> Control) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        let gone = || io::Error::other("the log writer stopped");
        self.items.send(Item::Control(make(tx))).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Current files, for `chatctl logs`: (stream, instance, path).
    pub(crate) fn current_files(&self, instances: usize) -> Vec<(LogStream, Option<usize>, PathBuf)> {
        let mut out = Vec::new();
        for stream in [LogStream::Out, LogStream::Err] {
            if stream == LogStream::Err && self.paths.err == self.paths.out {
                continue;
            }
            for instance in instance_keys(self.merge, instances) {
                out.push((stream, instance, self.paths.file(stream, instance)));
            }
        }
        out
    }
}

fn instance_keys(merge: bool, instances: usize) -> Vec<Option<usize>> {
    if merge { vec![None] } else { (0..instances).map(Some).collect() }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    stream: LogStream,
    instance: Option<usize>,
}

/// How a line is written.
enum Format {
    Raw,
    Stamped(String),
    Json,
}

impl Format {
    fn of(spec: &LogSpec) -> Format {
        match (&spec.date_format, spec.json) {
            (_, true) => Format::Json,
            (Some(format), false) => Format::Stamped(format.clone()),
            (None, false) => Format::Raw,
        }
    }
}

struct Writer {
    app: Arc<str>,
    files: HashMap<FileKey, RotatingFile>,
    /// To open the file of an instance added later (per-instance files, `scale`).
    paths: LogPaths,
    policy: RotatePolicy,
    same: bool,
    merge: bool,
    format: Format,
    follow: broadcast::Sender<Arc<LogRecord>>,
    counts: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
    issue: Arc<std::sync::Mutex<Option<String>>>,
    /// The issue last published, so the mutex is taken only when it changes.
    shown: Option<String>,
}

impl Writer {
    /// Until every sender is gone (the app deleted, the daemon stopping).
    fn run(mut self, mut items: mpsc::Receiver<Item>) {
        let mut scratch = Vec::with_capacity(64 * 1024);
        while let Some(first) = items.blocking_recv() {
            // Write everything queued, then flush once: few syscalls under load, nothing held back
            // when idle.
            let mut next = Some(first);
            while let Some(item) = next {
                match item {
                    Item::Chunk(chunk) => self.write(&chunk, &mut scratch),
                    Item::Control(request) => self.control(request),
                }
                next = items.try_recv().ok();
            }
            self.flush();
            self.publish_issue();
        }
        self.flush();
    }

    fn publish_issue(&mut self) {
        let issues: Vec<String> = self.files.values().filter_map(RotatingFile::issue).collect();
        let issue = (!issues.is_empty()).then(|| issues.join("; "));
        if issue != self.shown {
            let mut shared = self.issue.locked();
            shared.clone_from(&issue);
            self.shown = issue;
        }
    }

    fn write(&mut self, chunk: &Chunk, scratch: &mut Vec<u8>) {
        use std::sync::atomic::Ordering::Relaxed;
        let lines = chunk.bytes.iter().filter(|b| **b == b'\n').count() as u64;
        self.counts.0.fetch_add(lines, Relaxed);
        self.counts.1.fetch_add(chunk.bytes.len() as u64, Relaxed);
        let key = FileKey {
            stream: if self.same { LogStream::Out } else { chunk.stream },
            instance: if self.merge { None } else { Some(chunk.instance) },
        };
        let following = self.follow.receiver_count() > 0;
        let now = (following || !matches!(self.format, Format::Raw)).then(chrono::Local::now);
        let bytes: &[u8] = match (&self.format, now) {
            (Format::Raw, _) | (_, None) => &chunk.bytes,
            (Format::Stamped(format), Some(now)) => {
                scratch.clear();
                let stamp = now.format(format).to_string();
                for line in chunk.bytes.split_inclusive(|b| *b == b'\n') {
                    scratch.extend_from_slice(stamp.as_bytes());
                    scratch.extend_from_slice(b": ");
                    scratch.extend_from_slice(line);
                }
                scratch
            }
            (Format::Json, Some(now)) => {
                scratch.clear();
                for line in chunk.bytes.split_inclusive(|b| *b == b'\n') {
                    let record = self.record(now, chunk, line);
                    // Serializing a struct of strings and integers cannot fail.
                    let _ = serde_json::to_writer(&mut *scratch, &record);
                    scratch.push(b'\n');
                }
                scratch
            }
        };
        // A file that cannot be opened yet is reported and retried by its first flushes.
        let paths = &self.paths;
        let policy = &self.policy;
        self.files
            .entry(key)
            .or_insert_with(|| RotatingFile::closed(paths.file(key.stream, key.instance), policy.clone()))
            .write(bytes);
        if let Some(now) = now.filter(|_| following) {
            for line in chunk.bytes.split_inclusive(|b| *b == b'\n') {
                // No follower left is not an error.
                let _ = self.follow.send(Arc::new(self.record(now, chunk, line)));
            }
        }
    }

    fn record(&self, now: chrono::DateTime<chrono::Local>, chunk: &Chunk, line: &[u8]) -> LogRecord {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        LogRecord {
            time: chat_shared::time::Timestamp::millis(now),
            app: self.app.to_string(),
            instance: chunk.instance,
            stream: chunk.stream,
            message: String::from_utf8_lossy(text).into_owned(),
        }
    }

    fn flush(&mut self) {
        self.files.values_mut().for_each(RotatingFile::flush);
    }

    fn control(&mut self, request: Control) {
        let (result, reply) = match request {
            Control::Reopen(reply) => (self.files.values_mut().try_for_each(RotatingFile::reopen), reply),
            Control::Truncate(reply) => (self.files.values_mut().try_for_each(RotatingFile::truncate), reply),
            Control::Flush(reply) => {
                self.flush();
                (Ok(()), reply)
            }
        };
        let _ = reply.send(result);
    }
}
