//! Broken ecosystem files are refused before anything starts, each problem located.

use crate::support::{Env, bin, stderr};

#[test]
fn broken_files_are_refused_with_line_column_and_key_and_nothing_starts() {
    let worker = bin("chat-worker");
    let w = worker.display();
    // (file, [(line, column, key)] every error expected, in order)
    type Expected = Vec<(usize, usize, &'static str)>;
    let table: Vec<(String, Expected)> = vec![
        (format!("[apps.chat]\nscript = \"{w}\"\nport = 3000\ninstance = 2\n"), vec![(4, 1, "apps.chat.instance")]),
        (format!("[apps.chat]\nscript = \"{w}\"\nkill_timeout = 5000\n"), vec![(3, 16, "apps.chat.kill_timeout")]),
        (format!("[apps.chat]\nscript = \"{w}\"\nexec_mode = \"clusterr\"\n"), vec![(3, 13, "apps.chat.exec_mode")]),
        (
            format!("[apps.chat]\nscript = \"{w}\"\nmax_memory_restart = \"1 gig\"\n"),
            vec![(3, 22, "apps.chat.max_memory_restart")],
        ),
        (
            format!(
                "[apps.chat]\nscript = \"{w}\"\nport = 99999\ninstances = \"all\"\n[apps.chat.profiles.production]\nwatch = 3\n"
            ),
            vec![
                (3, 8, "apps.chat.port"),
                (4, 13, "apps.chat.instances"),
                (6, 9, "apps.chat.profiles.production.watch"),
            ],
        ),
        ("[apps.chat]\nport = 3000\n".to_owned(), vec![(1, 7, "apps.chat.script")]),
        (format!("[apps.chat]\nscript = \"{w}\"\nport = [3000\n"), vec![(3, 13, "")]),
    ];
    for (text, expected) in table {
        let env = Env::new();
        env.write("ecosystem.toml", &text);
        let out = env.chatctl(&["start"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "should be refused:\n{text}\n{err}");
        let reported: Vec<&str> = err.lines().filter(|l| l.contains(": error")).collect();
        assert_eq!(reported.len(), expected.len(), "one line per problem:\n{err}");
        for ((line, column, key), got) in expected.iter().zip(&reported) {
            let key = if key.is_empty() { String::new() } else { format!(": {key}") };
            let want = format!("ecosystem.toml:{line}:{column}: error{key}");
            assert!(got.starts_with(&want), "expected `{want}...`, got `{got}`\nfull report:\n{err}");
        }
        assert!(err.contains("nothing was started or changed"), "{err}");
        assert!(!env.home().join("daemon.sock").exists(), "no daemon may start for a bad file");
    }
}

#[test]
fn a_bad_file_changes_nothing_that_runs() {
    let env = Env::new();
    let port = crate::support::free_port();
    let good = format!("[apps.chat]\nscript = \"{}\"\nport = {port}\n", bin("chat-worker").display());
    env.write("ecosystem.toml", &good);
    env.ok(&["start"]);
    let before = env.online_pids("chat", 1);

    env.write("ecosystem.toml", &format!("{good}instances = \"many\"\n"));
    for verb in [&["start"][..], &["run"][..]] {
        let out = env.chatctl(verb);
        assert_eq!(out.status.code(), Some(1), "{verb:?} with a bad file: {}", stderr(&out));
    }
    assert_eq!(env.online_pids("chat", 1), before, "the running instance is untouched");
}

/// Runs ajv on `document` (TOML text) against `chatctl schema`.
fn schema_accepts(env: &Env, document: &str) -> (bool, String) {
    let schema = env.ok(&["schema"]);
    env.write("schema.json", &schema);
    let value: toml::Value = toml::from_str(document).expect("TOML");
    env.write("doc.json", &serde_json::to_string(&value).expect("JSON"));
    let out = crate::support::node(
        "validate.mjs",
        &[env.path("schema.json").to_str().expect("utf-8"), env.path("doc.json").to_str().expect("utf-8")],
    );
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_json_schema_accepts_the_repos_file_and_rejects_broken_ones() {
    let env = Env::new();
    let repo = std::fs::read_to_string(crate::support::tests_dir().join("../ecosystem.toml"))
        .expect("the repo's ecosystem.toml");
    let (ok, report) = schema_accepts(&env, &repo);
    assert!(ok, "{report}");
    for broken in [
        "[apps.chat]\nscript = \"x\"\nscirpt = \"y\"\n",
        "[apps.chat]\nscript = \"x\"\nkill_timeout = \"5 seconds\"\n",
        "[apps.chat]\nscript = \"x\"\ninstances = \"lots\"\n",
        "[apps.chat]\nscript = \"x\"\n[apps.chat.profiles.prod]\nprofiles = {}\n",
        "[apps.all]\nscript = \"x\"\n",
    ] {
        let (ok, report) = schema_accepts(&env, broken);
        assert!(!ok, "the schema should reject:\n{broken}\n{report}");
    }
}

#[test]
fn a_pm2_ecosystem_with_the_three_deployment_modes_imports_and_starts_the_same_instances() {
    let env = Env::new();
    let prod_port = crate::support::free_port();
    let lb_base = crate::support::free_ports(4);
    let fixture = bin("fixture-app");
    env.write(
        "ecosystem.config.js",
        &format!(
            r#"module.exports = {{
  apps: [
    {{ name: "chat-dev", script: "{f}", interpreter: "none", instances: 1, watch: false, max_restarts: 5, min_uptime: 10000 }},
    {{ name: "chat-prod", script: "{f}", interpreter: "none", args: "--serve", exec_mode: "cluster", instances: "max",
       max_memory_restart: "1G", kill_timeout: 5000, env: {{ PORT: {prod_port} }}, env_production: {{ NODE_ENV: "production" }} }},
    {{ name: "chat-lb", script: "{f}", interpreter: "none", args: ["--serve"], exec_mode: "fork", instances: 4,
       increment_var: "PORT", env: {{ PORT: {lb_base} }}, log_date_format: "YYYY-MM-DD HH:mm Z" }},
  ],
}};
"#,
            f = fixture.display()
        ),
    );
    let out = env.ok(&["import", "ecosystem.config.js"]);
    assert!(out.contains("chat-lb: not converted") && out.contains("log_date_format"), "{out}");
    env.ok(&["start"]);
    env.online_pids("chat-dev", 1);
    env.online_pids("chat-prod", chat_shared::ecosystem::cpu_count());
    env.online_pids("chat-lb", 4);
    for i in 0..4 {
        let (status, _) = crate::support::http_get(([127, 0, 0, 1], lb_base + i).into(), "/").expect("lb port answers");
        assert_eq!(status, 200);
    }
    let (status, _) = crate::support::http_get(([127, 0, 0, 1], prod_port).into(), "/").expect("cluster port answers");
    assert_eq!(status, 200);
}
