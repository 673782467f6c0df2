//! Faults of the state workers keep and share: what outgrows its bounds, and a link to the other
//! workers that must come back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{Env, chat_app, free_port, http_get, node};

/// Before: a publication larger than a bus frame (16 MiB) made the daemon's broker drop the
/// worker's link, and the worker never reconnected: `/health` said degraded for good and rooms were
/// no longer shared. Now such a publication is refused by the worker (the link stays up), and a
/// link that does close is reconnected (the bus module's unit test).
#[test]
fn a_publication_too_large_for_the_bus_does_not_cut_the_worker_off() {
    let env = Env::new();
    let port = free_port();
    env.write("ecosystem.toml", &chat_app(port, "cluster", 2, "env = { MAX_PAYLOAD = \"20M\" }"));
    env.ok(&["start"]);
    env.online_pids("chat", 2);
    let out = node("big-signal.mjs", &[&format!("http://127.0.0.1:{port}"), &(17 << 20).to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let admins: Vec<SocketAddr> =
        env.list()[0].instances.iter().filter_map(|i| i.admin_addr.as_deref()?.parse().ok()).collect();
    assert_eq!(admins.len(), 2);
    // The broker reads the frame a moment after the offer is answered: watch the links for a while.
    let begun = Instant::now();
    while begun.elapsed() < Duration::from_secs(2) {
        for admin in &admins {
            let (_, body) = http_get(*admin, "/health").expect("admin /health");
            let health: chat_shared::health::HealthBody = serde_json::from_str(&body).expect("health");
            let cluster = health.cluster.expect("cluster figures");
            assert!(cluster.connected, "the link of the worker at {admin} went down: {cluster:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    env.ok(&["kill"]);
}

/// Before: the recovery history kept every room anyone ever wrote in (for the history's age), and a
/// call lived as long as its participants stayed connected, answered or not.
#[test]
fn history_keeps_the_most_recent_rooms_and_an_unanswered_call_ends() {
    let worker = crate::support::Worker::start(&[
        ("HISTORY_ROOMS", "10"),
        ("CALL_RING_TIMEOUT", "1s"),
        ("MESSAGE_RATE", "off"),
        ("JOIN_RATE", "off"),
        ("ADDRESS_RATE", "off"),
    ]);
    let out = node("bounded-state.mjs", &[&format!("http://{}", worker.addr)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("report");
    eprintln!("bounded state: {report}");
    assert_eq!(report["recovered"]["first"], 0, "the least recent room was let go: {report}");
    assert_eq!(report["recovered"]["last"], 1, "the most recent room is kept: {report}");
    let unanswered = serde_json::json!([{ "call": "unanswered", "reason": "no answer" }]);
    assert_eq!(report["ann_told"], unanswered, "only the unanswered call ended: {report}");
    assert_eq!(report["bob_told"], unanswered, "{report}");
}

/// Before: while Redis was away, the workers of one host stopped sharing rooms too (a guest heard
/// 10 of 40 messages from a guest on another instance of the same host). Now the daemon's bus
/// stands in for Redis on the host.
#[test]
fn redis_away_the_workers_of_one_host_keep_sharing_rooms() {
    let mut redis = crate::support::redis::RedisServer::start();
    let env = Env::new();
    let port = free_port();
    let extra = format!("env = {{ REDIS_URL = \"{}\", STATS_INTERVAL = \"200ms\" }}", redis.url());
    env.write("ecosystem.toml", &chat_app(port, "cluster", 2, &extra));
    env.ok(&["start"]);
    env.online_pids("chat", 2);
    let mut client =
        crate::support::Scripted::start("host-outage.mjs", &[&format!("http://127.0.0.1:{port}"), "lobby"]);
    assert_eq!(client.next_line(), "ready");
    redis.kill();
    let admins: Vec<SocketAddr> =
        env.list()[0].instances.iter().filter_map(|i| i.admin_addr.as_deref()?.parse().ok()).collect();
    crate::support::wait_until("both instances without Redis", Duration::from_secs(10), || {
        admins
            .iter()
            .all(|admin| {
                http_get(*admin, "/health")
                    .ok()
                    .is_some_and(|(_, body)| body.contains("\"via\":\"redis\",\"connected\":false"))
            })
            .then_some(())
    });
    client.say("down");
    let report = client.next_line();
    drop(client);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap_or_else(|_| panic!("outage report: {report}"));
    eprintln!("Redis away, one host: {report}");
    assert_eq!(report["sent"], 20, "{report}");
    assert_eq!(report["heard"], 20, "every message reached the other instance: {report}");
    assert_eq!(report["in_order"], true, "{report}");
    env.ok(&["kill"]);
}
