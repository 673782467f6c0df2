//! Redis (`REDIS_URL`): rooms, sessions and history across "hosts" (separate daemons with separate
//! homes and ports) sharing one real redis-server; outages of Redis under traffic.

use std::net::SocketAddr;
use std::time::Duration;

use chat_shared::health::{HealthBody, HealthStatus};

use crate::support::redis::RedisServer;
use crate::support::{Env, bin, free_port, http_get, node, wait_until};

/// One "host": a daemon with its own home running `instances` workers of the chat in cluster mode on
/// `port`, linked through the Redis at `redis`.
pub(crate) fn host(redis: &str, port: u16, instances: usize) -> Env {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &format!(
            r#"
[apps.chat]
script = "{worker}"
port = {port}
instances = {instances}
exec_mode = "cluster"
env = {{ REDIS_URL = "{redis}", RUST_LOG = "info", STATS_INTERVAL = "200ms" }}
"#,
            worker = bin("chat-worker").display()
        ),
    );
    env.ok(&["start"]);
    env.online_pids("chat", instances);
    env
}

/// The health of the worker behind `port` (any instance).
pub(crate) fn health(port: u16) -> Option<HealthBody> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (_, body) = http_get(addr, "/health").ok()?;
    serde_json::from_str(&body).ok()
}

pub(crate) fn linked(port: u16) -> bool {
    health(port)
        .is_some_and(|h| h.status == HealthStatus::Ok && h.cluster.is_some_and(|c| c.via == "redis" && c.connected))
}

#[test]
fn guests_on_two_hosts_share_rooms_dms_and_calls_through_redis() {
    let redis = RedisServer::start();
    let (port_a, port_b) = (free_port(), free_port());
    let _a = host(&redis.url(), port_a, 1);
    let _b = host(&redis.url(), port_b, 1);
    assert!(linked(port_a) && linked(port_b), "{:?} {:?}", health(port_a), health(port_b));

    let urls = format!("http://127.0.0.1:{port_a},http://127.0.0.1:{port_b}");
    let out = node("chat.mjs", &[&urls, "2", "lobby", "spread"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chat failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("chat report");
    assert_eq!(report["instances"].as_array().map(Vec::len), Some(2), "{report}");

    // The live figures add up across hosts too.
    let public: SocketAddr = ([127, 0, 0, 1], port_a).into();
    wait_until("both hosts' workers in the cluster statistics", Duration::from_secs(10), || {
        let (_, body) = http_get(public, "/api/socket/stats").ok()?;
        let stats: serde_json::Value = serde_json::from_str(&body).ok()?;
        (stats["cluster"]["workers"] == 2).then_some(())
    });
}

#[test]
fn a_guest_returns_on_another_host_with_its_session_and_history_from_redis() {
    let redis = RedisServer::start();
    let (port_a, port_b) = (free_port(), free_port());
    // Each daemon gives the app a secret of its own: a token from A is not signed for B.
    let a = host(&redis.url(), port_a, 1);
    let b = host(&redis.url(), port_b, 1);
    let (url_a, url_b) = (format!("http://127.0.0.1:{port_a}"), format!("http://127.0.0.1:{port_b}"));
    let out = node("hop.mjs", &[&url_a, &url_b, "lobby"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hop failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("hop report");
    assert!(report["error"].as_str().is_some_and(|e| e.contains("signature")), "{report}");

    // The session lives in Redis, with a TTL.
    let id = report["id"].as_str().expect("guest id");
    let key = format!("chat:chat:session:{id}");
    assert!(redis.command(&["HGET", &key, "name"]).contains("hopper"), "{}", redis.command(&["HGETALL", &key]));
    let ttl = redis.command(&["PTTL", &key]);
    assert!(ttl.trim_start_matches(':').trim().parse::<i64>().is_ok_and(|ms| ms > 0), "PTTL {ttl}");

    // Every worker of both hosts gone: the history is still there, in the room's stream.
    a.ok(&["kill"]);
    b.ok(&["kill"]);
    let c = host(&redis.url(), port_a, 1);
    let out = node("recover.mjs", &[&url_a, "lobby"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "recover failed: {stdout}");
    let recovered: serde_json::Value = serde_json::from_str(stdout.trim()).expect("recover report");
    assert_eq!(recovered["missed"].as_array().map(Vec::len), Some(4), "{recovered}");
    drop(c);
}

/// Two one-worker hosts linked through the Redis at `url`, and `outage.mjs` chatting between them
/// in `room` (see that script), started once both hosts are linked (`link`: what to wait for).
pub(crate) struct OutageChat {
    ports: (u16, u16),
    client: crate::support::Scripted,
    _hosts: (Env, Env),
}

impl OutageChat {
    pub(crate) fn start(url: &str, room: &str, link: &str) -> OutageChat {
        let (port_a, port_b) = (free_port(), free_port());
        let hosts = (host(url, port_a, 1), host(url, port_b, 1));
        wait_until(link, Duration::from_secs(10), || (linked(port_a) && linked(port_b)).then_some(()));
        let client = crate::support::Scripted::start(
            "outage.mjs",
            &[&format!("http://127.0.0.1:{port_a}"), &format!("http://127.0.0.1:{port_b}"), room],
        );
        assert_eq!(client.next_line(), "ready");
        OutageChat { ports: (port_a, port_b), client, _hosts: hosts }
    }

    /// Both hosts are cut from Redis: the script chats through the outage, then waits for `up`.
    pub(crate) fn down(&mut self) {
        self.client.say("down");
        assert_eq!(self.client.next_line(), "restart");
    }

    /// Both hosts are linked again: the script's report, which says the chat went on.
    pub(crate) fn up(mut self) -> serde_json::Value {
        self.client.say("up");
        let line = self.client.next_line();
        let report: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("outage report: {line}"));
        assert_eq!(report["ok"], true, "{report}");
        report
    }

    /// Waits until `/health` says both hosts lost Redis.
    pub(crate) fn wait_degraded(&self, what: &str, within: Duration) {
        let (a, b) = self.ports;
        wait_until(what, within, || (degraded(a) && degraded(b)).then_some(()));
    }

    /// Waits until `/health` says both hosts are linked.
    pub(crate) fn wait_linked(&self, what: &str, within: Duration) {
        let (a, b) = self.ports;
        wait_until(what, within, || (linked(a) && linked(b)).then_some(()));
    }
}

pub(crate) fn degraded(port: u16) -> bool {
    health(port).is_some_and(|h| {
        h.status == HealthStatus::Degraded
            && h.cluster.is_some_and(|c| c.via == "redis" && !c.connected && c.error.is_some())
    })
}

#[test]
fn redis_stopped_and_restarted_under_traffic() {
    let mut redis = RedisServer::start();
    let mut chat = OutageChat::start(&redis.url(), "lobby", "both hosts linked");
    redis.kill();
    chat.wait_degraded("both hosts degraded", Duration::from_secs(10));
    chat.down();
    redis.resume();
    chat.wait_linked("both hosts linked again", Duration::from_secs(10));
    let report = chat.up();
    assert_eq!(report["b_heard_during_outage"], 0, "{report}");
    eprintln!("outage: {report}");
}

#[test]
fn a_worker_starts_degraded_without_redis_and_joins_when_it_appears() {
    let mut redis = RedisServer::start();
    redis.kill();
    let port = free_port();
    // Nothing listens on Redis's port: the worker starts anyway, healthy but degraded.
    let host = host(&redis.url(), port, 1);
    assert!(degraded(port), "{:?}", health(port));
    // Operators see it in `chatctl list` too, with the reason, once the health probe has run.
    wait_until("list shows the worker degraded", Duration::from_secs(10), || {
        let out = host.ok(&["list"]);
        out.contains("degraded: redis link down").then_some(())
    });
    let out = node("chat.mjs", &[&format!("http://127.0.0.1:{port}"), "2", "lobby"]);
    assert!(out.status.success(), "a degraded worker still chats: {}", String::from_utf8_lossy(&out.stdout));
    redis.resume();
    wait_until("the worker linked once Redis appeared", Duration::from_secs(10), || linked(port).then_some(()));
}

/// Redis refusing writes (out of memory here; a key of another node's slot on a Redis Cluster) is
/// never silent: `/health` says `degraded` with the refusal and a count, the log says what is not
/// kept, and all is well again once Redis takes writes.
#[test]
fn a_redis_that_refuses_writes_is_not_silent() {
    let redis = RedisServer::start();
    let port = free_port();
    let env = host(&redis.url(), port, 1);
    wait_until("linked", Duration::from_secs(10), || linked(port).then_some(()));
    assert!(redis.command(&["CONFIG", "SET", "maxmemory", "1"]).starts_with("+OK"));
    // Joining stores the guest's session: refused.
    let joined = node("token.mjs", &[&format!("http://127.0.0.1:{port}"), "refused"]);
    assert!(joined.status.success(), "the chat goes on: {}", String::from_utf8_lossy(&joined.stdout));
    let said = wait_until("the refusal on /health", Duration::from_secs(10), || {
        let h = health(port)?;
        let cluster = h.cluster?;
        (h.status == HealthStatus::Degraded && cluster.connected && cluster.refused > 0).then_some(cluster)
    });
    assert!(said.refusal.as_deref().is_some_and(|r| r.contains("OOM")), "{said:?}");
    let log = env.home().join("logs/chat-out.log");
    wait_until("the refusal in the log", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("Redis refused a command").then_some(())
    });

    assert!(redis.command(&["CONFIG", "SET", "maxmemory", "0"]).starts_with("+OK"));
    let again = node("token.mjs", &[&format!("http://127.0.0.1:{port}"), "kept"]);
    assert!(again.status.success());
    wait_until("ok again once Redis takes writes", Duration::from_secs(20), || linked(port).then_some(()));
}

/// A Redis user that may not run `INFO` (an ACL) still links: asking whether Redis is a cluster is
/// not a reason to refuse it.
#[test]
fn a_redis_user_without_info_still_links() {
    let redis = RedisServer::start();
    let acl = redis.command(&["ACL", "SETUSER", "chat", "on", ">s3cret", "~*", "&*", "+@all", "-info"]);
    assert!(acl.starts_with("+OK"), "{acl}");
    let url = redis.url().replace("redis://", "redis://chat:s3cret@");
    let port = free_port();
    let _host = host(&url, port, 1);
    wait_until("linked through a user without INFO", Duration::from_secs(10), || linked(port).then_some(()));
}
