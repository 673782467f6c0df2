//! The CLI side of the control socket: connect, handshake, one request at a time. Each request
//! has a typed method that returns its own answer or a [`ClientError`]; the one place that knows
//! which [`Response`] answers which [`Request`] is here, not in every verb.

use std::io;
use std::time::Duration;

use chat_shared::ipc::{
    self, Call, ErrorKind, Event, FrameError, Hello, PROTOCOL_VERSION, Request, Response, Rollout, SignalName,
    Snapshot, Subscription, Welcome,
};
use chat_shared::spec::AppSpec;
use chat_shared::status::{AppDescription, AppStatus};
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
    /// What the daemon says it is (it may have been updated in place since it started).
    pub daemon_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon is running (control socket {0})")]
    NotRunning(String),
    #[error("{}", mismatch(*pid, version, *protocol, ours))]
    VersionMismatch { pid: u32, version: String, protocol: u32, ours: &'static str },
    #[error("the daemon did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("control socket")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The daemon refused the request or failed to do it; `kind` says which way.
    #[error("{message}")]
    Daemon { kind: ErrorKind, message: String },
    #[error("the daemon answered {asked} with {answer:?}, which this chatctl does not expect")]
    Unexpected { asked: &'static str, answer: Box<Response> },
}

/// What to do when the daemon speaks another protocol: this chatctl cannot talk to it at all, so
/// the way out is the daemon's own binary, or a signal (SIGTERM stops every app gracefully).
fn mismatch(pid: u32, version: &str, protocol: u32, ours: &str) -> String {
    let who = format!("the running daemon (pid {pid}, chatctl {version}) speaks control protocol {protocol}");
    if protocol < PROTOCOL_VERSION {
        format!(
            "{who}, older than this chatctl {ours} (protocol {PROTOCOL_VERSION}). To move to this version: \
             `chatctl update` (the daemon re-executes this chatctl, every app keeps running), or for a \
             daemon older than that command `chatctl save` and `chatctl kill` with the chatctl the daemon \
             came from (or `kill {pid}`, which stops every app gracefully), then `chatctl resurrect` or \
             `chatctl start` with this one"
        )
    } else {
        format!(
            "{who}, newer than this chatctl {ours} (protocol {PROTOCOL_VERSION}): use the chatctl the daemon came \
             from (chatctl {version}), or stop it (`kill {pid}`) and start again with this one"
        )
    }
}

/// `start`'s answer.
#[derive(Debug)]
pub struct Started {
    pub started: Vec<String>,
    pub already_running: Vec<String>,
}

/// `signal`'s answer: the instances signalled, as (index, pid).
#[derive(Debug)]
pub struct Signalled {
    pub app: String,
    pub signal: SignalName,
    pub sent: Vec<(usize, u32)>,
}

/// The end of a rollout (`reload`, `scale`) or of a log tail, after its events.
pub enum Frame<T> {
    Event(Event),
    End(T),
}

/// A [`Response::Error`] as an error, else what `pick` makes of the answer it expects.
fn answer<T>(
    asked: &'static str,
    response: Response,
    pick: impl FnOnce(Response) -> Result<T, Response>,
) -> Result<T, ClientError> {
    match response {
        Response::Error { kind, message } => Err(ClientError::Daemon { kind, message }),
        other => pick(other).map_err(|answer| ClientError::Unexpected { asked, answer: Box::new(answer) }),
    }
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
            Some(Welcome::Accepted { pid, version, .. }) => {
                Ok(Client { read, write, buf, daemon_pid: pid, daemon_version: version })
            }
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

    /// The next frame of a stream whose end `pick` recognises: a progress or tail event, or
    /// the end, typed. An error answer ends the stream as a [`ClientError::Daemon`].
    async fn next_frame<T>(
        &mut self,
        asked: &'static str,
        pick: impl FnOnce(Response) -> Result<T, Response>,
    ) -> Result<Frame<T>, ClientError> {
        let value: serde_json::Value =
            ipc::read_frame(&mut self.read, &mut self.buf).await?.ok_or(ClientError::Closed)?;
        // The two enums' tags are distinct; an event is tried first.
        if let Ok(event) = serde_json::from_value::<Event>(value.clone()) {
            return Ok(Frame::Event(event));
        }
        let response = serde_json::from_value(value).map_err(FrameError::from)?;
        answer(asked, response, pick).map(Frame::End)
    }

    /// The next frame of a `reload`, `reload APP:INDEX` or `scale`: a step, or the summaries.
    pub async fn next_rollout_frame(&mut self) -> Result<Frame<Vec<chat_shared::ipc::ReloadSummary>>, ClientError> {
        self.next_frame("a rollout", |r| match r {
            Response::Reloaded { apps } => Ok(apps),
            other => Err(other),
        })
        .await
    }

    /// The next snapshot of a `monit` subscription (the first is its answer, the rest are events);
    /// `None` for an event of another kind.
    pub async fn next_snapshot(&mut self) -> Result<Option<Snapshot>, ClientError> {
        let frame = self
            .next_frame("monitor", |r| match r {
                Response::Snapshot(snapshot) => Ok(snapshot),
                other => Err(other),
            })
            .await?;
        Ok(match frame {
            Frame::Event(Event::Snapshot(snapshot)) | Frame::End(snapshot) => Some(snapshot),
            Frame::Event(_) => None,
        })
    }

    /// The next frame of a `logs` request: a tail chunk, or its end (the lines sent per file).
    pub async fn next_logs_frame(&mut self) -> Result<Frame<usize>, ClientError> {
        self.next_frame("logs", |r| match r {
            Response::Logs { per_file } => Ok(per_file),
            other => Err(other),
        })
        .await
    }

    /// Starts a reload or a scale: its frames come with [`Client::next_rollout_frame`].
    pub async fn rollout(&mut self, rollout: Rollout) -> Result<(), ClientError> {
        Ok(ipc::write_frame(&mut self.write, &Request::from(rollout)).await?)
    }

    /// Subscribes to logs or snapshots: their frames come with [`Client::next_logs_frame`],
    /// [`Client::next_event`] or [`Client::next_snapshot`] until this connection is dropped.
    pub async fn subscribe(&mut self, subscription: Subscription) -> Result<(), ClientError> {
        Ok(ipc::write_frame(&mut self.write, &Request::from(subscription)).await?)
    }

    /// One call and what `pick` makes of its answer.
    async fn call<T>(
        &mut self,
        asked: &'static str,
        call: Call,
        pick: impl FnOnce(Response) -> Result<T, Response>,
    ) -> Result<T, ClientError> {
        ipc::write_frame(&mut self.write, &Request::from(call)).await?;
        let response = ipc::read_frame(&mut self.read, &mut self.buf).await?.ok_or(ClientError::Closed)?;
        answer(asked, response, pick)
    }

    pub async fn start(&mut self, apps: Vec<AppSpec>) -> Result<Started, ClientError> {
        self.call("start", Call::Start { apps }, |r| match r {
            Response::Started { started, already_running } => Ok(Started { started, already_running }),
            other => Err(other),
        })
        .await
    }

    pub async fn list(&mut self) -> Result<Vec<AppStatus>, ClientError> {
        self.call("list", Call::List, |r| match r {
            Response::List { apps } => Ok(apps),
            other => Err(other),
        })
        .await
    }

    pub async fn describe(&mut self, app: &str) -> Result<AppDescription, ClientError> {
        self.call("describe", Call::Describe { app: app.to_owned() }, |r| match r {
            Response::Described(description) => Ok(*description),
            other => Err(other),
        })
        .await
    }

    pub async fn snapshot(&mut self) -> Result<Snapshot, ClientError> {
        self.call("snapshot", Call::Snapshot, |r| match r {
            Response::Snapshot(snapshot) => Ok(snapshot),
            other => Err(other),
        })
        .await
    }

    /// `stop`, `restart`, `delete`, `flush`, `reload-logs`: the apps acted upon, once done.
    pub async fn act(&mut self, call: Call) -> Result<Vec<String>, ClientError> {
        self.call("an action", call, |r| match r {
            Response::Done { apps } => Ok(apps),
            other => Err(other),
        })
        .await
    }

    pub async fn signal(
        &mut self,
        app: String,
        instance: Option<usize>,
        signal: SignalName,
    ) -> Result<Signalled, ClientError> {
        self.call("signal", Call::Signal { app, instance, signal }, |r| match r {
            Response::Signalled { app, signal, sent } => Ok(Signalled { app, signal, sent }),
            other => Err(other),
        })
        .await
    }

    /// Where the dump went and the apps it holds.
    pub async fn save(&mut self) -> Result<(String, Vec<String>), ClientError> {
        self.call("save", Call::Save, |r| match r {
            Response::Saved { path, apps } => Ok((path, apps)),
            other => Err(other),
        })
        .await
    }

    /// Instances stopped, and how many of them had to be SIGKILLed.
    pub async fn kill(&mut self) -> Result<(usize, usize), ClientError> {
        self.call("kill", Call::Kill, |r| match r {
            Response::Killed { instances_stopped, forced } => Ok((instances_stopped, forced)),
            other => Err(other),
        })
        .await
    }
}
