//! Hosts behind a real balancer: HAProxy (Debian's) with the configuration shipped in
//! `deploy/haproxy.cfg`, in front of two hosts sharing a Redis. Long-polling sessions must reach
//! the host that made them: the worker names the session in a header of the handshake's answer,
//! which HAProxy's stick table keeps.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::{Worker, free_port, http_get, node, sigkill, tests_dir, wait_until};

/// HAProxy in the foreground, killed (by pid) when dropped.
struct Balancer {
    child: Child,
    addr: SocketAddr,
}

impl Balancer {
    /// `None` (a skip) without HAProxy, except in CI, where `.ci/run` installs it.
    fn start(hosts: [SocketAddr; 2]) -> Option<Balancer> {
        let found = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].into_iter().find(|p| std::path::Path::new(p).exists());
        let Some(haproxy) = found else {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must have haproxy (.ci/run installs it)");
            eprintln!("skipped: no haproxy (apt-get install haproxy)");
            return None;
        };
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(tests_dir().join("../deploy/haproxy.cfg"))
            .env("CHAT_BIND", addr.to_string())
            .env("CHAT_HOST_A", hosts[0].to_string())
            .env("CHAT_HOST_B", hosts[1].to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy");
        let balancer = Balancer { child, addr };
        wait_until("HAProxy answers", Duration::from_secs(10), || http_get(addr, "/health").ok().map(|_| ()));
        Some(balancer)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        sigkill(self.child.id());
        let _ = self.child.wait();
    }
}

#[test]
fn polling_and_websocket_clients_chat_across_two_hosts_behind_haproxy() {
    let redis = RedisServer::start();
    let url = redis.url();
    let host = |name: &str| {
        Worker::start(&[("REDIS_URL", url.as_str()), ("INSTANCE_ID", name), ("CHAT_SESSION_SECRET", "one secret")])
    };
    let (a, b) = (host("a"), host("b"));
    let Some(balancer) = Balancer::start([a.addr, b.addr]) else { return };
    // Half the guests poll only, half upgrade to websockets; each polling request is a new
    // connection, which HAProxy balances: without the stick table they land on the other host
    // half the time ("Session ID unknown").
    let out = node("polling.mjs", &[&format!("http://{}", balancer.addr), "8", "lobby", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "polling through HAProxy failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("polling report");
    assert_eq!(report["instances"], serde_json::json!(["a", "b"]), "guests on both hosts: {report}");
}
