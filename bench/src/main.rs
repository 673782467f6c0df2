//! `chatctl-bench`: measures the supervisor with the real release binaries and prints figures beside
//! PM2's (reference figures measured on the same kind of 2-core machine), as medians.
//!
//! usage: cargo build --release --workspace && ./target/release/chatctl-bench [start|crash|logs|rss|list|reload|reload-wrk|monit|chat|chat-memory|room-fill|files|redis-cluster|all]
//!        ./target/release/chatctl-bench idle ADDR COUNT SECONDS [websocket|polling]
//!                                                         (idle guests held on a server started by hand)
//!
//! `chat` (the chat worker beside the Node Socket.IO server) needs Node.js and npm, and
//! redis-server for its cluster rows; see `chat.rs`. `redis-cluster` (one Redis beside a Redis
//! Cluster of 3 masters) needs redis-server and redis-cli; see `shards.rs`.
//!
//! Every process it starts is stopped with `chatctl kill` (by its own home) before it exits.

mod chat;
mod files;
mod floor;
mod harness;
mod polling;
mod reload_wrk;
mod shards;
mod sio;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_bench::load::Load;
use harness::{Bench, median, release_bin};

/// PM2 7.0.4 + Node 20 on a 2-core box, from the project's reference measurements.
mod pm2 {
    pub(crate) const START_TO_HEALTHY_MS: f64 = 768.0; // 2 workers, daemon running
    pub(crate) const CRASH_TO_HEALTHY_MS: f64 = 312.0; // cluster mode
    pub(crate) const LOG_LINES_PER_S: f64 = 342_000.0; // fork mode, short lines
    pub(crate) const DAEMON_RSS_MIB: f64 = 59.0; // 4 workers
    pub(crate) const LIST_MS: f64 = 174.0; // pm2 jlist
    pub(crate) const RELOAD_2_MS: f64 = 1340.0; // pm2 reload, 2 workers, 50 keep-alive connections
    pub(crate) const RELOAD_2_FAILED: f64 = 56.0; // connection resets during that reload
    pub(crate) const MONIT_CPU: f64 = 6.8; // pm2 monit, percent of a core while open
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let all = what == "all";
    println!("chatctl-bench ({}; medians; PM2 figures are the reference measurements)", env!("CARGO_PKG_VERSION"));
    println!("{:<46} {:>14} {:>14} {:>10}", "figure", "chatctl", "PM2", "ratio");
    if all || what == "start" {
        start();
    }
    if all || what == "crash" {
        crash();
    }
    if all || what == "list" {
        list();
    }
    if all || what == "rss" {
        rss();
    }
    if all || what == "logs" {
        logs();
    }
    if all || what == "reload" {
        reload();
    }
    if all || what == "reload-wrk" {
        reload_wrk::reload_wrk();
    }
    if all || what == "monit" {
        monit();
    }
    if all || what == "chat" {
        chat::chat();
    }
    if what == "files" {
        files::files();
    }
    if what == "chat-memory" {
        chat::memory();
    }
    if what == "room-fill" {
        chat::fill();
    }
    if what == "redis-cluster" {
        shards::redis_cluster();
    }
    if what == "__relay" {
        // The chat bench's yardstick server (see `floor.rs`), started by `chat` as a process of its own.
        let port = std::env::args().nth(2).and_then(|p| p.parse().ok()).expect("usage: chatctl-bench __relay PORT");
        floor::serve(port);
    }
    if what == "idle" {
        // The arguments after the program's name and `idle`.
        let args: Vec<String> = std::env::args().skip(2).collect();
        let parsed = match args.as_slice() {
            [addr, count, seconds, transport @ ..] if transport.len() <= 1 => {
                let polling = match transport.first().map(String::as_str) {
                    None | Some("websocket") => Some(false),
                    Some("polling") => Some(true),
                    Some(_) => None,
                };
                addr.parse().ok().zip(count.parse().ok()).zip(seconds.parse().ok()).zip(polling)
            }
            _ => None,
        };
        match parsed {
            Some((((addr, count), seconds), polling)) => chat::idle(addr, count, Duration::from_secs(seconds), polling),
            None => {
                eprintln!(
                    "usage: chatctl-bench idle ADDR COUNT SECONDS [websocket|polling] (e.g. 127.0.0.1:3000 3000 5)"
                );
                std::process::exit(2);
            }
        }
    }
}

fn row(figure: &str, ours: f64, unit: &str, pm2: Option<f64>, lower_is_better: bool) {
    let theirs = pm2.map_or("-".to_owned(), |p| format!("{p:.1} {unit}"));
    let ratio = pm2.map_or("-".to_owned(), |p| match (lower_is_better, ours == 0.0) {
        (true, true) => "none lost".to_owned(),
        (true, false) => format!("{:.1}x", p / ours),
        (false, _) => format!("{:.1}x", ours / p),
    });
    println!("{figure:<46} {:>14} {theirs:>14} {ratio:>10}", format!("{ours:.1} {unit}"));
}

fn worker_app(port: u16, instances: usize) -> String {
    format!(
        "[apps.chat]\nscript = \"{}\"\nport = {port}\ninstances = {instances}\nexec_mode = \"cluster\"\n",
        release_bin("chat-worker").display()
    )
}

/// `chatctl start` until every instance answered its health probe, with the daemon running.
fn start() {
    let bench = Bench::new();
    bench.config(&worker_app(0, 4));
    bench.chatctl(&["start"]);
    let samples: Vec<f64> = (0..7)
        .map(|_| {
            bench.chatctl(&["stop", "all"]);
            let begun = Instant::now();
            bench.chatctl(&["start"]);
            begun.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    row("start -> 4 workers healthy (daemon running)", median(samples), "ms", Some(pm2::START_TO_HEALTHY_MS), true);
    bench.chatctl(&["kill"]);
    let samples: Vec<f64> = (0..5)
        .map(|_| {
            let begun = Instant::now();
            bench.chatctl(&["start"]);
            let ms = begun.elapsed().as_secs_f64() * 1e3;
            bench.chatctl(&["kill"]);
            ms
        })
        .collect();
    row("start -> 4 workers healthy (daemon cold)", median(samples), "ms", Some(1083.0), true);
}

/// kill -9 of one worker until its replacement answers `/health` on the same instance's listener.
fn crash() {
    let bench = Bench::new();
    // A crash after a stable run (longer than min_uptime) is replaced at once; the bench waits past
    // min_uptime between kills so that none of them counts as a crash loop.
    bench.config(&format!("{}min_uptime = \"200ms\"\n", worker_app(0, 4)));
    bench.chatctl(&["start"]);
    let mut samples = Vec::new();
    for _ in 0..10 {
        let before = bench.instance(0);
        let admin = before.admin_addr.clone().expect("admin address").parse().expect("address");
        let old = before.pid.expect("pid");
        let begun = Instant::now();
        harness::sigkill(old);
        // Poll the instance's own health listener: the answer's pid says which process answered.
        loop {
            if let Some(pid) = harness::health_pid(admin)
                && pid != old
            {
                break;
            }
            assert!(begun.elapsed() < Duration::from_secs(10), "no replacement within 10 s");
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(begun.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(300));
    }
    row("kill -9 -> replacement answers /health", median(samples), "ms", Some(pm2::CRASH_TO_HEALTHY_MS), true);
    bench.chatctl(&["kill"]);
}

/// `chatctl list --json` round trips.
fn list() {
    let bench = Bench::new();
    bench.config(&worker_app(0, 4));
    bench.chatctl(&["start"]);
    let samples: Vec<f64> = (0..50)
        .map(|_| {
            let begun = Instant::now();
            bench.chatctl(&["list", "--json"]);
            begun.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    row("list --json, 4 workers", median(samples), "ms", Some(pm2::LIST_MS), true);
    bench.chatctl(&["kill"]);
}

/// Daemon resident memory with 4 chat workers and with 100 idle programs.
fn rss() {
    for (label, config, pm2) in [
        ("daemon RSS, 4 chat workers", worker_app(0, 4), Some(pm2::DAEMON_RSS_MIB)),
        (
            "daemon RSS, 100 instances",
            format!("[apps.idle]\nscript = \"{}\"\ninstances = 100\n", release_bin("fixture-app").display()),
            None,
        ),
    ] {
        let bench = Bench::new();
        bench.config(&config);
        bench.chatctl(&["start"]);
        std::thread::sleep(Duration::from_millis(500));
        let (rss, anon) = harness::rss_kib(bench.daemon_pid());
        row(label, rss as f64 / 1024.0, "MiB", pm2, true);
        row(&format!("{label} (anonymous only)"), anon as f64 / 1024.0, "MiB", None, true);
        bench.chatctl(&["kill"]);
    }
}

/// Bytes the fixture writes: `L <instance> <seq>` padded to `width` (newline included).
fn expected_bytes(instance: u64, lines: u64, width: Option<usize>) -> u64 {
    (0..lines)
        .map(|seq| {
            let len = format!("L {instance} {seq}").len() + 1;
            width.map_or(len, |w| len.max(w)) as u64
        })
        .sum()
}

/// Lines per second from two instances through the supervisor into the log file, none lost.
fn logs() {
    let cases = [
        ("short lines", 1_000_000u64, None, ""),
        ("short lines, log_type json", 1_000_000u64, None, "log_type = \"json\"\n"),
        ("1 KiB lines", 100_000u64, Some(1024usize), ""),
    ];
    for (label, per_instance, width, extra) in cases {
        let bench = Bench::new();
        let mut args = vec!["--lines".to_owned(), per_instance.to_string(), "--exit-after".into(), "0".into()];
        if let Some(w) = width {
            args.extend(["--line-bytes".into(), w.to_string()]);
        }
        let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
        bench.config(&format!(
            "[apps.loud]\nscript = \"{}\"\nargs = [{}]\ninstances = 2\nstop_exit_codes = [0]\nmax_size = \"1G\"\n{extra}",
            release_bin("fixture-app").display(),
            args.join(", ")
        ));
        // Start the daemon first, so its CPU time counts only this run.
        bench.chatctl(&["ping"]);
        let daemon = bench.daemon_pid();
        let cpu_before = harness::cpu_ticks(daemon);
        let path = bench.home().join("logs/loud-out.log");
        let expected = 2 * per_instance;
        let bytes: u64 = (0..2).map(|i| expected_bytes(i, per_instance, width)).sum();
        let begun = Instant::now();
        bench.chatctl(&["start", "--no-wait", "--only", "loud"]);
        // Poll the size (cheap) for raw lines, the line count for JSON records (whose size varies);
        // count the lines once at the end.
        let done = || match extra.is_empty() {
            true => std::fs::metadata(&path).map_or(0, |m| m.len()) >= bytes,
            false => harness::count_lines(&path) >= expected,
        };
        while !done() && begun.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(if extra.is_empty() { 1 } else { 50 }));
        }
        let lines = harness::count_lines(&path);
        let secs = begun.elapsed().as_secs_f64();
        let cpu = (harness::cpu_ticks(daemon) - cpu_before) as f64 / harness::ticks_per_second() / secs * 100.0;
        let pm2 = width.is_none().then_some(pm2::LOG_LINES_PER_S).filter(|_| extra.is_empty());
        row(
            &format!("log lines/s, {label} (lost: {})", expected.saturating_sub(lines)),
            lines as f64 / secs,
            "/s",
            pm2,
            false,
        );
        row(
            &format!("daemon CPU while logging {label}"),
            cpu,
            "%",
            Some(80.0).filter(|_| width.is_none() && extra.is_empty()),
            true,
        );
        bench.chatctl(&["kill"]);
    }
}

/// `chatctl reload` of 2 and 4 workers under load (new and keep-alive connections): requests, failed
/// requests, duration, and p99 latency against the same load without a reload.
fn reload() {
    for instances in [2usize, 4] {
        let bench = Bench::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        bench.config(&format!("{}env = {{ RELEASE = \"1\" }}\n", worker_app(port, instances)));
        bench.chatctl(&["start"]);
        let measure = |reload: bool| {
            let load = Load::mixed(vec![addr], "/api/socket/stats", 2, 2);
            load.wait_for(500);
            load.record_latency();
            std::thread::sleep(Duration::from_millis(300));
            let took = reload.then(|| {
                bench.config(&format!("{}env = {{ RELEASE = \"2\" }}\n", worker_app(port, instances)));
                let begun = Instant::now();
                bench.chatctl(&["reload"]);
                begun.elapsed().as_secs_f64() * 1e3
            });
            std::thread::sleep(Duration::from_millis(300));
            (load.finish(), took)
        };
        let (base, _) = measure(false);
        let (during, took) = measure(true);
        let pm2 = |v| (instances == 2).then_some(v);
        row(&format!("reload of {instances}: duration"), took.unwrap_or_default(), "ms", pm2(pm2::RELOAD_2_MS), true);
        row(&format!("reload of {instances}: requests in the window"), during.ok as f64, "", None, false);
        row(
            &format!("reload of {instances}: failed requests"),
            (during.failed + during.refused) as f64,
            "",
            pm2(pm2::RELOAD_2_FAILED),
            true,
        );
        row(&format!("reload of {instances}: p99, same load, no reload"), base.percentile_ms(99.0), "ms", None, true);
        row(&format!("reload of {instances}: p99 during the reload"), during.percentile_ms(99.0), "ms", None, true);
        bench.chatctl(&["kill"]);
    }
}

/// `chatctl monit` attached to 8 workers, 1 and 10 at a time (each in a tmux pane): CPU and memory
/// of the monit processes and of the daemon, over 10 s.
fn monit() {
    if std::process::Command::new("tmux").arg("-V").output().is_err() {
        println!("monit: skipped (needs tmux)");
        return;
    }
    let bench = Bench::new();
    bench.config(&worker_app(0, 8));
    bench.chatctl(&["start"]);
    let daemon = bench.daemon_pid();
    let window = Duration::from_secs(10);
    let idle = harness::cpu_percent(&[daemon], window);
    row("daemon CPU, 8 workers, no monit", idle, "%", None, true);
    for clients in [1usize, 10] {
        let socket = bench.home().join(format!("tmux-{clients}.sock"));
        let tmux = |args: &[&str]| {
            std::process::Command::new("tmux").arg("-S").arg(&socket).args(args).output().expect("tmux")
        };
        let command = format!("CHATCTL_HOME={} {} monit", bench.home().display(), release_bin("chatctl").display());
        for i in 0..clients {
            let name = format!("m{i}");
            tmux(&["new-session", "-d", "-s", &name, "-x", "120", "-y", "40", &command]);
        }
        std::thread::sleep(Duration::from_secs(2));
        let out = tmux(&["list-panes", "-a", "-F", "#{pane_pid}"]);
        let pids: Vec<u32> =
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
        let before = harness::cpu_ticks(daemon);
        let monit_cpu = harness::cpu_percent(&pids, window) / pids.len().max(1) as f64;
        let daemon_cpu =
            (harness::cpu_ticks(daemon) - before) as f64 / harness::ticks_per_second() / window.as_secs_f64() * 100.0;
        let rss = pids.iter().map(|p| harness::rss_kib(*p).0).max().unwrap_or(0) as f64 / 1024.0;
        row(&format!("monit CPU each, {clients} attached"), monit_cpu, "%", Some(pm2::MONIT_CPU), true);
        row(&format!("monit RSS each, {clients} attached"), rss, "MiB", None, true);
        row(&format!("daemon CPU, {clients} monit attached"), daemon_cpu, "%", None, true);
        tmux(&["kill-server"]);
    }
    bench.chatctl(&["kill"]);
}
