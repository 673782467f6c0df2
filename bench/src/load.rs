//! A bounded HTTP load on 127.0.0.1, counting answers, refused connections and other failures:
//! threads that open a new connection per request, and threads that keep one connection alive and
//! reuse it. A reused connection the server closed while idle is retried once on a new connection,
//! as every HTTP client does; only a request that then fails counts as failed.
//!
//! [`Load::paced`] is stricter, as `wrk` is: kept-alive connections that pause a little between
//! requests and never retry, so a server that closes a kept-alive connection while the client is
//! about to send on it (the keep-alive close race) shows as failed requests, and a non-2xx answer
//! is counted apart.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Requests per thread at most: the load stops by itself.
const MAX_REQUESTS: u64 = 200_000;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    /// Answered with a status other than 2xx (paced loads only; the others count those as failed).
    non_2xx: AtomicU64,
    stop: AtomicBool,
    /// Microseconds per answered request, when `Load::record_latency` asked for them.
    latencies: Mutex<Vec<u32>>,
    record: AtomicBool,
}

impl Counts {
    fn answered(&self, started: Instant) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        if self.record.load(Ordering::Relaxed) {
            let micros = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            // Poisoned only if a load thread panicked; then there is nothing left to record.
            if let Ok(mut all) = self.latencies.lock() {
                all.push(micros);
            }
        }
    }
}

/// What a load did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ok: u64,
    pub refused: u64,
    pub failed: u64,
    /// Answers that were not 2xx (paced loads only).
    pub non_2xx: u64,
    /// Sorted, microseconds (empty unless recorded).
    pub latencies: Vec<u32>,
}

impl Outcome {
    /// The `p`-th percentile latency in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() - 1) as f64 * p / 100.0).round() as usize;
        f64::from(self.latencies[index]) / 1000.0
    }
}

pub struct Load {
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `threads` threads with a new connection per request on `GET /health`.
    pub fn start(addr: SocketAddr, threads: usize) -> Load {
        Load::mixed(vec![addr], "/health", threads, 0)
    }

    /// On every address: `fresh` threads with a new connection per request and `kept` threads
    /// reusing keep-alive connections, all on `GET path`.
    pub fn mixed(addrs: Vec<SocketAddr>, path: &'static str, fresh: usize, kept: usize) -> Load {
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        for addr in addrs {
            for _ in 0..kept {
                let counts = counts.clone();
                threads.push(std::thread::spawn(move || keep_alive(addr, path, &counts)));
            }
            threads.extend((0..fresh).map(|_| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    for _ in 0..MAX_REQUESTS {
                        if counts.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let started = Instant::now();
                        let counter = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => &counts.refused,
                            Err(_) => &counts.failed,
                            Ok(stream) => {
                                if request(stream, path) {
                                    counts.answered(started);
                                    continue;
                                }
                                &counts.failed
                            }
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            }));
        }
        Load { counts, threads }
    }

    /// `connections` kept-alive connections spread over `addrs`, each sending `GET` requests for
    /// `paths` in turn and pausing between 0 and `max_pause` (a different pause each time) after
    /// every answer. A connection is reused until an answer says `Connection: close`; then the next
    /// request opens a new one. Nothing is retried: a connection found closed when a request is
    /// sent or read is a failed request, as in `wrk`.
    pub fn paced(
        addrs: Vec<SocketAddr>,
        paths: &'static [&'static str],
        connections: usize,
        max_pause: Duration,
    ) -> Load {
        let counts = Arc::new(Counts::default());
        let threads = (0..connections)
            .map(|n| {
                let (counts, addr) = (counts.clone(), addrs[n % addrs.len()]);
                std::thread::spawn(move || paced(addr, paths, n as u64, max_pause, &counts))
            })
            .collect();
        Load { counts, threads }
    }

    /// Waits until `more` further requests have been answered.
    #[track_caller]
    pub fn wait_for(&self, more: u64) {
        let target = self.counts.ok.load(Ordering::Relaxed) + more;
        let begun = Instant::now();
        while self.counts.ok.load(Ordering::Relaxed) < target {
            assert!(begun.elapsed() < Duration::from_secs(30), "timed out waiting for {more} more answered requests");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Records each answered request's latency from now on.
    pub fn record_latency(&self) {
        self.counts.record.store(true, Ordering::Relaxed);
    }

    /// Stops the load; returns (answered, refused, failed).
    pub fn stop(self) -> (u64, u64, u64) {
        let outcome = self.finish();
        (outcome.ok, outcome.refused, outcome.failed)
    }

    /// Stops the load; returns everything it measured.
    pub fn finish(self) -> Outcome {
        self.counts.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        let c = &self.counts;
        let mut latencies = c.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        latencies.sort_unstable();
        Outcome {
            ok: c.ok.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            non_2xx: c.non_2xx.load(Ordering::Relaxed),
            latencies,
        }
    }
}

fn request(mut stream: TcpStream, path: &str) -> bool {
    use std::io::{Read, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    // One write, as real clients send a small request.
    if stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).is_ok() && response.starts_with(b"HTTP/1.1 200")
}

/// What one request on a kept-alive connection got.
enum Kept {
    Ok,
    /// Closed by the server before any byte of an answer: safe to retry.
    ClosedIdle,
    Failed,
}

fn keep_alive(addr: SocketAddr, path: &str, counts: &Counts) {
    let mut connection: Option<std::io::BufReader<TcpStream>> = None;
    for _ in 0..MAX_REQUESTS {
        if counts.stop.load(Ordering::Relaxed) {
            return;
        }
        let started = Instant::now();
        let mut outcome = Kept::ClosedIdle;
        // One retry on a new connection when a reused one turned out closed.
        for _attempt in 0..2 {
            let reused = connection.is_some();
            let Some(conn) = connection.take().or_else(|| connect(addr, counts)) else {
                outcome = Kept::Failed;
                break;
            };
            let (result, conn) = kept_request(conn, path);
            connection = conn;
            outcome = result;
            match outcome {
                Kept::ClosedIdle if reused => continue,
                _ => break,
            }
        }
        match outcome {
            Kept::Ok => counts.answered(started),
            Kept::ClosedIdle | Kept::Failed => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One request; the connection comes back if it can be reused.
fn kept_request(mut conn: std::io::BufReader<TcpStream>, path: &str) -> (Kept, Option<std::io::BufReader<TcpStream>>) {
    use std::io::{BufRead, Read, Write};
    if conn.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).is_err() {
        return (Kept::ClosedIdle, None);
    }
    let mut status = String::new();
    match conn.read_line(&mut status) {
        Ok(0) => return (Kept::ClosedIdle, None),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {
            return (Kept::ClosedIdle, None);
        }
        Err(_) => return (Kept::Failed, None),
        Ok(_) => {}
    }
    let Some((length, close)) = read_head(&mut conn) else { return (Kept::Failed, None) };
    let mut body = vec![0u8; length];
    if conn.read_exact(&mut body).is_err() {
        return (Kept::Failed, None);
    }
    let ok = status.starts_with("HTTP/1.1 200");
    (if ok { Kept::Ok } else { Kept::Failed }, (!close).then_some(conn))
}

/// One connection of [`Load::paced`]; `seed` makes each thread's pauses its own.
fn paced(addr: SocketAddr, paths: &[&str], seed: u64, max_pause: Duration, counts: &Counts) {
    // xorshift: pauses spread over [0, max_pause], so requests reach the server at every moment.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut pause = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        max_pause.mul_f64((state % 1_000) as f64 / 999.0)
    };
    let mut connection: Option<std::io::BufReader<TcpStream>> = None;
    for n in 0..MAX_REQUESTS as usize {
        if counts.stop.load(Ordering::Relaxed) {
            return;
        }
        let Some(conn) = connection.take().or_else(|| connect(addr, counts)) else {
            std::thread::sleep(pause());
            continue;
        };
        let started = Instant::now();
        match answer(conn, paths[n % paths.len()]) {
            Some((status, conn)) if (200..300).contains(&status) => {
                counts.answered(started);
                connection = conn;
            }
            Some((_, conn)) => {
                counts.non_2xx.fetch_add(1, Ordering::Relaxed);
                connection = conn;
            }
            None => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(pause());
    }
}

/// Sends one request and reads its whole answer: its status, and the connection unless the answer
/// closed it. `None`: no complete answer (closed, reset or timed out).
fn answer(mut conn: std::io::BufReader<TcpStream>, path: &str) -> Option<(u16, Option<std::io::BufReader<TcpStream>>)> {
    use std::io::{BufRead, Read, Write};
    conn.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).ok()?;
    let mut status_line = String::new();
    if conn.read_line(&mut status_line).ok()? == 0 {
        return None;
    }
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let (length, close) = read_head(&mut conn)?;
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).ok()?;
    Some((status, (!close).then_some(conn)))
}

/// A new connection to `addr`, or `None` with the failure counted (refused apart).
fn connect(addr: SocketAddr, counts: &Counts) -> Option<std::io::BufReader<TcpStream>> {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(stream) => {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.set_nodelay(true);
            Some(std::io::BufReader::new(stream))
        }
        Err(e) => {
            let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
            (if refused { &counts.refused } else { &counts.failed }).fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Reads an answer's header lines, after its status line: its `Content-Length` and whether it
/// closes the connection. `None`: the connection ended first.
fn read_head(conn: &mut std::io::BufReader<TcpStream>) -> Option<(usize, bool)> {
    use std::io::BufRead;
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut header = String::new();
        if conn.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        close |= lower.starts_with("connection:") && lower.contains("close");
        if header == "\r\n" {
            return Some((length, close));
        }
    }
}
