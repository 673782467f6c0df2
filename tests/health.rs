//! Readiness and liveness: sd_notify readiness, and a hung worker detected by its health probe.

use std::time::{Duration, Instant};

use chat_shared::status::Phase;

use crate::support::{Env, alive, bin, wait_until};

#[test]
fn a_notify_instance_is_online_only_after_ready_1() {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &format!(
            "[apps.notifier]\nscript = \"{}\"\nargs = [\"--notify-after\", \"600\"]\nreadiness = \"notify\"\n",
            bin("fixture-app").display()
        ),
    );
    let begun = Instant::now();
    env.ok(&["start"]);
    // Not a speed check: online cannot happen before the program said READY=1.
    assert!(begun.elapsed() >= Duration::from_millis(600), "online after {:?}", begun.elapsed());
    assert_eq!(env.list()[0].instances[0].status, Phase::Online);
    assert!(env.daemon_log().contains("warmed up"), "STATUS= is logged");
}

#[test]
fn a_notify_instance_that_never_says_ready_is_restarted_after_listen_timeout() {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &format!(
            "[apps.silent]\nscript = \"{}\"\nreadiness = \"notify\"\nlisten_timeout = \"300ms\"\nkill_timeout = \"300ms\"\n",
            bin("fixture-app").display()
        ),
    );
    env.ok(&["start", "--no-wait"]);
    let instance = wait_until("restarted for not being ready", Duration::from_secs(15), || {
        let apps = env.list();
        (apps[0].instances[0].restarts >= 1).then(|| apps[0].instances[0].clone())
    });
    assert!(instance.note.as_deref().is_some_and(|n| n.contains("not ready within listen_timeout")), "{instance:?}");
}

#[test]
fn a_hung_worker_fails_its_health_checks_and_is_replaced() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write(
        "ecosystem.toml",
        &format!(
            r#"
[apps.chat]
script = "{}"
port = {port}
instances = 2
exec_mode = "cluster"
kill_timeout = "300ms"
health = {{ interval = "200ms", timeout = "100ms", unhealthy_threshold = 2, grace = "0s" }}
"#,
            bin("chat-worker").display()
        ),
    );
    env.ok(&["start"]);
    let pids = env.online_pids("chat", 2);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), nix::sys::signal::Signal::SIGSTOP)
        .expect("SIGSTOP");
    let replaced = wait_until("the hung instance replaced", Duration::from_secs(20), || {
        let apps = env.list();
        let i = apps[0].instances[0].clone();
        (i.status == Phase::Online && i.pid.is_some_and(|p| p != pids[0])).then_some(i)
    });
    assert!(replaced.note.as_deref().is_some_and(|n| n.contains("2 health checks failed in a row")), "{replaced:?}");
    wait_until("the hung process killed", Duration::from_secs(5), || (!alive(pids[0])).then_some(()));
    assert_eq!(env.list()[0].instances[1].pid, Some(pids[1]), "the healthy instance is untouched");
}

#[test]
fn a_failing_health_endpoint_gets_the_instance_replaced_and_a_healthy_one_is_left_alone() {
    let env = Env::new();
    let port = crate::support::free_port();
    let sick = env.path("sick");
    env.write(
        "ecosystem.toml",
        &format!(
            r#"
[apps.web]
script = "{}"
args = ["--serve", "--sick-if", "{}"]
port = {port}
instances = 2
exec_mode = "cluster"
kill_timeout = "1s"
health = {{ interval = "100ms", timeout = "100ms", unhealthy_threshold = 3, grace = "0s" }}
"#,
            bin("fixture-app").display(),
            sick.display()
        ),
    );
    env.ok(&["start"]);
    let pids = env.online_pids("web", 2);
    // Healthy for a while: nothing happens.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(env.online_pids("web", 2), pids, "healthy instances are never touched");
    std::fs::write(&sick, "").expect("make it sick");
    let replaced = wait_until("both restarted for failing health", Duration::from_secs(20), || {
        let apps = env.list();
        apps[0].instances.iter().all(|i| i.restarts >= 1).then(|| apps[0].instances[0].clone())
    });
    assert!(
        replaced.note.as_deref().is_some_and(|n| n.contains("3 health checks failed in a row, last: GET")),
        "{replaced:?}"
    );
    assert!(replaced.note.as_deref().is_some_and(|n| n.contains("HTTP 500")), "{replaced:?}");
    std::fs::remove_file(&sick).expect("heal");
    env.online_pids("web", 2);
}
