//! Programs started on their own, as `pm2 start app.js -i 4` does: no ecosystem file, kept like any
//! other app, reloaded by name from any directory.

use std::net::SocketAddr;
use std::time::Duration;

use chat_bench::load::Load;

use crate::support::{Env, free_port, http_get, stderr, tests_dir};

#[test]
fn a_program_without_a_health_route_started_on_its_own_comes_online_and_reloads_by_name_from_anywhere() {
    let env = Env::new();
    let port = free_port();
    let script = tests_dir().join("apps/not-found.js");
    let script = script.to_str().expect("utf-8 path");
    // No ecosystem file here: the program is all there is.
    let out = env.ok(&["start", script, "-i", "2", "--port", &port.to_string()]);
    assert!(out.contains("not-found"), "{out}");
    let pids = env.online_pids("not-found", 2);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, body) = http_get(addr, "/").expect("the program answers on its port");
    assert_eq!(status, 404, "{body}");
    let app = &env.list()[0];
    assert_eq!(app.exec_mode, chat_shared::ecosystem::ExecMode::Cluster, "-i with a port shares it");

    // `reload NAME` from another directory, under load: the same program, every instance replaced.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let load = Load::mixed(vec![addr], "/health", 1, 1);
    let reload = env.command().args(["reload", "not-found"]).current_dir(elsewhere.path()).output().expect("reload");
    std::thread::sleep(Duration::from_millis(200));
    let (_, refused, _) = load.stop();
    assert!(reload.status.success(), "{}", stderr(&reload));
    assert_eq!(refused, 0);
    let after = env.online_pids("not-found", 2);
    assert!(pids.iter().all(|p| !after.contains(p)), "replaced: {pids:?} -> {after:?}");

    // A command with spaces is a program too.
    env.ok(&["start", "sleep 600", "--name", "sleeper"]);
    env.online_pids("sleeper", 1);
    // A bare word that names no file is a profile, and a program's option with it is refused.
    let out = env.chatctl(&["start", "staging", "-i", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("reads as a profile"), "{}", stderr(&out));
}
