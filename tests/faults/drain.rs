//! Faults of a reload under load: the keep-alive close race and a draining instance's answers.
//!
//! Before: a draining worker closed its idle kept-alive connections a fixed moment after it
//! stopped accepting, racing clients that were about to send on them (read errors in `wrk`), and
//! answered 503 on the public `/health` of every kept-alive connection until then, in cluster mode
//! too, where that port stands for the whole host.

use std::net::SocketAddr;

use crate::support::{Env, chat_app, free_port, free_ports, heavy_load, reload_under_keep_alive_load};

/// Kept-alive connections, as in `wrk -c50`.
const CONNECTIONS: usize = 50;

/// Reloads `instances` chat workers under the paced keep-alive load on `paths`; asserts that no
/// request failed and every answer was 2xx.
fn reload_under_keep_alive(mode: &str, instances: usize, paths: &'static [&'static str]) {
    let _heavy = heavy_load();
    let env = Env::new();
    let (port, addrs): (u16, Vec<SocketAddr>) = match mode {
        "cluster" => {
            let port = free_port();
            (port, vec![([127, 0, 0, 1], port).into()])
        }
        _ => {
            let base = free_ports(instances as u16);
            (base, (0..instances as u16).map(|i| SocketAddr::from(([127, 0, 0, 1], base + i))).collect())
        }
    };
    env.write("ecosystem.toml", &chat_app(port, mode, instances, "env = { RELEASE = \"1\" }"));
    env.ok(&["start"]);
    let before = env.online_pids("chat", instances);
    env.write("ecosystem.toml", &chat_app(port, mode, instances, "env = { RELEASE = \"2\" }"));
    let what = format!("{mode} reload of {instances} under {CONNECTIONS} kept-alive connections on {paths:?}");
    reload_under_keep_alive_load(&env, "chat", addrs, paths, CONNECTIONS, &what);
    let after = env.online_pids("chat", instances);
    assert!(before.iter().all(|p| !after.contains(p)), "every instance replaced: {before:?} -> {after:?}");
}

#[test]
fn a_cluster_of_2_reloads_under_keep_alive_load_with_no_error_and_no_503_on_the_public_health() {
    reload_under_keep_alive("cluster", 2, &["/health", "/api/socket/stats"]);
}

#[test]
fn a_cluster_of_4_reloads_under_keep_alive_load_with_no_error_and_no_503_on_the_public_health() {
    reload_under_keep_alive("cluster", 4, &["/health", "/api/socket/stats"]);
}

/// Fork mode keeps 503 on a draining instance's `/health`: there each port is its own backend.
#[test]
fn fork_mode_with_2_reloads_under_keep_alive_load_with_no_error() {
    reload_under_keep_alive("fork", 2, &["/api/socket/stats"]);
}

#[test]
fn fork_mode_with_4_reloads_under_keep_alive_load_with_no_error() {
    reload_under_keep_alive("fork", 4, &["/api/socket/stats"]);
}
