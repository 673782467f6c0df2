//! Log faults (issue 11, item 6): a huge tail must not stop the daemon.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Env, bin, sigkill};

fn app(name: &str, args: &[&str], extra: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[apps.{name}]\nscript = \"{}\"\nargs = [{}]\nstop_exit_codes = [0]\n{extra}\n",
        bin("fixture-app").display(),
        args.join(", ")
    )
}

/// Kills `pid` after `after` unless disarmed (dropped) first: a blocking read of a child's output
/// then ends instead of hanging the test.
struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(pid: u32, after: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
                sigkill(pid);
            }
        });
        Watchdog { _disarm: tx }
    }
}

#[test]
fn list_answers_while_a_huge_tail_is_still_streaming() {
    const LINES: usize = 400_000;
    let env = Env::new();
    let log = env.path("big-out.log");
    // 40 MB of 100-byte lines, already in the app's current file.
    let mut text = String::with_capacity(LINES * 100);
    for i in 0..LINES {
        text.push_str(&format!("line {i:07} {}\n", "x".repeat(87)));
    }
    std::fs::write(&log, &text).expect("a 40 MB log");
    drop(text);
    env.write(
        "ecosystem.toml",
        &app("big", &[], &format!("out_file = {:?}\nmax_size = \"1G\"", log.display().to_string())),
    );
    env.ok(&["start"]);

    let mut logs = env
        .command()
        .args(["logs", "big", "--out", "--lines", "100000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chatctl logs");
    env.remember(logs.id());
    let _watchdog = Watchdog::arm(logs.id(), Duration::from_secs(120));
    let mut out = BufReader::new(logs.stdout.take().expect("stdout"));
    let mut header = String::new();
    out.read_line(&mut header).expect("read");
    assert!(header.starts_with("==> ") && header.trim_end().ends_with("big-out.log <=="), "{header:?}");
    let mut first = String::new();
    out.read_line(&mut first).expect("read");
    assert!(first.starts_with("line "), "the tail's first line: {first:?}");

    // Nobody reads the rest for now: the tail stops part-way (its pipe and socket are full) and must
    // stop nothing else.
    let begun = Instant::now();
    let listed = env.chatctl(&["list", "--json"]);
    let took = begun.elapsed();
    assert!(
        listed.status.success(),
        "list during a tail: {}\n{}",
        String::from_utf8_lossy(&listed.stderr),
        env.daemon_log()
    );
    assert!(logs.try_wait().expect("try_wait").is_none(), "the tail was still under way when list answered");
    eprintln!("list answered in {} ms during a 40 MB tail", took.as_millis());

    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("the rest of the tail");
    let status = logs.wait().expect("wait");
    let mut stderr = String::new();
    logs.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    assert!(status.success(), "{status}: {stderr}");
    let lines: Vec<&str> = std::iter::once(first.trim_end()).chain(rest.lines()).collect();
    assert_eq!(lines.len(), 100_000, "capped at 100000 lines: {stderr}");
    assert!(lines[0].starts_with(&format!("line {:07} ", LINES - 100_000)), "{}", lines[0]);
    assert!(lines[lines.len() - 1].starts_with(&format!("line {:07} ", LINES - 1)), "{}", lines[lines.len() - 1]);
    assert!(stderr.contains("100000"), "the cap is said: {stderr:?}");
}
