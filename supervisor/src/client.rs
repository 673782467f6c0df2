//! The CLI side of the control socket: connect, handshake, one request at a time.

use std::io;
use std::time::Duration;

use chat_shared::ipc::{self, Event, FrameError, Hello, PROTOCOL_VERSION, Request, Response, Welcome};
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::home::Home;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Client {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    buf: Vec<u8>,
    pub daemon_pid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon is running (control socket {0})")]
    NotRunning(String),
    #[error(
        "the running daemon (pid {pid}, chatctl {version}) speaks control protocol {protocol}, this chatctl {ours} speaks {PROTOCOL_VERSION}; \
         run the daemon's own `chatctl kill`, or stop pid {pid}, then start again"
    )]
    VersionMismatch { pid: u32, version: String, protocol: u32, ours: &'static str },
    #[error("the daemon did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("control socket")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl Client {
    pub async fn connect(home: &Home) -> Result<Client, ClientError> {
        let path = home.socket();
        let stream = match UnixStream::connect(&path).await {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
                return Err(ClientError::NotRunning(path.display().to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut buf = Vec::new();
        let hello = Hello { protocol: PROTOCOL_VERSION, version: env!("CARGO_PKG_VERSION").to_owned() };
        let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            ipc::write_frame(&mut write, &hello).await?;
            ipc::read_frame::<_, Welcome>(&mut read, &mut buf).await
        })
        .await
        .map_err(|_| ClientError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
        match welcome {
            Some(Welcome::Accepted { pid, .. }) => Ok(Client { read, write, buf, daemon_pid: pid }),
            Some(Welcome::Refused { pid, version, protocol }) => {
                Err(ClientError::VersionMismatch { pid, version, protocol, ours: env!("CARGO_PKG_VERSION") })
            }
            None => Err(ClientError::Closed),
        }
    }

    /// The next event of a subscription; `None` when the daemon closed the connection.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        Ok(ipc::read_frame(&mut self.read, &mut self.buf).await?)
    }

    /// The next frame of a reload: a progress event, or the final response.
    pub async fn next_event_or_response(&mut self) -> Result<Result<Event, Response>, ClientError> {
        let value: serde_json::Value =
            ipc::read_frame(&mut self.read, &mut self.buf).await?.ok_or(ClientError::Closed)?;
        // The two enums' tags are distinct; an event is tried first.
        match serde_json::from_value::<Event>(value.clone()) {
            Ok(event) => Ok(Ok(event)),
            Err(_) => Ok(Err(serde_json::from_value(value).map_err(FrameError::from)?)),
        }
    }

    /// Sends a request without waiting for its answer (a reload, whose events come first).
    pub async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        Ok(ipc::write_frame(&mut self.write, request).await?)
    }

    pub async fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        ipc::write_frame(&mut self.write, request).await?;
        ipc::read_frame(&mut self.read, &mut self.buf).await?.ok_or(ClientError::Closed)
    }
}
