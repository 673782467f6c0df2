//! A real `redis-server` per test, on a free loopback port, with nothing saved to disk; stopped and
//! started again on the same port for outage tests, and killed (by pid) when dropped. Also a real
//! Redis Cluster of such servers (masters with a replica each, made by `redis-cli --cluster create`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

pub(crate) struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        let mut server = RedisServer { port: free_port(), dir: tempfile::tempdir().expect("temp dir"), child: None };
        server.resume();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, and waits until it answers PING.
    pub(crate) fn resume(&mut self) {
        self.resume_with(&[]);
    }

    fn resume_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (.ci/run installs it with apt-get)");
        self.child = Some(child);
        wait_until("redis-server answers PING", Duration::from_secs(10), || ping(self.port).then_some(()));
    }

    /// Stops it the hard way (SIGKILL): clients see their connections reset, as on a crash.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs one command through `redis-cli`-free RESP: the reply's raw text.
    pub(crate) fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("write");
        let mut reply = vec![0; 64 << 10];
        let n = stream.read(&mut reply).unwrap_or(0);
        String::from_utf8_lossy(&reply[..n]).into_owned()
    }
}

/// A Redis Cluster on loopback: `masters` masters with one replica each. A master fails over to its
/// replica within about two seconds of its death (`cluster-node-timeout` 1 s).
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(crate) fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters * 2)
            .map(|_| {
                let mut node =
                    RedisServer { port: free_port(), dir: tempfile::tempdir().expect("temp dir"), child: None };
                let bus = free_port().to_string();
                node.resume_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // Replicas in sync at once (diskless sync waits 5 s for more replicas by default):
                    // a replica that never synced cannot take over.
                    "--repl-diskless-sync-delay",
                    "0",
                ]);
                node
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is not installed (it comes with redis-server: .ci/run installs it)");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        wait_until("the cluster's every node says it is ok", Duration::from_secs(20), || {
            cluster.nodes.iter().all(|n| n.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok")).then_some(())
        });
        wait_until("every replica in sync with its master", Duration::from_secs(20), || {
            let synced = cluster.nodes.iter().map(|n| n.command(&["INFO", "replication"]));
            let replicas: Vec<String> = synced.filter(|info| info.contains("role:slave")).collect();
            (replicas.len() == masters && replicas.iter().all(|i| i.contains("master_link_status:up"))).then_some(())
        });
        cluster
    }

    /// One node's URL: what an operator would put in `REDIS_URL`.
    pub(crate) fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// The node (index into `nodes`) that is the master of `key`'s slot now.
    pub(crate) fn master_of(&self, key: &str) -> usize {
        let slot: u16 =
            self.any().command(&["CLUSTER", "KEYSLOT", key]).trim().trim_start_matches(':').parse().expect("slot");
        let map = self.any().command(&["CLUSTER", "NODES"]);
        for line in map.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>() == Ok(slot),
            });
            let port = fields[1].split('@').next().and_then(|a| a.rsplit_once(':')).map(|(_, p)| p);
            if owns && let Some(index) = self.nodes.iter().position(|n| Some(n.port.to_string().as_str()) == port) {
                return index;
            }
        }
        panic!("no master owns slot {slot} of {key}: {map}");
    }

    /// Runs a command on the master of `key`'s slot.
    pub(crate) fn on_key(&self, key: &str, args: &[&str]) -> String {
        self.nodes[self.master_of(key)].command(args)
    }

    /// The masters, by index into `nodes`.
    pub(crate) fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].command(&["ROLE"]).contains("master")).collect()
    }

    fn any(&self) -> &RedisServer {
        self.nodes.iter().find(|n| n.child.is_some()).expect("a live node")
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
