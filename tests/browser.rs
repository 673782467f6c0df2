//! The web client in a real browser: headless Chromium (Debian's, driven by puppeteer-core) on two
//! instances of a cluster: chat, a file, a video call between the two pages, then a reload. Screenshots go to `target/screenshots/`.

use std::path::PathBuf;

use crate::support::{Env, Scripted, chat_app, free_port, heavy_load, tests_dir};

/// The system's Chromium; `.ci/run` installs it. Without one the test is skipped, except in CI.
fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must have chromium (.ci/run installs it)");
        eprintln!("skipped: no chromium (apt-get install chromium)");
    }
    found
}

#[test]
fn two_people_chat_in_a_real_browser_across_instances_and_through_a_reload() {
    let Some(chromium) = chromium() else { return };
    let _heavy = heavy_load();
    let env = Env::new();
    let port = free_port();
    env.write("ecosystem.toml", &chat_app(port, "cluster", 2, "env = { STATS_INTERVAL = \"200ms\" }"));
    env.ok(&["start"]);
    env.online_pids("chat", 2);
    let screens = tests_dir().join("../target/screenshots");
    std::fs::create_dir_all(&screens).expect("screenshots dir");
    let mut client = Scripted::start(
        "browser-chat.mjs",
        &[
            &format!("http://127.0.0.1:{port}/"),
            screens.to_str().expect("utf-8 path"),
            chromium.to_str().expect("utf-8 path"),
        ],
    );
    let ready = client.next_line();
    assert_eq!(ready, "ready", "the first part failed");
    env.ok(&["reload"]);
    client.say("reloaded");
    let report = client.next_line();
    let report: serde_json::Value =
        serde_json::from_str(&report).unwrap_or_else(|_| panic!("browser report: {report}"));
    eprintln!("browser: {report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["same_guests"], serde_json::json!([true, true]), "the same guests after the reload: {report}");
    assert_ne!(report["instances"][0], report["instances"][1], "two instances: {report}");
    for who in ["ann", "bob"] {
        let got = &report["call"][who];
        assert!(
            got["frames"].as_u64().is_some_and(|n| n > 5) && got["audio"].as_u64().is_some_and(|n| n > 5),
            "{who} decoded the other's video and received its audio: {report}"
        );
    }
    for shot in ["web-client-desktop.png", "web-client-phone.png", "web-client-call.png"] {
        assert!(screens.join(shot).metadata().is_ok_and(|m| m.len() > 1000), "{shot} written");
    }
}
