//! A log file that rotates by renaming: when the next write would pass `max_size`, or on the first
//! write of a new local day, the file is flushed, renamed to `NAME.YYYYmmdd-HHMMSS.mmm` and a new
//! one is opened at `NAME`. Nothing is copied or truncated, so no line is lost between a copy and a
//! truncate (pm2-logrotate's problem) and a shipper that follows the inode keeps reading the old file
//! to its end. Rotated files beyond `retain` are deleted; with `compress` they are gzipped on the
//! blocking pool, off the write path.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{Local, NaiveDate};

use super::trouble::{Report, Trouble};

#[derive(Clone, Debug)]
pub(crate) struct RotatePolicy {
    pub(crate) max_size: u64,
    pub(crate) retain: u32,
    pub(crate) compress: bool,
    pub(crate) daily: bool,
    /// Files created 0600 (`daemon.log`: it may quote an app's environment); else the umask's mode.
    pub(crate) private: bool,
}

/// Lines buffered before a write reaches the file (the writer also flushes after every batch).
const BUFFER: usize = 64 * 1024;
/// A failed rotation is tried again after this long; lines go to the current file meanwhile.
const ROTATE_RETRY: Duration = Duration::from_secs(1);

/// A log file that rotates, and that survives its disk or directory failing: a line that cannot
/// be written is dropped and counted, a rotation that cannot be done leaves the lines in the
/// current file, and both are reported without flooding (`trouble`) and retried by themselves.
pub(crate) struct RotatingFile {
    path: PathBuf,
    /// `None` until opened, and after a write failed: the next flush opens `path` again, so writing
    /// resumes by itself once the disk has room or the directory is back.
    file: Option<File>,
    /// Whole lines not yet written.
    buf: Vec<u8>,
    /// The last write failed in the middle of a line: the next one starts a new line.
    torn: bool,
    /// Bytes in the file plus bytes buffered.
    size: u64,
    day: NaiveDate,
    policy: RotatePolicy,
    /// The last rotation's stamp and how many rotations shared it, so that names always sort in
    /// rotation order, even when pruning frees an earlier name of the same millisecond.
    last_stamp: (String, u32),
    /// No rotation is tried before this (set by a failed one).
    rotate_after: Option<Instant>,
    writing: Trouble,
    rotating: Trouble,
    /// Rotations done, so a holder of the old descriptor can tell (`daemon_log`).
    rotations: u64,
}

/// Why a write rotates first, if it does. Pure, for tests.
pub(crate) fn must_rotate(
    size: u64,
    incoming: u64,
    max_size: u64,
    opened: NaiveDate,
    today: NaiveDate,
    daily: bool,
) -> bool {
    (size > 0 && size + incoming > max_size) || (daily && size > 0 && today != opened)
}

impl RotatingFile {
    /// Opens `path` for appending; an error (a missing permission, a bad path) is the caller's.
    pub(crate) fn open(path: PathBuf, policy: RotatePolicy) -> io::Result<RotatingFile> {
        let mut file = RotatingFile::closed(path, policy);
        let (opened, size) = open_append(&file.path, file.policy.private)?;
        file.file = Some(opened);
        file.size = size;
        Ok(file)
    }

    /// A file opened by its first flush: where it cannot be opened, that is reported (and retried)
    /// like any write failure, not once per line.
    pub(crate) fn closed(path: PathBuf, policy: RotatePolicy) -> RotatingFile {
        RotatingFile {
            file: None,
            buf: Vec::with_capacity(BUFFER),
            torn: false,
            size: 0,
            day: today(),
            last_stamp: newest_stamp(&path),
            path,
            policy,
            rotate_after: None,
            writing: Trouble::default(),
            rotating: Trouble::default(),
            rotations: 0,
        }
    }

    /// Rotations done so far.
    pub(crate) fn rotations(&self) -> u64 {
        self.rotations
    }

    /// The file lines go to now, if it is open.
    pub(crate) fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Appends whole lines, rotating first when they would not fit. A rotation that fails is
    /// reported and retried later; the lines go to the current file meanwhile, past `max_size`.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let len = bytes.len() as u64;
        let now = Instant::now();
        if must_rotate(self.size, len, self.policy.max_size, self.day, today(), self.policy.daily)
            && self.rotate_after.is_none_or(|after| now >= after)
        {
            match self.rotate() {
                Ok(()) => {
                    self.rotate_after = None;
                    if let Some(Report::Ended { .. }) = self.rotating.succeeded() {
                        tracing::info!(path = %self.path.display(), "rotating a log file works again");
                    }
                }
                Err(e) => {
                    self.rotate_after = Some(now + ROTATE_RETRY);
                    match self.rotating.failed(&e, 0, now) {
                        Some(Report::Began) => tracing::warn!(
                            path = %self.path.display(), error = %e,
                            "cannot rotate a log file: appending to it past max_size, retrying every {ROTATE_RETRY:?}"
                        ),
                        Some(Report::Still { failures, .. }) => tracing::warn!(
                            path = %self.path.display(), error = %e, failures,
                            "still cannot rotate a log file (appending to it)"
                        ),
                        _ => {}
                    }
                }
            }
        }
        if self.buf.len() + bytes.len() > BUFFER {
            self.flush();
        }
        self.buf.extend_from_slice(bytes);
        self.size += len;
    }

    /// Writes what is buffered. On failure the buffered lines are dropped and counted, the file is
    /// closed, and the next flush opens it again.
    pub(crate) fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let now = Instant::now();
        if self.file.is_none() {
            match open_append(&self.path, self.policy.private) {
                Ok((file, size)) => {
                    self.file = Some(file);
                    self.size = size + self.buf.len() as u64;
                }
                Err(e) => return self.drop_buffer(0, &e, now),
            }
        }
        let Some(file) = self.file.as_mut() else { return };
        if self.torn {
            match file.write(b"\n") {
                Ok(1) => {
                    self.torn = false;
                    self.size += 1;
                }
                Ok(_) => return self.drop_buffer(0, &io::ErrorKind::WriteZero.into(), now),
                Err(e) => return self.drop_buffer(0, &e, now),
            }
        }
        let mut done = 0;
        while done < self.buf.len() {
            match file.write(&self.buf[done..]) {
                Ok(0) => return self.drop_buffer(done, &io::ErrorKind::WriteZero.into(), now),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.drop_buffer(done, &e, now),
            }
        }
        self.buf.clear();
        self.torn = false;
        if let Some(Report::Ended { dropped }) = self.writing.succeeded() {
            tracing::warn!(path = %self.path.display(), dropped, "writing a log file works again; lines were lost");
        }
    }

    /// A write failed after `written` bytes of the buffer: the rest is dropped, counted and reported.
    fn drop_buffer(&mut self, written: usize, error: &io::Error, now: Instant) {
        let rest = &self.buf[written..];
        let dropped = rest.iter().filter(|b| **b == b'\n').count() as u64;
        self.size = self.size.saturating_sub(rest.len() as u64);
        if written > 0 {
            self.torn = self.buf[written - 1] != b'\n';
        }
        self.buf.clear();
        self.file = None;
        match self.writing.failed(error, dropped, now) {
            Some(Report::Began) => tracing::error!(
                path = %self.path.display(), error = %error, dropped,
                "cannot write a log file: dropping its lines until it can be written (tried again on every write)"
            ),
            Some(Report::Still { failures, dropped }) => tracing::error!(
                path = %self.path.display(), error = %error, failures, dropped,
                "still cannot write a log file: lines dropped in the last {:?}", super::trouble::REPORT_EVERY
            ),
            _ => {}
        }
    }

    /// What is wrong with this file now, for `chatctl list` and `describe`.
    pub(crate) fn issue(&self) -> Option<String> {
        let path = self.path.display();
        match (self.writing.current(), self.rotating.current()) {
            (Some((error, dropped, since)), _) => {
                Some(format!("cannot write {path}: {error}; {dropped} line(s) dropped since {since}"))
            }
            (None, Some((error, _, since))) => {
                Some(format!("cannot rotate {path}: {error}; appending to it since {since}"))
            }
            (None, None) => None,
        }
    }

    /// Reopens `path` (after an external logrotate moved the file away). On failure the file in
    /// use stays in use.
    pub(crate) fn reopen(&mut self) -> io::Result<()> {
        self.flush();
        let (file, size) = open_append(&self.path, self.policy.private)?;
        self.file = Some(file);
        self.size = size;
        self.day = today();
        Ok(())
    }

    /// Empties the current file (`chatctl flush`); rotated files stay. Truncates before anything
    /// else: on a full disk that is what frees the space. Lines still buffered were written before
    /// the flush was asked for, so they go with the rest.
    pub(crate) fn truncate(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.torn = false;
        match &self.file {
            Some(file) => file.set_len(0)?,
            None => {
                let (file, _) = open_append(&self.path, self.policy.private)?;
                file.set_len(0)?;
                self.file = Some(file);
            }
        }
        self.size = 0;
        Ok(())
    }

    /// Renames the file to a stamped name and starts a new one. Fails (changing nothing) when the
    /// rename does; when the new file cannot be created, the next flush tries again.
    fn rotate(&mut self) -> io::Result<()> {
        self.flush();
        let rotated = self.free_rotated_name();
        std::fs::rename(&self.path, &rotated)?;
        self.rotations += 1;
        self.file = None;
        self.size = self.buf.len() as u64;
        self.day = today();
        if let Ok((file, size)) = open_append(&self.path, self.policy.private) {
            self.file = Some(file);
            self.size += size;
        }
        tracing::debug!(path = %self.path.display(), rotated = %rotated.display(), "rotated");
        if self.policy.compress {
            let job = move || {
                if let Err(e) = gzip(&rotated) {
                    tracing::warn!(path = %rotated.display(), error = %e, "compressing a rotated log failed");
                }
            };
            // The app writers' threads enter the runtime; any other caller gets a thread.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(job)),
                Err(_) => drop(std::thread::spawn(job)),
            }
        }
        prune(&self.path, self.policy.retain);
        Ok(())
    }

    fn free_rotated_name(&mut self) -> PathBuf {
        let stamp = Local::now().format("%Y%m%d-%H%M%S%.3f").to_string();
        // Several rotations within one millisecond (a tiny max_size under load) get `-0001`,
        // `-0002`...: after the bare stamp and in order.
        let mut seq = if self.last_stamp.0 == stamp { self.last_stamp.1 + 1 } else { 0 };
        loop {
            let name = if seq == 0 { stamp.clone() } else { format!("{stamp}-{seq:04}") };
            let candidate = PathBuf::from(format!("{}.{name}", self.path.display()));
            if !candidate.exists() && !with_gz(&candidate).exists() {
                self.last_stamp = (stamp, seq);
                return candidate;
            }
            seq += 1;
        }
    }
}

/// Length of a rotation stamp, `YYYYmmdd-HHMMSS.mmm`.
const STAMP_LEN: usize = 19;

/// Stamp and sequence of the newest rotated file, so a reopened log keeps naming in order.
fn newest_stamp(path: &Path) -> (String, u32) {
    let newest = rotated_files(path).pop();
    let name = newest.as_ref().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("");
    let prefix_len = path.file_name().map_or(0, |n| n.len() + 1);
    let rest = name.get(prefix_len..).unwrap_or("").trim_end_matches(".gz");
    match (rest.get(..STAMP_LEN), rest.get(STAMP_LEN + 1..)) {
        (Some(stamp), Some(seq)) => (stamp.to_owned(), seq.parse().unwrap_or(0)),
        (Some(stamp), None) => (stamp.to_owned(), 0),
        _ => (String::new(), 0),
    }
}

fn today() -> NaiveDate {
    Local::now().date_naive()
}

fn open_append(path: &Path, private: bool) -> io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    if private {
        options.mode(0o600);
    }
    let file = options.open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

fn with_gz(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.gz", path.display()))
}

/// Rotated siblings of `path` (`NAME.<stamp>[.gz]`), oldest first.
pub(crate) fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return Vec::new() };
    let prefix = format!("{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                // A stamp starts with a digit: `chat-out.log.2026...`, never `chat-out.log.lock`.
                n.strip_prefix(&prefix)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()) && !rest.ends_with(".tmp"))
            })
        })
        .map(|e| e.path())
        .collect();
    // While a file is being compressed, `X` and `X.gz` exist together for a moment: count it once.
    let plain: std::collections::HashSet<PathBuf> =
        files.iter().filter(|p| p.extension().is_none_or(|e| e != "gz")).cloned().collect();
    files.retain(|p| !(p.extension().is_some_and(|e| e == "gz") && plain.contains(&p.with_extension(""))));
    files.sort();
    files
}

/// Deletes the oldest rotated files beyond `retain`.
fn prune(path: &Path, retain: u32) {
    let files = rotated_files(path);
    let excess = files.len().saturating_sub(retain as usize);
    for old in &files[..excess] {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(path = %old.display(), error = %e, "deleting an old log failed");
        }
    }
}

/// `path` → `path.gz` (through a temporary, so a half-written archive is never mistaken for one).
fn gzip(path: &Path) -> io::Result<()> {
    let gz = with_gz(path);
    let tmp = PathBuf::from(format!("{}.tmp", gz.display()));
    let mut input = File::open(path)?;
    let mut encoder =
        flate2::write::GzEncoder::new(BufWriter::new(File::create(&tmp)?), flate2::Compression::default());
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.flush()?;
    std::fs::rename(&tmp, &gz)?;
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_rule() {
        let d1 = NaiveDate::from_ymd_opt(2026, 11, 26).expect("date");
        let d2 = d1.succ_opt().expect("date");
        let cases = [
            // (size, incoming, max, opened, today, daily, rotate?)
            (0, 100, 50, d1, d1, true, false), // an empty file takes even an oversized line
            (40, 10, 50, d1, d1, true, false),
            (41, 10, 50, d1, d1, true, true),
            (10, 10, 50, d1, d2, true, true),
            (10, 10, 50, d1, d2, false, false),
            (0, 10, 50, d1, d2, true, false), // nothing to rotate on a new day
        ];
        for (size, incoming, max, opened, today, daily, expected) in cases {
            assert_eq!(
                must_rotate(size, incoming, max, opened, today, daily),
                expected,
                "{size}+{incoming}/{max} daily={daily}"
            );
        }
    }

    #[tokio::test]
    async fn rotates_by_renaming_keeps_retain_and_compresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app-out.log");
        let policy = RotatePolicy { max_size: 100, retain: 2, compress: false, daily: true, private: false };
        let mut file = RotatingFile::open(path.clone(), policy.clone()).expect("open");
        for i in 0..10 {
            file.write(format!("line {i:02} ............................\n").as_bytes());
        }
        file.flush();
        let rotated = rotated_files(&path);
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        let current = std::fs::read_to_string(&path).expect("current");
        assert!(current.ends_with("line 09 ............................\n"), "{current}");
        let newest = std::fs::read_to_string(&rotated[1]).expect("rotated");
        assert!(newest.starts_with("line 06"), "{newest}");

        let mut file = RotatingFile::open(path.clone(), RotatePolicy { compress: true, ..policy }).expect("open");
        let mut long = vec![b'x'; 120];
        long.push(b'\n');
        file.write(&long);
        let gz = (0..200)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                rotated_files(&path).into_iter().find(|p| p.extension().is_some_and(|e| e == "gz"))
            })
            .unwrap_or_else(|| {
                panic!(
                    "a gzipped rotation among {:?}",
                    std::fs::read_dir(dir.path()).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
                )
            });
        let mut text = String::new();
        io::Read::read_to_string(&mut flate2::read::GzDecoder::new(File::open(gz).expect("gz")), &mut text)
            .expect("gunzip");
        assert!(text.starts_with("line 08 ") && text.ends_with("line 09 ............................\n"), "{text}");
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    fn policy(max_size: u64) -> RotatePolicy {
        RotatePolicy { max_size, retain: 5, compress: false, daily: false, private: false }
    }

    #[test]
    fn a_rotation_that_fails_leaves_the_lines_in_the_current_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A rotated name (the name plus `.<stamp>`) is longer than a file name may be: every
        // rename fails, even for root.
        let path = dir.path().join(format!("{}-out.log", "a".repeat(240)));
        let mut file = RotatingFile::open(path.clone(), policy(100)).expect("open");
        for i in 0..10 {
            file.write(format!("line {i:02} ............................\n").as_bytes());
        }
        file.flush();
        let text = std::fs::read_to_string(&path).expect("current");
        assert_eq!(text.lines().count(), 10, "every line appended: {text}");
        assert!(rotated_files(&path).is_empty());
        let issue = file.issue().expect("an issue");
        assert!(issue.starts_with("cannot rotate ") && issue.contains("appending"), "{issue}");
    }

    #[test]
    fn lines_that_cannot_be_written_are_counted_and_writing_resumes_by_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Writing to /dev/full fails with ENOSPC, as on a full disk.
        let mut full = RotatingFile::open(PathBuf::from("/dev/full"), policy(1 << 20)).expect("open /dev/full");
        full.write(b"one\ntwo\nthree\n");
        full.flush();
        let issue = full.issue().expect("an issue");
        assert!(issue.contains("No space left") && issue.contains("3 line(s) dropped"), "{issue}");

        // A directory replaced by a file: the log cannot be opened, then can again.
        let logs = dir.path().join("logs");
        std::fs::write(&logs, "not a directory").expect("a file");
        let path = logs.join("app-out.log");
        let mut file = RotatingFile::closed(path.clone(), policy(1 << 20));
        file.write(b"lost 1\nlost 2\n");
        file.flush();
        assert!(file.issue().is_some_and(|i| i.contains("2 line(s) dropped")), "{:?}", file.issue());
        std::fs::remove_file(&logs).expect("remove the file");
        file.write(b"kept\n");
        file.flush();
        assert_eq!(std::fs::read_to_string(&path).expect("log"), "kept\n");
        assert_eq!(file.issue(), None);
    }

    #[test]
    fn flush_truncates_before_writing_what_is_buffered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app-out.log");
        let mut file = RotatingFile::open(path.clone(), policy(1 << 20)).expect("open");
        file.write(b"old\n");
        file.flush();
        file.write(b"buffered\n");
        file.truncate().expect("truncate");
        file.write(b"new\n");
        file.flush();
        assert_eq!(std::fs::read_to_string(&path).expect("log"), "new\n");
    }
}
