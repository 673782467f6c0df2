//! A real Redis Cluster (3 masters, a replica each) behind `REDIS_URL`, named as a new user would:
//! the URL of one node. Two "hosts" chat through it, each room's traffic on the shard of its own
//! channels; a master dies mid-chat and its replica takes over.

use std::time::Duration;

use crate::redis::{OutageChat, health, host, linked};
use crate::support::redis::RedisCluster;
use crate::support::{free_port, node, wait_until};

/// How many `cmd` calls a node has served (`INFO commandstats`).
fn calls(cluster: &RedisCluster, node: usize, cmd: &str) -> u64 {
    let stats = cluster.nodes[node].command(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{cmd}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn two_hosts_chat_through_a_redis_cluster_with_each_room_on_its_shard() {
    let cluster = RedisCluster::start(3);
    // Three rooms whose channels (the room's name is their hash tag) have three different masters.
    let mut rooms: Vec<(String, usize)> = Vec::new();
    for i in 0..100 {
        let room = format!("room-{i}");
        let master = cluster.master_of(&room);
        if rooms.iter().all(|(_, m)| *m != master) {
            rooms.push((room, master));
        }
    }
    assert_eq!(rooms.len(), 3, "three rooms on three masters: {rooms:?}");

    let (port_a, port_b) = (free_port(), free_port());
    let _a = host(&cluster.url(), port_a, 1);
    let _b = host(&cluster.url(), port_b, 1);
    wait_until("both hosts linked to the cluster", Duration::from_secs(10), || {
        (linked(port_a) && linked(port_b)).then_some(())
    });

    let urls = format!("http://127.0.0.1:{port_a},http://127.0.0.1:{port_b}");
    for (room, master) in &rooms {
        let before = calls(&cluster, *master, "spublish");
        // A guest on each host: messages, members, a late joiner's recovery, a DM, a call.
        let out = node("chat.mjs", &[&urls, "2", room, "spread"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "chat in {room} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        // The room's traffic (its two messages, its presence) went to its own master, sharded.
        let carried = calls(&cluster, *master, "spublish") - before;
        assert!(carried >= 2, "{room}'s master {master} carried {carried} SPUBLISH");
    }

    // What the chat keeps was kept, whichever node each key's slot is on: each room's history and
    // every guest's session (before, keys of the other nodes' slots were refused).
    for (room, _) in &rooms {
        let key = format!("chat:chat:history:{room}");
        assert_eq!(cluster.on_key(&key, &["XLEN", &key]).trim(), ":2", "{key}");
    }
    let masters = cluster.masters();
    let sessions: Vec<usize> = masters
        .iter()
        .map(|&m| {
            let keys = cluster.nodes[m].command(&["KEYS", "chat:chat:session:*"]);
            keys.lines().filter(|l| l.starts_with("chat:chat:session:")).count()
        })
        .collect();
    assert!(sessions.iter().sum::<usize>() >= 9, "2 guests and a late joiner a room: {sessions:?}");
    assert!(sessions.iter().filter(|&&n| n > 0).count() >= 2, "sessions spread over the masters: {sessions:?}");
    for port in [port_a, port_b] {
        let cluster_health = health(port).and_then(|h| h.cluster).expect("health");
        assert_eq!(cluster_health.refused, 0, "nothing refused: {cluster_health:?}");
    }
    let published: u64 = masters.iter().map(|&m| calls(&cluster, m, "publish")).sum();
    let sharded: u64 = masters.iter().map(|&m| calls(&cluster, m, "spublish")).sum();
    eprintln!("cluster: {sharded} SPUBLISH over {} masters, {published} PUBLISH (every node's)", masters.len());
}

#[test]
fn a_master_failing_over_mid_chat_loses_nothing_recovery_returns() {
    let mut cluster = RedisCluster::start(3);
    let room = "lobby";
    // REDIS_URL names the very master that will die: the hosts find the cluster through the
    // nodes it listed.
    let master = cluster.master_of(room);
    let mut chat = OutageChat::start(&cluster.nodes[master].url(), room, "both hosts linked to the cluster");
    cluster.nodes[master].kill();
    chat.wait_degraded("both hosts degraded while the master is down", Duration::from_secs(10));
    chat.down();
    // Nothing to restart: the replica takes over by itself.
    chat.wait_linked("both hosts linked again once the replica took over", Duration::from_secs(20));
    assert_ne!(cluster.master_of(room), master, "the room's slot has a new master");
    let report = chat.up();
    assert_eq!(report["recovered_on_b"], report["down"], "{report}");
    eprintln!("failover: {report}");
}

/// `REDIS_URL` names a single Redis first and a cluster's node next: the hosts link to the single
/// server (which needs no per-room subscriptions, so the workers note none), and when it dies they
/// link to the cluster, where each room has channels of its own. The rooms their guests are already
/// in are then followed at once, on their shard: cross-host chat resumes without anyone rejoining.
#[test]
fn rooms_joined_on_a_single_redis_are_followed_when_the_link_comes_back_to_a_cluster() {
    let mut single = crate::support::redis::RedisServer::start();
    let cluster = RedisCluster::start(3);
    let room = "lobby";
    let master = cluster.master_of(room);
    let url = format!("{},{}", single.url(), cluster.url());
    let mut chat = OutageChat::start(&url, room, "both hosts linked to the single Redis");
    assert_eq!(calls(&cluster, master, "ssubscribe"), 0, "nothing on the cluster while the single Redis serves");
    single.kill();
    // Both hosts subscribe the room's channels on its master (the adapter's and the history's).
    wait_until("both hosts following the room on its shard", Duration::from_secs(15), || {
        (calls(&cluster, master, "ssubscribe") >= 2).then_some(())
    });
    chat.wait_linked("both hosts linked to the cluster", Duration::from_secs(10));
    chat.down();
    let before = calls(&cluster, master, "spublish");
    let report = chat.up();
    let carried = calls(&cluster, master, "spublish") - before;
    assert!(carried >= 2, "the room's master carried {carried} SPUBLISH after the switch");
    eprintln!("single to cluster: {report}");
}
