//! `chatctl-bench chat`: the chat worker beside the Node Socket.IO server (socket.io 4.8, what the
//! original app ran), each as 1 worker and as a 2-worker cluster, under the same load from the same
//! client in the same run: deliveries per second, end-to-end latency (p50/p99) and the servers' CPU
//! for rooms of 2, 100 and 1,000 members, then memory per idle connection at 10,000 connections.
//!
//! The load client is `sio.rs` (Rust, 2 threads, on the same 2 cores as the servers, as in the
//! reference measurements). Each message carries its send time; a delivery's latency is its arrival
//! time minus that. Deliveries are counted as they arrive within a 5 s window after a 1 s warm-up,
//! so a saturated server shows fewer deliveries than offered and a growing latency.
//!
//! Servers: ours with rate limits off (`MESSAGE_RATE`/`ADDRESS_RATE`), run alone (1 worker) and
//! under chatctl (2 workers on the daemon's local bus, and 2 workers through Redis when
//! redis-server is installed); Node's `bench/node/server.mjs` alone and with Node's cluster module
//! and the Redis adapter (2 workers, as the original ran under PM2). The CPU of the daemon and its
//! other children (the host's bus process) or of redis-server is counted with the workers', and
//! each round says whose it was. Beside them, the floor of this stack: a bare relay on tokio and
//! tokio-tungstenite (`floor.rs`), the yardstick for CPU per delivery.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{self, Bench, release_bin};
use crate::sio;

const WARM_UP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
const IDLE_CONNECTIONS: usize = 10_000;
/// The yardstick beside the servers: a bare relay on the worker's stack (see `floor.rs`).
const RELAY: &str = "relay floor x1";

struct Scenario {
    label: &'static str,
    members: usize,
    senders: usize,
    /// Offered deliveries per second (messages per second times members).
    offered: f64,
    /// Node's figure from the reference measurements, where there is one: (delivered/s, p50, p99).
    reference: Option<(f64, f64, f64)>,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario { label: "room of 2, 10k/s offered", members: 2, senders: 2, offered: 10_000.0, reference: None },
    Scenario {
        label: "room of 100, 10k/s offered",
        members: 100,
        senders: 10,
        offered: 10_000.0,
        reference: Some((10_000.0, 1.9, 4.0)),
    },
    Scenario {
        label: "room of 100, 100k/s offered",
        members: 100,
        senders: 10,
        offered: 100_000.0,
        reference: Some((100_000.0, 8.4, 50.0)),
    },
    Scenario {
        label: "room of 1000, 100k/s offered",
        members: 1000,
        senders: 10,
        offered: 100_000.0,
        reference: Some((99_000.0, 367.0, 921.0)),
    },
    Scenario { label: "room of 1000, 300k/s offered", members: 1000, senders: 10, offered: 300_000.0, reference: None },
];

#[derive(Clone, Copy)]
struct Figures {
    delivered: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Percent of one core, the server's processes together.
    cpu: f64,
    /// Deliveries that never arrived (of every message sent, warm-up included), in percent.
    lost: f64,
}

impl Figures {
    /// The median of each figure over `runs` (`None`: no run succeeded).
    fn median(runs: &[Figures]) -> Option<Figures> {
        if runs.is_empty() {
            return None;
        }
        let of = |field: fn(&Figures) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(field).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        Some(Figures {
            delivered: of(|f| f.delivered),
            p50_ms: of(|f| f.p50_ms),
            p99_ms: of(|f| f.p99_ms),
            cpu: of(|f| f.cpu),
            lost: of(|f| f.lost),
        })
    }
}

/// A server under test; stopped (by pid, or `chatctl kill`) when dropped.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    /// Whose CPU and memory count.
    pids: Vec<u32>,
    _children: Vec<ChildGuard>,
    _bench: Option<Bench>,
}

pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The memory budget of one idle websocket guest of ours (issue 14's goal: about half of Node's),
/// checked by `chat-memory` and `chat`.
const IDLE_BUDGET_KIB: f64 = 8.0;

/// Says whether ours is within [`IDLE_BUDGET_KIB`]: the bench's regression check (a figure, not a
/// timed test: `chat-memory` exits with 1 when it is over).
fn budget_check(what: &str, kib: Option<f64>) -> bool {
    let within = kib.is_some_and(|k| k <= IDLE_BUDGET_KIB);
    let figure = kib.map_or("failed".to_owned(), |k| format!("{k:.1} KiB"));
    let verdict = if within { "within" } else { "OVER BUDGET" };
    println!("memory check: {what}: {figure}, budget {IDLE_BUDGET_KIB:.1} KiB: {verdict}");
    within
}

/// The most idle connections this bench holds on one server: what the descriptor limit allows
/// (the server and this process each hold one per connection), at most 18,000.
fn largest_idle_count() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft);
    usize::try_from(limit.saturating_sub(2_000)).unwrap_or(0).clamp(IDLE_CONNECTIONS, 18_000)
}

/// `chatctl-bench chat-memory`: memory per idle connection only, guests (with a name) and bare
/// Socket.IO connections, ours and Node's, at 10,000 and at the most this box allows.
pub(crate) fn memory() {
    raise_fd_limit();
    let node_dir = node_server();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let largest = largest_idle_count();
    let mut ours = (None, None);
    for kind in ["chat-worker x1", "node x1"] {
        for how in [Connecting::Guests, Connecting::Bare, Connecting::Browsers] {
            let server = start(kind, &node_dir);
            print!("{}: ", how.label());
            let kib = runtime.block_on(idle_memory_as(&server, how, IDLE_CONNECTIONS));
            if let Err(e) = &kib {
                println!("failed: {e}");
            }
            if kind == "chat-worker x1" && matches!(how, Connecting::Guests) {
                ours.0 = kib.ok();
            }
        }
        if largest > IDLE_CONNECTIONS {
            let server = start(kind, &node_dir);
            print!("guests, the most this box allows: ");
            let kib = runtime.block_on(idle_memory_as(&server, Connecting::Guests, largest));
            if let Err(e) = &kib {
                println!("failed: {e}");
            }
            if kind == "chat-worker x1" {
                ours.1 = kib.ok();
            }
        }
        let server = start(if kind == "node x1" { "node x1 (polling)" } else { kind }, &node_dir);
        print!("long-polling guests: ");
        if let Err(e) = runtime.block_on(idle_polling_memory(&server)) {
            println!("failed: {e}");
        }
    }
    let mut within = budget_check(&format!("chat-worker x1, idle websocket guest at {IDLE_CONNECTIONS}"), ours.0);
    if largest > IDLE_CONNECTIONS {
        within &= budget_check(&format!("chat-worker x1, idle websocket guest at {largest}"), ours.1);
    }
    if !within {
        std::process::exit(1);
    }
}

/// Resident memory the server grows by per idle long-polling session (a guest with a poll pending).
async fn idle_polling_memory(server: &Server) -> Result<f64, String> {
    let rss = || server.pids.iter().map(|p| harness::rss_kib(*p).0).sum::<u64>();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss();
    let sessions = crate::polling::sessions(server.addr, IDLE_CONNECTIONS).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss();
    let per = after.saturating_sub(before) as f64 / IDLE_CONNECTIONS as f64;
    println!(
        "  {:<26} {IDLE_CONNECTIONS} idle polling sessions: {:.1} -> {:.1} MiB, {per:.1} KiB each",
        server.name,
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    drop(sessions);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(per)
}

/// The Node reference server's directory, its packages installed.
fn node_server() -> std::path::PathBuf {
    let node_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    if !node_dir.join("node_modules/socket.io").exists() {
        println!("(installing the Node reference server: npm ci --prefix bench/node)");
        let ok = Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--prefix"]).arg(&node_dir).status();
        assert!(ok.is_ok_and(|s| s.success()), "npm ci --prefix bench/node failed");
    }
    node_dir
}

pub(crate) fn chat() {
    raise_fd_limit();
    let node_dir = node_server();
    let redis = which("redis-server");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut kinds = vec!["chat-worker x1", "node x1", RELAY, "chatctl x2 (local bus)"];
    if redis {
        kinds.extend(["chatctl x2 (Redis)", "node x2 (cluster + Redis)"]);
    } else {
        println!("(redis-server not found: the Redis configurations are skipped)");
    }
    // `CHAT_BENCH_ONLY=redis` runs only the servers whose name contains it (case-insensitive).
    if let Ok(only) = std::env::var("CHAT_BENCH_ONLY") {
        kinds.retain(|k| k.to_lowercase().contains(&only.to_lowercase()));
    }
    // `CHAT_BENCH_REPEAT=3`: every server measured 3 times, servers alternating, medians shown.
    let repeat: usize = std::env::var("CHAT_BENCH_REPEAT").ok().and_then(|n| n.parse().ok()).unwrap_or(1).max(1);
    let mut samples: Vec<Sampled> = kinds.iter().map(|kind| (*kind, vec![Vec::new(); SCENARIOS.len()], None)).collect();
    for pass in 0..repeat {
        for (kind, figures, memory) in &mut samples {
            let server = start(kind, &node_dir);
            // Memory first, on a fresh server: what the load rounds leave in the allocator would
            // count. Once: it varies far less than the load rounds.
            if pass == 0 {
                match runtime.block_on(idle_memory(&server)) {
                    Ok(kib) => *memory = Some(kib),
                    Err(e) => println!("  {kind}, idle connections: failed: {e}"),
                }
            }
            for (round, scenario) in SCENARIOS.iter().enumerate() {
                match runtime.block_on(run(&server, scenario, round)) {
                    Ok(f) => figures[round].push(f),
                    Err(e) => println!("  {kind}, {}: failed: {e}", scenario.label),
                }
            }
            drop(server);
        }
    }
    let results: Vec<Measured> = samples
        .into_iter()
        .map(|(kind, figures, memory)| (kind, figures.into_iter().map(|runs| Figures::median(&runs)).collect(), memory))
        .collect();
    if repeat > 1 {
        println!("\n(each figure below is the median of {repeat} runs of its own)");
    }
    report(&results);
}

/// Filling a room of 1,000 (each member connects as a guest and joins, 100 at a time; every join
/// is told to the room as it fills): ours beside Node's, servers alternating, medians of 5.
pub(crate) fn fill() {
    raise_fd_limit();
    let node_dir = node_server();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let kinds = ["chat-worker x1", "node x1", "chatctl x2 (local bus)"];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for round in 0..5 {
        for (i, kind) in kinds.iter().enumerate() {
            let server = start(kind, &node_dir);
            let filling = Instant::now();
            match runtime.block_on(connect_all(server.addr, 1000, Some(&format!("fill-{round}")))) {
                Ok(clients) => {
                    samples[i].push(filling.elapsed().as_secs_f64() * 1e3);
                    drop(clients);
                }
                Err(e) => println!("  {kind}: failed: {e}"),
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    for (kind, ms) in kinds.iter().zip(&medians) {
        println!("room of 1000 filled, {kind:<24} {ms:>8.0} ms  ({:.2}x Node's time)", ms / medians[1]);
    }
}

/// One server's runs: per scenario, its figures in every pass, and KiB per idle connection.
type Sampled = (&'static str, Vec<Vec<Figures>>, Option<Memory>);

/// One server's figures: per scenario (`None`: that round failed), and KiB per idle connection.
type Measured = (&'static str, Vec<Option<Figures>>, Option<Memory>);

fn report(results: &[Measured]) {
    println!();
    println!(
        "{:<30} {:<36} {:>12} {:>9} {:>9} {:>7} {:>13} {:>7}",
        "scenario", "server", "delivered/s", "p50 ms", "p99 ms", "CPU %", "per core-s", "lost %"
    );
    for (i, scenario) in SCENARIOS.iter().enumerate() {
        for (kind, figures, _) in results {
            match figures[i] {
                Some(f) => println!(
                    "{:<30} {:<36} {:>12.0} {:>9.2} {:>9.2} {:>7.0} {:>13.0} {:>7.2}",
                    scenario.label,
                    kind,
                    f.delivered,
                    f.p50_ms,
                    f.p99_ms,
                    f.cpu,
                    f.delivered / (f.cpu / 100.0).max(0.01),
                    f.lost
                ),
                None => println!("{:<30} {kind:<36} failed", scenario.label),
            }
        }
        if let Some((d, p50, p99)) = scenario.reference {
            println!("{:<30} {:<36} {d:>12.0} {p50:>9.2} {p99:>9.2}", scenario.label, "(reference: node x1)");
        }
        for (ours, theirs) in [
            ("chat-worker x1", "node x1"),
            (RELAY, "node x1"),
            ("chat-worker x1", RELAY),
            ("chatctl x2 (Redis)", "node x2 (cluster + Redis)"),
            ("chatctl x2 (local bus)", "chatctl x2 (Redis)"),
        ] {
            let find = |k: &str| results.iter().find(|(kind, _, _)| *kind == k).and_then(|(_, f, _)| f[i]);
            if let (Some(a), Some(b)) = (find(ours), find(theirs)) {
                println!(
                    "{:<30} {:<36} {:>11.1}x {:>8.1}x {:>8.1}x {:>7} {:>12.1}x",
                    "",
                    format!("{ours} / {theirs}").chars().take(36).collect::<String>(),
                    a.delivered / b.delivered,
                    b.p50_ms / a.p50_ms.max(0.001),
                    b.p99_ms / a.p99_ms.max(0.001),
                    "",
                    (a.delivered / (a.cpu / 100.0).max(0.01)) / (b.delivered / (b.cpu / 100.0).max(0.01)),
                );
            }
        }
    }
    println!();
    println!("memory per idle connection ({IDLE_CONNECTIONS} connections), KiB; reference node x1: 15.4");
    for (kind, _, memory) in results {
        let figure = match memory {
            None => "failed".to_owned(),
            Some(m) if m.store > 0.0 => {
                format!("{:.1} (redis-server {:.1}, the rest {:.1})", m.total, m.store, m.total - m.store)
            }
            Some(m) => format!("{:.1}", m.total),
        };
        println!("  {kind:<28} {figure}");
    }
    // The budget is the servers' processes': what Redis keeps per guest (its session, which
    // outlives the connection) is the app's data, shown apart above.
    for (kind, _, memory) in results.iter().filter(|(kind, ..)| !kind.starts_with("node") && *kind != RELAY) {
        let what = match memory {
            Some(m) if m.store > 0.0 => {
                format!("{kind} without redis-server, idle websocket guest at {IDLE_CONNECTIONS}")
            }
            _ => format!("{kind}, idle websocket guest at {IDLE_CONNECTIONS}"),
        };
        budget_check(&what, memory.map(|m| m.total - m.store));
    }
    println!(
        "(ratio lines: A / B; latency ratios are B's over A's, above 1 means A is faster; per core-s: deliveries per \
         CPU-second; {RELAY}: the floor of this stack, see floor.rs)"
    );
}

fn which(program: &str) -> bool {
    Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Our worker's settings for the benchmark: every message counts, so no rate limit.
const OURS_ENV: [(&str, &str); 3] = [("MESSAGE_RATE", "off"), ("ADDRESS_RATE", "off"), ("RUST_LOG", "warn")];

fn start(kind: &'static str, node_dir: &std::path::Path) -> Server {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let spawn =
        |command: &mut Command| ChildGuard(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn"));
    let redis_server = || {
        let (child, redis_port) = redis_server(&[]);
        (child, format!("redis://127.0.0.1:{redis_port}"))
    };
    let server = match kind {
        "chat-worker x1" => {
            let child = spawn(Command::new(release_bin("chat-worker")).env("PORT", port.to_string()).envs(OURS_ENV));
            Server { name: kind, addr, pids: vec![child.0.id()], _children: vec![child], _bench: None }
        }
        RELAY => {
            let bench = std::env::current_exe().expect("this program's path");
            let child = spawn(Command::new(bench).args(["__relay", &port.to_string()]));
            Server { name: kind, addr, pids: vec![child.0.id()], _children: vec![child], _bench: None }
        }
        "node x1" | "node x1 (polling)" => {
            let transports = if kind.contains("polling") { "polling,websocket" } else { "websocket" };
            let child = spawn(
                Command::new("node")
                    .arg(node_dir.join("server.mjs"))
                    .arg(port.to_string())
                    .env("SIO_TRANSPORTS", transports),
            );
            Server { name: kind, addr, pids: vec![child.0.id()], _children: vec![child], _bench: None }
        }
        "node x2 (cluster + Redis)" => {
            let (redis, url) = redis_server();
            let child =
                spawn(Command::new("node").arg(node_dir.join("server.mjs")).args([&port.to_string(), "2", &url]));
            let primary = child.0.id();
            wait(|| children(primary).len() == 2);
            let mut pids = vec![primary, redis.0.id()];
            pids.extend(children(primary));
            Server { name: kind, addr, pids, _children: vec![child, redis], _bench: None }
        }
        _ => {
            let (redis, url) = if kind.contains("Redis") {
                let (child, url) = redis_server();
                (Some(child), Some(url))
            } else {
                (None, None)
            };
            let (bench, mut pids) = two_workers(port, url.as_deref());
            let mut children = Vec::new();
            if let Some(redis) = redis {
                pids.push(redis.0.id());
                children.push(redis);
            }
            Server { name: kind, addr, pids, _children: children, _bench: Some(bench) }
        }
    };
    wait(|| health_ok(server.addr));
    server
}

/// A redis-server on a free loopback port, nothing saved, with `extra` arguments; waits until it
/// accepts connections. Stopped (by pid) when the guard drops.
pub(crate) fn redis_server(extra: &[&std::ffi::OsStr]) -> (ChildGuard, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let child = ChildGuard(child);
    wait(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    (child, port)
}

/// `chatctl-bench idle ADDR COUNT SECONDS`: holds COUNT idle guests on a server started by hand
/// (under a heap profiler, say: `vendor/README.md`), answering its pings, for SECONDS.
pub(crate) fn idle(addr: SocketAddr, count: usize, hold: Duration, polling: bool) {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        if polling {
            return match crate::polling::sessions(addr, count).await {
                Ok(sessions) => {
                    println!("{count} idle long-polling guests connected to {addr}; holding them {hold:?}");
                    tokio::time::sleep(hold).await;
                    drop(sessions);
                }
                Err(e) => println!("failed: {e}"),
            };
        }
        let clients = match connect_all(addr, count, None).await {
            Ok(clients) => clients,
            Err(e) => return println!("failed: {e}"),
        };
        println!("{count} idle guests connected to {addr}; holding them {hold:?}");
        let keep: Vec<_> = clients.into_iter().map(answer_pings).collect();
        tokio::time::sleep(hold).await;
        for task in keep {
            task.abort();
        }
    });
}

/// Answers a client's pings until it closes, as a browser would while idle.
fn answer_pings(client: sio::Client) -> tokio::task::JoinHandle<()> {
    let (out, mut frames) = (client.out, client.frames);
    tokio::spawn(async move {
        while let Some(Ok(frame)) = frames.next().await {
            if matches!(&frame, Message::Text(t) if t.as_str() == "2") {
                let _ = out.send("3".into());
            }
        }
    })
}

/// Two chat workers under chatctl in cluster mode on `port`, through the Redis at `redis` or the
/// local bus: the bench and the pids whose CPU counts (the daemon's and every child of it: the
/// workers, the host's bus `chatctl __bus`, the reaper).
pub(crate) fn two_workers(port: u16, redis: Option<&str>) -> (Bench, Vec<u32>) {
    let bench = Bench::new();
    let mut env: Vec<String> = OURS_ENV.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
    if let Some(url) = redis {
        env.push(format!("REDIS_URL = \"{url}\""));
    }
    bench.config(&format!(
        "[apps.chat]\nscript = \"{}\"\nport = {port}\ninstances = 2\nexec_mode = \"cluster\"\nenv = {{ {} }}\n",
        release_bin("chat-worker").display(),
        env.join(", ")
    ));
    bench.chatctl(&["start"]);
    let daemon = bench.daemon_pid();
    let mut pids = vec![daemon];
    pids.extend((0..2).filter_map(|i| bench.instance(i).pid));
    for child in children(daemon) {
        if !pids.contains(&child) {
            pids.push(child);
        }
    }
    (bench, pids)
}

pub(crate) fn wait(mut ready: impl FnMut() -> bool) {
    let begun = Instant::now();
    while !ready() {
        assert!(begun.elapsed() < Duration::from_secs(15), "a server did not start within 15 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn health_ok(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = String::new();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").is_ok()
        && stream.read_to_string(&mut reply).is_ok()
        && reply.starts_with("HTTP/1.1 200")
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// What a process of a server is, for the CPU split: its program, or chatctl's role.
fn process_name(pid: u32) -> String {
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline.split('\0');
    let program = args.next().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
    match args.next() {
        Some(role) if program == "chatctl" && role.starts_with("__") => {
            format!("chatctl {}", role.trim_start_matches('_'))
        }
        _ if program == "chatctl" => "chatctl daemon".to_owned(),
        _ => std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(program, |c| c.trim().to_owned()),
    }
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The send time a benchmark message carries in its text.
pub(crate) fn sent_us(frame: &str) -> Option<u64> {
    let start = frame.find("\"text\":\"")? + 8;
    let digits = &frame[start..];
    digits[..digits.find('"')?].parse().ok()
}

/// How the idle connections of a memory figure connect.
#[derive(Clone, Copy)]
enum Connecting {
    /// Guests with a name (`auth`), as the load rounds connect.
    Guests,
    /// No `auth`: a connection and nothing else.
    Bare,
    /// Guests sending what a browser sends with a websocket handshake (agent, languages, 1 KiB of
    /// cookies): servers keep each socket's request, so this is closer to production.
    Browsers,
}

impl Connecting {
    fn label(self) -> &'static str {
        match self {
            Connecting::Guests => "guests",
            Connecting::Bare => "bare connections",
            Connecting::Browsers => "guests with a browser's headers",
        }
    }
}

/// A Chrome's websocket handshake headers on a site with analytics and consent cookies.
fn browser_headers() -> Vec<(&'static str, String)> {
    let cookie = format!(
        "_ga=GA1.1.1234567890.1732000000; _ga_X1Y2Z3W4V5=GS1.1.1732000000.3.1.1732000999.0.0.0; \
         theme=dark; lang=en; consent={}; session={}",
        "a".repeat(420),
        "s".repeat(400)
    );
    vec![
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
                .into(),
        ),
        ("origin", "http://127.0.0.1".into()),
        ("accept-language", "en-US,en;q=0.9,fr;q=0.8".into()),
        ("accept-encoding", "gzip, deflate, br, zstd".into()),
        ("cache-control", "no-cache".into()),
        ("pragma", "no-cache".into()),
        ("cookie", cookie),
    ]
}

async fn connect_all(addr: SocketAddr, count: usize, room: Option<&str>) -> Result<Vec<sio::Client>, String> {
    connect_all_as(addr, count, room, Connecting::Guests).await
}

async fn connect_all_as(
    addr: SocketAddr,
    count: usize,
    room: Option<&str>,
    how: Connecting,
) -> Result<Vec<sio::Client>, String> {
    let room = room.map(str::to_owned);
    let headers = if matches!(how, Connecting::Browsers) { browser_headers() } else { Vec::new() };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let headers = &headers;
    futures_util::stream::iter(0..count)
        .map(|i| {
            let room = room.clone();
            async move {
                let name = if matches!(how, Connecting::Bare) { String::new() } else { format!("m{i}") };
                let mut client = sio::connect(addr, &name, headers).await?;
                if let Some(room) = room {
                    client.join(&room).await?;
                }
                Ok(client)
            }
        })
        .buffer_unordered(100)
        .try_collect()
        .await
}

/// Sends a message to `room` every `period` from `first` until `end`, each carrying its send time;
/// returns how many it sent.
pub(crate) async fn send_paced(
    out: tokio::sync::mpsc::UnboundedSender<String>,
    room: String,
    first: tokio::time::Instant,
    period: Duration,
    end: tokio::time::Instant,
) -> u64 {
    let (mut due, mut sent) = (first, 0u64);
    while due < end {
        tokio::time::sleep_until(due).await;
        // Every message due by now leaves (the timer is coarser than the period).
        let now = tokio::time::Instant::now();
        while due <= now && due < end {
            let _ = out.send(format!("42[\"message\",{{\"room\":\"{room}\",\"text\":\"{}\"}}]", now_us()));
            due += period;
            sent += 1;
        }
    }
    sent
}

/// What the clients of a round receive: each room message's arrival time and latency, counted.
pub(crate) struct Deliveries {
    /// (arrival µs since the epoch, latency µs), once the readers stopped.
    samples: Arc<Mutex<Vec<(u64, u32)>>>,
    pub(crate) received: Arc<std::sync::atomic::AtomicU64>,
    stop: watch::Sender<bool>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Deliveries {
    /// Reads every client's frames (answering pings) until [`Deliveries::stop`]; returns the
    /// clients' senders, in their order.
    pub(crate) fn read(clients: Vec<sio::Client>) -> (Deliveries, Vec<tokio::sync::mpsc::UnboundedSender<String>>) {
        let samples: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut outs = Vec::new();
        let mut readers = Vec::new();
        for client in clients {
            let (out, mut frames) = (client.out, client.frames);
            outs.push(out.clone());
            let (samples, received, mut stop) = (samples.clone(), received.clone(), stop_rx.clone());
            readers.push(tokio::spawn(async move {
                let mut local = Vec::new();
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        frame = frames.next() => match frame {
                            Some(Ok(Message::Text(text))) => {
                                if text.as_str() == "2" {
                                    let _ = out.send("3".into());
                                } else if text.starts_with("42[\"message\"") && let Some(sent) = sent_us(text.as_str()) {
                                    let now = now_us();
                                    local.push((now, now.saturating_sub(sent) as u32));
                                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                    }
                }
                if let Ok(mut all) = samples.lock() {
                    all.extend(local);
                }
            }));
        }
        (Deliveries { samples, received, stop: stop_tx, readers }, outs)
    }

    /// Stops reading: what arrived within `window` (µs since the epoch).
    pub(crate) async fn stop(self, window: std::ops::Range<u64>) -> Result<Window, String> {
        let _ = self.stop.send(true);
        for reader in self.readers {
            let _ = reader.await;
        }
        let mut latencies: Vec<u32> = self
            .samples
            .lock()
            .map_err(|_| "samples lock")?
            .iter()
            .filter(|(at, _)| window.contains(at))
            .map(|(_, latency)| *latency)
            .collect();
        if latencies.is_empty() {
            return Err("nothing delivered".into());
        }
        latencies.sort_unstable();
        let percentile = |p: f64| f64::from(latencies[((latencies.len() - 1) as f64 * p) as usize]) / 1000.0;
        let seconds = (window.end - window.start) as f64 / 1e6;
        Ok(Window {
            delivered: latencies.len() as f64 / seconds,
            p50_ms: percentile(0.5),
            p99_ms: percentile(0.99),
            seconds,
        })
    }
}

/// Deliveries within a measured window.
pub(crate) struct Window {
    pub(crate) delivered: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) seconds: f64,
}

async fn run(server: &Server, scenario: &Scenario, round: usize) -> Result<Figures, String> {
    let room = format!("bench-{round}");
    let filling = Instant::now();
    let clients = connect_all(server.addr, scenario.members, Some(&room)).await?;
    let filled_ms = filling.elapsed().as_secs_f64() * 1e3;
    let (deliveries, outs) = Deliveries::read(clients);
    let received = deliveries.received.clone();
    let messages_per_s = scenario.offered / scenario.members as f64;
    let period = Duration::from_secs_f64(scenario.senders as f64 / messages_per_s);
    let begun = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = begun + WARM_UP + WINDOW;
    let mut senders = Vec::new();
    for (i, out) in outs.iter().take(scenario.senders).enumerate() {
        let (out, room) = (out.clone(), room.clone());
        let offset = period.mul_f64(i as f64 / scenario.senders as f64);
        senders.push(tokio::spawn(send_paced(out, room, begun + offset, period, end)));
    }
    // The servers' CPU over the measured window.
    tokio::time::sleep_until(begun + WARM_UP).await;
    let window_start = now_us();
    let ticks_before: Vec<u64> = server.pids.iter().map(|p| harness::cpu_ticks(*p)).collect();
    tokio::time::sleep_until(end).await;
    let ticks_after: Vec<u64> = server.pids.iter().map(|p| harness::cpu_ticks(*p)).collect();
    let spent: Vec<u64> = ticks_after.iter().zip(&ticks_before).map(|(a, b)| a.saturating_sub(*b)).collect();
    let window_end = now_us();
    let mut sent = 0;
    for sender in senders {
        sent += sender.await.unwrap_or(0);
    }
    // Let what is in flight arrive (it does not count for the window, but it is not lost), until
    // everything came or nothing more comes for a second (at most 10 s).
    let expected = sent * scenario.members as u64;
    let (mut last, mut quiet_since, drain_begun) = (0, Instant::now(), Instant::now());
    loop {
        let now = received.load(std::sync::atomic::Ordering::Relaxed);
        if now >= expected
            || quiet_since.elapsed() > Duration::from_secs(1)
            || drain_begun.elapsed() > Duration::from_secs(10)
        {
            break;
        }
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lost = expected.saturating_sub(received.load(std::sync::atomic::Ordering::Relaxed));
    let window = deliveries.stop(window_start..window_end).await?;
    drop(outs);
    let seconds = window.seconds;
    let figures = Figures {
        delivered: window.delivered,
        p50_ms: window.p50_ms,
        p99_ms: window.p99_ms,
        cpu: spent.iter().sum::<u64>() as f64 / harness::ticks_per_second() / seconds * 100.0,
        lost: lost as f64 * 100.0 / expected.max(1) as f64,
    };
    // Whose CPU it was, when the server is several processes.
    let mut by_process: Vec<(String, u64)> = Vec::new();
    for (pid, ticks) in server.pids.iter().zip(&spent) {
        let name = process_name(*pid);
        match by_process.iter_mut().find(|(n, _)| *n == name) {
            Some((_, sum)) => *sum += ticks,
            None => by_process.push((name, *ticks)),
        }
    }
    let split = if server.pids.len() > 1 {
        let percent = |t: u64| t as f64 / harness::ticks_per_second() / seconds * 100.0;
        let parts: Vec<String> = by_process.iter().map(|(n, t)| format!("{n} {:.0}%", percent(*t))).collect();
        format!("  [{}]", parts.join(", "))
    } else {
        String::new()
    };
    println!(
        "  {:<26} {:<30} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  CPU {:>4.0}%  lost {:.2}%  (room filled in {filled_ms:.0} ms){split}",
        server.name, scenario.label, figures.delivered, figures.p50_ms, figures.p99_ms, figures.cpu, figures.lost
    );
    // Give the server a moment to close the room's sockets before the next round.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(figures)
}

/// Resident memory the server grows by per idle connection (connected, named, in no room).
/// KiB per idle guest: every process of the server together, and the part of it that is
/// redis-server's (what it keeps per guest: the guest's session).
#[derive(Clone, Copy)]
struct Memory {
    total: f64,
    store: f64,
}

async fn idle_memory(server: &Server) -> Result<Memory, String> {
    let store =
        |pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "redis-server");
    let stores: Vec<u32> = server.pids.iter().copied().filter(store).collect();
    let rss_of = |pids: &[u32]| pids.iter().map(|p| harness::rss_kib(*p).0).sum::<u64>();
    let before = rss_of(&stores);
    let total = idle_memory_as(server, Connecting::Guests, IDLE_CONNECTIONS).await?;
    // Read after the total's reading (the guests are gone by now; Redis keeps their sessions).
    let store = rss_of(&stores).saturating_sub(before) as f64 / IDLE_CONNECTIONS as f64;
    if !stores.is_empty() {
        println!("  {:<26} of which redis-server: {store:.1} KiB each (the guests' sessions)", server.name);
    }
    Ok(Memory { total, store })
}

async fn idle_memory_as(server: &Server, how: Connecting, count: usize) -> Result<f64, String> {
    let rss = || server.pids.iter().map(|p| harness::rss_kib(*p).0).sum::<u64>();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss();
    let clients = connect_all_as(server.addr, count, None, how).await?;
    // Answer pings while idle, as a browser would.
    let keep: Vec<_> = clients.into_iter().map(answer_pings).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss();
    for task in &keep {
        task.abort();
    }
    let per = after.saturating_sub(before) as f64 / count as f64;
    println!(
        "  {:<26} {count} idle connections: {:.1} -> {:.1} MiB, {per:.1} KiB each",
        server.name,
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(per)
}
