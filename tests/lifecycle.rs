//! Process lifecycle through the CLI: group stop with SIGKILL escalation, crash restarts, restart,
//! delete, the foreground `run`, and the control protocol's version check.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use chat_shared::status::{ExitKind, Phase};

use crate::support::{Env, alive, bin, fixture_app, wait_until};

#[test]
fn stop_kills_a_term_ignoring_worker_and_its_grandchild_after_kill_timeout() {
    let env = Env::new();
    let pid_file = env.path("pids");
    let pid_arg = pid_file.to_str().expect("utf-8");
    env.write(
        "ecosystem.toml",
        &fixture_app("stubborn", &["--ignore-term", "--grandchild", "--pid-file", pid_arg], "kill_timeout = \"700ms\""),
    );
    env.ok(&["start"]);
    env.online_pids("stubborn", 1);
    let pids = env.pids_in(&pid_file, 2);
    let begun = std::time::Instant::now();
    env.ok(&["stop", "stubborn"]);
    let took = begun.elapsed();
    wait_until("worker and grandchild gone", Duration::from_secs(5), || {
        (!pids.iter().any(|p| alive(*p))).then_some(())
    });
    assert!(took >= Duration::from_millis(700), "SIGKILL only after kill_timeout, took {took:?}");
    let apps = env.list();
    let instance = &apps[0].instances[0];
    assert_eq!((instance.status, instance.last_exit), (Phase::Stopped, Some(ExitKind::Signal(9))));
}

/// `chatctl kill` in the middle of a reload (the successor online, the process it replaces still
/// draining) stops both and starts nothing: the abandoned replacement used to restart the process
/// it was replacing, and the kill never ended.
#[test]
fn a_kill_during_a_reload_stops_everything_and_starts_nothing() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_app("draining", &["--ignore-term"], "kill_timeout = \"1500ms\""));
    env.ok(&["start"]);
    let first = env.online_pids("draining", 1)[0];
    let mut reload =
        env.command().args(["reload", "draining"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("reload");
    let successor: u32 = wait_until("the successor online", Duration::from_secs(10), || {
        let log = env.daemon_log();
        let line = log.lines().find(|l| l.contains("successor=true") && l.contains("to=\"online\""))?;
        line.rsplit("pid=").next()?.trim().parse().ok()
    });
    env.remember(successor);
    let begun = std::time::Instant::now();
    let out = env.chatctl(&["kill"]);
    assert!(out.status.success(), "kill: {}", crate::support::stderr(&out));
    assert!(begun.elapsed() < Duration::from_secs(10), "the kill ended ({:?})", begun.elapsed());
    wait_until("the reload's answer", Duration::from_secs(10), || reload.try_wait().ok().flatten());
    for pid in [first, successor] {
        assert!(!alive(pid), "{pid} was stopped");
    }
    let log = env.daemon_log();
    let starts = log.matches("to=\"online\"").count();
    assert_eq!(starts, 2, "the first instance and its successor only:\n{log}");
}

#[test]
fn a_crash_loop_backs_off_then_is_errored_after_exactly_max_restarts_unstable_starts() {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &fixture_app("crashy", &["--exit-after", "50", "--code", "3"], "min_uptime = \"5s\"\nmax_restarts = 4"),
    );
    env.ok(&["start", "--no-wait"]);
    let apps = wait_until("crash loop detected", Duration::from_secs(20), || {
        let apps = env.list();
        (apps[0].instances[0].status == Phase::Errored).then_some(apps)
    });
    let instance = &apps[0].instances[0];
    // 4 unstable starts: the first and 3 restarts.
    assert_eq!((instance.restarts, instance.last_exit, instance.pid), (3, Some(ExitKind::Code(3)), None));
    assert!(instance.note.as_deref().is_some_and(|n| n.contains("crash loop: 4 consecutive starts")), "{instance:?}");
    // Backoff: the announced delays grow (100, 200, 400 ms, each ±25 %).
    let delays: Vec<u64> = env
        .daemon_log()
        .lines()
        .filter_map(|l| l.split("restart in ").nth(1)?.split(" ms").next()?.parse().ok())
        .collect();
    assert_eq!(delays.len(), 3, "{delays:?}");
    assert!(delays.windows(2).all(|w| w[1] > w[0]), "growing delays: {delays:?}");
    // It stays errored: no more spawns.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.list()[0].instances[0].restarts, 3);
    // An explicit restart tries again with a fresh budget.
    env.chatctl(&["restart", "crashy"]);
    wait_until("restarted after errored", Duration::from_secs(10), || {
        (env.list()[0].instances[0].restarts >= 4).then_some(())
    });
}

#[test]
fn a_slow_crasher_keeps_being_restarted() {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &fixture_app("slow", &["--exit-after", "250", "--code", "1"], "min_uptime = \"200ms\"\nmax_restarts = 2"),
    );
    env.ok(&["start", "--no-wait"]);
    let instance = wait_until("four restarts", Duration::from_secs(20), || {
        let apps = env.list();
        (apps[0].instances[0].restarts >= 4).then(|| apps[0].instances[0].clone())
    });
    assert_ne!(instance.status, Phase::Errored, "runs longer than min_uptime never count: {instance:?}");
}

#[test]
fn a_stop_exit_code_is_not_restarted() {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &fixture_app("oneshot", &["--exit-after", "50", "--code", "0"], "stop_exit_codes = [0]"),
    );
    env.ok(&["start", "--no-wait"]);
    let instance = wait_until("stopped", Duration::from_secs(10), || {
        let apps = env.list();
        (apps[0].instances[0].status == Phase::Stopped).then(|| apps[0].instances[0].clone())
    });
    assert_eq!((instance.restarts, instance.last_exit), (0, Some(ExitKind::Code(0))));
}

#[test]
fn restart_replaces_pids_and_delete_forgets_the_app() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_app("steady", &[], ""));
    env.ok(&["start"]);
    let before = env.online_pids("steady", 1);
    env.ok(&["restart", "steady"]);
    let after = env.online_pids("steady", 1);
    assert_ne!(before, after);
    assert!(!alive(before[0]));
    let out = env.ok(&["delete", "all"]);
    assert!(out.contains("steady"), "{out}");
    assert!(env.list().is_empty());
    assert!(!alive(after[0]));
    let out = env.chatctl(&["stop", "nosuch"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no app named `nosuch`"));
}

#[test]
fn run_in_the_foreground_stops_everything_on_sigterm_with_exit_code_0() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &crate::support::chat_app(port, "cluster", 2, ""));
    let mut run = env.command().arg("run").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("chatctl run");
    env.remember(run.id());
    let pids = env.online_pids("chat", 2);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let status = wait_until("chatctl run exits", Duration::from_secs(15), || run.try_wait().expect("try_wait"));
    assert_eq!(status.code(), Some(0), "clean stop");
    assert!(!pids.iter().any(|p| alive(*p)));
    assert!(!env.home().join("daemon.sock").exists(), "control socket removed");
}

#[test]
fn a_client_of_another_protocol_version_is_refused_not_left_hanging() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_app("steady", &[], ""));
    env.ok(&["start"]);
    let mut stream = UnixStream::connect(env.home().join("daemon.sock")).expect("control socket");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(b"{\"protocol\":999,\"version\":\"9.9.9\"}\n").expect("hello");
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).expect("an answer, not a hang");
    let welcome: chat_shared::ipc::Welcome = serde_json::from_str(&line).expect("welcome");
    assert!(
        matches!(welcome, chat_shared::ipc::Welcome::Refused { protocol, .. } if protocol == chat_shared::ipc::PROTOCOL_VERSION),
        "{line}"
    );
    // The socket is private to its user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.home().join("daemon.sock")).expect("socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn run_exits_4_when_everything_ends_errored() {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &fixture_app("crashy", &["--exit-after", "20", "--code", "1"], "max_restarts = 0\nrestart_delay = \"10ms\""),
    );
    let out = crate::support::run_bounded(env.command().arg("run"), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4), "{}", crate::support::stderr(&out));
}

fn start_with_grandchild(env: &Env) -> Vec<u32> {
    let pid_file = env.path("pids");
    let pid_arg = pid_file.to_str().expect("utf-8").to_owned();
    env.write("ecosystem.toml", &fixture_app("family", &["--grandchild", "--pid-file", &pid_arg], ""));
    env.ok(&["start"]);
    env.online_pids("family", 1);
    env.pids_in(&pid_file, 2)
}

#[test]
fn a_daemon_killed_with_sigkill_leaves_no_worker_and_no_grandchild() {
    let env = Env::new();
    let pids = start_with_grandchild(&env);
    crate::support::sigkill(env.daemon_pid().expect("daemon pid"));
    wait_until("worker and grandchild gone", Duration::from_secs(10), || {
        (!pids.iter().any(|p| alive(*p))).then_some(())
    });
}

#[test]
fn a_new_daemon_ends_leftovers_of_a_previous_one() {
    let env = Env::new();
    let pids = start_with_grandchild(&env);
    // Take the reaper down first, so that only the next daemon can clean up.
    let reaper: u32 =
        std::fs::read_to_string(env.home().join("reaper.pid")).expect("reaper.pid").trim().parse().expect("pid");
    crate::support::sigkill(reaper);
    wait_until("reaper gone", Duration::from_secs(5), || (!alive(reaper)).then_some(()));
    crate::support::sigkill(env.daemon_pid().expect("daemon pid"));
    wait_until("worker gone with the daemon", Duration::from_secs(10), || (!alive(pids[0])).then_some(()));
    assert!(alive(pids[1]), "without the reaper the grandchild is orphaned (the case under test)");
    env.ok(&["list"]);
    env.ok(&["start"]);
    assert!(!alive(pids[1]), "the new daemon ended the leftover before starting");
    assert!(env.daemon_log().contains("ending processes left by a previous daemon"));
}

#[test]
fn describe_shows_the_settings_in_effect_and_each_instances_history() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write(
        "ecosystem.toml",
        &crate::support::chat_app(
            port,
            "cluster",
            2,
            "min_uptime = \"50ms\"\n\
             health = { interval = \"100ms\" }\n[apps.chat.profiles.prod]\nkill_timeout = \"3s\"",
        ),
    );
    env.ok(&["start", "prod"]);
    let pids = env.online_pids("chat", 2);
    crate::support::sigkill(pids[0]);
    wait_until("instance 0 back", Duration::from_secs(10), || {
        let i = env.list()[0].instances[0].clone();
        (i.status == Phase::Online && i.pid != Some(pids[0])).then_some(())
    });
    wait_until("a liveness probe recorded", Duration::from_secs(10), || {
        let d: chat_shared::status::AppDescription =
            serde_json::from_str(&env.ok(&["describe", "chat", "--json"])).expect("describe --json");
        (!d.instances[1].probes.is_empty()).then_some(())
    });
    let d: chat_shared::status::AppDescription =
        serde_json::from_str(&env.ok(&["describe", "chat", "--json"])).expect("describe --json");
    assert_eq!((d.spec.profile.as_deref(), d.spec.kill_timeout.to_string().as_str()), (Some("prod"), "3s"));
    let history: Vec<&str> = d.instances[0].history.iter().map(|h| h.event.as_str()).collect();
    assert!(history.iter().any(|e| e.contains("exited unexpectedly (signal 9)")), "{history:?}");
    assert!(
        d.instances[0].sockets.iter().any(|s| s.starts_with("fd 4 admin 127.0.0.1:")),
        "{:?}",
        d.instances[0].sockets
    );
    assert!(d.instances[1].probes.iter().all(|p| p.ok));
    let text = env.ok(&["describe", "chat"]);
    assert!(
        text.contains(&format!("127.0.0.1:{port} bound by the supervisor"))
            && text.contains("SIGTERM, then SIGKILL after 3s"),
        "{text}"
    );
    let out = env.chatctl(&["describe", "nosuch"]);
    assert!(!out.status.success() && crate::support::stderr(&out).contains("no app named `nosuch`"));
}

#[test]
fn save_kill_resurrect_restores_the_apps_and_a_truncated_dump_is_refused_untouched() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write(
        "ecosystem.toml",
        &format!(
            "[apps.chat]\nscript = \"{}\"\nport = {port}\ninstances = 3\nexec_mode = \"cluster\"\n{}",
            bin("chat-worker").display(),
            fixture_app("steady", &[], "instances = 2")
        ),
    );
    env.ok(&["start"]);
    env.online_pids("chat", 3);
    env.online_pids("steady", 2);
    let out = env.ok(&["save"]);
    assert!(out.contains("saved 2 app(s)"), "{out}");
    env.ok(&["kill"]);
    // From anywhere: no ecosystem file is needed.
    std::fs::remove_file(env.path("ecosystem.toml")).expect("remove config");
    env.ok(&["resurrect"]);
    env.online_pids("chat", 3);
    env.online_pids("steady", 2);
    let (status, _) = crate::support::http_get(([127, 0, 0, 1], port).into(), "/health").expect("chat serves again");
    assert_eq!(status, 200);

    env.ok(&["kill"]);
    let dump = env.home().join("dump.json");
    let text = std::fs::read_to_string(&dump).expect("dump");
    std::fs::write(&dump, &text[..text.len() / 2]).expect("truncate");
    let out = env.chatctl(&["resurrect"]);
    assert!(!out.status.success());
    assert!(crate::support::stderr(&out).contains("is not a valid dump"), "{}", crate::support::stderr(&out));
    assert_eq!(std::fs::read_to_string(&dump).expect("dump"), text[..text.len() / 2], "left untouched");
    assert!(!env.home().join("daemon.sock").exists(), "nothing started");
}

#[test]
fn run_under_systemd_notifies_ready_once_online_and_the_unit_runs_it() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_app("steady", &[], "instances = 2"));
    let socket_path = env.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    socket.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    let mut run =
        env.command().arg("run").env("NOTIFY_SOCKET", &socket_path).stderr(Stdio::null()).spawn().expect("run");
    env.remember(run.id());
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY=1 arrives");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.starts_with("READY=1") && message.contains("2 instance(s) online"), "{message}");
    // Ready means online, not merely started: no waiting here.
    assert!(env.list()[0].instances.iter().all(|i| i.status == Phase::Online));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("TERM");
    let n = socket.recv(&mut buf).expect("STOPPING=1 arrives");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = wait_until("run exits", Duration::from_secs(15), || run.try_wait().expect("wait"));
    assert_eq!(status.code(), Some(0));

    let unit = env.ok(&["startup", "systemd", "--profile", "production"]);
    for line in
        ["Type=notify", "run production -c ", "ExecReload=", "reload all production", "KillMode=mixed", "CHATCTL_HOME="]
    {
        assert!(unit.contains(line), "{line:?} missing:\n{unit}");
    }
}

#[test]
fn init_writes_a_valid_file_and_refuses_to_overwrite_it_and_completions_print() {
    let env = Env::new();
    env.ok(&["init"]);
    let text = std::fs::read_to_string(env.path("ecosystem.toml")).expect("written");
    assert!(text.contains("[apps.") && text.contains("profiles.production"), "{text}");
    let out = env.chatctl(&["init"]);
    assert!(!out.status.success() && crate::support::stderr(&out).contains("--force"));
    let completion = env.ok(&["completions", "bash"]);
    assert!(completion.contains("chatctl") && completion.contains("reload"), "a bash completion script");
}

#[test]
fn metrics_are_prometheus_text_matching_list() {
    let env = Env::new();
    let port = crate::support::free_port();
    let metrics_port = crate::support::free_port();
    env.write(
        "ecosystem.toml",
        &crate::support::chat_app(
            port,
            "cluster",
            2,
            "min_uptime = \"50ms\"\n\
             health = { interval = \"100ms\" }",
        ),
    );
    let out = crate::support::run_bounded(
        env.command().arg("start").env("CHATCTL_METRICS", format!("127.0.0.1:{metrics_port}")),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let pids = env.online_pids("chat", 2);
    crate::support::sigkill(pids[1]);
    // Back *online*, not only started again: a scrape between the two says up 0 for it.
    wait_until("instance 1 back online", Duration::from_secs(10), || {
        let i = &env.list()[0].instances[1];
        (i.restarts == 1 && i.status == Phase::Online).then_some(())
    });
    let list = env.list();
    let (status, body) = crate::support::http_get(([127, 0, 0, 1], metrics_port).into(), "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, instance: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name && s.labels.get("instance") == Some(instance) && s.labels.get("app") == Some("chat")
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name}{{instance={instance}}} missing:\n{body}"))
    };
    for i in &list[0].instances {
        let index = i.index.to_string();
        assert_eq!(value("chatctl_instance_up", &index), 1.0);
        assert_eq!(value("chatctl_instance_restarts_total", &index), f64::from(i.restarts));
    }
    assert!(body.contains("chatctl_log_lines_total{app=\"chat\"}"), "{body}");
    assert_eq!(value("chatctl_chat_connections", "0"), 0.0, "a chat worker's figures are exported");
    assert_eq!(value("chatctl_chat_degraded", "0"), 0.0, "a worker alone is not cut off from anyone");
    assert_eq!(value("chatctl_chat_dropped_total", "0"), 0.0);
    assert_eq!(value("chatctl_chat_handed_total", "0"), 0.0, "no polling client: nothing handed over");
    assert_eq!(value("chatctl_chat_taken_total", "0"), 0.0);
}
