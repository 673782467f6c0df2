//! A log file that rotates by renaming: when the next write would pass `max_size`, or on the first
//! write of a new local day, the file is flushed, renamed to `NAME.YYYYmmdd-HHMMSS.mmm` and a new
//! one is opened at `NAME`. Nothing is copied or truncated, so no line is lost between a copy and a
//! truncate (pm2-logrotate's problem) and a shipper that follows the inode keeps reading the old file
//! to its end. Rotated files beyond `retain` are deleted; with `compress` they are gzipped on the
//! blocking pool, off the write path.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{Local, NaiveDate};

#[derive(Clone, Debug)]
pub(crate) struct RotatePolicy {
    pub(crate) max_size: u64,
    pub(crate) retain: u32,
    pub(crate) compress: bool,
    pub(crate) daily: bool,
}

pub(crate) struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    day: NaiveDate,
    policy: RotatePolicy,
    /// The last rotation's stamp and how many rotations shared it, so that names always sort in
    /// rotation order, even when pruning frees an earlier name of the same millisecond.
    last_stamp: (String, u32),
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
    pub(crate) fn open(path: PathBuf, policy: RotatePolicy) -> io::Result<RotatingFile> {
        let (file, size) = open_append(&path)?;
        Ok(RotatingFile {
            file: BufWriter::with_capacity(64 * 1024, file),
            size,
            day: today(),
            last_stamp: newest_stamp(&path),
            path,
            policy,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends whole lines, rotating first when they would not fit.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = bytes.len() as u64;
        if must_rotate(self.size, len, self.policy.max_size, self.day, today(), self.policy.daily) {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += len;
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Reopens `path` (after an external logrotate moved the file away).
    pub(crate) fn reopen(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let (file, size) = open_append(&self.path)?;
        self.file = BufWriter::with_capacity(64 * 1024, file);
        self.size = size;
        self.day = today();
        Ok(())
    }

    /// Empties the current file (`chatctl flush`); rotated files stay.
    pub(crate) fn truncate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().set_len(0)?;
        self.size = 0;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let rotated = self.free_rotated_name();
        std::fs::rename(&self.path, &rotated)?;
        let (file, size) = open_append(&self.path)?;
        self.file = BufWriter::with_capacity(64 * 1024, file);
        self.size = size;
        self.day = today();
        tracing::debug!(path = %self.path.display(), rotated = %rotated.display(), "rotated");
        if self.policy.compress {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = gzip(&rotated) {
                    tracing::warn!(path = %rotated.display(), error = %e, "compressing a rotated log failed");
                }
            });
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

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
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
        let policy = RotatePolicy { max_size: 100, retain: 2, compress: false, daily: true };
        let mut file = RotatingFile::open(path.clone(), policy.clone()).expect("open");
        for i in 0..10 {
            file.write(format!("line {i:02} ............................\n").as_bytes()).expect("write");
        }
        file.flush().expect("flush");
        let rotated = rotated_files(&path);
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        let current = std::fs::read_to_string(&path).expect("current");
        assert!(current.ends_with("line 09 ............................\n"), "{current}");
        let newest = std::fs::read_to_string(&rotated[1]).expect("rotated");
        assert!(newest.starts_with("line 06"), "{newest}");

        let mut file = RotatingFile::open(path.clone(), RotatePolicy { compress: true, ..policy }).expect("open");
        let mut long = vec![b'x'; 120];
        long.push(b'\n');
        file.write(&long).expect("write");
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
