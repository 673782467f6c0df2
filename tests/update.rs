//! `chatctl update`: the daemon re-executes a new binary in place, keeping every instance, socket,
//! log pipe and chat connection; a binary that fails the preflight changes nothing.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::{Env, bin, chat_app, fixture_app, sigkill, stderr, wait_until};

/// A "new" chatctl: this build, reporting another version (the override exists for this test).
fn new_binary(env: &Env, version: &str) -> PathBuf {
    script(env, "chatctl-new", &format!("CHATCTL_VERSION_OVERRIDE={version} exec {:?} \"$@\"", bin("chatctl")))
}

fn script(env: &Env, name: &str, body: &str) -> PathBuf {
    let path = env.write(name, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The ticker's lines, in the order of its log: `tick 0`, `tick 1`, ... with nothing missing,
/// repeated or out of order.
fn ticks_in_order(env: &Env) -> usize {
    let log = std::fs::read_to_string(env.home().join("logs/ticker-out.log")).expect("the ticker's log");
    let ticks: Vec<u64> = log.lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect();
    for (i, n) in ticks.iter().enumerate() {
        assert_eq!(*n, i as u64, "line {i} of the ticker's log is tick {n}:\n{log}");
    }
    ticks.len()
}

#[test]
fn a_chat_cluster_under_load_is_updated_in_place_without_a_failure() {
    let _heavy = crate::support::heavy_load();
    let env = Env::new();
    let port = crate::support::free_port();
    let apps = format!("{}{}", chat_app(port, "cluster", 2, ""), fixture_app("ticker", &["--tick", "5"], ""));
    env.write("ecosystem.toml", &apps);
    env.ok(&["start"]);
    let chat = env.online_pids("chat", 2);
    let ticker = env.online_pids("ticker", 1);
    let daemon = env.daemon_pid().expect("the daemon's pid");
    let new = new_binary(&env, "9.9.9-update-test");

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let load = chat_bench::load::Load::paced(vec![addr], &["/health"], 20, Duration::from_millis(20));
    load.wait_for(200);
    let out = crate::support::run_bounded(
        std::process::Command::new("node")
            .arg(crate::support::tests_dir().join("clients/update-chat.mjs"))
            .arg(format!("http://127.0.0.1:{port}"))
            .arg(bin("chatctl"))
            .arg(&new)
            .env("CHATCTL_HOME", env.home())
            .current_dir(env.dir.path()),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    load.wait_for(200);
    let outcome = load.finish();
    eprintln!(
        "update under load: {} ok, {} refused, {} failed, {} non-2xx; chat: {}",
        outcome.ok,
        outcome.refused,
        outcome.failed,
        outcome.non_2xx,
        stdout.trim()
    );
    assert!(out.status.success(), "{stdout}\n{}\n{}", stderr(&out), env.daemon_log());
    assert!(stdout.contains("now runs chatctl 9.9.9-update-test"), "{stdout}");
    assert_eq!((outcome.refused, outcome.failed, outcome.non_2xx), (0, 0, 0), "no request failed");

    // The same daemon and the same instances, which were never restarted.
    let ping = env.ok(&["ping"]);
    assert!(ping.contains(&format!("daemon pid {daemon}, version 9.9.9-update-test")), "{ping}");
    assert_eq!(env.online_pids("chat", 2), chat);
    assert_eq!(env.online_pids("ticker", 1), ticker);
    assert!(env.list().iter().flat_map(|a| &a.instances).all(|i| i.restarts == 0), "nothing restarted");
    // Every line written during the update is in the log, once, in order, and the new image
    // goes on reading the ticker's pipe.
    let ticks = ticks_in_order(&env);
    wait_until("the ticker's lines read by the new image", Duration::from_secs(5), || {
        (ticks_in_order(&env) > ticks + 20).then_some(())
    });

    // The new image supervises as the old one did: a crash is repaired, reload, scale and stop work.
    sigkill(ticker[0]);
    let restarted = wait_until("the ticker restarted", Duration::from_secs(10), || {
        env.list().iter().find(|a| a.name == "ticker")?.instances[0].pid.filter(|p| *p != ticker[0])
    });
    env.remember(restarted);
    env.ok(&["reload", "chat"]);
    let reloaded = env.online_pids("chat", 2);
    assert!(reloaded.iter().all(|p| !chat.contains(p)), "reloaded onto new processes");
    env.ok(&["scale", "ticker", "2"]);
    env.online_pids("ticker", 2);
    env.ok(&["stop", "ticker"]);
    let apps = env.list();
    let ticker = apps.iter().find(|a| a.name == "ticker").expect("ticker");
    assert!(ticker.instances.iter().all(|i| i.pid.is_none()), "stopped");
}

#[test]
fn a_binary_that_fails_the_preflight_leaves_the_daemon_serving() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_app("ticker", &["--tick", "20"], ""));
    env.ok(&["start"]);
    let ticker = env.online_pids("ticker", 1);
    let daemon = env.daemon_pid().expect("the daemon's pid");
    let broken = script(&env, "chatctl-broken", "echo 'this chatctl cannot start' >&2\nexit 3");
    let out = env.chatctl(&["update", "--binary", broken.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(8), "refused: {}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("refused the state: this chatctl cannot start"), "{said}");
    // Not an executable at all.
    let text = env.write("not-a-program", "hello");
    let out = env.chatctl(&["update", "--binary", text.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(8), "refused: {}", stderr(&out));

    // A binary that passes the preflight but cannot be executed afterwards (its mode changed in
    // between): the daemon, which had already handed its pipes over and closed its log, takes
    // them back and goes on, its log included.
    let vanishing = script(
        &env,
        "chatctl-vanishing",
        &format!("if [ \"$2\" = --check ]; then chmod -x \"$0\"; fi\nexec {:?} \"$@\"", bin("chatctl")),
    );
    let out = env.chatctl(&["update", "--binary", vanishing.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(8), "refused: {}", stderr(&out));
    assert!(stderr(&out).contains("cannot execute"), "{}", stderr(&out));
    let lines = ticks_in_order(&env);
    wait_until("the ticker's lines read again", Duration::from_secs(5), || {
        (ticks_in_order(&env) > lines + 10).then_some(())
    });

    // A daemon that does not say it answers the signal (one older than `chatctl update`, which
    // SIGUSR2 would end) is not sent it.
    std::fs::remove_file(env.home().join("update.ready")).expect("the daemon says it answers updates");
    let out = env.chatctl(&["update"]);
    assert!(!out.status.success() && stderr(&out).contains("predates it"), "{}", stderr(&out));

    // The old daemon goes on supervising: same pid, its logs whole, and a killed instance is
    // started again.
    ticks_in_order(&env);
    let ping = env.ok(&["ping"]);
    assert!(ping.contains(&format!("daemon pid {daemon}, ")), "{ping}");
    sigkill(ticker[0]);
    let restarted = wait_until("the ticker restarted", Duration::from_secs(10), || {
        env.list()[0].instances[0].pid.filter(|p| *p != ticker[0])
    });
    env.remember(restarted);
    wait_until("the restart in the daemon's log", Duration::from_secs(5), || {
        env.daemon_log().contains(&format!("to=\"online\" pid={restarted}")).then_some(())
    });
}

/// `chatctl run` (the foreground daemon a systemd unit runs) is updated the same way, keeps its
/// pid (the unit's main process) and its instances, and still stops cleanly on SIGTERM.
#[test]
fn the_foreground_daemon_is_updated_in_place_too() {
    use std::process::Stdio;
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_app("ticker", &["--tick", "20"], ""));
    let mut run = env.command().arg("run").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("chatctl run");
    env.remember(run.id());
    let ticker = env.online_pids("ticker", 1);
    // Twice in a row: the second request comes as soon as the first is answered.
    for version in ["9.9.9-run-test", "9.9.10-run-test"] {
        let new = new_binary(&env, version);
        let out = env.ok(&["update", "--binary", new.to_str().expect("utf-8")]);
        assert!(out.contains(&format!("pid {} now runs chatctl {version}", run.id())), "{out}");
    }
    assert_eq!(env.online_pids("ticker", 1), ticker);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let status = wait_until("chatctl run exits", Duration::from_secs(15), || run.try_wait().expect("try_wait"));
    assert_eq!(status.code(), Some(0), "clean stop");
    assert!(!crate::support::alive(ticker[0]), "its instance stopped with it");
    ticks_in_order(&env);
}

/// A stop asked for while an update is under way (here during the preflight) is not lost,
/// whichever image takes it: the daemon stops, and its instances with it.
#[test]
fn a_stop_during_an_update_is_not_lost() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_app("ticker", &["--tick", "20"], ""));
    env.ok(&["start"]);
    let ticker = env.online_pids("ticker", 1);
    let daemon = env.daemon_pid().expect("the daemon's pid");
    let slow = script(
        &env,
        "chatctl-slow",
        &format!("if [ \"$2\" = --check ]; then sleep 1; fi\nexec {:?} \"$@\"", bin("chatctl")),
    );
    let mut update = env
        .command()
        .args(["update", "--binary", slow.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chatctl update");
    // The preflight (which takes a second) is under way.
    wait_until("the update under way", Duration::from_secs(10), || {
        env.daemon_log().contains("update requested").then_some(())
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    wait_until("the daemon stopped", Duration::from_secs(20), || (!crate::support::alive(daemon)).then_some(()));
    assert!(!crate::support::alive(ticker[0]), "its instance stopped with it");
    wait_until("the update's answer", Duration::from_secs(70), || update.try_wait().ok().flatten());
}

/// An app in a crash loop (an instance waiting to be started again, or starting) does not hold an
/// update back: the loop goes on in the new image, its count kept.
#[test]
fn an_update_carries_a_crash_loop_over() {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &fixture_app(
            "crashy",
            &["--exit-after", "20", "--code", "1"],
            "min_uptime = \"10s\"\nmax_restarts = 1000\nrestart_delay = \"500ms\"\nmax_restart_delay = \"500ms\"",
        ),
    );
    env.ok(&["start", "--no-wait"]);
    let restarts = || env.list()[0].instances[0].restarts;
    wait_until("a few restarts", Duration::from_secs(10), || (restarts() >= 2).then_some(()));
    // Between two runs: waiting for its next start.
    wait_until("the instance waiting", Duration::from_secs(10), || {
        (env.list()[0].instances[0].status == chat_shared::status::Phase::Waiting).then_some(())
    });
    let new = new_binary(&env, "9.9.9-loop-test");
    let out = env.ok(&["update", "--binary", new.to_str().expect("utf-8")]);
    assert!(out.contains("now runs chatctl 9.9.9-loop-test"), "{out}");
    let after = restarts();
    assert!(after >= 2, "the count is kept ({after})");
    wait_until("the loop going on", Duration::from_secs(10), || (restarts() >= after + 2).then_some(()));
}
