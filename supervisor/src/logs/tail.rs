//! The last lines of a file, streamed in bounded chunks: a log can be tens of megabytes, and
//! holding its tail in memory (or in one frame) is what froze the daemon (issue 11).
//!
//! Two passes with bounded memory: backwards from the end in blocks, counting newlines, to find
//! where the last `n` lines begin; then forwards from there, up to the length the file had when we
//! started (a file that keeps growing cannot keep us reading), cut into chunks. Blocking reads:
//! callers run this off the daemon's thread.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const BLOCK: usize = 64 * 1024;
/// A chunk holds at most this many lines...
pub(crate) const CHUNK_LINES: usize = 2_000;
/// ...or about this many bytes of text; with JSON escaping it stays well below a frame's limit.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;
/// A longer line (not written by chatctl, which cuts at 64 KiB) is cut for display.
pub(crate) const LONGEST_LINE: usize = 256 * 1024;

/// The byte offset where the last `n` lines of the first `len` bytes of `file` begin.
pub(crate) fn start_of_last_lines(file: &mut File, len: u64, n: usize) -> io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    let mut block = vec![0u8; BLOCK];
    let mut end = len;
    let mut seen = 0;
    // The newline that ends the last line does not start another one.
    let mut skip_last = true;
    while end > 0 {
        let size = (BLOCK as u64).min(end);
        let start = end - size;
        file.seek(SeekFrom::Start(start))?;
        let block = &mut block[..size as usize];
        file.read_exact(block)?;
        for (i, byte) in block.iter().enumerate().rev() {
            if skip_last {
                skip_last = false;
                if *byte == b'\n' {
                    continue;
                }
            }
            if *byte == b'\n' {
                seen += 1;
                if seen == n {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// Streams the last `n` lines of `path` (without their newlines) to `send`, oldest first, in
/// chunks of at most [`CHUNK_LINES`] lines or about [`CHUNK_BYTES`] bytes; at least one chunk,
/// empty for an empty or missing file. Stops early when `send` returns false (nobody listens).
pub(crate) fn stream_tail(path: &Path, n: usize, mut send: impl FnMut(Vec<String>) -> bool) -> io::Result<()> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            send(Vec::new());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = start_of_last_lines(&mut file, len, n)?;
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::with_capacity(BLOCK, file.take(len - start));
    let mut chunk = Vec::new();
    let mut bytes = 0;
    let mut line = Vec::new();
    while let Some(cut) = read_line(&mut reader, &mut line)? {
        let mut text = String::from_utf8_lossy(&line).into_owned();
        if cut > 0 {
            text.push_str(&format!(" [{cut} more bytes not shown]"));
        }
        bytes += text.len();
        chunk.push(text);
        if chunk.len() >= CHUNK_LINES || bytes >= CHUNK_BYTES {
            if !send(std::mem::take(&mut chunk)) {
                return Ok(());
            }
            bytes = 0;
        }
    }
    if !chunk.is_empty() || start == len {
        send(chunk);
    }
    Ok(())
}

/// The last `n` lines of `path` at once: for a few lines only (an error message quoting a log); a
/// tail of any length goes through [`stream_tail`], off the daemon's thread.
pub(crate) fn last_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    stream_tail(path, n, |chunk| {
        lines.extend(chunk);
        true
    })?;
    Ok(lines)
}

/// The next line into `line` (without its newline, at most [`LONGEST_LINE`] bytes kept): `None` at
/// the end, else how many bytes were cut.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<Option<usize>> {
    line.clear();
    let mut cut = 0;
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(any.then_some(cut));
        }
        any = true;
        let (piece, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        let room = LONGEST_LINE - line.len();
        line.extend_from_slice(&piece[..piece.len().min(room)]);
        cut += piece.len().saturating_sub(room);
        let ended = done > piece.len();
        reader.consume(done);
        if ended {
            return Ok(Some(cut));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(path: &Path, n: usize) -> Vec<String> {
        let mut chunks = Vec::new();
        stream_tail(path, n, |chunk| {
            chunks.push(chunk);
            true
        })
        .expect("tail");
        assert!(!chunks.is_empty(), "at least one chunk");
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_LINES), "bounded chunks");
        chunks.concat()
    }

    #[test]
    fn last_lines_across_blocks_in_bounded_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.log");
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        assert_eq!(tail(&path, 3), ["line 19997", "line 19998", "line 19999"]);
        let all = tail(&path, 20_000);
        assert_eq!((all.len(), all[0].as_str()), (20_000, "line 0"));
        assert_eq!(tail(&path, 50_000).len(), 20_000);
        assert!(tail(&path, 0).is_empty());
        assert!(tail(&dir.path().join("missing"), 5).is_empty());
        std::fs::write(&path, "").expect("write");
        assert!(tail(&path, 5).is_empty());
    }

    #[test]
    fn start_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.log");
        // (content, n, where the last n lines begin)
        let cases: [(&str, usize, u64); 7] = [
            ("a\nb\nc\n", 1, 4),
            ("a\nb\nc\n", 2, 2),
            ("a\nb\nc\n", 3, 0),
            ("a\nb\nc\n", 9, 0),
            ("a\nb\nc", 1, 4), // a last line without its newline
            ("a\n\n\n", 2, 2), // empty lines count
            ("", 3, 0),
        ];
        for (content, n, expected) in cases {
            std::fs::write(&path, content).expect("write");
            let mut file = File::open(&path).expect("open");
            let got = start_of_last_lines(&mut file, content.len() as u64, n).expect("start");
            assert_eq!(got, expected, "{content:?} n={n}");
        }
    }

    #[test]
    fn an_endless_line_is_cut_and_stops_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.log");
        let mut text = vec![b'x'; LONGEST_LINE + 10];
        text.extend_from_slice(b"\nlast\n");
        std::fs::write(&path, text).expect("write");
        let lines = tail(&path, 2);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" [10 more bytes not shown]"), "{}", &lines[0][LONGEST_LINE - 5..]);
        assert_eq!(lines[1], "last");
    }
}
