//! `chatctl-bench redis-cluster`: two chat workers (chatctl, cluster mode) through one Redis, then
//! through a Redis Cluster of 3 masters, under the same loads in the same run: how room traffic
//! splits over the shards (publications per node), what each Redis process spends per publication
//! and per client delivery beside the single node, and what a room of 1 costs beside a room of
//! 1,000 (a room's channels are its own on a cluster: one publication a message whatever its size).
//!
//! Two cores cannot show throughput growing with shards: the shards share them with the workers
//! and the load client. What they show is the split and the cost of each delivery.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};

use crate::chat::{
    ChildGuard, Deliveries, free_port, health_ok, now_us, raise_fd_limit, redis_server, send_paced, two_workers, wait,
};
use crate::harness::{self, Bench};
use crate::sio;

const WARM_UP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
/// How long the nodes' idle CPU is measured.
const IDLE: Duration = Duration::from_secs(5);

struct Load {
    label: &'static str,
    rooms: usize,
    members: usize,
    /// Offered deliveries per second, all rooms together.
    offered: f64,
}

const LOADS: [Load; 3] = [
    Load { label: "300 rooms of 10, 20k/s", rooms: 300, members: 10, offered: 20_000.0 },
    Load { label: "1000 rooms of 1, 5k/s", rooms: 1000, members: 1, offered: 5_000.0 },
    Load { label: "1 room of 1000, 100k/s", rooms: 1, members: 1000, offered: 100_000.0 },
];

/// Two workers under chatctl and the Redis they share (one node, or every master of a cluster).
struct Setup {
    name: &'static str,
    addr: SocketAddr,
    /// The daemon's and the workers'.
    workers: Vec<u32>,
    /// Each Redis node: its port and pid.
    redis: Vec<(u16, u32)>,
    /// Each node's CPU (percent of a core) with the workers linked and no traffic: a cluster's
    /// nodes ping each other, and every node runs its timers, whatever the load.
    idle: Vec<f64>,
    _bench: Bench,
    _children: Vec<ChildGuard>,
    _dirs: Vec<tempfile::TempDir>,
}

pub(crate) fn redis_cluster() {
    raise_fd_limit();
    if Command::new("redis-cli").arg("--version").stdout(Stdio::null()).status().is_err() {
        println!("redis-server and redis-cli are needed (Debian: redis-server)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut rows = Vec::new();
    for cluster in [false, true] {
        let setup = start(cluster);
        let idle: Vec<String> = setup.idle.iter().map(|cpu| format!("{cpu:.1}%")).collect();
        println!("  {:<24} idle, workers linked: redis CPU {}", setup.name, idle.join(", "));
        for (round, load) in LOADS.iter().enumerate() {
            match runtime.block_on(run(&setup, load, round)) {
                Ok(row) => rows.push((setup.name, load.label, setup.idle.clone(), row)),
                Err(e) => println!("  {}, {}: failed: {e}", setup.name, load.label),
            }
        }
    }
    report(&rows);
}

struct Row {
    delivered: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Percent of a core: the workers and the daemon.
    workers_cpu: f64,
    /// Per Redis node: percent of a core, and publications per second (PUBLISH + SPUBLISH).
    nodes: Vec<(f64, f64)>,
}

fn report(rows: &[(&str, &str, Vec<f64>, Row)]) {
    println!();
    println!(
        "{:<24} {:<24} {:>11} {:>8} {:>8} {:>9} {:>8} {:>8} {:>11}  by node: publications, CPU, µs/pub",
        "redis", "load", "delivered/s", "p50 ms", "p99 ms", "workers %", "redis %", "pubs/s", "µs/pub"
    );
    for (setup, load, idle, row) in rows {
        let redis_cpu: f64 = row.nodes.iter().map(|(cpu, _)| cpu).sum();
        let idle_cpu: f64 = idle.iter().sum();
        let pubs: f64 = row.nodes.iter().map(|(_, p)| p).sum();
        // Redis CPU-µs a publication costs above the nodes' idle CPU.
        let marginal = |cpu: f64, idle: f64, pubs: f64| (cpu - idle).max(0.0) / 100.0 * 1e6 / pubs.max(1.0);
        let by_node: Vec<String> = row
            .nodes
            .iter()
            .zip(idle)
            .map(|((cpu, p), idle)| {
                format!("{:.0}% {cpu:.1}% {:.0}", p * 100.0 / pubs.max(1.0), marginal(*cpu, *idle, *p))
            })
            .collect();
        println!(
            "{setup:<24} {load:<24} {:>11.0} {:>8.2} {:>8.2} {:>9.0} {:>8.1} {:>8.0} {:>11.1}  {}",
            row.delivered,
            row.p50_ms,
            row.p99_ms,
            row.workers_cpu,
            redis_cpu,
            pubs,
            marginal(redis_cpu, idle_cpu, pubs),
            by_node.join(" | ")
        );
    }
    println!("(µs/pub: Redis CPU-microseconds per publication above the nodes' idle CPU, every node together;");
    println!(" a publication reaches every worker with a member in the room, which delivers it to its clients)");
}

fn start(cluster: bool) -> Setup {
    let nodes = if cluster { 3 } else { 1 };
    let mut children = Vec::new();
    let mut redis = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..nodes {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = free_port().to_string();
        let mut args: Vec<&std::ffi::OsStr> = vec!["--dir".as_ref(), dir.path().as_os_str()];
        if cluster {
            args.extend(
                ["--cluster-enabled", "yes", "--cluster-port", &bus, "--cluster-config-file", "nodes.conf"]
                    .map(std::ffi::OsStr::new),
            );
        }
        let (child, port) = redis_server(&args);
        redis.push((port, child.0.id()));
        children.push(child);
        dirs.push(dir);
    }
    if cluster {
        let addresses: Vec<String> = redis.iter().map(|(port, _)| format!("127.0.0.1:{port}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status();
        assert!(created.is_ok_and(|s| s.success()), "redis-cli --cluster create failed");
        wait(|| redis.iter().all(|(port, _)| command(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")));
    }
    let port = free_port();
    let (bench, workers) = two_workers(port, Some(&format!("redis://127.0.0.1:{}", redis[0].0)));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait(|| health_ok(addr));
    let name = if cluster { "Redis Cluster, 3 masters" } else { "one Redis" };
    let before: Vec<u64> = redis.iter().map(|(_, pid)| harness::cpu_ticks(*pid)).collect();
    std::thread::sleep(IDLE);
    let idle = redis
        .iter()
        .zip(before)
        .map(|((_, pid), ticks)| {
            (harness::cpu_ticks(*pid) - ticks) as f64 / harness::ticks_per_second() / IDLE.as_secs_f64() * 100.0
        })
        .collect();
    Setup { name, addr, workers, redis, idle, _bench: bench, _children: children, _dirs: dirs }
}

/// One command on a Redis node, RESP over a plain socket: the reply's text.
fn command(port: u16, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 << 10];
    // A bulk reply says its length first: read until it is all here.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        let whole = match text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) {
            Some((len, rest)) => len.parse::<usize>().is_ok_and(|len| rest.len() >= len),
            None => text.ends_with("\r\n"),
        };
        if whole {
            break;
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// Publications a node has served (`PUBLISH` and `SPUBLISH` calls).
fn publications(port: u16) -> u64 {
    let stats = command(port, &["INFO", "commandstats"]);
    ["cmdstat_publish:calls=", "cmdstat_spublish:calls="]
        .iter()
        .filter_map(|prefix| stats.lines().find_map(|line| line.strip_prefix(prefix)))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

async fn connect_rooms(addr: SocketAddr, load: &Load, round: usize) -> Result<Vec<sio::Client>, String> {
    futures_util::stream::iter(0..load.rooms * load.members)
        .map(|i| async move {
            let mut client = sio::connect(addr, &format!("m{i}"), &[]).await?;
            client.join(&format!("r{round}-{}", i / load.members)).await?;
            Ok(client)
        })
        // In order: client i is in room i / members, and the senders are picked by that.
        .buffered(100)
        .try_collect()
        .await
}

async fn run(setup: &Setup, load: &Load, round: usize) -> Result<Row, String> {
    let clients = connect_rooms(setup.addr, load, round).await?;
    let (deliveries, outs) = Deliveries::read(clients);
    // One sender a room (ten in a room of more than 100): the room's first members, in turn.
    let per_room = if load.members > 100 { 10 } else { 1 };
    let senders = load.rooms * per_room;
    let messages_per_s = load.offered / load.members as f64;
    let period = Duration::from_secs_f64(senders as f64 / messages_per_s);
    let begun = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = begun + WARM_UP + WINDOW;
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (room, nth) = (s % load.rooms, s / load.rooms);
        let out = outs[room * load.members + nth].clone();
        let room = format!("r{round}-{room}");
        let offset = period.mul_f64(s as f64 / senders as f64);
        tasks.push(tokio::spawn(send_paced(out, room, begun + offset, period, end)));
    }
    tokio::time::sleep_until(begun + WARM_UP).await;
    let window_start = now_us();
    let ticks = |pids: &mut dyn Iterator<Item = u32>| pids.map(harness::cpu_ticks).sum::<u64>();
    let workers_before = ticks(&mut setup.workers.iter().copied());
    let nodes_before: Vec<(u64, u64)> =
        setup.redis.iter().map(|(port, pid)| (harness::cpu_ticks(*pid), publications(*port))).collect();
    tokio::time::sleep_until(end).await;
    let workers_after = ticks(&mut setup.workers.iter().copied());
    let nodes_after: Vec<(u64, u64)> =
        setup.redis.iter().map(|(port, pid)| (harness::cpu_ticks(*pid), publications(*port))).collect();
    let window_end = now_us();
    for task in tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = deliveries.stop(window_start..window_end).await?;
    drop(outs);
    let seconds = window.seconds;
    let percent = |ticks: u64| ticks as f64 / harness::ticks_per_second() / seconds * 100.0;
    let row = Row {
        delivered: window.delivered,
        p50_ms: window.p50_ms,
        p99_ms: window.p99_ms,
        workers_cpu: percent(workers_after.saturating_sub(workers_before)),
        nodes: nodes_before
            .iter()
            .zip(&nodes_after)
            .map(|((cpu0, pub0), (cpu1, pub1))| (percent(cpu1 - cpu0), (pub1 - pub0) as f64 / seconds))
            .collect(),
    };
    println!(
        "  {:<24} {:<24} {:>8.0}/s  p50 {:>6.2} ms  p99 {:>7.2} ms  workers {:>4.0}%  redis {:?}",
        setup.name,
        load.label,
        row.delivered,
        row.p50_ms,
        row.p99_ms,
        row.workers_cpu,
        row.nodes.iter().map(|(cpu, p)| format!("{cpu:.0}% {p:.0} pubs/s")).collect::<Vec<_>>()
    );
    // The sockets close before the next round.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(row)
}
