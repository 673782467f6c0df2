//! Watch mode: a change restarts once; the app's own log writes never do.

use std::time::Duration;

use crate::support::{Env, bin, wait_until};

#[test]
fn touching_a_watched_file_restarts_once_and_log_writes_never_do() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).expect("src dir");
    std::fs::create_dir_all(env.path("target")).expect("target dir");
    env.write("src/app.txt", "v1");
    env.write(
        "ecosystem.toml",
        &format!(
            // The whole app directory is watched, and the app logs into it, a line every 10 ms.
            "[apps.dev]\nscript = \"{}\"\nargs = [\"--tick\", \"10\"]\nwatch = true\nwatch_delay = \"100ms\"\nout_file = \"logs/dev.log\"\n",
            bin("fixture-app").display()
        ),
    );
    env.ok(&["start"]);
    let pid = env.online_pids("dev", 1)[0];
    let log = env.path("logs/dev.log");
    wait_until("the app logging into the watched tree", Duration::from_secs(10), || {
        (std::fs::read_to_string(&log).ok()?.lines().count() > 30).then_some(())
    });
    env.write("target/build.out", "ignored too");
    // Nothing to wait for but time: the absence of a restart. Several debounce periods.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(env.list()[0].instances[0].restarts, 0, "log writes and target/ must not restart");

    env.write("src/app.txt", "v2");
    let new_pid = wait_until("restarted after the change", Duration::from_secs(10), || {
        let i = env.list()[0].instances[0].clone();
        (i.restarts == 1 && i.pid.is_some_and(|p| p != pid)).then_some(i.pid)
    });
    std::thread::sleep(Duration::from_millis(800));
    let i = env.list()[0].instances[0].clone();
    assert_eq!((i.restarts, i.pid), (1, new_pid), "one change, one restart");
    assert!(env.daemon_log().contains("files changed: restarting"));
}

/// Development mode with a build (the issue: editing a source restarted the old binary). A change
/// builds first (a build of about a second), then reloads on success: the new version serves; a
/// failing build leaves the previous version serving and says so in `list`, its output in the logs.
#[test]
fn a_change_is_built_then_reloaded_and_a_failing_build_keeps_the_running_version() {
    let env = Env::new();
    let version = built_app(&env);
    assert_eq!(version().as_deref(), Some("v1"));

    env.write("src/version.txt", "v2");
    wait_until("the new build serving", Duration::from_secs(20), || (version().as_deref() == Some("v2")).then_some(()));
    let pid = env.online_pids("dev", 1)[0];

    env.write("src/version.txt", "broken");
    let note = wait_until("the failed build in list", Duration::from_secs(20), || {
        env.list()[0].build.clone().filter(|b| b.contains("build failed"))
    });
    assert!(note.contains("exit 1") && note.contains("previous version keeps serving"), "{note}");
    assert_eq!(version().as_deref(), Some("v2"), "the running version keeps serving");
    assert_eq!(env.online_pids("dev", 1), vec![pid], "nothing was restarted");
    let logs = env.ok(&["logs", "dev", "-n", "50"]);
    assert!(logs.contains("build: the source is broken"), "the build's output is in the app's logs:\n{logs}");

    env.write("src/version.txt", "v3");
    wait_until("the fixed build serving", Duration::from_secs(20), || {
        (version().as_deref() == Some("v3")).then_some(())
    });
    wait_until("the failure cleared", Duration::from_secs(5), || env.list()[0].build.is_none().then_some(()));
}

/// A development app (`watch` + `build`) whose `/health` says which build it runs, started; the
/// closure reads that version. `build.sh` takes a second; a stopped instance lingers `linger.txt`
/// milliseconds (if there is one) before it exits, which makes its reloads as slow as needed.
fn built_app(env: &Env) -> impl Fn() -> Option<String> {
    use std::net::SocketAddr;
    let port = crate::support::free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for dir in ["src", "built"] {
        std::fs::create_dir_all(env.path(dir)).expect("dir");
    }
    env.write("src/version.txt", "v1");
    env.write("built/version.txt", "v1");
    env.write(
        "build.sh",
        "sleep 1\nif grep -q broken src/version.txt; then echo 'build: the source is broken' >&2; exit 1; fi\n\
         mkdir -p built && cp src/version.txt built/version.txt\necho 'build: done'\n",
    );
    env.write(
        "ecosystem.toml",
        &format!(
            "[apps.dev]\nscript = \"{}\"\nport = {port}\nwatch = [\"src\"]\nwatch_delay = \"100ms\"\nbuild = \"sh build.sh\"\n\
             kill_timeout = \"5s\"\nhealth = {{ path = \"/health\", interval = \"300ms\", timeout = \"300ms\" }}\n",
            crate::support::tests_dir().join("apps/versioned.js").display()
        ),
    );
    env.ok(&["start"]);
    move || {
        let (_, body) = crate::support::http_get(addr, "/health").ok()?;
        let health: serde_json::Value = serde_json::from_str(&body).ok()?;
        health["version"].as_str().map(str::to_owned)
    }
}

/// A build that succeeds while another reload of its app is under way (an operator's) is reloaded
/// once that one ends: never dropped, never run beside it.
#[test]
fn a_build_finished_during_another_reload_is_reloaded_after_it() {
    let env = Env::new();
    let version = built_app(&env);
    assert_eq!(version().as_deref(), Some("v1"));
    // The operator's reload takes 2.5 s (the instance it replaces lingers); the build ends
    // within it.
    env.write("linger.txt", "2500");
    let mut operator =
        env.command().args(["reload", "dev"]).stdout(std::process::Stdio::null()).spawn().expect("reload");
    wait_until("the operator's reload under way", Duration::from_secs(10), || {
        env.daemon_log().contains("reload begins").then_some(())
    });
    env.write("src/version.txt", "v2");
    wait_until("the build's reload waiting", Duration::from_secs(10), || {
        env.daemon_log().contains("built; reloading once the reload under way ends").then_some(())
    });
    let status = crate::support::wait_until("the operator's reload", Duration::from_secs(20), || {
        operator.try_wait().ok().flatten()
    });
    assert!(status.success(), "the operator's reload succeeded");
    wait_until("the new build serving", Duration::from_secs(20), || (version().as_deref() == Some("v2")).then_some(()));
}
