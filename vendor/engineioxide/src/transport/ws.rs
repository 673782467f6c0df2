//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::sync::Arc;

use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, socket::InternalRx, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    tokio::spawn(async move {
        let conn = hyper::upgrade::on(req)
            .await
            .map(hyper_util::rt::TokioIo::new);

        let res = match conn {
            Ok(conn) => on_init(engine.clone(), conn, protocol, sid, parts).await,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return;
            }
        };

        match res {
            Ok(_) => {
                // The session runs on in a task of its own (`run_websocket`).
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws session started")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                (socket, ws)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        (socket, ws)
    };

    // A session opened on this websocket keeps its heartbeat in the websocket's task; one upgraded
    // from polling has had its heartbeat task since it opened.
    let heartbeat = sid.is_none();
    // In a task of its own: this function's future is sized for its handshake (several times the
    // session's loop), and a task's allocation is sized for its whole future for the session's life.
    tokio::spawn(run_websocket(engine, socket, ws, heartbeat));
    Ok(())
}

/// What happened on the websocket itself.
enum Wire {
    /// A message came in, or the stream ended (`None`), or failed.
    Read(Option<Result<Message, tungstenite::Error>>),
    /// What was written is flushed to the connection, or could not be.
    Flushed(Result<(), tungstenite::Error>),
}

/// Why a websocket session's loop ended.
enum End {
    /// The session was closed elsewhere: by the server, the handler or the heartbeat.
    Cancelled,
    /// The transport ended: the session is closed for this reason.
    Closed(DisconnectReason),
}

/// Runs a websocket session in one task: reads the websocket for the handler, writes the
/// session's queued packets to it and, for a session opened on this websocket, keeps the
/// heartbeat.
///
/// One task rather than three (a reader, a writer, a heartbeat): each task is an allocation sized
/// for its whole future and kept for the session's life, and a split websocket shares its halves
/// through a lock. Reading goes on while written packets are being flushed; the next packets are
/// taken from the session's channel once the previous ones are flushed, as the writer task did.
///
/// Not an `async fn`: its arguments would be stored twice in its future (rust-lang/rust#62958),
/// and the websocket is the largest of them.
fn run_websocket<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    mut ws: WebSocketStream<S>,
    heartbeat: bool,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        // A polling request that was in progress during the upgrade may still hold the lock.
        let lock = socket.internal_rx.lock();
        let Some(mut internal_rx) = lock
            .with_cancellation_token(&socket.cancellation_token)
            .await
        else {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "session closed before the ws transport started");
            return;
        };
        let end = serve(&engine, &socket, &mut ws, &mut internal_rx, heartbeat).await;

        // The session's close waits for this lock before it tells the handler.
        drop(internal_rx);
        if let End::Closed(reason) = end {
            engine.close_session(socket.id, reason);
        }

        #[cfg(feature = "tracing")]
        tracing::trace!(sid = %socket.id, "ws closing flush");
        // Bounded: a peer that reads nothing must not keep the task and its connection forever.
        let closing = async {
            ws.flush().await.ok();
            ws.close(None).await.ok();
        };
        tokio::time::timeout(engine.config.ping_timeout, closing)
            .await
            .ok();
    }
}

/// The session's loop, until the session or its transport ends.
///
/// A function of its own: its future (the heartbeat's timer, the branches' futures) is then held
/// only while it runs, not beside the session's closing flush.
async fn serve<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
    internal_rx: &mut InternalRx,
    heartbeat: bool,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let InternalRx { buffered_rx, .. } = internal_rx;

    let config = &engine.config;
    let mut beating = heartbeat;
    let heartbeat = socket.heartbeat_job(config.ping_interval, config.ping_timeout);
    tokio::pin!(heartbeat);
    // Packets written to the websocket and not yet flushed to the connection.
    let mut unflushed = false;

    loop {
        tokio::select! {
            biased;
            packets = buffered_rx.recv(), if !unflushed => {
                let Some(packets) = packets else { break End::Cancelled };
                write_packets(ws, socket, *packets);
                while let Ok(packets) = buffered_rx.try_recv() {
                    write_packets(ws, socket, *packets);
                }
                unflushed = true;
            }
            _ = socket.cancellation_token.cancelled() => break End::Cancelled,
            packets = std::future::poll_fn(|cx| socket.volatile.poll_take(cx)), if !unflushed => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = ?socket.id, "ws volatile flush: {} packets", packets.len());
                write_packets(ws, socket, *packets);
                unflushed = true;
            }
            Err(_e) = &mut heartbeat, if beating => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = ?socket.id, "heartbeat error: {_e}");
                beating = false;
                // Queues a close packet and cancels the session: the next turns write it and end.
                socket.close(DisconnectReason::HeartbeatTimeout);
            }
            wire = std::future::poll_fn(|cx| poll_wire(ws, &mut unflushed, cx)) => match wire {
                Wire::Read(Some(Ok(msg))) => {
                    if let Err(reason) = on_message(engine, socket, msg) {
                        break End::Closed(reason);
                    }
                }
                Wire::Read(Some(Err(_e))) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "ws transport error: {_e}");
                    break End::Closed(DisconnectReason::TransportError);
                }
                Wire::Read(None) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "ws transport was closed");
                    break End::Closed(DisconnectReason::TransportClose);
                }
                Wire::Flushed(Ok(())) => {}
                Wire::Flushed(Err(_e)) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "error sending packets: {_e}");
                }
            },
        }
    }
}

/// Flushes what was written (when there is some) and reads the next message.
///
/// A completed flush is told even when nothing came in, so that the session's loop takes the next
/// packets; a flush that fails is told before anything is read.
fn poll_wire<S>(
    ws: &mut WebSocketStream<S>,
    unflushed: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Wire>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut flushed = false;
    if *unflushed {
        if let Poll::Ready(res) = ws.poll_flush_unpin(cx) {
            *unflushed = false;
            if res.is_err() {
                return Poll::Ready(Wire::Flushed(res));
            }
            flushed = true;
        }
    }
    match ws.poll_next_unpin(cx) {
        Poll::Ready(msg) => Poll::Ready(Wire::Read(msg)),
        Poll::Pending if flushed => Poll::Ready(Wire::Flushed(Ok(()))),
        Poll::Pending => Poll::Pending,
    }
}

/// Hands a websocket message to the session; `Err` ends the session for that reason.
fn on_message<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    msg: Message,
) -> Result<(), DisconnectReason> {
    let bad_packet = |e: Error| {
        #[cfg(feature = "tracing")]
        tracing::debug!("error when handling packet: {:?}", e);
        Option::<DisconnectReason>::from(&e).unwrap_or(DisconnectReason::TransportError)
    };
    match msg {
        Message::Text(msg) => {
            match Packet::parse(socket.protocol, ws_bytes_to_str(msg))
                .map_err(|e| bad_packet(e.into()))?
            {
                Packet::Close => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("[sid={}] closing session", socket.id);
                    return Err(DisconnectReason::TransportClose);
                }
                Packet::Pong | Packet::Ping => socket.heartbeat_received(),
                Packet::Message(msg) => engine.handler.on_message(msg, socket.clone()),
                p => return Err(bad_packet(Error::BadPacket(p))),
            }
        }
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            return Err(DisconnectReason::TransportClose);
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
        }
    }
    Ok(())
}

/// Writes a session's packets to the websocket's buffer; the session's loop flushes them.
fn write_packets<D, S>(ws: &mut WebSocketStream<S>, socket: &Socket<D>, packets: PacketBuf)
where
    D: Default + Send + Sync + 'static,
    S: AsyncRead + AsyncWrite + Unpin,
{
    for packet in packets {
        let msg = match packet {
            Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                if socket.protocol == ProtocolVersion::V3 {
                    // v3 protocol requires packet type as the first byte.
                    // This requires a new buffer. This is OK as it is only for the V3 protocol.
                    let mut buff = Vec::with_capacity(bin.len() + 1);
                    buff.push(0x04);
                    buff.extend(bin);
                    Message::Binary(buff.into())
                } else {
                    Message::Binary(bin)
                }
            }
            // A Noop Packet maybe sent by the server to upgrade from a polling connection
            // In the case that the packet was not poll in time it will remain in the buffer and therefore
            // it should be discarded here
            Packet::Noop => continue,
            packet => {
                let packet: String = packet.try_into().unwrap();
                Message::Text(packet.into())
            }
        };
        // The websocket takes the frame whatever the connection's state (a full connection
        // only delays the flush), within the session's channel's bound.
        if let Err(_e) = ws.start_send_unpin(msg) {
            #[cfg(feature = "tracing")]
            tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
        }
    }
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(Box::new(smallvec![Packet::Noop]))
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    fn engine() -> Arc<EngineIo<StubHandler>> {
        Arc::new(EngineIo::new(
            Arc::new(StubHandler),
            EngineIoConfig::default(),
        ))
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;

        let polling = socket.internal_rx.lock().await;
        let session = tokio::spawn(run_websocket(engine(), socket.clone(), server, false));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !session.is_finished(),
            "the session should wait for the lock"
        );

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;

        let _polling = socket.internal_rx.lock().await;
        let session = tokio::spawn(run_websocket(engine(), socket.clone(), server, false));
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, session)
            .await
            .expect("the session should stop")
            .unwrap();
    }

    /// Remembers the messages it is given.
    #[derive(Debug, Default)]
    struct Recorder(std::sync::Mutex<Vec<Str>>);
    impl EngineIoHandler for Recorder {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, msg: Str, _: Arc<Socket<()>>) {
            self.0.lock().unwrap().push(msg);
        }
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    /// The one task reads what the client sends while its writes wait for the client to read, and
    /// a client that reads nothing does not keep the session's end waiting.
    #[tokio::test]
    async fn one_task_reads_while_it_writes() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let recorder = Arc::new(Recorder::default());
        // The closing flush is bounded by the ping timeout.
        let config = EngineIoConfig::builder()
            .ping_timeout(Duration::from_millis(200))
            .build();
        let engine = Arc::new(EngineIo::new(recorder.clone(), config));
        let session = tokio::spawn(run_websocket(engine, socket.clone(), server, false));

        // More than the duplex pipe holds (1 KiB): the flush waits for the client to read.
        for i in 0..100 {
            socket
                .emit(Str::from(format!("message number {i:03}")))
                .unwrap();
        }
        client
            .send(Message::text("4from the client"))
            .await
            .unwrap();
        tokio::time::timeout(TIMEOUT, async {
            while recorder.0.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the message should be read while the flush waits");
        assert_eq!(recorder.0.lock().unwrap()[0], "from the client");

        for i in 0..100 {
            let msg = tokio::time::timeout(TIMEOUT, client.next())
                .await
                .expect("every packet should arrive")
                .unwrap()
                .unwrap();
            assert_eq!(msg, Message::text(format!("4message number {i:03}")));
        }

        // A pong is news for the heartbeat.
        client.send(Message::text("3")).await.unwrap();
        tokio::time::timeout(TIMEOUT, socket.heartbeat.notified())
            .await
            .expect("the pong should reach the heartbeat");

        // The client stops reading (more than the pipe holds); once the session's task has taken
        // every packet, its flush waits for the client, and the server closes the session.
        for i in 0..100 {
            socket.emit(Str::from(format!("unread {i:03}"))).ok();
        }
        let channel = &socket.internal_tx;
        tokio::time::timeout(TIMEOUT, async {
            while channel.capacity() < channel.max_capacity() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the session should take every packet");
        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, session)
            .await
            .expect("the session should end within its closing bound")
            .unwrap();
    }
}
