//! Saying why a program keeps failing when its own output says so plainly, instead of restarting it
//! until `max_restarts`: a program given its port as an inherited socket that binds the port
//! itself fails with "address in use" every time (chatctl holds the port), whatever the language.
//!
//! The instance's output is scanned as it is captured (`logs`), only while the flag is unset, and
//! only for instances that were passed a socket; the flag is read when the instance exits.

use std::sync::atomic::{AtomicBool, Ordering};

/// Watches one process's output for a failed bind of its own port.
#[derive(Debug)]
pub(crate) struct BindWatch {
    port: u16,
    seen: AtomicBool,
}

impl BindWatch {
    pub(crate) fn new(port: u16) -> BindWatch {
        BindWatch { port, seen: AtomicBool::new(false) }
    }

    /// Looks at a chunk of whole lines.
    pub(crate) fn scan(&self, chunk: &[u8]) {
        if !self.seen.load(Ordering::Relaxed) && chunk.split(|b| *b == b'\n').any(|line| self.bound_ours(line)) {
            self.seen.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }

    /// Whether `line` reports "address in use" for this port, or for no port in particular.
    fn bound_ours(&self, line: &[u8]) -> bool {
        const IN_USE: [&[u8]; 3] = [b"EADDRINUSE", b"ddress already in use", b"ddress in use"];
        if !IN_USE.iter().any(|needle| contains(line, needle)) {
            return false;
        }
        let ports = numbers_after_colon(line);
        ports.is_empty() || ports.contains(&u32::from(self.port)) || contains_number(line, self.port)
    }

    /// What the operator should do, in the instance's note.
    pub(crate) fn advice(&self) -> String {
        format!(
            "address in use: the program binds port {} itself, which chatctl holds and passes to it as fd 3 \
             (LISTEN_FDS=1): take that socket instead (Node: chatctl's preload does, with node_preload on; \
             gunicorn --bind fd://3; uvicorn --fd 3; Go: net.FileListener(os.NewFile(3, \"http\")); see the \
             README, Programs on inherited sockets), or in fork mode set inherit_socket = false to let it bind \
             $PORT; restarting cannot help: errored",
            self.port
        )
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Numbers of three digits or more written as `:N` (`:::3000`, `0.0.0.0:3000`, `tcp :3000`); the
/// two-digit parts of a timestamp (`12:04:05`) are not ports.
fn numbers_after_colon(line: &[u8]) -> Vec<u32> {
    let mut found = Vec::new();
    for (i, _) in line.iter().enumerate().filter(|(_, b)| **b == b':') {
        let digits: Vec<u8> = line[i + 1..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
        if digits.len() < 3 {
            continue;
        }
        if let Some(n) = std::str::from_utf8(&digits).ok().and_then(|d| d.parse().ok()) {
            found.push(n);
        }
    }
    found
}

/// Whether `port` appears in `line` as a whole number.
fn contains_number(line: &[u8], port: u16) -> bool {
    let text = port.to_string();
    let text = text.as_bytes();
    line.windows(text.len()).enumerate().any(|(i, w)| {
        w == text
            && (i == 0 || !line[i - 1].is_ascii_digit())
            && line.get(i + text.len()).is_none_or(|b| !b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_in_use_on_this_port_in_the_words_of_each_language() {
        let cases: &[(&str, bool)] = &[
            ("Error: listen EADDRINUSE: address already in use :::3000", true),
            ("OSError: [Errno 98] Address already in use", true),
            ("listen tcp :3000: bind: address already in use", true),
            ("[ERROR] Can't connect to ('0.0.0.0', 3000)", false),
            ("thread 'main' panicked: Address already in use (os error 98)", true),
            ("Error: listen EADDRINUSE: address already in use :::6379", false),
            ("java.net.BindException: Address already in use (Bind failed) on port 3000", true),
            ("everything is fine on 3000", false),
            ("12:04:05 OSError: [Errno 98] Address already in use", true),
        ];
        for (line, expected) in cases {
            let watch = BindWatch::new(3000);
            watch.scan(format!("starting\n{line}\n").as_bytes());
            assert_eq!(watch.seen(), *expected, "{line}");
        }
        assert!(BindWatch::new(3000).advice().contains("gunicorn --bind fd://3"));
    }
}
