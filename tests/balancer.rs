//! Hosts behind a real balancer, with the configurations shipped in `deploy/`, in front of two
//! hosts sharing a Redis. Long-polling sessions must reach the host that made them: HAProxy keeps
//! the session the worker names in a header of the handshake's answer (stick table); open-source
//! nginx keeps each client address on one host (`ip_hash`).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::{
    Env, Worker, chat_app, free_port, heavy_load, http_get, node, reload_under_keep_alive_load, sigkill, tests_dir,
};

/// HAProxy or nginx in the foreground, killed (by pid) when dropped.
struct Balancer {
    child: Child,
    addr: SocketAddr,
    dir: Option<tempfile::TempDir>,
}

/// The system's `name` (Debian installs both in /usr/sbin); `None` (a skip) without it, except in
/// CI, where `.ci/run` installs it.
fn installed(name: &str) -> Option<std::path::PathBuf> {
    let found = ["/usr/sbin", "/usr/bin"].into_iter().map(|d| std::path::Path::new(d).join(name)).find(|p| p.exists());
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must have {name} (.ci/run installs it)");
        eprintln!("skipped: no {name} (apt-get install {name})");
    }
    found
}

impl Balancer {
    /// HAProxy with `deploy/haproxy.cfg` as it is (it takes the addresses from the environment).
    fn haproxy(hosts: [SocketAddr; 2]) -> Option<Balancer> {
        let haproxy = installed("haproxy")?;
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
        Some(Balancer { child, addr, dir: None }.answering())
    }

    /// nginx with `deploy/nginx.conf`, its addresses replaced by the test's, in a prefix of its own.
    fn nginx(hosts: [SocketAddr; 2]) -> Option<Balancer> {
        let nginx = installed("nginx")?;
        let dir = tempfile::tempdir().expect("nginx prefix");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let shipped = std::fs::read_to_string(tests_dir().join("../deploy/nginx.conf")).expect("deploy/nginx.conf");
        let prefix = dir.path().to_str().expect("utf-8 path").to_owned();
        // Logs and temporary files in the prefix: Debian's defaults are root's.
        let own_paths = [
            "access_log",
            "client_body_temp_path",
            "proxy_temp_path",
            "fastcgi_temp_path",
            "uwsgi_temp_path",
            "scgi_temp_path",
        ]
        .map(|d| format!("    {d} {prefix}/{d};\n"))
        .concat();
        let config = shipped
            .replacen("http {\n", &format!("http {{\n{own_paths}"), 1)
            .replace("listen 8080;", &format!("listen {addr};"))
            .replace("server 127.0.0.1:3001;", &format!("server {};", hosts[0]))
            .replace("server 127.0.0.1:3002;", &format!("server {};", hosts[1]));
        assert_ne!(config, shipped, "the test's addresses replace the shipped ones");
        std::fs::write(dir.path().join("nginx.conf"), config).expect("nginx.conf");
        let child = Command::new(nginx)
            .args(["-p", &prefix, "-c", &format!("{prefix}/nginx.conf"), "-e", &format!("{prefix}/error.log")])
            // One process: a SIGKILLed master leaves its worker processes running (seen: one orphan
            // per run, still listening).
            .args(["-g", &format!("daemon off; master_process off; pid {prefix}/nginx.pid;")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("nginx");
        Some(Balancer { child, addr, dir: Some(dir) }.answering())
    }

    fn answering(self) -> Balancer {
        let addr = self.addr;
        let begun = std::time::Instant::now();
        while http_get(addr, "/health").is_err() {
            let said = self.dir.as_ref().and_then(|d| std::fs::read_to_string(d.path().join("stderr")).ok());
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "the balancer does not answer: {}",
                said.unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        sigkill(self.child.id());
        let _ = self.child.wait();
    }
}

/// Two hosts (a worker each, sharing a redis-server) behind the balancer `start` makes; 8 guests
/// through it, half polling only, half upgrading to websockets, 3 rounds: every guest gets every
/// message once. Answers the hosts that served them (`None`: the balancer is not installed).
fn chat_through(start: fn([SocketAddr; 2]) -> Option<Balancer>) -> Option<serde_json::Value> {
    let redis = RedisServer::start();
    let url = redis.url();
    let host = |name: &str| {
        Worker::start(&[("REDIS_URL", url.as_str()), ("INSTANCE_ID", name), ("CHAT_SESSION_SECRET", "one secret")])
    };
    let (a, b) = (host("a"), host("b"));
    let balancer = start([a.addr, b.addr])?;
    let out = node("polling.mjs", &[&format!("http://{}", balancer.addr), "8", "lobby", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chat through the balancer failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("polling report");
    Some(report["instances"].clone())
}

#[test]
fn polling_and_websocket_clients_chat_across_two_hosts_behind_haproxy() {
    // Each polling request is a new connection, which HAProxy balances: without the stick table
    // half land on the other host ("xhr poll error").
    let Some(hosts) = chat_through(Balancer::haproxy) else { return };
    assert_eq!(hosts, serde_json::json!(["a", "b"]), "guests on both hosts");
}

#[test]
fn polling_and_websocket_clients_chat_behind_nginx() {
    // Every guest comes from 127.0.0.1: ip_hash keeps them all on one host, polling included.
    let Some(hosts) = chat_through(Balancer::nginx) else { return };
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "one address, one host: {hosts}");
}

/// A host reloaded behind HAProxy while 50 kept-alive clients keep asking through it (round robin:
/// half the requests reach the reloading host): no request fails and every answer is 2xx. What
/// makes it so is the host's (its public port answers through the drain, and a draining
/// instance's `Connection: close` reaches HAProxy with an answer, never as a connection closed
/// under a request); HAProxy retrying or taking the host out plays no part: its health checks
/// need three failures 2 s apart, longer than the reload.
#[test]
fn a_host_reloaded_behind_haproxy_fails_no_request() {
    let _heavy = heavy_load();
    let redis = RedisServer::start();
    let env = Env::new();
    let port = free_port();
    let app = |release: &str| {
        let extra = format!("env = {{ REDIS_URL = \"{}\", RELEASE = \"{release}\" }}", redis.url());
        chat_app(port, "cluster", 2, &extra)
    };
    env.write("ecosystem.toml", &app("1"));
    env.ok(&["start"]);
    env.online_pids("chat", 2);
    let other = Worker::start(&[("REDIS_URL", redis.url().as_str())]);
    let Some(balancer) = Balancer::haproxy([([127, 0, 0, 1], port).into(), other.addr]) else { return };
    env.write("ecosystem.toml", &app("2"));
    reload_under_keep_alive_load(
        &env,
        "chat",
        vec![balancer.addr],
        &["/health", "/api/socket/stats"],
        50,
        "a host reloaded behind HAProxy",
    );
}
