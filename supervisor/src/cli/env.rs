//! `env APP[:INDEX]`: the environment an instance runs with, secrets masked.
//!
//! Read from `/proc/PID/environ`, the block the kernel got at `exec`, rather than rebuilt from the
//! spec: it is exactly what `spawn` set (the app's `env`, the inherited environment, `PORT`,
//! `INSTANCE_ID`, `CHATCTL_*`, `LISTEN_FDS`, `NODE_OPTIONS`...), and a second copy of that logic
//! could only drift from it. A program's own later `setenv` does not show, as in `ps e`.

use std::borrow::Cow;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::target::InstanceTarget;
use crate::client::Client;
use crate::home::Home;

/// Parts of a variable's name that say its value is a secret (matched in upper case).
const SECRET_WORDS: [&str; 7] = ["SECRET", "TOKEN", "PASSWORD", "PASS", "KEY", "CREDENTIAL", "AUTH"];
/// What a masked value or password shows instead.
const MASK: &str = "***";

pub(super) async fn env(
    target: InstanceTarget,
    show_secrets: bool,
    json: bool,
    home: &Home,
) -> anyhow::Result<ExitCode> {
    let name = target.one_app().map_err(anyhow::Error::msg)?;
    let mut client = Client::connect(home).await.context("cannot reach the daemon")?;
    let apps = client.list().await?;
    let Some(app) = apps.iter().find(|a| a.name == name) else { bail!("no app named `{name}`") };
    let index = match (target.index, app.instances.len()) {
        (Some(index), _) => index,
        (None, 1) => 0,
        (None, n) => bail!("`{name}` has {n} instances: name one, `{name}:0` to `{name}:{}`", n.saturating_sub(1)),
    };
    let Some(instance) = app.instances.iter().find(|i| i.index == index) else {
        bail!("`{name}` has no instance {index}: it has {} instance(s), from 0", app.instances.len())
    };
    let Some(pid) = instance.pid else {
        bail!("`{name}:{index}` is {:?}: no process, so no environment to show", instance.status)
    };
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("cannot read the environment of `{name}:{index}` (pid {pid})"))?;
    let mut vars: Vec<(String, String)> = raw
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let text = String::from_utf8_lossy(entry);
            match text.split_once('=') {
                Some((key, value)) => (key.to_owned(), value.to_owned()),
                None => (text.into_owned(), String::new()),
            }
        })
        .collect();
    vars.sort();
    let shown = vars.iter().map(|(key, value)| {
        let value = if show_secrets { Cow::Borrowed(value.as_str()) } else { masked(key, value) };
        (key.as_str(), value)
    });
    if json {
        let object: serde_json::Map<String, serde_json::Value> =
            shown.map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.into_owned()))).collect();
        println!("{}", serde_json::to_string_pretty(&object)?);
    } else {
        for (key, value) in shown {
            println!("{key}={value}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `value` as `env` shows it without `--show-secrets`: all of it masked when the name looks like a
/// secret's, else only the passwords of URLs in it (`redis://:pw@host` → `redis://:***@host`).
fn masked<'a>(key: &str, value: &'a str) -> Cow<'a, str> {
    let upper = key.to_ascii_uppercase();
    if !value.is_empty() && SECRET_WORDS.iter().any(|word| upper.contains(word)) {
        return Cow::Borrowed(MASK);
    }
    if !value.contains("://") {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(scheme_end) = rest.find("://") {
        let (before, after) = rest.split_at(scheme_end + 3);
        out.push_str(before);
        // The authority ends at the path, query, fragment, or the next item of a list.
        let end = after.find(['/', '?', '#', ',', ' ', ';']).unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn secrets_are_masked() {
        for (key, value, shown) in [
            ("CHATCTL_APP_SECRET", "abc", "***"),
            ("TURN_SECRET", "s3cret", "***"),
            ("GITHUB_TOKEN", "ghp_x", "***"),
            ("DB_PASSWORD", "pw", "***"),
            ("PGPASS", "pw", "***"),
            ("api_key", "k", "***"),
            ("AWS_CREDENTIALS", "c", "***"),
            ("BASIC_AUTH", "u:p", "***"),
            ("EMPTY_SECRET", "", ""),
            ("PORT", "3000", "3000"),
            ("REDIS_URL", "redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
            ("DATABASE_URL", "postgres://app:hunter2@db/main?ssl=1", "postgres://app:***@db/main?ssl=1"),
            ("UPSTREAMS", "http://a:b@x,http://y", "http://a:***@x,http://y"),
            ("MIRROR", "https://user@host/path", "https://user@host/path"),
            ("HOME_PAGE", "https://example.org/a:b@c", "https://example.org/a:b@c"),
            ("NODE_OPTIONS", "--require /x/preload.cjs", "--require /x/preload.cjs"),
        ] {
            assert_eq!(masked(key, value), shown, "{key}={value}");
        }
    }
}
