//! Rolling reloads: zero failed requests under load, fail-closed on a broken release, a bad file
//! changes nothing, one reload at a time, scaling.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{Env, bin, chat_app, free_ports, stderr, wait_until};
use chat_bench::load::Load;

/// Reloads `app` under load on `addrs` (new connections and keep-alive); asserts zero failures and
/// that every instance got a new pid.
fn reload_under_load(env: &Env, app: &str, instances: usize, addrs: Vec<SocketAddr>) {
    let before = env.online_pids(app, instances);
    let load = Load::mixed(addrs, "/api/socket/stats", 1, 1);
    load.wait_for(300);
    let out = env.ok(&["reload", app]);
    load.wait_for(300);
    let (ok, refused, failed) = load.stop();
    eprintln!("reload of {instances} under load: {ok} ok, {refused} refused, {failed} failed");
    assert_eq!((refused, failed), (0, 0), "no request may fail during a reload\n{out}");
    let after = env.online_pids(app, instances);
    assert!(before.iter().all(|p| !after.contains(p)), "every instance replaced: {before:?} -> {after:?}");
    assert!(out.contains(&format!("reloaded {app}: {instances} replaced")), "{out}");
    assert_eq!(out.matches(": done, pid").count(), instances, "{out}");
}

#[test]
fn a_cluster_reload_under_load_fails_no_request_and_replaces_every_instance() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &chat_app(port, "cluster", 4, "env = { RELEASE = \"1\" }"));
    env.ok(&["start"]);
    env.write("ecosystem.toml", &chat_app(port, "cluster", 4, "env = { RELEASE = \"2\" }"));
    reload_under_load(&env, "chat", 4, vec![([127, 0, 0, 1], port).into()]);
}

#[test]
fn a_fork_mode_reload_under_load_on_four_ports_fails_no_request() {
    let env = Env::new();
    let base = free_ports(4);
    env.write("ecosystem.toml", &chat_app(base, "fork", 4, ""));
    env.ok(&["start"]);
    let addrs = (0..4).map(|i| SocketAddr::from(([127, 0, 0, 1], base + i))).collect();
    reload_under_load(&env, "chat", 4, addrs);
}

#[test]
fn a_broken_release_stops_the_reload_at_the_first_instance_and_the_old_ones_keep_serving() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &chat_app(port, "cluster", 3, ""));
    env.ok(&["start"]);
    let before = env.online_pids("chat", 3);
    // The new release crashes at start.
    env.write(
        "ecosystem.toml",
        &format!(
            "[apps.chat]\nscript = \"{}\"\nargs = [\"--exit-after\", \"50\", \"--code\", \"1\"]\nport = {port}\ninstances = 3\nexec_mode = \"cluster\"\n",
            bin("fixture-app").display()
        ),
    );
    let load = Load::mixed(vec![([127, 0, 0, 1], port).into()], "/api/socket/stats", 1, 1);
    load.wait_for(100);
    let out = env.chatctl(&["reload"]);
    load.wait_for(100);
    let (_, refused, failed) = load.stop();
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(6), "a failed reload exits non-zero\n{stdout}\n{err}");
    assert!(err.contains("instance 0 of chat: the new process failed"), "{err}");
    assert!(err.contains("0 instance(s) replaced"), "{err}");
    assert_eq!(stdout.matches("starting a new process").count(), 1, "it stopped at the first instance:\n{stdout}");
    assert_eq!((refused, failed), (0, 0));
    assert_eq!(env.online_pids("chat", 3), before, "the old instances keep serving");
    // And they still run the old version after a crash.
    crate::support::sigkill(before[1]);
    wait_until("instance 1 back", Duration::from_secs(10), || {
        let i = env.list()[0].instances[1].clone();
        (i.status == chat_shared::status::Phase::Online && i.pid != Some(before[1])).then_some(())
    });
}

#[test]
fn a_bad_file_at_reload_time_changes_nothing() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &chat_app(port, "cluster", 2, ""));
    env.ok(&["start"]);
    let before = env.online_pids("chat", 2);
    env.write("ecosystem.toml", &chat_app(port, "cluster", 2, "instance = 3"));
    let out = env.chatctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("ecosystem.toml:6:1: error: apps.chat.instance"), "{}", stderr(&out));
    assert_eq!(env.online_pids("chat", 2), before);
}

#[test]
fn two_reloads_of_one_app_never_run_at_once_and_reload_scales() {
    let env = Env::new();
    let config = |instances: usize| {
        format!(
            "[apps.slow]\nscript = \"{}\"\nargs = [\"--notify-after\", \"700\"]\nreadiness = \"notify\"\ninstances = {instances}\n",
            bin("fixture-app").display()
        )
    };
    env.write("ecosystem.toml", &config(1));
    env.ok(&["start"]);
    env.write("ecosystem.toml", &config(2));
    let mut first = env.command().arg("reload").stdout(std::process::Stdio::piped()).spawn().expect("first reload");
    env.remember(first.id());
    wait_until("the first reload under way", Duration::from_secs(10), || {
        env.list()[0].instances[0].note.as_deref().is_some_and(|n| n.starts_with("replacing (reload)")).then_some(())
    });
    let second = env.chatctl(&["reload"]);
    assert_eq!(second.status.code(), Some(6));
    assert!(stderr(&second).contains("a reload of `slow` is already under way"), "{}", stderr(&second));
    let status = wait_until("the first reload done", Duration::from_secs(20), || first.try_wait().expect("wait"));
    assert!(status.success());
    // instances 1 -> 2: one replaced, one added.
    env.online_pids("slow", 2);
    env.write("ecosystem.toml", &config(1));
    let out = env.ok(&["reload"]);
    assert!(out.contains("1 replaced, 0 added, 1 removed"), "{out}");
    assert_eq!(env.online_pids("slow", 1).len(), 1);
}

#[test]
fn scale_adds_and_removes_instances_at_the_end_and_leaves_the_others() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &chat_app(port, "cluster", 2, ""));
    env.ok(&["start"]);
    let before = env.online_pids("chat", 2);
    let out = env.ok(&["scale", "chat", "+2"]);
    assert!(out.contains("0 replaced, 2 added, 0 removed"), "{out}");
    let four = env.online_pids("chat", 4);
    assert_eq!(&four[..2], &before[..], "existing instances untouched");
    env.ok(&["scale", "chat", "1"]);
    assert_eq!(env.online_pids("chat", 1), vec![before[0]]);
    let out = env.chatctl(&["scale", "chat", "none"]);
    assert!(!out.status.success() && stderr(&out).contains("expected a number of instances"), "{}", stderr(&out));
}

#[test]
fn start_with_reload_reloads_what_runs_and_a_failing_build_touches_nothing() {
    let env = Env::new();
    let port = crate::support::free_port();
    let marker = env.path("built");
    let config = |build: &str| chat_app(port, "cluster", 2, &format!("build = {build:?}"));
    env.write("ecosystem.toml", &config(&format!("touch {}", marker.display())));
    env.ok(&["start"]);
    let before = env.online_pids("chat", 2);
    // Deploy scripts run the same command every time.
    let out = env.ok(&["start", "--reload"]);
    assert!(out.contains("reloaded chat: 2 replaced"), "{out}");
    let after = env.online_pids("chat", 2);
    assert!(before.iter().all(|p| !after.contains(p)));
    // A build that fails aborts the reload before any instance is touched.
    env.write("ecosystem.toml", &config("echo compiling; exit 3"));
    let out = env.chatctl(&["reload", "--build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("the build failed"), "{}", stderr(&out));
    assert_eq!(env.online_pids("chat", 2), after);
    // A passing one runs, then the reload.
    env.write("ecosystem.toml", &config(&format!("touch {}", marker.display())));
    env.ok(&["reload", "--build"]);
    assert!(marker.exists(), "the build ran");
}

#[test]
fn a_program_that_binds_its_own_port_is_reloaded_by_restarting_one_by_one() {
    let env = Env::new();
    let base = free_ports(2);
    env.write("ecosystem.toml", &chat_app(base, "fork", 2, "inherit_socket = false"));
    env.ok(&["start"]);
    let before = env.online_pids("chat", 2);
    let out = env.ok(&["reload"]);
    assert_eq!(out.matches("(restarted in place)").count(), 2, "{out}");
    assert!(out.contains("reloaded chat: 2 replaced"), "{out}");
    let after = env.online_pids("chat", 2);
    assert!(before.iter().all(|p| !after.contains(p)), "{before:?} -> {after:?}");
    for i in 0..2 {
        let (status, _) =
            crate::support::http_get(([127, 0, 0, 1], base + i).into(), "/health").expect("serving again");
        assert_eq!(status, 200);
    }
}

/// Long-polling guests (no websocket) on two instances: every request of theirs reaches the instance
/// with their session before the reload, and they reconnect through it with identity and rooms.
#[test]
fn polling_guests_chat_through_a_reload_of_two_instances() {
    chat_through_a_reload(2, "polling");
}

/// Starts `instances` chat workers in cluster mode, and runs `reload-chat.mjs` with `transport`
/// against them: guests chat, `chatctl reload` runs, they must come back as themselves.
fn chat_through_a_reload(instances: usize, transport: &str) {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &chat_app(port, "cluster", instances, ""));
    env.ok(&["start"]);
    let out = crate::support::run_bounded(
        std::process::Command::new("node")
            .arg(crate::support::tests_dir().join("clients/reload-chat.mjs"))
            .arg(format!("http://127.0.0.1:{port}"))
            .arg(bin("chatctl"))
            .args([transport, &instances.to_string()])
            .env("CHATCTL_HOME", env.home())
            .current_dir(env.dir.path()),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}\n{}", stderr(&out), env.daemon_log());
}

#[test]
fn chatting_guests_reconnect_through_a_reload_with_their_identity_and_rooms() {
    // One instance, so every guest is served by the worker that replaced the old one: what this
    // checks is that identity and rooms survive the process (cluster.rs covers several workers).
    chat_through_a_reload(1, "websocket");
}
