//! `chatctl-bench files`: shared files through one chat worker (release), beside the floors of
//! this machine: upload and download throughput (MB/s) and the worker's CPU per GB, with 1 and 50
//! transfers at once, and the worker's resident memory during a 1 GB upload (it must stay flat:
//! bodies are streamed, never held). The floors: the same bytes written to a file of the same
//! directory, and copied over a loopback TCP connection. Then the same through a worker that keeps
//! the bytes in Redis (`REDIS_URL`, 256 MB instead of 1 GB), and the Redis memory each stored MB
//! costs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{cpu_ticks, release_bin, rss_kib, ticks_per_second};

const MB: u64 = 1 << 20;
/// One big transfer, and the total of the 50 concurrent ones.
const TOTAL: u64 = 1024 * MB;
const CONCURRENT: u64 = 50;

struct Worker {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A `redis-server` of the bench's own, with nothing saved.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    fn start() -> Option<Redis> {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis { child, port, _dir: dir };
        let begun = Instant::now();
        while redis.used_memory().is_none() {
            if begun.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    /// `used_memory` of `INFO memory`, in bytes.
    fn used_memory(&self) -> Option<u64> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n").ok()?;
        let mut reply = vec![0u8; 16 << 10];
        let n = stream.read(&mut reply).ok()?;
        let text = String::from_utf8_lossy(&reply[..n]).into_owned();
        text.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(env: &[(&str, String)]) -> Worker {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let child = Command::new(release_bin("chat-worker"))
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("FILE_DIR", dir.path())
        .env("FILE_MAX_SIZE", "2G")
        .env("FILE_QUOTA", "100G")
        .env("FILE_STORE_MAX", "100G")
        .env("FILE_UPLOAD_RATE", "off")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chat-worker");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let begun = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(begun.elapsed() < Duration::from_secs(10), "the worker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Worker { child, addr, _dir: dir }
}

/// A guest's session token, from `guest:join`'s acknowledgement.
fn token(addr: SocketAddr) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut client = crate::sio::connect(addr, "", &[]).await.expect("connect");
        let ack = client.call("guest:join", r#"{"name":"bench"}"#).await.expect("guest:join");
        let json = ack.trim_start_matches(|c: char| c.is_ascii_digit());
        let reply: serde_json::Value = serde_json::from_str(json).expect("ack json");
        reply[0]["token"].as_str().expect("token").to_owned()
    })
}

/// Uploads `size` bytes; returns the file's url.
fn upload(addr: SocketAddr, token: &str, size: u64) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST /api/files HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\nX-File-Name: bench.bin\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    .expect("head");
    let chunk = vec![0x5au8; 256 << 10];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).expect("body");
        left -= n as u64;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let reply: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("upload answer: {answer}"));
    reply["url"].as_str().expect("url").to_owned()
}

/// Downloads `url`; returns the bytes received.
fn download(addr: SocketAddr, url: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {url} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").expect("head");
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n as u64,
        }
    }
}

fn row(what: &str, bytes: u64, took: Duration, cpu_seconds: Option<f64>) {
    let mbps = bytes as f64 / MB as f64 / took.as_secs_f64();
    let cpu = cpu_seconds.map_or("-".to_owned(), |c| format!("{:.2} s/GB", c / (bytes as f64 / (1024.0 * MB as f64))));
    println!("{what:<52} {:>10.0} MB/s {:>14}", mbps, cpu);
}

pub(crate) fn files() {
    println!("{:<52} {:>15} {:>14}", "shared files, one worker", "throughput", "worker CPU");
    // The floors.
    let dir = tempfile::tempdir().expect("temp dir");
    let chunk = vec![0x5au8; 256 << 10];
    let begun = Instant::now();
    let mut file = std::fs::File::create(dir.path().join("floor")).expect("floor file");
    for _ in 0..(TOTAL / chunk.len() as u64) {
        file.write_all(&chunk).expect("write");
    }
    drop(file);
    row("floor: 1 GB written to a file", TOTAL, begun.elapsed(), None);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let floor_addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 256 << 10];
        while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let begun = Instant::now();
    let mut conn = TcpStream::connect(floor_addr).expect("connect");
    for _ in 0..(TOTAL / chunk.len() as u64) {
        conn.write_all(&chunk).expect("write");
    }
    drop(conn);
    let _ = reader.join();
    row("floor: 1 GB over a loopback connection", TOTAL, begun.elapsed(), None);

    transfers(&start(&[]), TOTAL, "");

    // The same through Redis, and what it costs Redis.
    let Some(redis) = Redis::start() else {
        println!("(no redis-server here: the Redis rows are left out)");
        return;
    };
    let worker = start(&[("REDIS_URL", format!("redis://127.0.0.1:{}", redis.port))]);
    let before = redis.used_memory().unwrap_or(0);
    let stored = transfers(&worker, TOTAL / 4, ", in Redis");
    let after = redis.used_memory().unwrap_or(0);
    println!(
        "{:<52} {:>10.3} bytes of Redis memory per byte stored ({} MB stored, used_memory +{} MB)",
        "Redis memory",
        after.saturating_sub(before) as f64 / stored as f64,
        stored / MB,
        after.saturating_sub(before) / MB
    );
}

/// Uploads then downloads `total` bytes, in one transfer and in 50 at once, printing a row each
/// and the worker's memory during the single upload; answers the bytes stored.
fn transfers(worker: &Worker, total: u64, label: &str) -> u64 {
    let pid = worker.child.id();
    let token = token(worker.addr);
    let ticks = ticks_per_second();
    let (rss_before, _) = rss_kib(pid);

    // One 1 GB upload, its memory watched, then its download.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid).0, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let (cpu, begun) = (cpu_ticks(pid), Instant::now());
    let url = upload(worker.addr, &token, total);
    let size = format!("{} MB", total / MB);
    row(
        &format!("upload, 1 transfer of {size}{label}"),
        total,
        begun.elapsed(),
        Some((cpu_ticks(pid) - cpu) as f64 / ticks),
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.join();
    let (cpu, begun) = (cpu_ticks(pid), Instant::now());
    let got = download(worker.addr, &url);
    row(
        &format!("download, 1 transfer of {size}{label}"),
        got,
        begun.elapsed(),
        Some((cpu_ticks(pid) - cpu) as f64 / ticks),
    );

    // 50 at once, 1 GB in all.
    let each = total / CONCURRENT;
    let (cpu, begun) = (cpu_ticks(pid), Instant::now());
    let urls: Vec<String> = (0..CONCURRENT)
        .map(|_| {
            let (addr, token) = (worker.addr, token.clone());
            std::thread::spawn(move || upload(addr, &token, each))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("upload thread"))
        .collect();
    row(
        &format!("upload, 50 transfers at once ({size} in all){label}"),
        each * CONCURRENT,
        begun.elapsed(),
        Some((cpu_ticks(pid) - cpu) as f64 / ticks),
    );
    let (cpu, begun) = (cpu_ticks(pid), Instant::now());
    let got: u64 = urls
        .into_iter()
        .map(|url| {
            let addr = worker.addr;
            std::thread::spawn(move || download(addr, &url))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("download thread"))
        .sum();
    row(
        &format!("download, 50 at once ({size} in all){label}"),
        got,
        begun.elapsed(),
        Some((cpu_ticks(pid) - cpu) as f64 / ticks),
    );
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{:<52} {:>10} KiB before, {} KiB at most during the {size} upload (+{} KiB)",
        format!("worker resident memory{label}"),
        rss_before,
        peak,
        peak.saturating_sub(rss_before)
    );
    total + each * CONCURRENT
}
