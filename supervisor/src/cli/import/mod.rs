//! `import`: a PM2 ecosystem file (`ecosystem.config.js` through `node`, or JSON) converted to
//! `ecosystem.toml`, every option it knows mapped and the others listed.
//!
//! A JavaScript file is code: reading it means running it with `node`, with the caller's
//! privileges. `--help` and the command's output say so. Every value and key written to the TOML
//! is quoted by the `toml` crate, so no string of the PM2 file can add keys or tables.

mod deploy;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chat_shared::ecosystem::Ecosystem;
use serde_json::{Map, Value};

pub(super) fn import(source: &Path, output: &Path, force: bool) -> anyhow::Result<ExitCode> {
    if output.exists() && !force {
        bail!("{} exists; --force overwrites it", output.display());
    }
    let pm2 = read(source)?;
    let (text, notes) = convert(&pm2)?;
    // What we write must be what we accept.
    if let Err(e) = Ecosystem::parse(&text, output) {
        bail!("the converted file does not validate (please report this):\n{e}\n\n{text}");
    }
    std::fs::write(output, &text).with_context(|| format!("cannot write {}", output.display()))?;
    println!("wrote {}", output.display());
    if is_js(source) {
        println!("  (read by executing {} with node)", source.display());
    }
    for note in &notes {
        println!("  {note}");
    }
    Ok(ExitCode::SUCCESS)
}

fn is_js(source: &Path) -> bool {
    source.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "js" | "cjs" | "mjs"))
}

/// The PM2 file as JSON: `.json` directly, JavaScript through `node`.
fn read(source: &Path) -> anyhow::Result<Value> {
    let text = if is_js(source) {
        eprintln!(
            "executing {} with node to read it (it runs with your privileges: import only files you trust)",
            source.display()
        );
        let path = std::path::absolute(source)?;
        let script = "import(require('url').pathToFileURL(process.argv[1]).href).then(m => \
                      console.log(JSON.stringify(m.default ?? m))).catch(e => { console.error(e.message); process.exit(1) })";
        let out = std::process::Command::new("node")
            .args(["-e", script])
            .arg(&path)
            .output()
            .context("reading a .js ecosystem file needs node; or export it: node -e \"console.log(JSON.stringify(require('./ecosystem.config.js')))\" > ecosystem.json")?;
        if !out.status.success() {
            bail!("node could not load {}: {}", source.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        String::from_utf8(out.stdout).context("node printed something that is not UTF-8")?
    } else {
        std::fs::read_to_string(source).with_context(|| format!("cannot read {}", source.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not a PM2 ecosystem (JSON)", source.display()))
}

/// PM2 milliseconds (a number) or a duration string, as ours.
fn duration(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => {
            n.as_u64().map(|ms| if ms % 1000 == 0 { format!("{}s", ms / 1000) } else { format!("{ms}ms") })
        }
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn toml_value(value: &Value) -> Option<String> {
    let value: toml::Value = serde_json::from_value(value.clone()).ok()?;
    Some(value.to_string())
}

/// A TOML string literal of `text`, escaped by the `toml` crate.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// `text` as one TOML key: bare when it can be, else quoted (a `.` or `]` in a PM2 app name must
/// not open another table). Keys cannot be multi-line strings, so the `toml` crate's own key
/// rendering is taken from a one-key table.
fn toml_key(text: &str) -> String {
    let mut table = toml::Table::new();
    table.insert(text.to_owned(), toml::Value::Boolean(true));
    let line = toml::to_string(&table).unwrap_or_default();
    line.trim_end().strip_suffix(" = true").unwrap_or(text).to_owned()
}

/// Whether the PM2 app runs through node (its `interpreter`, else a JavaScript script), where
/// `process.send` exists.
fn runs_node(app: &Map<String, Value>, script: &str) -> bool {
    match app.get("interpreter").and_then(Value::as_str) {
        Some("none") => false,
        Some(interpreter) => interpreter.rsplit('/').next().is_some_and(|n| matches!(n, "node" | "nodejs")),
        None => [".js", ".cjs", ".mjs"].iter().any(|ext| script.ends_with(ext)),
    }
}

/// Converts; returns the file's text and what the operator should know.
pub(crate) fn convert(pm2: &Value) -> anyhow::Result<(String, Vec<String>)> {
    let mut notes = Vec::new();
    let apps = apps_of(pm2, &mut notes)?;
    let mut text = String::from("# Converted from a PM2 ecosystem file by `chatctl import`.\n");
    for (n, app) in apps.iter().enumerate() {
        let app = app.as_object().with_context(|| format!("apps[{n}] is not an object"))?;
        convert_app(n, app, &mut text, &mut notes);
    }
    if let Some(targets) = pm2.get("deploy") {
        deploy::convert(targets, &mut text, &mut notes);
    }
    Ok((text, notes))
}

/// The file's apps; what else it holds is named in `notes`, never dropped silently.
fn apps_of(pm2: &Value, notes: &mut Vec<String>) -> anyhow::Result<Vec<Value>> {
    match pm2 {
        Value::Object(o) => {
            // Beside `apps`, a PM2 file may hold `deploy` (converted by `convert`) and nothing
            // else PM2 reads.
            for key in o.keys().filter(|k| !matches!(k.as_str(), "apps" | "deploy")) {
                notes.push(format!("{key}: not converted (not an app setting)"));
            }
            o.get("apps").and_then(Value::as_array).cloned().context("no `apps` array")
        }
        Value::Array(a) => Ok(a.clone()),
        _ => bail!("expected {{ apps: [...] }}"),
    }
}

/// A PM2 value that lists words: a string split on whitespace, or an array of strings.
fn words(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// What one PM2 key becomes.
enum Mapped<'k> {
    /// This `ecosystem.toml` key with this TOML value.
    To(&'k str, String),
    /// Nothing to write (handled elsewhere, or PM2's default is ours).
    Skip,
    /// `env_NAME`: the environment of profile NAME.
    Profile(String, Map<String, Value>),
    /// No equivalent, or a value not understood: listed for the operator.
    Unmapped,
}

/// One app's table (and its profiles' tables) appended to `text`.
fn convert_app(n: usize, app: &Map<String, Value>, text: &mut String, notes: &mut Vec<String>) {
    let name = app.get("name").and_then(Value::as_str).map_or_else(|| format!("app{n}"), str::to_owned);
    let mut keys: BTreeMap<&str, String> = BTreeMap::new();
    let mut unmapped = Vec::new();
    let mut env: Map<String, Value> = app.get("env").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut profiles: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    // The script as it is: a `.js` file runs through node by itself, as under PM2.
    let script = app.get("script").and_then(Value::as_str).unwrap_or("index.js");
    keys.insert("script", toml_string(script));
    let args = app.get("args").map(words).unwrap_or_default();
    if !args.is_empty() {
        keys.insert("args", toml_value(&Value::from(args)).unwrap_or_default());
    }
    for (key, value) in app {
        match map_key(key, value, app, script, &name, notes) {
            Mapped::To(k, v) => {
                keys.insert(k, v);
            }
            Mapped::Skip => {}
            Mapped::Profile(profile, profile_env) => {
                profiles.insert(profile, profile_env);
            }
            Mapped::Unmapped => unmapped.push(key.clone()),
        }
    }
    // PM2 passes the port in env (PORT, incremented per instance in fork mode); here the
    // supervisor binds it.
    let port_var = app.get("increment_var").and_then(Value::as_str).unwrap_or("PORT");
    if let Some(port) = env.remove(port_var).and_then(|p| p.as_u64().or_else(|| p.as_str()?.parse().ok())) {
        keys.insert("port", port.to_string());
        if keys.get("exec_mode").map(String::as_str) == Some("\"cluster\"") {
            notes.push(format!(
                "{name}: cluster mode means the supervisor binds {port} and every instance accepts on it \
                 (fd 3); a Node program does so unchanged through chatctl's preload, a program in \
                 another language listens on fd 3 (or use exec_mode = \"fork\" with inherit_socket = false)"
            ));
        } else {
            keys.insert("inherit_socket", "false".into());
        }
    }
    let table = format!("apps.{}", toml_key(&name));
    let _ = writeln!(text, "\n[{table}]");
    for (k, v) in &keys {
        let _ = writeln!(text, "{k} = {v}");
    }
    if !env.is_empty() {
        let _ = writeln!(text, "env = {}", toml_value(&Value::Object(env)).unwrap_or_else(|| "{}".into()));
    }
    for (profile, profile_env) in profiles {
        let _ = writeln!(text, "\n[{table}.profiles.{}]", toml_key(&profile));
        let _ = writeln!(text, "env = {}", toml_value(&Value::Object(profile_env)).unwrap_or_else(|| "{}".into()));
    }
    if !unmapped.is_empty() {
        notes.push(format!("{name}: not converted (no equivalent or not understood): {}", unmapped.join(", ")));
    }
}

/// One PM2 key of app `name` (whose script is `script`), as a flat table.
fn map_key<'k>(
    key: &'k str,
    value: &Value,
    app: &Map<String, Value>,
    script: &str,
    name: &str,
    notes: &mut Vec<String>,
) -> Mapped<'k> {
    let to = |pair: Option<(&'k str, String)>| pair.map_or(Mapped::Unmapped, |(k, v)| Mapped::To(k, v));
    match key {
        "name" | "script" | "args" | "env" => Mapped::Skip,
        "interpreter" => to(value.as_str().map(|i| ("interpreter", toml_string(i)))),
        "node_args" | "interpreter_args" => to(toml_value(&Value::from(words(value))).map(|v| ("interpreter_args", v))),
        "cwd" | "out_file" | "error_file" | "merge_logs" | "autorestart" | "max_restarts" | "increment_var"
        | "instance_var" | "stop_exit_codes" | "ignore_watch" => to(toml_value(value).map(|v| (key, v))),
        "watch" => to(toml_value(value).map(|v| ("watch", v))),
        "instances" => to(match value {
            Value::Number(n) if n.as_i64() == Some(-1) => Some(("instances", "-1".into())),
            Value::Number(n) if n.as_i64() == Some(0) => Some(("instances", "\"max\"".into())),
            Value::String(s) if s == "max" => Some(("instances", "\"max\"".into())),
            other => toml_value(other).map(|v| ("instances", v)),
        }),
        "exec_mode" => to(match value.as_str() {
            Some("cluster" | "cluster_mode") => Some(("exec_mode", "\"cluster\"".into())),
            Some("fork" | "fork_mode") => Some(("exec_mode", "\"fork\"".into())),
            _ => None,
        }),
        "max_memory_restart" => to(match value {
            Value::Number(n) => n.as_u64().map(|b| ("max_memory_restart", toml_string(&b.to_string()))),
            Value::String(s) => Some(("max_memory_restart", toml_string(s))),
            _ => None,
        }),
        "min_uptime" | "kill_timeout" | "restart_delay" | "listen_timeout" => {
            to(duration(value).map(|d| (key, toml_string(&d))))
        }
        "watch_delay" => to(duration(value).map(|d| ("watch_delay", toml_string(&d)))),
        "exp_backoff_restart_delay" => to(duration(value).map(|d| ("restart_delay", toml_string(&d)))),
        "cron_restart" => to(value
            .as_str()
            .filter(|c| chat_shared::cron::CronSchedule::parse(c).is_ok())
            .map(|c| ("cron_restart", toml_string(c)))),
        // PM2's `time: true` prefixes each line with the time; PM2's log_date_format (a moment.js
        // format) is not converted (it is listed), so the prefix is ISO 8601.
        "time" => match value {
            Value::Bool(true) => Mapped::To("log_date_format", toml_string("%Y-%m-%dT%H:%M:%S")),
            // No prefix: our default too.
            Value::Bool(false) => Mapped::Skip,
            _ => Mapped::Unmapped,
        },
        // A Node program's `process.send('ready')` reaches the daemon with readiness = "notify"
        // (through Node's IPC channel); another program must send READY=1.
        "wait_ready" => match value {
            Value::Bool(true) => {
                if !runs_node(app, script) {
                    notes.push(format!(
                        "{name}: wait_ready became readiness = \"notify\": this program is not run by node, \
                         so it must send READY=1 to NOTIFY_SOCKET (process.send('ready') exists in Node only)"
                    ));
                }
                Mapped::To("readiness", toml_string("notify"))
            }
            Value::Bool(false) => Mapped::Skip,
            _ => Mapped::Unmapped,
        },
        other if other.starts_with("env_") => match value.as_object() {
            Some(o) => Mapped::Profile(other["env_".len()..].to_owned(), o.clone()),
            None => Mapped::Skip,
        },
        _ => Mapped::Unmapped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_known_options_and_lists_the_rest() {
        let pm2 = serde_json::json!({ "apps": [{
            "name": "chat", "script": "server.js", "instances": "max", "exec_mode": "cluster_mode",
            "max_memory_restart": "1G", "kill_timeout": 5000, "min_uptime": "10s", "max_restarts": 5,
            "env": { "PORT": 3000, "NODE_ENV": "development" }, "env_production": { "NODE_ENV": "production" },
            "wait_ready": true, "log_date_format": "YYYY-MM-DD", "node_args": "--max-old-space-size=512 --trace-warnings"
        }]});
        let (text, notes) = convert(&pm2).expect("converts");
        for line in [
            "script = \"server.js\"",
            "interpreter_args = [\"--max-old-space-size=512\", \"--trace-warnings\"]",
            "instances = \"max\"",
            "exec_mode = \"cluster\"",
            "kill_timeout = \"5s\"",
            "port = 3000",
            "[apps.chat.profiles.production]",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert!(Ecosystem::parse(&text, Path::new("e.toml")).is_ok(), "{text}");
        assert!(notes.iter().any(|n| n.contains("not converted") && n.contains("log_date_format")), "{notes:?}");
        assert!(text.contains("readiness = \"notify\""), "{text}");
        assert!(!notes.iter().any(|n| n.contains("wait_ready")), "a Node program needs no note: {notes:?}");
    }

    /// The case: node_args, wait_ready, cron_restart, exp_backoff_restart_delay, time and a
    /// deploy section, each converted or named (wait_ready of a program node does not run: both).
    #[test]
    fn every_key_is_converted_or_named() {
        let pm2 = serde_json::json!({
            "apps": [{
                "name": "api", "script": "app.js", "node_args": ["--inspect=0"], "wait_ready": true,
                "cron_restart": "0 4 * * *", "exp_backoff_restart_delay": 100, "time": true,
                "vizion": false
            }, {
                "name": "bad", "script": "b.js", "cron_restart": "every day"
            }, {
                "name": "native", "script": "./server", "wait_ready": true
            }],
            "deploy": { "production": { "user": "node", "host": "example.org", "ref": "origin/main" } }
        });
        let (text, notes) = convert(&pm2).expect("converts");
        for line in [
            "interpreter_args = [\"--inspect=0\"]",
            "cron_restart = \"0 4 * * *\"",
            "restart_delay = \"100ms\"",
            "log_date_format = \"%Y-%m-%dT%H:%M:%S\"",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert!(!text.contains("every day"), "an expression we cannot read is not written:\n{text}");
        assert_eq!(text.matches("readiness = \"notify\"").count(), 2, "wait_ready of api and native:\n{text}");
        if let Err(e) = Ecosystem::parse(&text, Path::new("e.toml")) {
            panic!("{e}\n{text}");
        }
        for (says, about) in [
            ("deploy.production: not converted: it needs repo, an absolute path", "deploy"),
            ("native: wait_ready became readiness = \"notify\"", "wait_ready of a program not run by node"),
            ("api: not converted (no equivalent or not understood): vizion", "vizion"),
            ("bad: not converted (no equivalent or not understood): cron_restart", "cron_restart"),
        ] {
            assert!(notes.iter().any(|n| n.starts_with(says)), "{about} not named: {notes:#?}");
        }
        assert_eq!(notes.len(), 4, "{notes:#?}");
    }

    #[test]
    fn strings_of_the_pm2_file_cannot_add_keys_or_tables() {
        let sneaky = "1G\"\nautorestart = false\n[apps.evil]\nscript = \"/bin/sh";
        let pm2 = serde_json::json!({ "apps": [{
            "name": "chat.v2", "script": "/srv/x\"\nwatch = true", "max_memory_restart": sneaky,
            "kill_timeout": "5s\"\nmax_restarts = 0", "env_prod]\n[apps.evil2": { "A": "b" }
        }]});
        let (text, _) = convert(&pm2).expect("converts");
        let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let apps = doc["apps"].as_table().expect("apps");
        assert_eq!(apps.keys().collect::<Vec<_>>(), ["chat.v2"], "{text}");
        let app = apps["chat.v2"].as_table().expect("app");
        assert_eq!(app["max_memory_restart"].as_str(), Some(sneaky), "{text}");
        assert_eq!(app["script"].as_str(), Some("/srv/x\"\nwatch = true"), "{text}");
        for injected in ["autorestart", "watch", "max_restarts"] {
            assert!(!app.contains_key(injected), "{injected} injected:\n{text}");
        }
        let profiles = app["profiles"].as_table().expect("profiles");
        assert_eq!(profiles.keys().collect::<Vec<_>>(), ["prod]\n[apps.evil2"], "{text}");
    }
}
