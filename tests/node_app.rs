//! A PM2 user's unmodified Node app under chatctl: the plain Express + Socket.IO server in
//! `tests/apps/express-chat.js` (it calls `server.listen(process.env.PORT || 3000)` and knows
//! nothing of chatctl), in cluster mode and on incremented ports, through chatctl's Node preload.
//! Before the preload every instance crash-looped with EADDRINUSE (chatctl holds the port).

use std::net::SocketAddr;
use std::time::Duration;

use chat_bench::load::Load;
use chat_shared::status::Phase;

use crate::support::redis::RedisServer;
use crate::support::{Env, free_port, free_ports, heavy_load, node, stderr, tests_dir, wait_until};

/// The app table: the script itself (a `.js` file runs through node), fast probes on its own
/// `/health`, a short kill timeout.
fn express_app(port: u16, mode: &str, instances: usize, env: &str) -> String {
    format!(
        "[apps.web]\nscript = \"{}\"\nport = {port}\ninstances = {instances}\nexec_mode = \"{mode}\"\n\
         kill_timeout = \"3s\"\n\
         health = {{ path = \"/health\", interval = \"300ms\", timeout = \"300ms\", unhealthy_threshold = 2, grace = \"0s\" }}\n\
         env = {{ {env} }}\n",
        tests_dir().join("apps/express-chat.js").display()
    )
}

#[test]
fn an_unmodified_express_app_runs_as_a_cluster_with_per_instance_health_kills_and_reloads_refusing_nothing() {
    let _heavy = heavy_load();
    let redis = RedisServer::start();
    let env = Env::new();
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    env.write("ecosystem.toml", &express_app(port, "cluster", 2, &format!("REDIS_URL = \"{}\"", redis.url())));
    env.ok(&["start"]);
    let pids = env.online_pids("web", 2);

    // Socket.IO across the two instances (websocket transport; the app's own Redis adapter).
    let out = node("node-app-chat.mjs", &[&format!("http://{addr}")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chat across instances: {stdout}\n{}", stderr(&out));

    // Each instance is probed on its own /health (its admin socket, served by the app's handler):
    // a stopped one is found out and replaced while the other serves.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), nix::sys::signal::Signal::SIGSTOP)
        .expect("stop");
    let replaced = wait_until("the stopped instance replaced", Duration::from_secs(20), || {
        let i = env.list()[0].instances[0].clone();
        (i.status == Phase::Online && i.pid.is_some_and(|p| p != pids[0])).then_some(i.pid)
    });
    crate::support::sigkill(pids[0]);

    // kill -9 under load: nothing refused (the port stays open in the supervisor).
    let load = Load::mixed(vec![addr], "/api/hello", 1, 1);
    load.wait_for(200);
    let victim = env.online_pids("web", 2)[1];
    crate::support::sigkill(victim);
    wait_until("the killed instance back", Duration::from_secs(20), || {
        let i = env.list()[0].instances[1].clone();
        (i.status == Phase::Online && i.pid != Some(victim)).then_some(())
    });
    load.wait_for(200);
    let (ok, refused, failed) = load.stop();
    eprintln!("kill -9 of an Express instance under load: {ok} ok, {refused} refused, {failed} failed");
    assert_eq!(refused, 0, "a killed instance's port refuses nothing");

    // A reload under load: nothing fails (the preload drains the old process like our worker).
    env.write(
        "ecosystem.toml",
        &express_app(port, "cluster", 2, &format!("REDIS_URL = \"{}\", RELEASE = \"2\"", redis.url())),
    );
    reloaded_under_load(&env, "web", vec![addr], 2, &format!("an Express cluster of 2 (after {replaced:?})"));
    env.ok(&["kill"]);
}

#[test]
fn an_unmodified_express_app_on_four_ports_reloads_refusing_nothing() {
    let _heavy = heavy_load();
    let env = Env::new();
    let base = free_ports(4);
    env.write("ecosystem.toml", &express_app(base, "fork", 4, ""));
    env.ok(&["start"]);
    env.write("ecosystem.toml", &express_app(base, "fork", 4, "RELEASE = \"2\""));
    let addrs: Vec<SocketAddr> = (0..4).map(|i| SocketAddr::from(([127, 0, 0, 1], base + i))).collect();
    reloaded_under_load(&env, "web", addrs, 4, "an Express app on 4 ports");
}

/// Before: a program passed its port that binds it itself crash-looped with EADDRINUSE until
/// max_restarts, with no hint. Now its own output says so, and it is errored at once with what to
/// change (here an Express app with the preload turned off, in fork mode).
#[test]
fn a_program_that_binds_the_port_chatctl_holds_is_errored_at_once_saying_what_to_do() {
    let env = Env::new();
    let port = free_port();
    let config = express_app(port, "fork", 1, "").replace("kill_timeout", "node_preload = false\nkill_timeout");
    env.write("ecosystem.toml", &config);
    let out = env.chatctl(&["start"]);
    assert_eq!(out.status.code(), Some(5), "not online: {}", stderr(&out));
    let instance = env.list()[0].instances[0].clone();
    assert_eq!(instance.status, Phase::Errored, "{instance:?}");
    assert_eq!(instance.restarts, 0, "errored at once, not after max_restarts: {instance:?}");
    let note = instance.note.unwrap_or_default();
    for what in ["address in use", &format!("port {port}"), "fd 3", "inherit_socket = false"] {
        assert!(note.contains(what), "{what:?} in the note: {note}");
    }
}

/// PM2's `wait_ready`: a Node program that says `process.send('ready')` late is not online before
/// it has (readiness = "notify": for Node, through an IPC channel, since Node cannot write to
/// NOTIFY_SOCKET). The program marks a file just before it says so: every `list` that shows it
/// online comes after the mark.
#[test]
fn a_node_program_that_says_ready_late_is_not_online_before_it_does() {
    let env = Env::new();
    let port = free_port();
    let mark = env.path("ready.mark");
    env.write(
        "ecosystem.toml",
        &format!(
            "[apps.late]\nscript = \"{}\"\nport = {port}\nreadiness = \"notify\"\nenv = {{ READY_MARK = \"{}\" }}\n",
            tests_dir().join("apps/late-ready.js").display(),
            mark.display()
        ),
    );
    env.ok(&["start", "--no-wait"]);
    let mut seen_starting = false;
    wait_until("online once it said ready", Duration::from_secs(20), || {
        // The status first, then the mark: an online seen before the mark was written would be a
        // real early online, never a race of this check.
        let status = env.list()[0].instances[0].status;
        let marked = mark.exists();
        assert!(status != Phase::Online || marked, "online before it said ready");
        seen_starting |= status == Phase::Starting && !marked;
        (status == Phase::Online).then_some(())
    });
    assert!(seen_starting, "it was seen starting, not yet ready, first");
}

/// The issue's "done when": a PM2 user's `ecosystem.config.js` for the unmodified Express app,
/// `chatctl import`, `chatctl start production`: a working cluster, each instance probed on its own
/// `/health`, and a reload under load that fails nothing.
#[test]
fn a_pm2_ecosystem_imports_and_its_production_cluster_runs_the_unmodified_app() {
    let _heavy = heavy_load();
    let env = Env::new();
    let port = free_port();
    env.write(
        "ecosystem.config.js",
        &format!(
            r#"module.exports = {{
  apps: [{{
    name: "chat",
    script: "{script}",
    instances: 2,
    exec_mode: "cluster",
    max_memory_restart: "1G",
    kill_timeout: 5000,
    env: {{ PORT: {port}, NODE_ENV: "development" }},
    env_production: {{ NODE_ENV: "production" }},
  }}],
}};
"#,
            script = tests_dir().join("apps/express-chat.js").display()
        ),
    );
    env.ok(&["import", "ecosystem.config.js"]);
    env.ok(&["start", "production"]);
    probed_then_reloaded(&env, "chat", port, "a PM2 file imported, production");
}

/// Fastify and Koa too, as their users write them: a cluster of 2 comes online with each instance
/// probed on its own `/health` through the app's own handler, and reloads under load failing
/// nothing. Fastify listens on its default `localhost`, which it binds on every address it resolves
/// to: the preload gives it chatctl's socket once and fails the second bind, as a taken port would.
#[test]
fn fastify_and_koa_apps_run_unmodified_as_a_cluster() {
    let _heavy = heavy_load();
    for script in ["apps/fastify-app.js", "apps/koa-app.js"] {
        let env = Env::new();
        let port = free_port();
        let config = express_app(port, "cluster", 2, "").replace("apps/express-chat.js", script);
        env.write("ecosystem.toml", &config);
        env.ok(&["start"]);
        probed_then_reloaded(&env, "web", port, script);
        env.ok(&["kill"]);
    }
}

/// `app`'s 2 instances online, each with a passing probe of its own (through the app's handler on
/// its admin socket), then reloaded under load on `port` with nothing refused or failed.
fn probed_then_reloaded(env: &Env, app: &str, port: u16, what: &str) {
    env.online_pids(app, 2);
    let described: serde_json::Value =
        serde_json::from_str(&env.ok(&["describe", app, "--json"])).expect("describe json");
    let probed: Vec<bool> = described["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["probes"].as_array().is_some_and(|p| p.iter().any(|p| p["ok"] == true)))
        .collect();
    assert_eq!(probed, [true, true], "{what}: each instance probed on its own /health");
    reloaded_under_load(env, app, vec![SocketAddr::from(([127, 0, 0, 1], port))], 2, what);
}

/// `chatctl reload APP` under load on `addrs` (new and kept-alive connections): nothing refused or
/// failed, and every one of the `instances` replaced.
fn reloaded_under_load(env: &Env, app: &str, addrs: Vec<SocketAddr>, instances: usize, what: &str) {
    let before = env.online_pids(app, instances);
    let load = Load::mixed(addrs, "/api/hello", 1, 1);
    load.wait_for(200);
    let out = env.ok(&["reload", app]);
    load.wait_for(200);
    let (ok, refused, failed) = load.stop();
    eprintln!("{what}: reload under load: {ok} ok, {refused} refused, {failed} failed");
    assert_eq!((refused, failed), (0, 0), "{what}: no request fails during a reload\n{out}");
    let after = env.online_pids(app, instances);
    assert!(before.iter().all(|p| !after.contains(p)), "{what}: every instance replaced: {before:?} -> {after:?}");
}
