//! Cluster mode: one shared socket, per-instance health, chat through it, crash recovery.

use std::net::SocketAddr;
use std::time::Duration;

use chat_shared::status::Phase;

use crate::support::{Env, alive, bin, http_get, node, sigkill, wait_until};
use chat_bench::load::Load;

/// The repo's ecosystem.toml shape, pointed at this build and a free port.
fn production_config(port: u16) -> String {
    format!(
        r#"
[apps.chat]
script = "{worker}"
port = {port}
instances = 1
exec_mode = "fork"
kill_timeout = "5s"
health = {{ path = "/health", interval = "30s", timeout = "5s" }}
env = {{ RUST_LOG = "info" }}

[apps.chat.profiles.production]
exec_mode = "cluster"
instances = "max"
"#,
        worker = bin("chat-worker").display()
    )
}

/// A production cluster of `instances` with `env_extra` added to the app's environment (`KEY = "v"`
/// pairs, comma-separated), started and online: the daemon's home, its port, the workers' pids.
fn cluster(instances: usize, env_extra: &str) -> (Env, u16, Vec<u32>) {
    let env = Env::new();
    let port = crate::support::free_port();
    let mut config = production_config(port).replace(r#"instances = "max""#, &format!("instances = {instances}"));
    if !env_extra.is_empty() {
        config = config.replace(r#"RUST_LOG = "info""#, &format!(r#"RUST_LOG = "info", {env_extra}"#));
    }
    env.write("ecosystem.toml", &config);
    env.ok(&["start", "production"]);
    let pids = env.online_pids("chat", instances);
    (env, port, pids)
}

/// A node client's one-line JSON report; panics with what it printed when it failed.
#[track_caller]
fn report_of(what: &str, out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{what} report: {e}: {stdout}"))
}

#[test]
fn production_cluster_chats_with_socket_io_client_and_kill_leaves_nothing() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &production_config(port));
    let out = env.ok(&["start", "production"]);
    assert!(out.contains("online"), "{out}");

    let cpus = chat_shared::ecosystem::cpu_count();
    let pids = env.online_pids("chat", cpus);
    let apps = env.list();
    let app = &apps[0];
    assert_eq!((app.port, app.instances.len()), (Some(port), cpus));
    // Every instance answers its own health probe on its private listener, with its own pid.
    for instance in &app.instances {
        let admin: SocketAddr = instance.admin_addr.as_deref().expect("admin address").parse().expect("addr");
        let (status, body) = http_get(admin, "/health").expect("admin health");
        let health: chat_shared::health::HealthBody = serde_json::from_str(&body).expect("health json");
        assert_eq!((status, Some(health.pid)), (200, instance.pid), "{body}");
    }

    let out = node("chat.mjs", &[&format!("http://127.0.0.1:{port}"), "2", "lobby"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chat failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("chat report");
    assert_eq!(report["clients"].as_array().map(Vec::len), Some(2), "{report}");

    // The workers' own figures reach the supervisor (list, monit, /metrics) with the samples.
    wait_until("the chat figures sampled", Duration::from_secs(15), || {
        let apps = env.list();
        let messages: u64 = apps[0].instances.iter().filter_map(|i| i.chat.as_ref()).map(|c| c.messages).sum();
        (messages >= 2).then_some(())
    });

    let daemon = env.daemon_pid().expect("daemon pid");
    let out = env.ok(&["kill"]);
    assert!(out.contains(&format!("stopped {cpus} instance(s)")), "{out}");
    wait_until("every worker and the daemon gone", Duration::from_secs(10), || {
        (!pids.iter().any(|p| alive(*p)) && !alive(daemon)).then_some(())
    });
}

/// Rooms span the cluster: guests on two different instances see each other in the member list, get
/// each other's messages and direct messages, through the daemon's bus and not Redis.
#[test]
fn guests_on_different_instances_share_rooms_through_the_bus() {
    let (env, port, _) = cluster(2, r#"STATS_INTERVAL = "200ms""#);
    // Whichever instance answers, its statistics count both workers, through the bus.
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_until("both workers in the cluster statistics", Duration::from_secs(10), || {
        let (_, body) = http_get(public, "/api/socket/stats").ok()?;
        let stats: serde_json::Value = serde_json::from_str(&body).ok()?;
        (stats["cluster"]["workers"] == 2).then_some(())
    });

    let report = report_of("chat", &node("chat.mjs", &[&format!("http://127.0.0.1:{port}"), "2", "lobby", "spread"]));
    assert_eq!(report["instances"].as_array().map(Vec::len), Some(2), "{report}");
    env.ok(&["kill"]);
}

/// Long-polling works across the instances of one shared port with no sticky balancer: whichever
/// instance accepts a request's connection hands it to the one that has its session (three, so
/// that one sibling asked may decline). Half the clients poll only, half upgrade to websocket (the
/// upgrade is a new connection too).
#[test]
fn polling_clients_work_across_instances_without_sticky_sessions() {
    let (env, port, _) = cluster(3, "");
    let report = report_of("polling", &node("polling.mjs", &[&format!("http://127.0.0.1:{port}"), "8", "lobby", "4"]));
    assert_eq!(report["upgraded"], 4, "every client allowed to upgraded: {report}");
    assert_eq!(report["messages"], 32, "{report}");
    // Each instance counts what it handed out and took in (`/health`, then `list` and `/metrics`).
    let (mut handed, mut taken) = (0, 0);
    for instance in &env.list()[0].instances {
        let admin: SocketAddr = instance.admin_addr.as_deref().expect("admin address").parse().expect("addr");
        let (_, body) = http_get(admin, "/health").expect("admin health");
        let health: chat_shared::health::HealthBody = serde_json::from_str(&body).expect("health json");
        let handoff = health.handoff.expect("handoff figures in cluster mode");
        assert_eq!(handoff.lost, 0, "{body}");
        (handed, taken) = (handed + handoff.handed, taken + handoff.taken);
    }
    assert!(handed > 0 && handed == taken, "handed {handed}, taken {taken}");
    env.ok(&["kill"]);
}

/// One client address gets its rate once in the cluster, not once per instance: two sockets of one
/// address on two instances, flooding together, get about what one would (the workers tell each
/// other what a busy address spent).
#[test]
fn an_address_gets_its_rate_once_across_the_instances() {
    let (env, port, _) = cluster(2, r#"ADDRESS_RATE = "5/s", MESSAGE_RATE = "off", STATS_INTERVAL = "100ms""#);
    let seconds = 4.0;
    let out = node("address-flood.mjs", &[&format!("http://127.0.0.1:{port}"), &seconds.to_string()]);
    let report = report_of("flood", &out);
    eprintln!("one address over two instances: {report}");
    let accepted = report["accepted"].as_f64().expect("accepted");
    // One address: a burst of 10 and 5/s, plus the slack of half a burst per worker. Limited per
    // worker instead, the two sockets would get twice the burst and twice the rate (60).
    let (burst, rate, slack) = (10.0, 5.0, 2.0 * 5.0);
    assert!(accepted <= burst + rate * seconds + slack, "too many accepted for one address: {report}");
    assert!(accepted >= rate * seconds, "the address did not get its rate: {report}");
    assert!(report["refused"].as_u64() > Some(0), "{report}");
    env.ok(&["kill"]);
}

/// Presence in a crowd on two instances: 40 guests joining and leaving at once are each told once,
/// the counts end right, and a guest with another tab still in the room is not told as gone.
#[test]
fn a_crowd_joining_and_leaving_at_once_is_told_once_each() {
    let (env, port, _) = cluster(2, "");
    report_of("presence", &node("presence.mjs", &[&format!("http://127.0.0.1:{port}"), "40", "crowd"]));
    env.ok(&["kill"]);
}

/// A call that rings through a reload ends all the same: the worker it started on is gone, and
/// the successor that took it in from the snapshot ends it after its ring timeout.
#[test]
fn a_call_ringing_through_a_reload_still_ends_unanswered() {
    let (env, port, _) = cluster(2, r#"CALL_RING_TIMEOUT = "3s""#);
    let out = crate::support::run_bounded(
        std::process::Command::new("node")
            .arg(crate::support::tests_dir().join("clients/call-reload.mjs"))
            .arg(format!("http://127.0.0.1:{port}"))
            .arg(crate::support::bin("chatctl"))
            .env("CHATCTL_HOME", env.home())
            .current_dir(env.dir.path()),
        std::time::Duration::from_secs(60),
    );
    report_of("call through a reload", &out);
    let logs = env.ok(&["logs", "chat", "-n", "2000"]);
    assert!(logs.contains("ending a call whose worker is gone"), "ended by a successor:\n{logs}");
    env.ok(&["kill"]);
}

/// Past 100 members the changes of a round come together, each still told exactly once: a crowd
/// of 150 joining and leaving at once is told in fewer events than changes.
#[test]
fn a_crowd_in_a_large_room_is_told_in_rounds() {
    // 150 guests of one address join at once: more than its rate limit allows in a second (100,
    // then 50/s), which passed only while the joins happened to take longer than that.
    let (env, port, _) = cluster(2, r#"ADDRESS_RATE = "off""#);
    let report = report_of("presence", &node("presence.mjs", &[&format!("http://127.0.0.1:{port}"), "150", "big"]));
    let (told, changes) = (report["told"].as_u64().expect("told"), report["changes"].as_u64().expect("changes"));
    assert!(changes >= 300 && told < changes, "{told} events told {changes} changes");
    env.ok(&["kill"]);
}

/// A reload replaces every worker, yet the history survives it: each successor asks the workers
/// still running for the calls and messages they keep, before it serves.
#[test]
fn messages_sent_before_a_reload_are_recovered_after_it() {
    let (env, port, before) = cluster(2, "");
    let url = format!("http://127.0.0.1:{port}");
    let recovered = || {
        let out = node("recover.mjs", &[&url, "lobby"]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "recover failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("recover report");
        report["missed"].clone()
    };

    let out = node("chat.mjs", &[&url, "2", "lobby", "spread"]);
    assert!(out.status.success(), "chat failed: {}", String::from_utf8_lossy(&out.stdout));
    let sent = recovered();
    assert_eq!(sent.as_array().map(Vec::len), Some(2), "{sent}");

    // No profile: the one it was started with (production), as an operator types it during a deploy.
    env.ok(&["reload", "chat"]);
    let after = env.online_pids("chat", 2);
    assert!(after.iter().all(|pid| !before.contains(pid)), "every worker replaced: {before:?} -> {after:?}");
    // Whichever new worker answers, it has the messages from before its time, in the same order.
    for _ in 0..3 {
        assert_eq!(recovered(), sent);
    }
    // And each successor took them in before it served anybody.
    let log = env.home().join("logs/chat-out.log");
    let steps = wait_until("both successors' start in the log", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let steps: Vec<&str> = text
            .lines()
            .filter_map(|l| {
                if l.contains("took in what the other workers know") {
                    Some("took in")
                } else if l.contains(r#""serving""#) {
                    Some("serving")
                } else {
                    None
                }
            })
            .collect();
        (steps.len() >= 6).then(|| steps[steps.len() - 4..].to_vec())
    });
    assert_eq!(steps, ["took in", "serving", "took in", "serving"]);
    env.ok(&["kill"]);
}

#[test]
fn kill_9_of_one_instance_under_load_refuses_nothing_and_it_comes_back() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &crate::support::chat_app(port, "cluster", 2, "restart_delay = \"50ms\""));
    env.ok(&["start"]);
    let pids = env.online_pids("chat", 2);

    let load = Load::start(([127, 0, 0, 1], port).into(), 2);
    load.wait_for(200);

    sigkill(pids[0]);
    let new_pid = wait_until("instance 0 back online with a new pid", Duration::from_secs(20), || {
        let apps = env.list();
        let i = &apps[0].instances[0];
        (i.status == Phase::Online && i.pid.is_some_and(|p| p != pids[0])).then_some(i.pid)
    });
    load.wait_for(200);
    let (ok, refused, failed) = load.stop();
    eprintln!("kill -9 under load: {ok} ok, {refused} refused, {failed} failed in flight; new pid {new_pid:?}");
    assert_eq!(refused, 0, "the shared port must never refuse a connection");
    let apps = env.list();
    assert_eq!(apps[0].instances[0].restarts, 1);
    assert!(apps[0].instances[0].note.as_deref().is_some_and(|n| n.contains("signal 9")), "{:?}", apps[0].instances[0]);
}

#[test]
fn workers_do_not_outlive_a_daemon_killed_with_sigkill() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &crate::support::chat_app(port, "cluster", 2, ""));
    env.ok(&["start"]);
    let pids = env.online_pids("chat", 2);
    let daemon = env.daemon_pid().expect("daemon pid");
    sigkill(daemon);
    wait_until("workers gone after the daemon was SIGKILLed", Duration::from_secs(10), || {
        (!pids.iter().any(|p| alive(*p))).then_some(())
    });
    // A new daemon takes over the home: the stale socket and lock are handled.
    env.ok(&["start"]);
    env.online_pids("chat", 2);
}

/// A guest's calls end when its last tab closes, wherever its tabs are connected.
#[test]
fn a_call_survives_closing_one_of_two_tabs_on_different_instances() {
    let (_env, port, _) = cluster(2, "");
    report_of("tabs", &node("tabs.mjs", &[&format!("http://127.0.0.1:{port}")]));
}

#[test]
fn a_returning_guests_first_event_is_answered() {
    let (_env, port, _) = cluster(2, "");
    let report = report_of("first-event", &node("first-event.mjs", &[&format!("http://127.0.0.1:{port}"), "2", "6"]));
    assert_eq!(report["answered"], 6, "{report}");
}
