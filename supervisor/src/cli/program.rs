//! `chatctl start server.js -i 4`: a program started on its own, as `pm2 start` does, without an
//! ecosystem file. The command line becomes an `[apps.NAME]` table, checked and resolved by the
//! same code as a file's (so a bad `--max-memory-restart` is reported like a bad key), and the app
//! is kept like any other: `list`, `reload NAME`, `save`/`resurrect`.
//!
//! The rule that tells a program from a profile: an argument that names an existing file, or a
//! command with spaces, is a program; a bare word is a profile of the ecosystem file. A bare word
//! that is both a file here and a profile of the file is refused, with both readings.

use std::collections::BTreeMap;
use std::path::Path;

use chat_shared::ecosystem::{ConfigErrors, Ecosystem};
use chat_shared::spec::AppSpec;

use super::args::StartArgs;

/// What `chatctl start X` names.
#[derive(Debug, PartialEq)]
pub(super) enum Target {
    /// A profile of the ecosystem file (or none: the base settings).
    Profile,
    /// A program and its arguments.
    Program(Vec<String>),
}

/// Reads `args` by the rule above; `profiles` lists the ecosystem file's profiles, if there is one.
pub(super) fn target(args: &StartArgs, profiles: &[String]) -> Result<Target, String> {
    let program_options = program_options(args);
    let Some(word) = args.profile.as_deref() else {
        return match program_options.first() {
            Some(option) => {
                Err(format!("{option} is for a program: name it, as in `chatctl start server.js {option} …`"))
            }
            None => Ok(Target::Profile),
        };
    };
    // A file whose name has a space is still a file.
    if word.split_whitespace().count() > 1 && !Path::new(word).is_file() {
        let mut words: Vec<String> = word.split_whitespace().map(str::to_owned).collect();
        words.extend(args.program_args.iter().cloned());
        return Ok(Target::Program(words));
    }
    let is_file = Path::new(word).is_file();
    let bare = !word.contains('/');
    match (is_file, profiles.iter().any(|p| p == word)) {
        (true, true) if bare => Err(format!(
            "`{word}` is both a file here and a profile of the ecosystem file: write `./{word}` to start the \
             program, or `-c FILE {word}`… rename one to start the profile"
        )),
        (true, _) => {
            Ok(Target::Program(std::iter::once(word.to_owned()).chain(args.program_args.iter().cloned()).collect()))
        }
        (false, _) => match program_options.first() {
            Some(option) => Err(format!(
                "`{word}` is no file here, so it reads as a profile, and {option} is for a program \
                 (a file, or a command with spaces in quotes)"
            )),
            None => Ok(Target::Profile),
        },
    }
}

/// The options given that only a program takes.
fn program_options(args: &StartArgs) -> Vec<&'static str> {
    let given = [
        ("-i", args.instances.is_some()),
        ("--name", args.name.is_some()),
        ("--port", args.port.is_some()),
        ("--watch", args.watch),
        ("--max-memory-restart", args.max_memory_restart.is_some()),
        ("-- ARGS", !args.program_args.is_empty()),
    ];
    given.into_iter().filter(|(_, on)| *on).map(|(option, _)| option).collect()
}

/// The `[apps.NAME]` table `args` describe for `words` (the program and its arguments).
pub(super) fn table(args: &StartArgs, words: &[String], env_port: Option<u16>) -> String {
    use toml::Value;
    let program = &words[0];
    // `python3 app.py` is named after app.py, not after python3.
    let named_after = words.iter().skip(1).find(|w| Path::new(w.as_str()).is_file()).filter(|_| interpreter(program));
    let name = args.name.clone().unwrap_or_else(|| {
        let base = Path::new(named_after.unwrap_or(program));
        let stem = base.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| program.clone());
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect()
    });
    let mut table = toml::Table::new();
    table.insert("script".into(), Value::String(program.clone()));
    table.insert("args".into(), Value::Array(words[1..].iter().cloned().map(Value::String).collect()));
    let instances = args.instances.as_deref().map(|i| match i.parse::<i64>() {
        Ok(n) => Value::Integer(n),
        Err(_) => Value::String(i.to_owned()),
    });
    let port = args.port.or(env_port);
    if let Some(instances) = &instances {
        table.insert("instances".into(), instances.clone());
    }
    if let Some(port) = port {
        table.insert("port".into(), Value::Integer(i64::from(port)));
        // Several instances on one port share it (PM2's `-i`); one has its own.
        let one = matches!(instances, None | Some(Value::Integer(1)));
        table.insert("exec_mode".into(), Value::String(if one { "fork" } else { "cluster" }.into()));
        // One instance of a program that cannot take the inherited socket binds the port itself
        // (a Node program takes it through the preload; a cluster needs every instance to).
        if one && !node(words) {
            table.insert("inherit_socket".into(), Value::Boolean(false));
        }
        // Most programs have no health route: any HTTP answer shows it up and serving.
        let mut health = toml::Table::new();
        health.insert("any_answer".into(), Value::Boolean(true));
        table.insert("health".into(), Value::Table(health));
    }
    if args.watch {
        table.insert("watch".into(), Value::Boolean(true));
    }
    if let Some(size) = &args.max_memory_restart {
        table.insert("max_memory_restart".into(), Value::String(size.clone()));
    }
    let mut apps = toml::Table::new();
    apps.insert(name, Value::Table(table));
    let mut doc = toml::Table::new();
    doc.insert("apps".into(), Value::Table(apps));
    toml::to_string(&doc).unwrap_or_default()
}

/// Whether `program` runs its first argument (`python3 app.py`, `node server.js`).
fn interpreter(program: &str) -> bool {
    let name = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or(program);
    ["node", "nodejs", "python", "python3", "ruby", "perl", "php", "bun", "deno", "sh", "bash"]
        .iter()
        .any(|i| name == *i || name.strip_prefix(*i).is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.')))
}

/// Whether `words` run a Node program (which takes its inherited socket through the preload).
fn node(words: &[String]) -> bool {
    let name = Path::new(&words[0]).file_name().and_then(|n| n.to_str()).unwrap_or_default();
    [".js", ".mjs", ".cjs"].iter().any(|ext| name.ends_with(ext))
        || matches!(name, "node" | "nodejs" | "npm" | "npx" | "yarn" | "pnpm")
}

/// The spec of the program `text` describes, checked as a file would be (located in "the command
/// line"), its paths resolved against `dir`.
pub(super) fn specs(text: &str, dir: &Path, env: &BTreeMap<String, String>) -> Result<Vec<AppSpec>, String> {
    let file = dir.join("(command line)");
    let eco = Ecosystem::parse(text, &file).map_err(|e| describe(&e, text))?;
    let mut specs = eco.resolve(None, None, env).map_err(|e| e.to_string())?;
    eco.check_files(&specs).map_err(|e| describe(&e, text))?;
    for spec in &mut specs {
        // Nothing to read again on a reload: the program is its own definition.
        spec.source = None;
    }
    Ok(specs)
}

fn describe(errors: &ConfigErrors, text: &str) -> String {
    format!("{errors}\n(the command line read as:\n{text})")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn start(line: &[&str]) -> StartArgs {
        let cli =
            crate::cli::Cli::try_parse_from(std::iter::once("chatctl").chain(line.iter().copied())).expect("parses");
        match cli.command {
            crate::cli::Command::Start(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_or_a_command_with_spaces_is_a_program_a_bare_word_a_profile() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("server.js");
        std::fs::write(&file, "").expect("write");
        let path = file.display().to_string();
        let profiles = ["production".to_owned()];
        assert_eq!(target(&start(&["start", "production"]), &profiles), Ok(Target::Profile));
        assert_eq!(target(&start(&["start"]), &profiles), Ok(Target::Profile));
        assert_eq!(target(&start(&["start", &path, "-i", "4"]), &profiles), Ok(Target::Program(vec![path.clone()])));
        assert_eq!(
            target(&start(&["start", "python3 -m http.server", "--", "8000"]), &profiles),
            Ok(Target::Program(vec!["python3".into(), "-m".into(), "http.server".into(), "8000".into()]))
        );
        let wrong = target(&start(&["start", "staging", "-i", "2"]), &profiles).expect_err("no such file");
        assert!(wrong.contains("reads as a profile") && wrong.contains("-i"), "{wrong}");
        assert!(target(&start(&["start", "--port", "3000"]), &profiles).is_err());
    }

    #[test]
    fn the_command_line_becomes_a_table_checked_like_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("server.js");
        std::fs::write(&script, "").expect("write");
        let words = vec![script.display().to_string(), "--verbose".into()];
        let args = start(&["start", "x", "-i", "4", "--port", "3000", "--max-memory-restart", "1G", "--watch"]);
        let text = table(&args, &words, None);
        let env = BTreeMap::from([("PATH".to_owned(), std::env::var("PATH").unwrap_or_default())]);
        let resolved = specs(&text, dir.path(), &env).expect("valid");
        let spec = &resolved[0];
        assert_eq!(spec.name, "server");
        assert_eq!((spec.instances, spec.exec_mode), (4, chat_shared::ecosystem::ExecMode::Cluster));
        assert!(spec.node_preload && spec.source.is_none() && spec.watch.is_some());
        assert!(spec.health.as_ref().is_some_and(|h| h.any_answer), "{text}");
        assert_eq!(spec.args.last().map(String::as_str), Some("--verbose"));
        // One instance of a program that cannot take fd 3 binds the port itself, named after its file.
        let py = dir.path().join("app.py");
        std::fs::write(&py, "").expect("write");
        let words = vec!["python3".to_owned(), py.display().to_string()];
        let text = table(&start(&["start", "x", "--port", "8000"]), &words, None);
        assert!(text.contains("[apps.app]") && text.contains("inherit_socket = false"), "{text}");
        let words = vec![script.display().to_string()];
        let text = table(&start(&["start", "x", "--port", "8000"]), &words, None);
        assert!(!text.contains("inherit_socket"), "a Node program takes the socket: {text}");
        let words = vec![dir.path().join("server.js").display().to_string()];
        let bad = start(&["start", "x", "--max-memory-restart", "lots"]);
        let error = specs(&table(&bad, &words, None), dir.path(), &env).expect_err("a bad size");
        assert!(error.contains("max_memory_restart"), "{error}");
    }
}
