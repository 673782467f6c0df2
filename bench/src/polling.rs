//! An idle Socket.IO long-polling session, as a browser without websockets holds one: the engine.io
//! handshake, the Socket.IO CONNECT (with `auth = {name}`), its answer, then a poll left pending
//! (the server holds it until its next ping, 25 s). One keep-alive connection a session; written
//! for the memory figure only.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A session whose poll is pending on `stream`.
pub(crate) struct Session {
    _stream: TcpStream,
}

/// `count` sessions (guests `p0`, `p1`...), opened 100 at a time.
pub(crate) async fn sessions(addr: SocketAddr, count: usize) -> Result<Vec<Session>, String> {
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(0..count)
        .map(|i| session(addr, format!("p{i}")))
        .buffer_unordered(100)
        .try_collect()
        .await
}

async fn session(addr: SocketAddr, name: String) -> Result<Session, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let open = request(&mut stream, "GET", "", "").await?;
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| format!("no sid in the handshake: {open}"))?
        .to_owned();
    let query = format!("&sid={sid}");
    let posted = request(&mut stream, "POST", &query, &format!("40{{\"name\":\"{name}\"}}")).await?;
    if posted != "ok" {
        return Err(format!("CONNECT answered {posted}"));
    }
    let connected = request(&mut stream, "GET", &query, "").await?;
    // Packets are separated by 0x1e; a ping may come first.
    if !connected.split('\u{1e}').any(|packet| packet.starts_with("40")) {
        return Err(format!("no CONNECT answer: {connected}"));
    }
    // The poll the server now holds.
    let head = format!(
        "GET /socket.io/?EIO=4&transport=polling{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    Ok(Session { _stream: stream })
}

/// One request on the kept-alive connection: the answer's body.
async fn request(stream: &mut TcpStream, method: &str, query: &str, body: &str) -> Result<String, String> {
    let head = format!(
        "{method} /socket.io/?EIO=4&transport=polling{query} HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed by the server".into());
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        let Some((head, rest)) = text.split_once("\r\n\r\n") else { continue };
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("answered {}", head.lines().next().unwrap_or_default()));
        }
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or("no Content-Length")?;
        if rest.len() >= length {
            return Ok(rest[..length].to_owned());
        }
    }
}
