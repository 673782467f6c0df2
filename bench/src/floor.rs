//! The floor under a chat server's CPU per delivery on this stack: a relay that speaks just enough
//! Engine.IO and Socket.IO for the chat bench's load (the open packet, CONNECT, `room:join`
//! acknowledged, `message` relayed to the room's members, `/health`) on what socketioxide builds on
//! (tokio's current-thread runtime, as the worker runs, and tokio-tungstenite), and nothing else:
//! no validation beyond parsing the event, no history, no presence, no bus, no limits, no pings.
//! Each connection has a reader task and a writer task that writes everything queued in one flush,
//! as the worker's engine does. What it spends per delivery is what any server on this stack pays
//! on this box (the loopback send, the wake-ups, the websocket frames): the chat bench runs it
//! beside the real servers so that their ratios can be read against it. A yardstick, not a server.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Members = Vec<(u64, mpsc::UnboundedSender<Message>)>;

#[derive(Default)]
struct Relay {
    rooms: RefCell<HashMap<String, Members>>,
    next_id: std::cell::Cell<u64>,
}

/// `chatctl-bench __relay PORT`: serves until killed.
pub(crate) fn serve(port: u16) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let relay = Rc::new(Relay::default());
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::task::spawn_local(connection(stream, relay.clone()));
        }
    });
}

async fn connection(stream: TcpStream, relay: Rc<Relay>) {
    let _ = stream.set_nodelay(true);
    let mut head = [0u8; 11];
    if matches!(stream.peek(&mut head).await, Ok(11) if &head == b"GET /health") {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        // Read before answering: closing with the request unread would reset the connection.
        let mut request = [0u8; 512];
        let _ = stream.read(&mut request).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
        return;
    }
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else { return };
    let id = relay.next_id.get();
    relay.next_id.set(id + 1);
    let (mut sink, mut frames) = ws.split();
    let (out, mut queue) = mpsc::unbounded_channel::<Message>();
    tokio::task::spawn_local(async move {
        while let Some(first) = queue.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Ok(next) = queue.try_recv() {
                if sink.feed(next).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let sid = format!("relay{id:015}");
    let _ = out.send(Message::text(format!(
        "0{{\"sid\":\"{sid}\",\"upgrades\":[],\"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}}"
    )));
    let mut name = String::new();
    let mut joined: Vec<String> = Vec::new();
    while let Some(Ok(frame)) = frames.next().await {
        let Message::Text(text) = frame else { continue };
        let text = text.as_str();
        if let Some(auth) = text.strip_prefix("40") {
            name = serde_json::from_str::<serde_json::Value>(auth)
                .ok()
                .and_then(|a| a.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let _ = out.send(Message::text(format!("40{{\"sid\":\"{sid}\"}}")));
            continue;
        }
        let Some(event) = text.strip_prefix("42") else { continue };
        let digits = event.bytes().take_while(u8::is_ascii_digit).count();
        let (ack, args) = event.split_at(digits);
        let Ok(serde_json::Value::Array(args)) = serde_json::from_str(args) else { continue };
        let room = args.get(1).and_then(|d| d.get("room")).and_then(|r| r.as_str()).unwrap_or_default().to_owned();
        match args.first().and_then(|e| e.as_str()) {
            Some("room:join") => {
                relay.rooms.borrow_mut().entry(room.clone()).or_default().push((id, out.clone()));
                joined.push(room);
                if !ack.is_empty() {
                    let _ = out.send(Message::text(format!("43{ack}[{{\"ok\":true}}]")));
                }
            }
            Some("message") => {
                let text = args.get(1).and_then(|d| d.get("text")).cloned().unwrap_or_default();
                let n = relay.next_id.get();
                relay.next_id.set(n + 1);
                // About the size of the worker's `message {id, room, from, text, time}`.
                let said = serde_json::json!(["message", {
                    "id": format!("relay-{n}"),
                    "room": room,
                    "from": { "id": sid, "name": name },
                    "text": text,
                    "time": "2026-12-02T15:00:00.000Z",
                }]);
                let frame = Message::text(format!("42{said}"));
                if let Some(members) = relay.rooms.borrow().get(&room) {
                    for (_, member) in members {
                        let _ = member.send(frame.clone());
                    }
                }
                if !ack.is_empty() {
                    let _ = out.send(Message::text(format!("43{ack}[{{\"ok\":true,\"id\":\"relay-{n}\"}}]")));
                }
            }
            _ => {}
        }
    }
    let mut rooms = relay.rooms.borrow_mut();
    for room in joined {
        if let Some(members) = rooms.get_mut(&room) {
            members.retain(|(member, _)| *member != id);
            if members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
}
