//! Memory limits: an instance over `max_memory_restart` is replaced surge-first, with no failed
//! request on the shared port.

use std::time::Duration;

use crate::support::{Env, alive, bin, wait_until};
use chat_bench::load::Load;

#[test]
fn an_instance_over_its_memory_limit_is_replaced_before_it_stops_and_no_request_fails() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write(
        "ecosystem.toml",
        &format!(
            r#"
[apps.hungry]
script = "{}"
args = ["--serve", "--grow-on-usr1", "64"]
port = {port}
instances = 2
exec_mode = "cluster"
kill_timeout = "2s"
max_memory_restart = "48M"
memory_check_interval = "200ms"
"#,
            bin("fixture-app").display()
        ),
    );
    env.ok(&["start"]);
    let pids = env.online_pids("hungry", 2);
    let load = Load::start(([127, 0, 0, 1], port).into(), 2);
    load.wait_for(200);

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), nix::sys::signal::Signal::SIGUSR1)
        .expect("SIGUSR1");
    let replaced = wait_until("instance 0 replaced", Duration::from_secs(20), || {
        let i = env.list()[0].instances[0].clone();
        (i.pid.is_some_and(|p| p != pids[0]) && i.status == chat_shared::status::Phase::Online).then_some(i)
    });
    load.wait_for(200);
    let (ok, refused, failed) = load.stop();
    eprintln!("memory replacement under load: {ok} ok, {refused} refused, {failed} failed");
    assert_eq!((refused, failed), (0, 0), "capacity never dropped");
    let note = replaced.note.unwrap_or_default();
    assert!(note.starts_with("replaced: memory ") && note.ends_with("over max_memory_restart 48M"), "{note}");
    assert_eq!(replaced.restarts, 1);
    assert!(!alive(pids[0]), "the old process is gone");
    assert_eq!(env.list()[0].instances[1].pid, Some(pids[1]), "the other instance is untouched");
    let log = env.daemon_log();
    let order = [
        "replacing: starting a successor first",
        "successor online: stopping the process it replaces",
        "replacement done",
    ];
    let positions: Vec<usize> =
        order.iter().map(|m| log.find(m).unwrap_or_else(|| panic!("{m:?} not logged:\n{log}"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "surge first, then stop, then swap: {positions:?}");
}
