//! The last lines of a file, read backwards from its end (a log can be large).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

const BLOCK: u64 = 64 * 1024;

/// The last `n` lines of `path` (without their newlines); a missing file has none.
pub(crate) fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    // Read blocks from the end until the buffer holds more than n newlines (or the whole file).
    while start > 0 && buf.iter().filter(|b| **b == b'\n').count() <= n {
        let size = BLOCK.min(start);
        start -= size;
        file.seek(SeekFrom::Start(start))?;
        let mut block = vec![0; size as usize];
        file.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap_or(&text).split('\n').collect();
    let skip = lines.len().saturating_sub(n);
    // When we stopped mid-file, the first piece is a partial line: it is among the skipped ones.
    Ok(lines[skip..].iter().map(|l| (*l).to_owned()).filter(|l| !(l.is_empty() && len == 0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_across_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.log");
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        assert_eq!(tail(&path, 3).expect("tail"), ["line 19997", "line 19998", "line 19999"]);
        assert_eq!(tail(&path, 20_000).expect("tail").len(), 20_000);
        assert_eq!(tail(&path, 50_000).expect("tail").len(), 20_000);
        assert!(tail(&dir.path().join("missing"), 5).expect("tail").is_empty());
        std::fs::write(&path, "").expect("write");
        assert!(tail(&path, 5).expect("tail").is_empty());
    }
}
