//! Everyday verbs on one instance: `APP:INDEX` targets for stop, restart and signal, `chatctl
//! signal`, and `chatctl env` with its masking.

use std::time::Duration;

use chat_shared::status::Phase;

use crate::support::{Env, bin, run_bounded, stderr, wait_until};

/// Two instances of the fixture that print `usr2 <instance>` on SIGUSR2, with a secret, a URL with
/// a password and a plain value in their `env`.
fn two_instances(env: &Env) {
    env.write(
        "ecosystem.toml",
        &format!(
            "[apps.web]\nscript = \"{}\"\nargs = [\"--say-on-usr2\"]\ninstances = 2\nkill_timeout = \"2s\"\n\
             env = {{ API_TOKEN = \"tok123\", CACHE_URL = \"redis://:pw@127.0.0.1:1/0\", PLAIN = \"x\" }}\n",
            bin("fixture-app").display()
        ),
    );
    env.ok(&["start"]);
}

fn out_log(env: &Env) -> String {
    std::fs::read_to_string(env.home().join("logs").join("web-out.log")).unwrap_or_default()
}

#[test]
fn signal_reaches_the_named_instance_only_and_a_bad_target_is_refused() {
    let env = Env::new();
    two_instances(&env);
    let pids = env.online_pids("web", 2);

    let said = env.ok(&["signal", "SIGUSR2", "web:1"]);
    assert!(said.contains(&format!("SIGUSR2 sent to web:1 (pid {})", pids[1])), "{said}");
    wait_until("instance 1 printed its SIGUSR2", Duration::from_secs(10), || {
        out_log(&env).contains("usr2 1").then_some(())
    });
    assert!(!out_log(&env).contains("usr2 0"), "instance 0 got the signal too:\n{}", out_log(&env));

    // Without an index: every instance; the name without its prefix, in any case.
    env.ok(&["signal", "usr2", "web"]);
    wait_until("instance 0 printed its SIGUSR2", Duration::from_secs(10), || {
        out_log(&env).contains("usr2 0").then_some(())
    });
    assert_eq!(env.online_pids("web", 2), pids, "a signal the program handles restarts nothing");

    for (args, says) in [
        (&["signal", "SIGSEGV", "web"][..], "not a signal chatctl sends"),
        (&["signal", "USR2", "web:x"], "INDEX an instance number"),
        (&["signal", "USR2", "web:2"], "it has 2 instances, 0 to 1"),
        (&["signal", "USR2", "nope"], "no app named `nope`"),
        (&["signal", "USR2", "all"], "name one app"),
        (&["stop", "web:5"], "it has 2 instances, 0 to 1"),
        (&["restart", "all:0"], "`all` takes no instance"),
    ] {
        let out = env.chatctl(args);
        assert!(!out.status.success(), "chatctl {args:?} succeeded");
        assert!(stderr(&out).contains(says), "chatctl {args:?}: {}", stderr(&out));
    }
}

#[test]
fn restart_and_stop_of_one_instance_leave_the_other_running() {
    let env = Env::new();
    two_instances(&env);
    let pids = env.online_pids("web", 2);

    env.ok(&["restart", "web:0"]);
    let after = env.online_pids("web", 2);
    assert_ne!(after[0], pids[0], "instance 0 has a new process");
    assert_eq!(after[1], pids[1], "instance 1 kept its process");

    let said = env.ok(&["stop", "web:1"]);
    assert!(said.contains("stopped: web:1"), "{said}");
    let apps = env.list();
    let states: Vec<(Phase, Option<u32>)> = apps[0].instances.iter().map(|i| (i.status, i.pid)).collect();
    assert_eq!(states, [(Phase::Online, Some(after[0])), (Phase::Stopped, None)]);

    let out = env.chatctl(&["signal", "USR2", "web:1"]);
    assert!(!out.status.success() && stderr(&out).contains("`web:1` is running: no process"), "{}", stderr(&out));
    let out = env.chatctl(&["env", "web:1"]);
    assert!(!out.status.success() && stderr(&out).contains("no process"), "{}", stderr(&out));
}

#[test]
fn env_shows_what_the_instance_got_with_secrets_masked() {
    let env = Env::new();
    two_instances(&env);
    env.online_pids("web", 2);

    let shown = env.ok(&["env", "web:1"]);
    let lines: Vec<&str> = shown.lines().collect();
    for want in [
        "INSTANCE_ID=1",
        "CHATCTL_INSTANCE=1",
        "CHATCTL_APP=web",
        "PLAIN=x",
        "API_TOKEN=***",
        "CHATCTL_APP_SECRET=***",
        "CACHE_URL=redis://:***@127.0.0.1:1/0",
    ] {
        assert!(lines.contains(&want), "no {want:?} in:\n{shown}");
    }
    assert!(!shown.contains("tok123") && !shown.contains(":pw@"), "a secret shows:\n{shown}");

    let revealed = env.ok(&["env", "web:1", "--show-secrets", "--json"]);
    let vars: std::collections::BTreeMap<String, String> = serde_json::from_str(&revealed).expect("env --json parses");
    assert_eq!(vars.get("API_TOKEN").map(String::as_str), Some("tok123"));
    assert_eq!(vars.get("CACHE_URL").map(String::as_str), Some("redis://:pw@127.0.0.1:1/0"));
    assert_eq!(vars.get("INSTANCE_ID").map(String::as_str), Some("1"));

    let out = env.chatctl(&["env", "web"]);
    assert!(!out.status.success() && stderr(&out).contains("name one, `web:0` to `web:1`"), "{}", stderr(&out));
}

#[test]
fn cron_restart_reloads_the_app_on_its_schedule_and_leaves_a_stopped_app_alone() {
    let env = Env::new();
    // Six fields, seconds first: every two seconds, so no clock needs faking.
    env.write(
        "ecosystem.toml",
        &format!(
            "[apps.timed]\nscript = \"{}\"\ninstances = 2\nkill_timeout = \"2s\"\ncron_restart = \"*/2 * * * * *\"\n",
            bin("fixture-app").display()
        ),
    );
    env.ok(&["start"]);
    let mut seen = vec![env.online_pids("timed", 2)];
    for round in 1..=2 {
        let before = seen[seen.len() - 1].clone();
        let after = wait_until(&format!("cron reload {round}"), Duration::from_secs(15), || {
            let pids = env.online_pids("timed", 2);
            pids.iter().all(|p| !before.contains(p)).then_some(pids)
        });
        seen.push(after);
    }
    let apps = env.list();
    assert!(
        apps[0].instances.iter().all(|i| i.note.as_deref() == Some("replaced: reload")),
        "a scheduled restart is a rolling reload (each successor ready before its predecessor stops): {:?}",
        apps[0].instances
    );
    let log = env.daemon_log();
    assert!(log.contains("cron_restart: reloading"), "{log}");

    env.ok(&["stop", "timed"]);
    // Past more than one fire time: nothing starts it again.
    std::thread::sleep(Duration::from_millis(2500));
    let apps = env.list();
    assert!(apps[0].instances.iter().all(|i| i.status == Phase::Stopped), "{:?}", apps[0].instances);
}

#[test]
fn import_converts_cron_restart_wait_ready_and_time_and_names_deploy() {
    let env = Env::new();
    env.write(
        "pm2.json",
        &serde_json::json!({
            "apps": [{
                "name": "api", "script": bin("fixture-app").display().to_string(), "interpreter": "none",
                "node_args": "--max-old-space-size=256", "cron_restart": "0 4 * * *",
                "exp_backoff_restart_delay": 250, "time": true
            }],
            "deploy": { "production": { "user": "node", "host": ["example.org"], "ref": "origin/main" } }
        })
        .to_string(),
    );
    let said = env.ok(&["import", "pm2.json", "-o", "converted.toml"]);
    assert!(said.contains("deploy.production: not converted: it needs repo"), "{said}");
    let text = std::fs::read_to_string(env.path("converted.toml")).expect("written");
    for line in [
        "cron_restart = \"0 4 * * *\"",
        "restart_delay = \"250ms\"",
        "log_date_format = \"%Y-%m-%dT%H:%M:%S\"",
        "interpreter_args = [\"--max-old-space-size=256\"]",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    // What was written starts as it is.
    env.ok(&["start", "-c", "converted.toml"]);
    env.online_pids("api", 1);
}

#[test]
fn reload_keeps_the_started_environment_unless_update_env() {
    let env = Env::new();
    let config = |plain: &str| {
        format!(
            "[apps.envy]\nscript = \"{}\"\nkill_timeout = \"2s\"\nenv = {{ PLAIN = \"{plain}\" }}\n",
            bin("fixture-app").display()
        )
    };
    let chatctl_with = |shell: &str, args: &[&str]| {
        let out = run_bounded(env.command().env("FROM_SHELL", shell).args(args), Duration::from_secs(60));
        assert!(out.status.success(), "chatctl {args:?}: {}\n{}", stderr(&out), env.daemon_log());
    };
    let shown = || {
        let text = env.ok(&["env", "envy", "--json"]);
        let vars: std::collections::BTreeMap<String, String> = serde_json::from_str(&text).expect("env --json");
        (vars.get("FROM_SHELL").cloned().unwrap_or_default(), vars.get("PLAIN").cloned().unwrap_or_default())
    };
    env.write("ecosystem.toml", &config("one"));
    chatctl_with("start", &["start"]);
    let first = env.online_pids("envy", 1);
    assert_eq!(shown(), ("start".to_owned(), "one".to_owned()));

    // From another shell and another directory: the file's table is read again, the shell's is not.
    env.write("ecosystem.toml", &config("two"));
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let out = run_bounded(
        env.command().current_dir(&elsewhere).env("FROM_SHELL", "reload").args(["reload", "envy"]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "reload: {}", stderr(&out));
    let second = wait_until("a new process", Duration::from_secs(15), || {
        let pids = env.online_pids("envy", 1);
        (pids != first).then_some(pids)
    });
    assert_eq!(shown(), ("start".to_owned(), "two".to_owned()));

    chatctl_with("updated", &["reload", "envy", "--update-env"]);
    wait_until("a third process", Duration::from_secs(15), || {
        let pids = env.online_pids("envy", 1);
        (pids != second).then_some(())
    });
    assert_eq!(shown(), ("updated".to_owned(), "two".to_owned()));
}

#[test]
fn logs_and_describe_of_one_instance() {
    let env = Env::new();
    let fixture = bin("fixture-app");
    env.write(
        "ecosystem.toml",
        &format!(
            "[apps.apart]\nscript = \"{f}\"\nargs = [\"--lines\", \"3\"]\ninstances = 2\nmerge_logs = false\n\
             [apps.mixed]\nscript = \"{f}\"\nargs = [\"--lines\", \"3\"]\ninstances = 2\nlog_type = \"json\"\n",
            f = fixture.display()
        ),
    );
    env.ok(&["start"]);
    env.online_pids("apart", 2);
    env.online_pids("mixed", 2);
    for app in ["apart", "mixed"] {
        let text = wait_until(&format!("{app}:1's lines"), Duration::from_secs(10), || {
            let text = env.ok(&["logs", &format!("{app}:1"), "-n", "20", "--out"]);
            text.contains("L 1 2").then_some(text)
        });
        assert!(!text.contains("L 0 "), "{app}:1 shows instance 0's lines:\n{text}");
        wait_until(&format!("{app}: every instance's lines without an index"), Duration::from_secs(10), || {
            let all = env.ok(&["logs", app, "-n", "20", "--out"]);
            (all.contains("L 0 2") && all.contains("L 1 2")).then_some(())
        });
    }

    let one = env.ok(&["describe", "apart:1"]);
    assert!(one.contains("\ninstance 1:") && !one.contains("\ninstance 0:"), "{one}");
    for args in [&["logs", "apart:2"][..], &["describe", "apart:7"]] {
        let out = env.chatctl(args);
        assert!(!out.status.success() && stderr(&out).contains("has no instance"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn reload_of_one_instance_replaces_it_alone_surge_first() {
    let env = Env::new();
    two_instances(&env);
    let pids = env.online_pids("web", 2);
    let said = env.ok(&["reload", "web:1"]);
    assert!(said.contains("web[1]: starting a new process beside pid"), "{said}");
    assert!(said.contains("reloaded web: 1 replaced, 0 added, 0 removed") && !said.contains("web[0]"), "{said}");
    let after = env.online_pids("web", 2);
    assert_eq!(after[0], pids[0], "instance 0 kept its process");
    assert_ne!(after[1], pids[1], "instance 1 has a new process");
    for (args, says) in [
        (&["reload", "web:2"][..], "it has 2 instances, 0 to 1"),
        (&["reload", "web:1", "--build"], "replaces one instance"),
        (&["reload", "all:1"], "`all` takes no instance"),
    ] {
        let out = env.chatctl(args);
        assert!(!out.status.success() && stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}
