//! The chat worker on its own (bound to a port, as it runs outside chatctl): chat features through
//! the real socket.io-client, and malformed frames.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{Worker, alive, http_get, node};

/// The worker as these tests run it: ICE and TURN, two allowed origins, frequent stats.
fn start() -> Worker {
    Worker::start(&[
        ("ICE_SERVERS", "stun:stun.example.org:3478,turn:turn.example.org:3478?transport=udp"),
        ("TURN_SECRET", "north"),
        ("CORS_ORIGINS", "https://chat.example.com,https://*.vercel.app"),
        ("STATS_INTERVAL", "200ms"),
    ])
}

#[test]
fn typing_direct_messages_recovery_calls_ice_limits_and_oversized_packets() {
    let worker = start();
    let out = node("features.mjs", &[&format!("http://{}", worker.addr)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(alive(worker.child.id()), "the worker survived");
    // Long-polling from a browser: CORS headers for the listed origins only.
    let preflight = |origin: &str| {
        let mut stream = TcpStream::connect(worker.addr).expect("connect");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("write");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.to_ascii_lowercase()
    };
    assert!(preflight("https://chat.example.com").contains("access-control-allow-origin: https://chat.example.com"));
    assert!(!preflight("https://evil.example").contains("access-control-allow-origin"));
}

/// Sends raw bytes as a websocket client would after the upgrade; returns whether the server kept
/// the connection open afterwards.
fn malformed_session(addr: SocketAddr, garbage: &[u8]) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = stream.write_all(garbage);
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf);
}

#[test]
fn malformed_engine_io_and_socket_io_frames_close_one_connection_not_the_worker() {
    let worker = start();
    let addr = worker.addr;
    let polling = |body: &str| {
        let request = format!(
            "POST /socket.io/?EIO=4&transport=polling&sid=nonexistent HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        request.into_bytes()
    };
    // A bounded, deterministic set of hostile inputs: bad handshakes, bad packets, bad upgrades,
    // random bytes from a fixed seed.
    let mut inputs: Vec<Vec<u8>> = vec![
        b"GET /socket.io/?EIO=99&transport=websocket HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /socket.io/?EIO=4&transport=carrier-pigeon HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n\x81\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        polling("4{\"not\":\"a socket.io packet"),
        polling("42[\"message\",{\"room\":"),
        polling("9999999999"),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
    ];
    let mut seed: u64 = 0x5eed;
    for _ in 0..50 {
        let len = (seed % 600) as usize + 1;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect();
        inputs
            .push([b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(), &bytes].concat());
    }
    for input in &inputs {
        malformed_session(addr, input);
    }
    assert!(alive(worker.child.id()), "the worker survived {} hostile inputs", inputs.len());
    let (status, body) = http_get(addr, "/health").expect("still serving");
    assert_eq!(status, 200, "{body}");
    let health: chat_shared::health::HealthBody = serde_json::from_str(&body).expect("health");
    assert_eq!(health.connections, 0, "no socket leaked from the hostile inputs");
}

/// `/socket.io/socket.io.js` serves the socket.io-client browser bundle, as Node's server does
/// (before: 400 from engine.io), and it is the very file of the socket.io-client the tests install:
/// the committed copy cannot drift from the client the wire tests use.
#[test]
fn the_client_bundle_is_served_as_node_serves_it_and_matches_the_installed_client() {
    use std::io::{Read, Write};
    let installed = crate::support::tests_dir().join("node_modules/socket.io-client");
    let bundle = std::fs::read_to_string(installed.join("dist/socket.io.min.js")).expect("installed bundle");
    let package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(installed.join("package.json")).expect("package.json"))
            .expect("package json");
    let committed = crate::support::tests_dir().join("../worker/assets/socket.io-client/VERSION");
    let committed = std::fs::read_to_string(committed).expect("VERSION");
    assert_eq!(Some(committed.trim()), package["version"].as_str(), "worker/assets/socket.io-client is that version");
    let worker = Worker::start(&[]);
    for path in ["/socket.io/socket.io.js", "/socket.io/socket.io.min.js"] {
        let (status, body) = http_get(worker.addr, path).expect("GET");
        assert_eq!(status, 200, "{path}");
        assert!(body == bundle, "{path}: the served bundle is the installed client's file");
    }
    // Revalidation by ETag.
    let mut stream = TcpStream::connect(worker.addr).expect("connect");
    let etag = format!("\"socket.io-client-{}\"", committed.trim());
    write!(
        stream,
        "GET /socket.io/socket.io.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 304"), "{answer}");
    // The engine still answers the rest of /socket.io/.
    let (status, _) = http_get(worker.addr, "/socket.io/?EIO=4&transport=polling").expect("handshake");
    assert_eq!(status, 200);
}
