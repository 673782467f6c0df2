//! `chatctl monit` in a real terminal (tmux): the table shows the real pids, `r` restarts the
//! selected instance, `q` restores the terminal.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::{Env, bin, wait_until};

/// A private tmux server, killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-S").arg(&self.socket);
        command
    }

    fn screen(&self) -> String {
        let out = self.command().args(["capture-pane", "-p", "-t", "t"]).output().expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = self.command().args(["send-keys", "-t", "t"]).args(keys).status().expect("send-keys");
        assert!(status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

#[test]
fn monit_shows_real_pids_restarts_the_selected_instance_and_restores_the_terminal() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &crate::support::chat_app(port, "cluster", 2, ""));
    env.ok(&["start"]);
    dashboard(&env);
}

/// The daemon's next image (`chatctl update`) serves the dashboard as the first did.
#[test]
fn monit_works_after_an_update() {
    let env = Env::new();
    let port = crate::support::free_port();
    env.write("ecosystem.toml", &crate::support::chat_app(port, "cluster", 2, ""));
    env.ok(&["start"]);
    let out = env.ok(&["update"]);
    assert!(out.contains("updated in place"), "{out}");
    dashboard(&env);
}

/// Opens `monit` on the 2-instance app `chat`, restarts instance 1 from it, quits.
fn dashboard(env: &Env) {
    let pids = env.online_pids("chat", 2);
    let tmux = Tmux { socket: env.path("tmux.sock") };
    // A shell in a 120x32 terminal, so that quitting shows its prompt again.
    let status = tmux
        .command()
        .args(["new-session", "-d", "-s", "t", "-x", "120", "-y", "32", "env", "PS1=READY$ ", "sh"])
        .env("CHATCTL_HOME", env.home())
        .status()
        .expect("tmux (install it: apt-get install tmux)");
    assert!(status.success());
    tmux.keys(&[&format!("CHATCTL_HOME={} {} monit", env.home().display(), bin("chatctl").display()), "Enter"]);
    wait_until("the dashboard shows both pids", Duration::from_secs(20), || {
        let screen = tmux.screen();
        (screen.contains(&pids[0].to_string())
            && screen.contains(&pids[1].to_string())
            && screen.contains("2/2 online"))
        .then_some(())
    });
    tmux.keys(&["j", "r"]);
    let new_pid = wait_until("instance 1 restarted", Duration::from_secs(20), || {
        let i = env.list()[0].instances[1].clone();
        i.pid.filter(|p| *p != pids[1] && i.status == chat_shared::status::Phase::Online)
    });
    wait_until("the new pid on screen", Duration::from_secs(20), || {
        tmux.screen().contains(&new_pid.to_string()).then_some(())
    });
    assert_eq!(env.list()[0].instances[0].pid, Some(pids[0]), "only the selected instance restarted");
    tmux.keys(&["q"]);
    wait_until("the shell back, the dashboard gone", Duration::from_secs(10), || {
        let screen = tmux.screen();
        (screen.contains("READY$") && !screen.contains("chatctl monit   daemon pid")).then_some(())
    });
}

#[test]
fn monit_says_clearly_when_no_daemon_runs() {
    let env = Env::new();
    let out = env.chatctl(&["monit"]);
    assert!(!out.status.success());
    assert!(crate::support::stderr(&out).contains("no daemon to monitor"), "{}", crate::support::stderr(&out));
}
