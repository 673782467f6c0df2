//! Running one step's script on one host with the system `ssh` (and a local hook with `sh`): the user's keys, agent and
//! `known_hosts`, never a prompt (`BatchMode=yes`, which the file's `ssh_options` cannot undo:
//! ssh keeps the first value it is given for an option). Lines are handed over as they arrive.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use chat_shared::ecosystem::DeploySpec;

/// How long ssh may take to connect before the step fails (the file's options may say otherwise).
const CONNECT_TIMEOUT: &str = "ConnectTimeout=20";
/// ssh's exit status for its own failures (connection, authentication), not the script's.
pub(super) const SSH_FAILED: i32 = 255;

/// `ssh` with every option of `spec`, to run `sh -s` (the script on stdin) on `host`.
pub(super) fn command(spec: &DeploySpec, host: &str) -> Command {
    let mut ssh = Command::new("ssh");
    ssh.args(["-T", "-o", "BatchMode=yes"]);
    if let Some(port) = spec.port {
        ssh.arg("-p").arg(port.to_string());
    }
    if let Some(key) = &spec.key {
        ssh.arg("-i").arg(key);
    }
    match spec.forward_agent {
        Some(true) => ssh.arg("-A"),
        Some(false) => ssh.arg("-a"),
        None => &mut ssh,
    };
    for option in &spec.ssh_options {
        ssh.arg("-o").arg(option);
    }
    ssh.args(["-o", CONNECT_TIMEOUT, "-o", "ServerAliveInterval=15"]);
    // `--`: the checks refuse a host starting with '-', and this makes sure of it.
    ssh.arg("--").arg(destination(spec.user.as_deref(), host)).arg("sh -s");
    ssh
}

/// `[user@]host` for ssh; a host that names its own user, or an `ssh://` address, keeps its form.
fn destination(user: Option<&str>, host: &str) -> String {
    let (scheme, rest) = match host.strip_prefix("ssh://") {
        Some(rest) => ("ssh://", rest),
        None => ("", host),
    };
    match user {
        Some(user) if !rest.contains('@') => format!("{scheme}{user}@{rest}"),
        _ => host.to_owned(),
    }
}

/// Runs `command` with `input` on its stdin (none: `/dev/null`), calling `on_line` with each line
/// it prints (stdout and stderr: for ssh, the script's output then ssh's own messages) as it comes;
/// returns the exit code (`None`: killed by a signal).
pub(super) fn stream(
    mut command: Command,
    input: Option<String>,
    mut on_line: impl FnMut(&str),
) -> std::io::Result<Option<i32>> {
    let stdin = if input.is_some() { Stdio::piped() } else { Stdio::null() };
    let mut child = command.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stdin = child.stdin.take();
    // Written from a thread: a script larger than the pipe would otherwise wait for us to read.
    let writer = std::thread::spawn(move || {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // A host that hung up early shows in the exit status and ssh's message.
            let _ = stdin.write_all(input.as_bytes());
        }
    });
    let (lines, receive) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>)]
        .into_iter()
        .chain([child.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>)])
        .flatten()
        .map(|pipe| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                    let _ = lines.send(String::from_utf8_lossy(&line).trim_end_matches('\r').to_owned());
                }
            })
        })
        .collect();
    drop(lines);
    for line in receive {
        on_line(&line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    let _ = writer.join();
    Ok(child.wait()?.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_goes_where_ssh_reads_it() {
        assert_eq!(destination(Some("u"), "h"), "u@h");
        assert_eq!(destination(Some("u"), "v@h"), "v@h");
        assert_eq!(destination(Some("u"), "ssh://h:2222"), "ssh://u@h:2222");
        assert_eq!(destination(None, "ssh://h:2222"), "ssh://h:2222");
    }

    #[test]
    fn batch_mode_comes_first_and_the_destination_after_the_options() {
        let spec = super::super::test_spec(
            "user = \"deploy\"\nhost = \"web1\"\nport = 2222\nkey = \"/k/id\"\nforward_agent = true\n\
             ssh_options = [\"BatchMode=no\", \"StrictHostKeyChecking=yes\"]\nrepo = \"r\"\npath = \"/srv\"",
        );
        let ssh = command(&spec, "web1");
        let args: Vec<_> = ssh.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "-T",
                "-o",
                "BatchMode=yes",
                "-p",
                "2222",
                "-i",
                "/k/id",
                "-A",
                "-o",
                "BatchMode=no",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                CONNECT_TIMEOUT,
                "-o",
                "ServerAliveInterval=15",
                "--",
                "deploy@web1",
                "sh -s"
            ]
        );
    }
}
