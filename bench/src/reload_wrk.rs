//! One reload under `wrk -t2 -c50` keep-alive load, PM2 beside chatctl in the same run: wrk's
//! socket errors (the keep-alive close race shows as read errors) and non-2xx answers (a draining
//! instance's 503s), per reload, medians of [`RUNS`].
//!
//! chatctl runs the chat worker in cluster mode (2 and 4 instances) on `/health` and
//! `/api/socket/stats`; PM2 runs the Node reference server (`bench/node/server.mjs`) in its cluster
//! mode with 2 instances on `/health` (all that server has). Needs wrk; PM2 comes from npm into
//! `bench/node` (skipped with a message when it cannot be installed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Bench, median, release_bin};

/// Reloads measured per configuration.
const RUNS: usize = 3;
/// wrk's window; the reload starts [`RELOAD_AT`] into it.
const WINDOW: Duration = Duration::from_secs(6);
const RELOAD_AT: Duration = Duration::from_millis(1500);

/// What wrk counted in one window.
#[derive(Debug, Default, Clone, Copy)]
struct Wrk {
    requests: f64,
    socket_errors: f64,
    non_2xx: f64,
}

pub(crate) fn reload_wrk() {
    if Command::new("wrk").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        println!("reload under wrk: skipped (needs wrk)");
        return;
    }
    println!(
        "{:<46} {:>14} {:>14} {:>10}",
        "one reload under wrk -t2 -c50 (medians)", "socket errors", "non-2xx", "requests"
    );
    for instances in [2usize, 4] {
        for path in ["/health", "/api/socket/stats"] {
            let runs: Vec<Wrk> = (0..RUNS).map(|_| chatctl_run(instances, path)).collect();
            print_row(&format!("chatctl cluster {instances}, {path}"), &runs);
        }
    }
    match pm2() {
        Some(pm2) => {
            let runs: Vec<Wrk> = (0..RUNS).filter_map(|_| pm2_run(&pm2, "/health")).collect();
            print_row("PM2 cluster 2 (Node server), /health", &runs);
        }
        None => println!("PM2: skipped (npm could not install pm2 into bench/node)"),
    }
}

fn print_row(label: &str, runs: &[Wrk]) {
    if runs.is_empty() {
        println!("{label:<46} {:>14}", "failed");
        return;
    }
    let of = |f: fn(&Wrk) -> f64| median(runs.iter().map(f).collect());
    let all = |f: fn(&Wrk) -> f64| runs.iter().map(|r| format!("{:.0}", f(r))).collect::<Vec<_>>().join("/");
    println!(
        "{label:<46} {:>14} {:>14} {:>10}",
        format!("{:.0} ({})", of(|r| r.socket_errors), all(|r| r.socket_errors)),
        format!("{:.0} ({})", of(|r| r.non_2xx), all(|r| r.non_2xx)),
        format!("{:.0}", of(|r| r.requests)),
    );
}

fn chatctl_run(instances: usize, path: &str) -> Wrk {
    let bench = Bench::new();
    let port = free_port();
    let app = |release: u8| {
        format!(
            "[apps.chat]\nscript = \"{}\"\nport = {port}\ninstances = {instances}\nexec_mode = \"cluster\"\nenv = {{ RELEASE = \"{release}\" }}\n",
            release_bin("chat-worker").display()
        )
    };
    bench.config(&app(1));
    bench.chatctl(&["start"]);
    bench.config(&app(2));
    let outcome = under_wrk(([127, 0, 0, 1], port).into(), path, || {
        bench.chatctl(&["reload"]);
    });
    bench.chatctl(&["kill"]);
    outcome
}

/// PM2's binary, installed into `bench/node` on first use.
fn pm2() -> Option<PathBuf> {
    let node_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    let bin = node_dir.join("node_modules/.bin/pm2");
    if !bin.exists() {
        println!("(installing the Node reference server and PM2: npm ci --prefix bench/node)");
        let ok = Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--prefix"]).arg(&node_dir).status();
        if !ok.is_ok_and(|s| s.success()) {
            return None;
        }
    }
    bin.exists().then_some(bin)
}

fn pm2_run(pm2: &Path, path: &str) -> Option<Wrk> {
    let home = tempfile::tempdir().ok()?;
    let server = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node/server.mjs");
    let port = free_port();
    let run = |args: &[&str]| {
        Command::new(pm2)
            .args(args)
            .env("PM2_HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let port_text = port.to_string();
    let started = run(&["start", server.to_str()?, "-i", "2", "--name", "ref", "--", &port_text, "1"]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let begun = Instant::now();
    while started && begun.elapsed() < Duration::from_secs(20) && !answers(addr) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcome = (started && answers(addr)).then(|| {
        under_wrk(addr, path, || {
            run(&["reload", "ref"]);
        })
    });
    run(&["kill"]);
    outcome
}

/// Runs wrk on `addr` + `path` for [`WINDOW`], calling `reload` [`RELOAD_AT`] into it.
fn under_wrk(addr: SocketAddr, path: &str, reload: impl FnOnce()) -> Wrk {
    let wrk = Command::new("wrk")
        .args(["-t2", "-c50", &format!("-d{}s", WINDOW.as_secs()), &format!("http://{addr}{path}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("wrk");
    std::thread::sleep(RELOAD_AT);
    reload();
    let out = wrk.wait_with_output().expect("wrk output");
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// wrk's summary: `N requests in …`, `Socket errors: connect A, read B, write C, timeout D`,
/// `Non-2xx or 3xx responses: N`.
fn parse(text: &str) -> Wrk {
    let mut wrk = Wrk::default();
    for line in text.lines().map(str::trim) {
        if let Some((count, _)) = line.split_once(" requests in ") {
            wrk.requests = count.trim().parse().unwrap_or(0.0);
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            wrk.socket_errors =
                errors.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<f64>().ok()).sum();
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            wrk.non_2xx = count.trim().parse().unwrap_or(0.0);
        }
    }
    wrk
}

fn answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_summary() {
        let text = "Running 6s test @ http://127.0.0.1:1/health\n  2 threads and 50 connections\n  \
                    120000 requests in 6.00s, 20.00MB read\n  Socket errors: connect 0, read 71, write 2, timeout 0\n  \
                    Non-2xx or 3xx responses: 29795\nRequests/sec:  20000.00\n";
        let wrk = super::parse(text);
        assert_eq!((wrk.requests, wrk.socket_errors, wrk.non_2xx), (120_000.0, 73.0, 29_795.0));
        assert_eq!(super::parse("  1 requests in 1.00s, 1B read\n").socket_errors, 0.0);
    }
}
