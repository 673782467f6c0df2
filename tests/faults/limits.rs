//! Faults of limits: a crowd of idle connections against the descriptor limit a service gets.
//!
//! Before: the worker kept the soft `RLIMIT_NOFILE` it was given (1024 under systemd, or a shell's
//! default) and accepted until `EMFILE`; its admin listener then could not accept the supervisor's
//! probe either, the probes timed out and the supervisor restarted every worker, dropping every
//! user. 3,000 idle connections did it to a 2-instance cluster.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Env, bin, chat_app, free_port, http_get, run_bounded, wait_until};
use chat_shared::status::Phase;

/// Idle connections opened at once, as in the issue.
const IDLE: usize = 3_000;

/// Probes every 300 ms, two failures in a row restart: a worker that cannot accept its probe is
/// restarted within a second.
const FAST_PROBES: &str =
    "health = { interval = \"300ms\", timeout = \"300ms\", unhealthy_threshold = 2, grace = \"0s\" }";

/// Starts the daemon (and its apps) under `ulimit`, as a service started with that limit would be.
fn start_with_ulimit(env: &Env, ulimit: &str) {
    let out = run_bounded(
        Command::new("sh")
            .args([
                "-c",
                &format!("ulimit {ulimit} && exec \"$0\" \"$@\""),
                bin("chatctl").to_str().expect("utf-8 path"),
                "start",
            ])
            .env("CHATCTL_HOME", env.home())
            .current_dir(env.path("")),
        Duration::from_secs(60),
    );
    if let Some(daemon) = env.daemon_pid() {
        env.remember(daemon);
    }
    assert!(out.status.success(), "start failed: {}\n{}", crate::support::stderr(&out), env.daemon_log());
}

/// Opens `n` TCP connections to `addr` without waiting for them to complete (past an accept queue
/// that is full, a connect waits for the kernel's retries), and sends nothing on them.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};
    let SocketAddr::V4(v4) = addr else { panic!("an IPv4 address") };
    (0..n)
        .map(|_| {
            let fd =
                socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
                    .expect("socket");
            match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)) {
                Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => fd,
                Err(e) => panic!("connect: {e}"),
            }
        })
        .collect()
}

/// Holds `idle` connections on `port` for `hold` and asserts, every probe interval, that the
/// instances stay online under the same pids with passing probes; then that the public port
/// answers once they are gone.
fn idle_crowd_restarts_nothing(env: &Env, port: u16, hold: Duration) {
    let before = env.online_pids("chat", 2);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let idle = idle_connections(addr, IDLE);
    let begun = Instant::now();
    while begun.elapsed() < hold {
        std::thread::sleep(Duration::from_millis(200));
        let apps = env.list();
        for i in &apps[0].instances {
            assert!(
                i.status == Phase::Online && i.restarts == 0 && i.pid.is_some_and(|p| before.contains(&p)),
                "{IDLE} idle connections restarted an instance after {:?}: {i:?}\n{}",
                begun.elapsed(),
                env.daemon_log()
            );
        }
    }
    drop(idle);
    wait_until("the public port answers", Duration::from_secs(20), || {
        http_get(addr, "/health").ok().filter(|(status, _)| *status == 200)
    });
}

/// The case: a service's soft limit of 1024 (the hard one is higher). The worker raises its
/// own soft limit to the hard one, so all 3,000 are accepted and the probes still get through.
#[test]
fn three_thousand_idle_connections_under_a_soft_limit_of_1024_restart_nothing() {
    let env = Env::new();
    let port = free_port();
    env.write("ecosystem.toml", &chat_app(port, "cluster", 2, FAST_PROBES));
    start_with_ulimit(&env, "-Sn 1024");
    idle_crowd_restarts_nothing(&env, port, Duration::from_secs(3));
}

/// Where the hard limit is low too, the cap keeps descriptors in reserve: each worker stops
/// accepting short of its limit, the rest of the crowd waits in the kernel's queue, and the admin
/// listener still accepts every probe.
#[test]
fn idle_connections_past_a_hard_limit_of_300_restart_nothing() {
    let env = Env::new();
    let port = free_port();
    env.write("ecosystem.toml", &chat_app(port, "cluster", 2, FAST_PROBES));
    start_with_ulimit(&env, "-n 300");
    idle_crowd_restarts_nothing(&env, port, Duration::from_secs(3));
}
