//! A PM2 `deploy` section as `[deploy.NAME]` tables. The keys are PM2's own; what changes is the
//! `post-deploy` hook, whose `pm2 reload ecosystem.config.js --env production` (or
//! `startOrReload`, `startOrRestart`...) becomes `chatctl start production --reload`: start what
//! is not running, reload the rest with no downtime. A `pm2` command that is not obviously that is
//! kept as written and named in the notes.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::{toml_key, toml_string, toml_value};

/// Appends a table per deploy target of `deploy` (PM2's `deploy` object) to `text`.
pub(super) fn convert(deploy: &Value, text: &mut String, notes: &mut Vec<String>) {
    let Some(targets) = deploy.as_object() else {
        notes.push("deploy: not converted (not an object of targets)".to_owned());
        return;
    };
    let mut written = 0;
    for (name, target) in targets {
        match target.as_object() {
            Some(target) => written += usize::from(target_table(name, target, text, notes)),
            None => notes.push(format!("deploy.{name}: not converted (not an object)")),
        }
    }
    if written > 0 {
        notes.push(
            "deploy: the hosts read ecosystem.toml from each release: commit it to the repository, then \
             `chatctl deploy NAME setup` once and `chatctl deploy NAME` for each release"
                .to_owned(),
        );
    }
}

/// One target's table, or a note saying why it is left out (chatctl needs `host`, `repo` and an
/// absolute `path`, and a file it writes must load); whether it was written.
fn target_table(name: &str, target: &Map<String, Value>, text: &mut String, notes: &mut Vec<String>) -> bool {
    let path = target.get("path").and_then(Value::as_str).filter(|p| p.starts_with('/'));
    let missing: Vec<&str> = [
        ("host", target.get("host").is_none()),
        ("repo", target.get("repo").and_then(Value::as_str).is_none()),
        ("an absolute path", path.is_none()),
    ]
    .into_iter()
    .filter_map(|(what, gone)| gone.then_some(what))
    .collect();
    if !missing.is_empty() {
        notes.push(format!("deploy.{name}: not converted: it needs {}", missing.join(", ")));
        return false;
    }
    let mut lines = Vec::new();
    let mut unmapped = Vec::new();
    for (key, value) in target {
        let line = match key.as_str() {
            "user" | "repo" | "ref" | "path" | "key" | "pre-setup" | "post-setup" | "pre-deploy-local" => {
                value.as_str().map(toml_string)
            }
            "host" | "ssh_options" => match value {
                Value::String(_) | Value::Array(_) => toml_value(value),
                _ => None,
            },
            "port" => value.as_u64().or_else(|| value.as_str()?.parse().ok()).map(|p| p.to_string()),
            "post-deploy" => value.as_str().map(|hook| toml_string(&post_deploy(name, hook, notes))),
            "env" => value.as_object().and_then(|_| toml_value(value)),
            _ => None,
        };
        match line {
            Some(line) => lines.push(format!("{} = {line}", toml_key(key))),
            None => unmapped.push(key.clone()),
        }
    }
    let _ = writeln!(text, "\n[deploy.{}]", toml_key(name));
    for line in lines {
        let _ = writeln!(text, "{line}");
    }
    if !unmapped.is_empty() {
        notes.push(format!("deploy.{name}: not converted (no equivalent or not understood): {}", unmapped.join(", ")));
    }
    true
}

/// PM2's post-deploy with each obvious `pm2` command replaced by chatctl's.
fn post_deploy(name: &str, hook: &str, notes: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut rest = hook;
    loop {
        // The next `&&`, `||` or `;`: commands are converted one by one, the glue kept.
        let cut = ["&&", "||", ";"].iter().filter_map(|sep| rest.find(sep).map(|at| (at, sep.len()))).min();
        let (command, glue, after) = match cut {
            Some((at, len)) => (&rest[..at], &rest[at..at + len], &rest[at + len..]),
            None => (rest, "", ""),
        };
        let lead = &command[..command.len() - command.trim_start().len()];
        let tail = &command[command.trim_end().len()..];
        match pm2_command(command.trim()) {
            Some(Ok(chatctl)) => out.push_str(&format!("{lead}{chatctl}{tail}")),
            Some(Err(())) => {
                notes.push(format!(
                    "deploy.{name}: post-deploy still runs `{}`: replace it with the chatctl command",
                    command.trim()
                ));
                out.push_str(command);
            }
            None => out.push_str(command),
        }
        out.push_str(glue);
        if glue.is_empty() {
            return out;
        }
        rest = after;
    }
}

/// `Some(Ok(chatctl's command))` for a pm2 command with an obvious equivalent, `Some(Err)` for
/// another pm2 command, `None` for a command that is not pm2's.
fn pm2_command(command: &str) -> Option<Result<String, ()>> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let (&first, args) = words.split_first()?;
    if first != "pm2" {
        return None;
    }
    let Some((&verb, args)) = args.split_first() else { return Some(Err(())) };
    let ecosystem = |w: &str| w.ends_with(".js") || w.ends_with(".json") || w.ends_with(".cjs") || w.ends_with(".mjs");
    let converted = match (verb, args) {
        (
            "reload" | "startOrReload" | "startOrGracefulReload" | "gracefulReload" | "startOrRestart" | "start",
            [file],
        ) if ecosystem(file) => Some("chatctl start --reload".to_owned()),
        (
            "reload" | "startOrReload" | "startOrGracefulReload" | "gracefulReload" | "startOrRestart" | "start",
            [file, "--env", profile],
        ) if ecosystem(file) => Some(format!("chatctl start {profile} --reload")),
        ("reload", [app]) => Some(format!("chatctl reload {app}")),
        _ => None,
    };
    Some(converted.ok_or(()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chat_shared::ecosystem::Ecosystem;

    use super::*;

    /// PM2's documented deploy section: every key converted, the file loads, the targets resolve.
    #[test]
    fn a_pm2_deploy_section_becomes_deploy_tables() {
        let pm2 = serde_json::json!({
            "apps": [{ "name": "api", "script": "app.js" }],
            "deploy": {
                "production": {
                    "user": "node", "host": ["212.83.163.1", "212.83.163.2"], "port": "2222",
                    "ref": "origin/master", "repo": "git@github.com:repo.git", "path": "/var/www/production",
                    "ssh_options": ["StrictHostKeyChecking=no", "PasswordAuthentication=no"],
                    "key": "/path/to/some.pem",
                    "pre-setup": "apt-get install git", "post-setup": "ls -la",
                    "pre-deploy-local": "echo 'This is a local executed command'",
                    "post-deploy": "npm install && pm2 reload ecosystem.config.js --env production",
                    "env": { "NODE_ENV": "production" }, "pre-deploy": "git fetch --all"
                },
                "dev": { "host": "dev.example.org", "repo": "r", "path": "relative/dir" }
            }
        });
        let (text, notes) = super::super::convert(&pm2).expect("converts");
        let eco = Ecosystem::parse(&text, Path::new("e.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let prod = eco.deploy("production", None).expect("production");
        assert_eq!(prod.hosts, ["212.83.163.1", "212.83.163.2"]);
        assert_eq!(
            (prod.user.as_deref(), prod.port, prod.git_ref.as_str()),
            (Some("node"), Some(2222), "origin/master")
        );
        assert_eq!(prod.ssh_options.len(), 2);
        assert_eq!(prod.post_deploy.as_deref(), Some("npm install && chatctl start production --reload"));
        assert_eq!(prod.pre_deploy_local.as_deref(), Some("echo 'This is a local executed command'"));
        assert_eq!(prod.env["NODE_ENV"], "production");
        assert!(eco.deploy("dev", None).is_err(), "a relative path is not converted:\n{text}");
        for says in [
            "deploy.production: not converted (no equivalent or not understood): pre-deploy",
            "deploy.dev: not converted: it needs an absolute path",
            "deploy: the hosts read ecosystem.toml from each release",
        ] {
            assert!(notes.iter().any(|n| n.starts_with(says)), "{says} not said: {notes:#?}");
        }
    }

    #[test]
    fn obvious_pm2_commands_become_chatctls_and_the_rest_is_kept_and_named() {
        let table: &[(&str, &str, bool)] = &[
            (
                "npm install && pm2 reload ecosystem.config.js --env production",
                "npm install && chatctl start production --reload",
                false,
            ),
            ("pm2 startOrReload ecosystem.json", "chatctl start --reload", false),
            (
                "npm ci; pm2 startOrRestart ecosystem.json --env staging",
                "npm ci; chatctl start staging --reload",
                false,
            ),
            ("pm2 reload all", "chatctl reload all", false),
            ("pm2 save && echo done", "pm2 save && echo done", true),
            ("make build", "make build", false),
        ];
        for (pm2, chatctl, noted) in table {
            let mut notes = Vec::new();
            assert_eq!(post_deploy("p", pm2, &mut notes), *chatctl);
            assert_eq!(!notes.is_empty(), *noted, "{pm2}: {notes:?}");
        }
    }
}
