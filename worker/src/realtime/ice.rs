//! ICE servers for calls: what a guest's client is sent (`ice:servers`) with its session and
//! before a call, TURN credentials included.

use chat_shared::time::unix_millis;
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;

use super::guests::Guest;
use super::protocol::event;
use crate::bus::Adapter;

/// ICE servers for clients: STUN and TURN urls from `ICE_SERVERS`; TURN credentials time-limited
/// with `TURN_SECRET`, the standard TURN REST scheme (username `EXPIRY:GUEST`, credential
/// base64(HMAC-SHA1(secret, username))), which coturn's `use-auth-secret` verifies.
pub struct IceConfig {
    pub urls: Vec<String>,
    pub turn_secret: Option<Vec<u8>>,
    pub turn_ttl: std::time::Duration,
}

impl IceConfig {
    pub fn for_guest(&self, guest: &str, now_secs: u64) -> Value {
        use base64::Engine;
        use hmac::{Hmac, KeyInit, Mac};
        let stun: Vec<&String> = self.urls.iter().filter(|u| u.starts_with("stun")).collect();
        let turn: Vec<&String> = self.urls.iter().filter(|u| u.starts_with("turn")).collect();
        let mut servers = Vec::new();
        if !stun.is_empty() {
            servers.push(json!({ "urls": stun }));
        }
        if !turn.is_empty() {
            match &self.turn_secret {
                Some(secret) => {
                    let username = format!("{}:{guest}", now_secs + self.turn_ttl.as_secs());
                    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(secret)
                        .expect("UNWRAP: HMAC takes keys of any length");
                    mac.update(username.as_bytes());
                    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                    servers.push(json!({ "urls": turn, "username": username, "credential": credential }));
                }
                None => servers.push(json!({ "urls": turn })),
            }
        }
        json!({ "iceServers": servers })
    }
}

/// When the TURN credentials a socket's client was last sent expire (unix seconds).
#[derive(Clone)]
struct IceFor {
    expires: u64,
}

/// Sends the guest's client its ICE servers when it has none yet, or when its TURN credentials are
/// past half their life: a connection that lives for hours still starts a call with credentials
/// the TURN server takes (the first ones were resent unchanged, expired, on every session).
pub(super) fn send(socket: &SocketRef<Adapter>, ice: &IceConfig) {
    let Some(guest) = socket.extensions.get::<Guest>() else { return };
    let now = unix_millis() / 1000;
    let ttl = ice.turn_ttl.as_secs();
    if socket.extensions.get::<IceFor>().is_some_and(|sent| now + ttl / 2 < sent.expires) {
        return;
    }
    let expires = if ice.turn_secret.is_some() { now + ttl } else { u64::MAX };
    socket.extensions.insert(IceFor { expires });
    let _ = socket.emit(event::ICE_SERVERS, &ice.for_guest(&guest.id, now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_rest_credentials() {
        let ice = IceConfig {
            urls: vec!["stun:stun.example.org".into(), "turn:turn.example.org?transport=udp".into()],
            turn_secret: Some(b"north".to_vec()),
            turn_ttl: std::time::Duration::from_secs(3600),
        };
        let v = ice.for_guest("g_1", 1_000_000);
        assert_eq!(v["iceServers"][0]["urls"][0], "stun:stun.example.org");
        assert_eq!(v["iceServers"][1]["username"], "1003600:g_1");
        // Computed independently (Python's hmac): base64(HMAC-SHA1("north", "1003600:g_1")).
        assert_eq!(v["iceServers"][1]["credential"], "ijTPA/MrU9LTJMlvj3RvoCQQNeU=");
    }
}
