//! `chatctl init` in a fresh Node, Rust and Python project writes a file that starts and stays
//! online as written (only the port is changed, to a free one).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::{Env, bin, free_port, http_get};

/// `init`, the port made free, `start`: online, answering on its port, still online a moment later.
fn init_then_start(env: &Env, expect_in_file: &str) {
    env.ok(&["init"]);
    let path = env.path("ecosystem.toml");
    let text = std::fs::read_to_string(&path).expect("written");
    assert!(text.contains(expect_in_file), "{expect_in_file} in:\n{text}");
    let port = free_port();
    std::fs::write(&path, text.replace("port = 3000", &format!("port = {port}"))).expect("write");
    env.ok(&["start"]);
    let app = env.list()[0].name.clone();
    let pid = env.online_pids(&app, 1)[0];
    let (status, _) = http_get(([127, 0, 0, 1], port).into(), "/").expect("answers on its port");
    assert!(status > 0, "an HTTP answer");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.online_pids(&app, 1), vec![pid], "it stays online");
}

#[test]
fn init_in_a_node_project_starts_as_written() {
    let env = Env::new();
    env.write("package.json", r#"{ "name": "shop", "scripts": { "start": "node server.js" } }"#);
    // A plain server with no /health route, as most are.
    env.write(
        "server.js",
        "require('http').createServer((q, s) => { s.writeHead(404); s.end(); }).listen(process.env.PORT || 3000);\n",
    );
    init_then_start(&env, "script = \"server.js\"");
}

#[test]
fn init_in_a_rust_project_starts_as_written() {
    let env = Env::new();
    env.write("Cargo.toml", "[package]\nname = \"demo\"\nversion = \"0.1.0\"\n");
    // What `cargo build --release` would have produced: a server on the inherited socket.
    let binary =
        env.write("target/release/demo", &format!("#!/bin/sh\nexec '{}' --serve\n", bin("fixture-app").display()));
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    init_then_start(&env, "script = \"target/release/demo\"");
}

#[test]
fn init_in_a_python_project_starts_as_written() {
    let env = Env::new();
    env.write("requirements.txt", "");
    env.write(
        "app.py",
        "import http.server, os\n\
         http.server.HTTPServer(('127.0.0.1', int(os.environ.get('PORT', 3000))), http.server.SimpleHTTPRequestHandler).serve_forever()\n",
    );
    init_then_start(&env, "inherit_socket = false");
}
