//! Fork mode: instance i on port + i.

use std::net::SocketAddr;

use crate::support::{Env, bin, free_ports, http_get};

#[test]
fn loadbalanced_profile_serves_four_consecutive_ports() {
    let env = Env::new();
    let base = free_ports(4);
    env.write(
        "ecosystem.toml",
        &format!(
            r#"
[apps.chat]
script = "{}"
port = 3000

[apps.chat.profiles.loadbalanced]
exec_mode = "fork"
instances = 4
port = {base}
"#,
            bin("chat-worker").display()
        ),
    );
    env.ok(&["start", "loadbalanced"]);
    let pids = env.online_pids("chat", 4);
    for i in 0..4u16 {
        let addr: SocketAddr = ([127, 0, 0, 1], base + i).into();
        let (status, body) = http_get(addr, "/health").expect("health on port + i");
        let health: chat_shared::health::HealthBody = serde_json::from_str(&body).expect("health json");
        assert_eq!(status, 200);
        assert_eq!(health.instance.as_deref(), Some(i.to_string().as_str()), "port {} serves instance {i}", base + i);
        assert_eq!(health.pid, pids[usize::from(i)]);
    }
    let apps = env.list();
    let ports: Vec<Option<u16>> = apps[0].instances.iter().map(|i| i.port).collect();
    assert_eq!(ports, (0..4).map(|i| Some(base + i)).collect::<Vec<_>>());
}
