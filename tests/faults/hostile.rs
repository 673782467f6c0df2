//! Faults a hostile client can cause: asking for much and reading nothing.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{Worker, alive, http_get, node, wait_until};

/// A websocket client written by hand that sends Socket.IO packets and never reads a byte after its
/// handshake: what it asks for can only pile up in the server.
struct Deaf {
    stream: TcpStream,
}

impl Deaf {
    fn connect(addr: SocketAddr, name: &str) -> Deaf {
        let mut stream = TcpStream::connect(addr).expect("connect");
        write!(
            stream,
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("handshake");
        // The 101's head only; the engine.io open packet and all that follows stay unread.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        assert!(line.starts_with("HTTP/1.1 101"), "{line}");
        while line != "\r\n" {
            line.clear();
            reader.read_line(&mut line).expect("header");
        }
        let mut deaf = Deaf { stream };
        deaf.send(&format!("40{{\"name\":\"{name}\"}}"));
        deaf
    }

    /// One masked text frame (a zero mask: every client frame must be masked, any key will do).
    fn send(&mut self, text: &str) {
        let len = text.len();
        let mut frame = vec![0x81u8];
        match len {
            0..=125 => frame.push(0x80 | len as u8),
            126..=65_535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(text.as_bytes());
        self.stream.write_all(&frame).expect("send a frame");
    }
}

/// Before: a join's acknowledgement carried the room's whole history (200 messages), and 30 joins
/// and leaves from a client that reads nothing grew the worker by 37 MB (10.8 → 48.4 MB, release).
/// Now history comes in pages (50 messages, 16 KiB) the client asks for, and a socket whose queue is
/// full is disconnected.
#[test]
fn a_socket_that_never_reads_grows_the_worker_by_less_than_4_mb_and_history_comes_in_pages() {
    let worker = Worker::start(&[("MESSAGE_RATE", "off"), ("JOIN_RATE", "off"), ("ADDRESS_RATE", "off")]);
    let url = format!("http://{}", worker.addr);
    // 95 messages of 4,000 characters, then read back page by page both ways.
    let out = node("history-pages.mjs", &[&url, "big", "95", "4000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("report");
    assert_eq!(report["ok"], true, "every message came back once, in order: {report}");
    let pages = |way: &str| report[way].as_array().map_or(0, Vec::len);
    assert!(pages("backward") > 1 && pages("forward") > 1, "more than one page each way: {report}");

    let sockets = || -> Option<serde_json::Value> {
        let (_, body) = http_get(worker.addr, "/api/socket/stats").ok()?;
        serde_json::from_str(&body).ok()
    };
    let before = worker.rss();
    let mut deaf = Deaf::connect(worker.addr, "deaf");
    wait_until("the deaf client connected", Duration::from_secs(10), || (sockets()?["sockets"] == 1).then_some(()));
    for n in 0..30 {
        deaf.send(&format!("42{}[\"room:join\",{{\"room\":\"big\"}}]", 2 * n));
        deaf.send(&format!("42{}[\"room:leave\",{{\"room\":\"big\"}}]", 2 * n + 1));
    }
    deaf.send("4299[\"room:join\",{\"room\":\"big\"}]");
    // Done with it: the room has it as its one member (the others have left), or it was cut off.
    let cut_off = wait_until("the deaf client's last join, or its end", Duration::from_secs(10), || {
        let stats = sockets()?;
        let in_room = stats["rooms"] == 1;
        let gone = stats["sockets"] == 0;
        (in_room || gone).then_some(gone)
    });
    // What its joins answered is encoded and queued by now; give the queue a moment all the same.
    std::thread::sleep(Duration::from_millis(500));
    let grown = worker.rss().saturating_sub(before);
    eprintln!("a socket that never reads: the worker grew by {} KiB (cut off: {cut_off})", grown / 1024);
    assert!(grown < 4 << 20, "the worker grew by {} KiB", grown / 1024);
    assert!(alive(worker.child.id()));
    drop(deaf);
}

/// Before: call signals were not limited (500 offers of 2 KB relayed), `call:invite` asked the
/// cluster once per `to` entry before deduplicating, a socket could join any number of rooms, and a
/// token reconnecting in a loop re-joined all its rooms every time (20 reconnects of 12 rooms: 240
/// joins outside the join limit).
#[test]
fn signals_invitations_rooms_and_restores_are_bounded() {
    let worker = Worker::start(&[("JOIN_RATE", "off"), ("ADDRESS_RATE", "off"), ("MESSAGE_RATE", "off")]);
    let out = node("hostile-limits.mjs", &[&format!("http://{}", worker.addr)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("report");
    eprintln!("hostile limits: {report}");
    let count = |path: &[&str]| path.iter().fold(&report, |v, k| &v[*k]).as_u64().unwrap_or(u64::MAX);
    // SIGNAL_RATE's burst is 100 (a call's setup trickles a few dozen candidates at once).
    assert!(count(&["offers", "relayed"]) <= 110, "the signal flood is limited: {report}");
    assert!(count(&["offers", "relayed"]) >= 90, "a call's burst still goes through: {report}");
    assert_eq!(report["self_invite"]["error"], "invite at least one other guest", "{report}");
    assert_eq!(report["repeated_invite"]["ok"], true, "3,000 entries naming one guest are one invitee: {report}");
    assert_eq!(count(&["rooms", "joined"]), 20, "{report}");
    assert_eq!(report["restores"]["per_reconnect"][0], 12, "the first reconnect gets every room back: {report}");
    assert!(count(&["restores", "total"]) <= 45, "a reconnect loop gets its rooms back about twice: {report}");
    assert!(alive(worker.child.id()));
}

/// Before: a room named with a right-to-left override or a control character was accepted, a
/// message to a guest's internal `@guest:` room was accepted and stored, `/api/socket/stats` listed
/// every room's name to anyone, and the TURN credentials of `guest:join` were resent unchanged on
/// every session, expired or not.
#[test]
fn unseen_characters_internal_rooms_public_room_names_and_stale_turn_credentials() {
    let worker =
        Worker::start(&[("ICE_SERVERS", "turn:turn.example.org:3478"), ("TURN_SECRET", "north"), ("TURN_TTL", "2s")]);
    let out = node("small-holes.mjs", &[&format!("http://{}", worker.addr)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("report");
    eprintln!("small holes: {report}");
    for (what, accepted) in report["accepted"].as_object().expect("accepted") {
        assert_eq!(accepted, false, "{what} is refused: {report}");
    }
    let usernames = report["turn_usernames"].as_array().expect("usernames");
    assert!(usernames.len() >= 2 && usernames[0] != usernames[usernames.len() - 1], "fresh credentials: {report}");
}
