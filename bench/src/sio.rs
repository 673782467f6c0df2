//! A Socket.IO v4 client over websocket, as much as the chat benchmark needs: connect to the default
//! namespace with `auth`, emit with an acknowledgement, answer pings, and hand every other frame to
//! the caller. Written for the load generator (thousands of clients in one small process); the
//! wire compatibility tests use the real npm socket.io-client.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected client: frames to send go through `out` (a writer task owns the socket's sink).
pub(crate) struct Client {
    pub(crate) out: mpsc::UnboundedSender<String>,
    pub(crate) frames: futures_util::stream::SplitStream<Ws>,
}

/// The longest a connection or an acknowledgement may take: a server that stops answering fails the
/// round instead of hanging the benchmark.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects and joins the default namespace with `auth = {name}` (no `auth` when `name` is empty),
/// sending `headers` with the websocket handshake.
pub(crate) async fn connect(addr: SocketAddr, name: &str, headers: &[(&str, &str)]) -> Result<Client, String> {
    tokio::time::timeout(ANSWER_WITHIN, connect_now(addr, name, headers))
        .await
        .map_err(|_| format!("no connection within {ANSWER_WITHIN:?}"))?
}

async fn connect_now(addr: SocketAddr, name: &str, headers: &[(&str, &str)]) -> Result<Client, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let mut request = url.into_client_request().map_err(|e| format!("request: {e}"))?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        request.headers_mut().insert(name, HeaderValue::from_str(value).map_err(|e| e.to_string())?);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| format!("connect: {e}"))?;
    next_text(&mut ws, |t| t.starts_with('0')).await?;
    let connect = if name.is_empty() { "40".to_owned() } else { format!("40{{\"name\":\"{name}\"}}") };
    ws.send(Message::text(connect)).await.map_err(|e| e.to_string())?;
    next_text(&mut ws, |t| t.starts_with("40")).await?;
    let (mut sink, frames) = ws.split();
    let (out, mut queue) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(text) = queue.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    Ok(Client { out, frames })
}

/// Waits for the text frame `wanted` accepts, answering pings and skipping anything else.
async fn next_text(ws: &mut Ws, wanted: impl Fn(&str) -> bool) -> Result<String, String> {
    while let Some(frame) = ws.next().await {
        match frame.map_err(|e| e.to_string())? {
            Message::Text(text) if text.as_str() == "2" => {
                ws.send(Message::text("3")).await.map_err(|e| e.to_string())?
            }
            Message::Text(text) if wanted(text.as_str()) => return Ok(text.to_string()),
            Message::Close(_) => return Err("closed by the server".into()),
            _ => {}
        }
    }
    Err("closed".into())
}

impl Client {
    /// Emits `event` with `data` (JSON) and waits for its acknowledgement.
    pub(crate) async fn call(&mut self, event: &str, data: &str) -> Result<String, String> {
        self.out.send(format!("421[\"{event}\",{data}]")).map_err(|_| "writer gone".to_owned())?;
        tokio::time::timeout(ANSWER_WITHIN, self.acknowledgement())
            .await
            .map_err(|_| format!("no acknowledgement of {event} within {ANSWER_WITHIN:?}"))?
    }

    /// `room:join {room}`, acknowledged `ok`.
    pub(crate) async fn join(&mut self, room: &str) -> Result<(), String> {
        let ack = self.call("room:join", &format!("{{\"room\":\"{room}\"}}")).await?;
        if !ack.contains("\"ok\":true") {
            return Err(format!("room:join refused: {ack}"));
        }
        Ok(())
    }

    async fn acknowledgement(&mut self) -> Result<String, String> {
        while let Some(frame) = self.frames.next().await {
            match frame.map_err(|e| e.to_string())? {
                Message::Text(text) if text.as_str() == "2" => {
                    let _ = self.out.send("3".into());
                }
                Message::Text(text) if text.starts_with("431") => return Ok(text.to_string()),
                Message::Close(_) => return Err("closed by the server".into()),
                _ => {}
            }
        }
        Err("closed".into())
    }
}
