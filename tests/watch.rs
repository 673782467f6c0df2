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
