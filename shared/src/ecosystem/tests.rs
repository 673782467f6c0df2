use std::collections::BTreeMap;
use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Ecosystem, ConfigErrors> {
    Ecosystem::parse(text, Path::new("eco.toml"))
}

/// (line, column, key) of every error, in report order.
fn errors(text: &str) -> Vec<(usize, usize, String)> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.errors().map(|i| (i.line, i.column, i.key.clone())).collect(),
    }
}

const GOOD: &str = r#"
[apps.chat]
script = "bin/chat-worker"
port = 3000
exec_mode = "cluster"
instances = "max"
kill_timeout = "5s"
max_memory_restart = "1G"
env = { RUST_LOG = "info", WORKERS = 4 }
health = { path = "/health", interval = "30s", timeout = "5s" }

[apps.chat.profiles.development]
instances = 1
watch = true

[apps.chat.profiles.loadbalanced]
exec_mode = "fork"
instances = 4
port = 3001
env = { MODE = "lb" }
"#;

#[test]
fn a_good_file_resolves_with_profile_overlay() {
    let eco = parse(GOOD).expect("valid");
    let inherited = BTreeMap::from([("HOME".to_owned(), "/home/x".to_owned())]);
    let base = eco.resolve(None, None, &inherited).expect("resolves");
    assert_eq!(base[0].instances, cpu_count());
    assert_eq!(base[0].exec_mode, ExecMode::Cluster);
    assert_eq!(base[0].env["WORKERS"], "4");
    assert_eq!(base[0].env["HOME"], "/home/x");
    assert!(base[0].script.ends_with("/bin/chat-worker"), "{}", base[0].script);
    let lb = eco.resolve(Some("loadbalanced"), Some("chat"), &inherited).expect("resolves");
    assert_eq!((lb[0].instances, lb[0].exec_mode, lb[0].port_of(3)), (4, ExecMode::Fork, Some(3004)));
    assert_eq!(lb[0].env["MODE"], "lb");
    assert_eq!(lb[0].env["RUST_LOG"], "info", "profile env merges over base env");
    assert_eq!(lb[0].health.as_ref().map(|h| h.path.as_str()), Some("/health"));
    let dev = eco.resolve(Some("development"), None, &inherited).expect("resolves");
    let watch = dev[0].watch.as_ref().expect("watch on in development");
    assert_eq!(watch.paths, vec![std::path::absolute(".").expect("cwd")]);
}

#[test]
fn unknown_profile_and_app_are_refused_with_the_known_names() {
    let eco = parse(GOOD).expect("valid");
    let err = eco.resolve(Some("staging"), None, &BTreeMap::new()).expect_err("unknown profile");
    assert!(err.to_string().contains("development, loadbalanced"), "{err}");
    let err = eco.resolve(None, Some("api"), &BTreeMap::new()).expect_err("unknown app");
    assert!(err.to_string().contains("apps: chat"), "{err}");
}

#[test]
fn instances_resolve_never_below_one() {
    assert_eq!(Instances::LessThanMax(1).resolve(4), 3);
    assert_eq!(Instances::LessThanMax(9).resolve(4), 1);
    assert_eq!(Instances::Max.resolve(2), 2);
    assert_eq!(Instances::Count(0).resolve(2), 2);
    assert_eq!(Instances::Count(3).resolve(2), 3);
}

/// (line, column, key) of an expected error.
type Located<'a> = (usize, usize, &'a str);

/// Each text of `table` fails to load with exactly these errors, in order.
#[track_caller]
fn assert_located<T: AsRef<str>>(table: &[(T, &[Located<'_>])]) {
    for (text, expected) in table {
        let text = text.as_ref();
        let got = errors(text);
        let expected: Vec<(usize, usize, String)> =
            expected.iter().map(|(l, c, k)| (*l, *c, (*k).to_owned())).collect();
        assert_eq!(got, expected, "for:\n{text}\nreport:\n{}", parse(text).expect_err("errors"));
    }
}

#[test]
fn broken_files_report_line_column_and_key() {
    type Case<'a> = (&'a str, &'a [(usize, usize, &'a str)]);
    let table: &[Case<'_>] = &[
        // unknown key, located at the key
        ("[apps.a]\nscript = \"x\"\nscirpt = \"y\"\n", &[(3, 1, "apps.a.scirpt")]),
        // wrong type, located at the value
        ("[apps.a]\nscript = \"x\"\ninstances = true\n", &[(3, 13, "apps.a.instances")]),
        // bad human values
        ("[apps.a]\nscript = \"x\"\nkill_timeout = \"5 sec\"\n", &[(3, 16, "apps.a.kill_timeout")]),
        ("[apps.a]\nscript = \"x\"\nmax_memory_restart = \"1Q\"\n", &[(3, 22, "apps.a.max_memory_restart")]),
        ("[apps.a]\nscript = \"x\"\nexec_mode = \"clustre\"\n", &[(3, 13, "apps.a.exec_mode")]),
        ("[apps.a]\nscript = \"x\"\nport = 70000\n", &[(3, 8, "apps.a.port")]),
        ("[apps.a]\nscript = \"x\"\ninstances = \"lots\"\n", &[(3, 13, "apps.a.instances")]),
        // nested tables are checked key by key
        (
            "[apps.a]\nscript = \"x\"\nport = 1\nhealth = { path = \"/h\", intervall = \"1s\", timeout = 5 }\n",
            &[(4, 25, "apps.a.health.intervall"), (4, 53, "apps.a.health.timeout")],
        ),
        // profiles are checked like apps
        (
            "[apps.a]\nscript = \"x\"\n[apps.a.profiles.prod]\ninstances = \"many\"\n",
            &[(4, 13, "apps.a.profiles.prod.instances")],
        ),
        // semantic: a duration the daemon could not add to a deadline
        ("[apps.a]\nscript = \"x\"\nkill_timeout = \"400d\"\n", &[(3, 1, "apps.a.kill_timeout")]),
        ("[apps.a]\nscript = \"x\"\nport = 1\nhealth = { grace = \"9999d\" }\n", &[(4, 12, "apps.a.health.grace")]),
        // semantic: a cron expression croner cannot read
        ("[apps.a]\nscript = \"x\"\ncron_restart = \"61 * * * *\"\n", &[(3, 1, "apps.a.cron_restart")]),
        // semantic: missing script points at the app's name
        ("[apps.a]\nport = 3000\n", &[(1, 7, "apps.a.script")]),
        // semantic: fork ports past 65535
        ("[apps.a]\nscript = \"x\"\nport = 65534\ninstances = 4\n", &[(3, 1, "apps.a.port")]),
        // semantic: overlapping ports across apps
        (
            "[apps.a]\nscript = \"x\"\nport = 3001\ninstances = 4\n[apps.b]\nscript = \"y\"\nport = 3003\n",
            &[(7, 1, "apps.b.port")],
        ),
        // semantic inside one profile only
        (
            "[apps.a]\nscript = \"x\"\nport = 3000\n[apps.a.profiles.lb]\nexec_mode = \"cluster\"\ninherit_socket = false\n",
            &[(6, 1, "apps.a.profiles.lb.inherit_socket")],
        ),
        // several problems at once, in file order
        (
            "[apps.a]\nscript = 1\nport = \"x\"\n[apps.all]\nscript = \"y\"\n[top]\n",
            &[(2, 10, "apps.a.script"), (3, 8, "apps.a.port"), (4, 7, "apps.all"), (6, 2, "top")],
        ),
        // syntax errors are located too
        ("[apps.a]\nscript = \"x\nport = 1\n", &[(2, 12, "")]),
    ];
    assert_located(table);
}

#[test]
fn the_report_reads_like_a_compiler_message() {
    let err = parse("[apps.a]\nscript = \"x\"\ninstances = true\n").expect_err("bad");
    let text = err.to_string();
    assert!(text.starts_with("eco.toml:3:13: error: apps.a.instances: invalid type: boolean `true`"), "{text}");
    assert!(text.contains("3 | instances = true\n  |             ^"), "{text}");
    assert!(text.ends_with("1 error in the ecosystem file; nothing was started or changed"), "{text}");
}

#[test]
fn the_repos_ecosystem_file_loads_with_every_profile() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ecosystem.toml");
    let eco = Ecosystem::load(&path).unwrap_or_else(|e| panic!("{e}"));
    for (profile, instances, mode) in [
        ("development", Some(1), ExecMode::Fork),
        ("production", None, ExecMode::Cluster),
        ("loadbalanced", Some(4), ExecMode::Fork),
    ] {
        let spec = eco.resolve(Some(profile), None, &BTreeMap::new()).expect("resolves").remove(0);
        assert_eq!(spec.exec_mode, mode, "{profile}");
        assert_eq!(spec.instances, instances.unwrap_or_else(cpu_count), "{profile}");
        // Watched paths must exist, or the watch cannot start.
        for path in spec.watch.iter().flat_map(|w| &w.paths) {
            assert!(path.exists(), "{profile} watches {} which does not exist", path.display());
        }
    }
}

#[test]
fn a_javascript_file_runs_through_node_with_the_preload_unless_told_otherwise() {
    let text = r#"
[apps.js]
script = "server.js"
args = ["--verbose"]
node_args = ["--max-old-space-size=512"]

[apps.npm]
script = "npm"
args = ["start"]

[apps.own]
script = "bin/server.mjs"
interpreter = "none"

[apps.bun]
script = "app.ts"
interpreter = "bun"

[apps.plain]
script = "server.js"
node_preload = false
"#;
    let specs =
        Ecosystem::parse(text, Path::new("/srv/app/eco.toml")).expect("valid").resolve(None, None, &BTreeMap::new());
    let specs = specs.expect("resolves");
    let by = |name: &str| specs.iter().find(|s| s.name == name).expect("app");
    let js = by("js");
    assert_eq!(js.script, "node");
    assert_eq!(js.args, ["--max-old-space-size=512", "/srv/app/server.js", "--verbose"]);
    assert_eq!((js.interpreted.as_deref(), js.node_preload), (Some("/srv/app/server.js"), true));
    assert!(by("npm").node_preload && by("npm").interpreted.is_none(), "npm start runs node");
    assert_eq!((by("own").script.as_str(), by("own").node_preload), ("/srv/app/bin/server.mjs", false));
    assert_eq!(
        (by("bun").script.as_str(), by("bun").args.as_slice()),
        ("bun", ["/srv/app/app.ts".to_owned()].as_slice())
    );
    assert!(!by("bun").node_preload);
    assert!(!by("plain").node_preload && by("plain").script == "node");
}

const DEPLOY: &str = r#"
[apps.chat]
script = "bin/chat-worker"

[deploy.production]
user = "chat"
host = ["web1.example.org", "web2.example.org"]
port = 2222
ssh_options = "StrictHostKeyChecking=yes"
key = "~/.ssh/deploy"
repo = "git@example.org:chat.git"
ref = "origin/main"
path = "/srv/chat/"
post-deploy = "cargo build --release && chatctl start production --reload"
env = { RUST_LOG = "info", WORKERS = 2 }
keep_releases = 3

[deploy.staging]
host = "staging"
repo = "/srv/git/chat.git"
path = "~/chat"
"#;

#[test]
fn a_deploy_table_resolves_with_its_defaults() {
    let eco = Ecosystem::parse(DEPLOY, Path::new("/work/app/eco.toml")).unwrap_or_else(|e| panic!("{e}"));
    let prod = eco.deploy("production", Some(Path::new("/home/op"))).expect("production");
    assert_eq!(prod.hosts, ["web1.example.org", "web2.example.org"]);
    assert_eq!((prod.user.as_deref(), prod.port), (Some("chat"), Some(2222)));
    assert_eq!(prod.ssh_options, ["StrictHostKeyChecking=yes"]);
    assert_eq!(prod.key.as_deref(), Some(Path::new("/home/op/.ssh/deploy")));
    assert_eq!((prod.path.as_str(), prod.git_ref.as_str(), prod.keep_releases), ("/srv/chat", "origin/main", 3));
    assert_eq!(prod.env["WORKERS"], "2");
    let staging = eco.deploy("staging", None).expect("staging");
    assert_eq!((staging.hosts.as_slice(), staging.git_ref.as_str()), (["staging".to_owned()].as_slice(), "HEAD"));
    assert_eq!(staging.keep_releases, DEFAULT_KEEP_RELEASES as usize);
    assert_eq!(staging.local_dir, Path::new("/work/app"));
    let err = eco.deploy("prod", None).expect_err("unknown");
    assert!(err.to_string().contains("targets: production, staging"), "{err}");
    // A file that only says where to deploy is a valid file.
    let only = "[deploy.p]\nhost = \"h\"\nrepo = \"r\"\npath = \"/p\"\n";
    assert!(parse(only).is_ok_and(|eco| eco.apps.is_empty()));
}

#[test]
fn a_broken_deploy_table_reports_line_column_and_key() {
    let head = "[deploy.p]\nhost = \"h\"\nrepo = \"r\"\npath = \"/p\"\n";
    type Case<'a> = (String, &'a [(usize, usize, &'a str)]);
    let table: &[Case<'_>] = &[
        (format!("{head}hots = \"x\"\n"), &[(5, 1, "deploy.p.hots")]),
        (format!("{head}port = \"22\"\n"), &[(5, 8, "deploy.p.port")]),
        (format!("{head}keep_releases = 0\n"), &[(5, 1, "deploy.p.keep_releases")]),
        (format!("{head}post-deploy = \"\"\n"), &[(5, 1, "deploy.p.post-deploy")]),
        (format!("{head}env = {{ \"A=B\" = 1 }}\n"), &[(5, 9, "deploy.p.env.A=B")]),
        (format!("{head}env = {{ \"A-B\" = 1 }}\n"), &[(5, 9, "deploy.p.env.A-B")]),
        (format!("{head}ssh_options = [\"-oProxyCommand=x\"]\n"), &[(5, 1, "deploy.p.ssh_options")]),
        (format!("{head}ref = \"--upload-pack=x\"\n"), &[(5, 1, "deploy.p.ref")]),
        (format!("{head}user = \"-x\"\n"), &[(5, 1, "deploy.p.user")]),
        (
            "[deploy.p]\nhost = \"-oProxyCommand=x\"\nrepo = \"r\"\npath = \"/p\"\n".to_owned(),
            &[(2, 1, "deploy.p.host")],
        ),
        ("[deploy.p]\nhost = [\"a\", \"a\"]\nrepo = \"r\"\npath = \"/p\"\n".to_owned(), &[(2, 1, "deploy.p.host")]),
        ("[deploy.p]\nhost = \"h\"\nrepo = \"r\"\npath = \"srv\"\n".to_owned(), &[(4, 1, "deploy.p.path")]),
        ("[deploy.p]\nhost = \"h\"\nrepo = \"r\"\npath = \"~/\"\n".to_owned(), &[(4, 1, "deploy.p.path")]),
        // missing keys point at the table's name
        ("[deploy.p]\nhost = \"h\"\n".to_owned(), &[(1, 9, "deploy.p.repo"), (1, 9, "deploy.p.path")]),
        ("[deploy.\"a b\"]\nhost = \"h\"\nrepo = \"r\"\npath = \"/p\"\n".to_owned(), &[(1, 9, "deploy.a b")]),
        ("[deploy]\np = 1\n".to_owned(), &[(2, 5, "deploy.p")]),
    ];
    assert_located(table);
}

#[test]
fn the_json_schema_describes_deploy_tables_as_strictly_as_the_loader() {
    let schema = ecosystem_schema();
    let deploy = &schema["$defs"]["DeployConfig"];
    assert_eq!(deploy["additionalProperties"], false, "a misspelt key is refused");
    assert_eq!(deploy["required"], serde_json::json!(["host", "repo", "path"]));
    for key in ["ref", "ssh_options", "post-deploy", "pre-deploy-local", "env", "keep_releases"] {
        assert!(deploy["properties"].get(key).is_some(), "{key} missing: {deploy:#}");
    }
    assert_eq!(schema["properties"]["deploy"]["additionalProperties"]["$ref"], "#/$defs/DeployConfig");
}

/// An app started through a deploy's `current` link runs in the release the link names at start
/// (a crash-restart after the link moved must not run the next, unbuilt, release), while the file
/// it is reloaded from is read through the link.
#[test]
fn an_app_is_pinned_to_the_release_its_current_link_names_at_resolution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical");
    for release in ["r1", "r2"] {
        std::fs::create_dir_all(root.join(release).join("bin")).expect("release dir");
    }
    std::os::unix::fs::symlink("r1", root.join("current")).expect("link");
    let file = root.join("current/eco.toml");
    let text = "[apps.web]\nscript = \"bin/server\"\n[apps.js]\nscript = \"app.js\"\ncwd = \"bin\"\n";
    let eco = Ecosystem::parse(text, &file).expect("valid");
    let specs = eco.resolve(None, None, &BTreeMap::new()).expect("resolves");
    assert_eq!(specs[0].cwd, root.join("r1"));
    assert_eq!(specs[0].script, root.join("r1/bin/server").display().to_string());
    assert_eq!(specs[1].interpreted, Some(root.join("r1/bin/app.js").display().to_string()));
    assert_eq!(specs[0].source.as_deref(), Some(file.as_path()), "reloaded through the link");
    std::fs::remove_file(root.join("current")).expect("unlink");
    std::os::unix::fs::symlink("r2", root.join("current")).expect("link");
    let specs = eco.resolve(None, None, &BTreeMap::new()).expect("resolves");
    assert_eq!(specs[0].cwd, root.join("r2"), "resolved again at the next start or reload");
}

/// A relative file named from a directory entered through a link (`cd current`) keeps the link in
/// its path, as `pwd -L` shows it; a `PWD` that is not this directory is ignored.
#[test]
fn a_relative_file_keeps_the_link_the_shell_went_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let here = std::env::current_dir().expect("cwd");
    let link = dir.path().join("current");
    std::os::unix::fs::symlink(&here, &link).expect("link");
    let text = "[apps.web]\nscript = \"sh\"\n";
    let eco = Ecosystem::parse(text, Path::new("eco.toml")).expect("valid");
    let source = |pwd: &Path| {
        let env = BTreeMap::from([("PWD".to_owned(), pwd.display().to_string())]);
        eco.resolve(None, None, &env).expect("resolves").remove(0).source.expect("source")
    };
    assert_eq!(source(&link), link.join("eco.toml"));
    assert_eq!(source(dir.path()), here.join("eco.toml"), "a PWD elsewhere is stale");
}
