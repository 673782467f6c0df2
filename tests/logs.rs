//! Log capture: every line exactly once through rotation, the `logs` command, formats, flush and
//! reopen.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use chat_shared::status::Phase;

use crate::support::{Env, wait_until};

/// The fixture program, done when it exits 0 (these print and stop).
fn app(name: &str, args: &[&str], extra: &str) -> String {
    crate::support::fixture_app(name, args, &format!("stop_exit_codes = [0]\n{extra}"))
}

/// Every file of a log, oldest first: the rotated ones (by name), then the current one.
fn log_files(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dir = path.parent().expect("dir");
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    let mut rotated: Vec<_> = std::fs::read_dir(dir)
        .expect("log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{name}."))))
        .collect();
    rotated.sort();
    rotated.push(path.to_owned());
    rotated
}

/// The lines of every file of a log. A file renamed by a rotation between the listing and the
/// read is skipped (seen once in CI-like runs): callers poll until the count is complete, and once
/// the writers are stopped nothing rotates any more.
fn all_lines(path: &std::path::Path) -> Vec<String> {
    log_files(path)
        .iter()
        .flat_map(|f| match std::fs::read_to_string(f) {
            Ok(text) => text.lines().map(str::to_owned).collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("log file {}: {e}", f.display()),
        })
        .collect()
}

#[test]
fn a_million_lines_from_two_instances_arrive_once_whole_and_in_order_through_rotation() {
    const PER_INSTANCE: u64 = 500_000;
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &app(
            "loud",
            &["--lines", &PER_INSTANCE.to_string(), "--exit-after", "0"],
            "instances = 2\nmax_size = \"1M\"\nretain = 1000",
        ),
    );
    env.ok(&["start", "--no-wait"]);
    let out = env.home().join("logs/loud-out.log");
    let lines = wait_until("a million lines written", Duration::from_secs(120), || {
        let apps = env.list();
        let done = apps[0].instances.iter().all(|i| i.status == Phase::Stopped);
        let lines = all_lines(&out);
        (done && lines.len() as u64 >= 2 * PER_INSTANCE).then_some(lines)
    });
    assert_eq!(lines.len() as u64, 2 * PER_INSTANCE, "no line lost or duplicated");
    let mut next: HashMap<&str, u64> = HashMap::new();
    for line in &lines {
        let mut parts = line.split(' ');
        let (Some("L"), Some(instance), Some(seq), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("a broken line: {line:?}");
        };
        let expected = next.entry(instance).or_insert(0);
        assert_eq!(seq.parse::<u64>().ok(), Some(*expected), "instance {instance} out of order");
        *expected += 1;
    }
    assert_eq!(next.len(), 2);
    let files = log_files(&out);
    assert!(files.len() > 10, "rotation at 1M happened ({} files)", files.len());
    for file in &files[..files.len() - 1] {
        assert!(std::fs::metadata(file).expect("rotated").len() <= 1 << 20, "{} over max_size", file.display());
    }
    // stderr went to its own file.
    let err = std::fs::read_to_string(env.home().join("logs/loud-error.log")).expect("error log");
    assert_eq!(err.lines().count(), 2, "{err}");
}

#[test]
fn retain_bounds_the_number_of_rotated_files() {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &app("loud", &["--lines", "200000"], "max_size = \"64K\"\nretain = 3\nmerge_logs = false"),
    );
    env.ok(&["start", "--no-wait"]);
    let out = env.home().join("logs/loud-out-0.log");
    wait_until("the last line written", Duration::from_secs(60), || {
        std::fs::read_to_string(&out).ok()?.contains("L 0 199999").then_some(())
    });
    let files = log_files(&out);
    assert_eq!(files.len(), 4, "3 rotated + the current one: {files:?}");
}

#[test]
fn logs_command_tails_follows_and_flush_and_reopen_work() {
    let env = Env::new();
    env.write("ecosystem.toml", &app("ticker", &["--tick", "20"], "log_type = \"json\""));
    env.ok(&["start"]);
    let path = env.home().join("logs/ticker-out.log");
    wait_until("ticks written", Duration::from_secs(10), || {
        (std::fs::read_to_string(&path).ok()?.lines().count() >= 5).then_some(())
    });

    // JSON records in the file.
    let first = std::fs::read_to_string(&path).expect("log").lines().next().expect("a line").to_owned();
    let record: chat_shared::ipc::LogRecord = serde_json::from_str(&first).expect("a JSON record");
    assert_eq!((record.app.as_str(), record.instance, record.message.as_str()), ("ticker", 0, "tick 0"));

    // Tail.
    let out = env.ok(&["logs", "ticker", "--lines", "3", "--out"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "a header and 3 lines: {out}");
    assert!(lines[0].starts_with("==> ") && lines[0].ends_with("ticker-out.log <=="), "{out}");

    // Follow: new lines arrive as they are written.
    let mut follow = env
        .command()
        .args(["logs", "ticker", "--follow", "--json", "--lines", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("logs --follow");
    env.remember(follow.id());
    let mut reader = BufReader::new(follow.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    let mut line = String::new();
    while seen.len() < 3 && reader.read_line(&mut line).expect("read") > 0 {
        if let Ok(record) = serde_json::from_str::<chat_shared::ipc::LogRecord>(line.trim()) {
            seen.push(record.message);
        }
        line.clear();
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen.len(), 3, "followed lines: {seen:?}");
    assert!(seen.iter().all(|m| m.starts_with("tick ")), "{seen:?}");

    // Flush empties the current file; reload-logs reopens a file moved away.
    env.ok(&["flush", "ticker"]);
    let moved = env.path("moved.log");
    std::fs::rename(&path, &moved).expect("move the log away");
    env.ok(&["reload-logs"]);
    wait_until("a new file at the old path", Duration::from_secs(10), || {
        (std::fs::read_to_string(&path).ok()?.lines().count() >= 2).then_some(())
    });
    let before_reopen = std::fs::read_to_string(&moved).expect("moved").lines().count();
    assert!(before_reopen < 50, "flushed, then only the lines until reload-logs: {before_reopen}");
}

#[test]
fn a_date_format_prefixes_every_line() {
    let env = Env::new();
    env.write(
        "ecosystem.toml",
        &app("dated", &["--lines", "3", "--exit-after", "0"], "log_date_format = \"%Y-%m-%d\""),
    );
    env.ok(&["start", "--no-wait"]);
    let path = env.home().join("logs/dated-out.log");
    let text = wait_until("lines written", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&path).ok()?;
        (text.lines().count() == 3).then_some(text)
    });
    for (i, line) in text.lines().enumerate() {
        let (date, rest) = line.split_once(": ").expect("a prefix");
        assert_eq!((date.len(), date.as_bytes()[4], rest), (10, b'-', format!("L 0 {i}").as_str()), "{line}");
    }
}
