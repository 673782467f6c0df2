//! The control protocol between the `chatctl` CLI and its daemon: newline-delimited JSON over a Unix
//! socket, a version handshake first, then one [`Request`] at a time: a [`Call`] and its [`Response`],
//! a [`Rollout`] and its events then its response, or a [`Subscription`] and its events.
//!
//! JSON strings escape newlines, so no payload (a log line, an argument) can break the framing, and an
//! operator can talk to the daemon with `socat` when debugging.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spec::AppSpec;
use crate::status::AppStatus;

/// Bumped on any incompatible change of the types in this module (2: a log tail comes as
/// [`Event::Tail`] frames before its [`Response::Logs`]; 3: [`Call::Signal`], which a daemon of
/// protocol 2 would answer with a malformed-frame error instead of refusing the handshake; 4:
/// [`Rollout::ReloadInstance`]; 5: [`Response::Error`] carries an [`ErrorKind`]).
pub const PROTOCOL_VERSION: u32 = 5;
/// Longest frame either side accepts; a longer one is an error, not an allocation.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// Most lines of each file one `logs` request gets; a larger `lines` is capped to this. A tail is
/// streamed (memory stays bounded whatever the count), but past this a person is better served by
/// the file itself, and a typo such as `-n 100000000` must not keep the daemon reading gigabytes.
pub const MAX_TAIL_LINES: usize = 100_000;
/// Name of the control socket inside `$CHATCTL_HOME`.
pub const SOCKET_FILE: &str = "daemon.sock";

/// First frame of every connection, client to daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// The client's package version, for the error message on a mismatch.
    pub version: String,
}

/// The daemon's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Welcome {
    Accepted {
        protocol: u32,
        version: String,
        pid: u32,
    },
    /// The daemon speaks another protocol version; it closes the connection after this frame.
    Refused {
        protocol: u32,
        version: String,
        pid: u32,
    },
}

/// What the CLI asks: a call (one answer), a rollout (progress events, then one answer) or a
/// subscription (a stream the client ends by hanging up). The daemon routes a request by this
/// split alone; on the wire each part is tagged by `type` and the tags are distinct, so a frame
/// looks as it did when this was one flat enum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Request {
    Call(Call),
    Rollout(Rollout),
    Subscribe(Subscription),
}

/// A request with one answer and nothing before it. `app: None` means every app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Call {
    /// Run these apps; apps already known by name and running are left alone and reported.
    Start { apps: Vec<AppSpec> },
    /// The status table.
    List,
    /// Stop instances (stop signal to the group, SIGKILL after `kill_timeout`); the app stays listed.
    /// `instance`: only that one.
    Stop {
        app: Option<String>,
        #[serde(default)]
        instance: Option<usize>,
    },
    /// Stop then start every instance (or only `instance`).
    Restart {
        app: Option<String>,
        #[serde(default)]
        instance: Option<usize>,
    },
    /// Stop and forget.
    Delete { app: Option<String> },
    /// Send `signal` to the main process of each running instance of `app` (or only `instance`),
    /// as `pm2 sendSignal` does; answered with [`Response::Signalled`].
    Signal {
        app: String,
        #[serde(default)]
        instance: Option<usize>,
        signal: SignalName,
    },
    /// Stop every app, then the daemon exits.
    Kill,
    /// Empty the apps' current log files.
    Flush { app: Option<String> },
    /// Reopen every log file (after an external logrotate moved them).
    ReloadLogs,
    /// Settings in effect and per-instance details of one app.
    Describe { app: String },
    /// Write the running apps to the dump file, for `chatctl resurrect`.
    Save,
    /// The status table and the daemon's own footprint, once.
    Snapshot,
}

/// A request that replaces or adds instances over time: [`Event::Reload`] frames as it goes, then
/// one [`Response`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Rollout {
    /// Replace the running instances of these apps with the given specs, `batch` (else each app's
    /// `reload_batch`) at a time, each successor ready before its predecessor stops.
    Reload { apps: Vec<AppSpec>, batch: Option<usize> },
    /// Replace instance `instance` of `app` by a new process of the same spec, ready before the
    /// old one drains (`chatctl reload APP:INDEX`).
    ReloadInstance { app: String, instance: usize },
    /// Add or remove instances at the end of `app`, keeping the others as they are.
    Scale { app: String, to: ScaleTo },
}

/// A request whose connection then carries events until the client closes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Subscription {
    /// The last `lines` lines (at most [`MAX_TAIL_LINES`]) of the apps' current log files, as
    /// [`Event::Tail`] frames then a [`Response::Logs`]; with `follow`, the connection then carries
    /// an [`Event::Log`] per new line until the client closes it.
    Logs { app: Option<String>, lines: usize, stream: Option<LogStream>, follow: bool },
    /// A [`Response::Snapshot`], then an [`Event::Snapshot`] every `every_ms` until the client
    /// closes the connection (`chatctl monit`).
    Monitor { every_ms: u64 },
}

impl From<Call> for Request {
    fn from(call: Call) -> Request {
        Request::Call(call)
    }
}

impl From<Rollout> for Request {
    fn from(rollout: Rollout) -> Request {
        Request::Rollout(rollout)
    }
}

impl From<Subscription> for Request {
    fn from(subscription: Subscription) -> Request {
        Request::Subscribe(subscription)
    }
}

/// Each part is tried in turn: an unknown `type` tag moves on to the next part, any other error
/// (a missing field, a wrong type) is that part's and is reported as such, so a malformed request
/// is told what is wrong with it rather than "no variant matched".
impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Request, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let unknown_tag = |e: &serde_json::Error| e.to_string().starts_with("unknown variant");
        match Call::deserialize(&value) {
            Ok(call) => return Ok(Request::Call(call)),
            Err(e) if !unknown_tag(&e) => return Err(D::Error::custom(e)),
            Err(_) => {}
        }
        match Rollout::deserialize(&value) {
            Ok(rollout) => return Ok(Request::Rollout(rollout)),
            Err(e) if !unknown_tag(&e) => return Err(D::Error::custom(e)),
            Err(_) => {}
        }
        Subscription::deserialize(&value).map(Request::Subscribe).map_err(|e| match value.get("type") {
            Some(tag) if unknown_tag(&e) => D::Error::custom(format!("unknown request type {tag}")),
            _ => D::Error::custom(e),
        })
    }
}

/// What `chatctl monit` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub apps: Vec<crate::status::AppStatus>,
    pub daemon_pid: u32,
    pub daemon_memory_bytes: Option<u64>,
    pub daemon_cpu_percent: Option<f32>,
}

/// The dump file `chatctl save` writes and `chatctl resurrect` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    /// Bumped when the format changes incompatibly.
    pub version: u32,
    pub saved_at: crate::time::Timestamp,
    pub apps: Vec<AppSpec>,
}

pub const DUMP_VERSION: u32 = 1;
/// Name of the dump file inside `$CHATCTL_HOME`.
pub const DUMP_FILE: &str = "dump.json";

/// `chatctl scale APP N|+N|-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleTo {
    Exactly(usize),
    By(i64),
}

impl ScaleTo {
    /// The new count from the current one; never below 1. `None` when it does not fit a `usize`
    /// (a request may carry any `i64`); the caller still checks it against the instance limit.
    pub fn from(self, current: usize) -> Option<usize> {
        match self {
            ScaleTo::Exactly(n) => Some(n.max(1)),
            ScaleTo::By(delta) => {
                let new = i64::try_from(current).ok()?.checked_add(delta)?;
                usize::try_from(new.max(1)).ok()
            }
        }
    }
}

impl std::str::FromStr for ScaleTo {
    type Err = String;

    fn from_str(text: &str) -> Result<ScaleTo, String> {
        let bad = || format!("{text:?}: expected a number of instances (3), or a change (+2, -1)");
        match text.as_bytes().first() {
            Some(b'+' | b'-') => text.parse::<i64>().map(ScaleTo::By).map_err(|_| bad()),
            _ => match text.parse::<usize>() {
                Ok(0) | Err(_) => Err(bad()),
                Ok(n) => Ok(ScaleTo::Exactly(n)),
            },
        }
    }
}

/// Which output of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Out,
    Err,
}

/// One captured line, as `--json` prints it and as `log_type = "json"` files hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Local time, milliseconds.
    pub time: crate::time::Timestamp,
    pub app: String,
    pub instance: usize,
    pub stream: LogStream,
    pub message: String,
}

/// The tail of one log file, or a part of it (see [`Event::Tail`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTail {
    pub app: String,
    pub stream: LogStream,
    /// `None` for a file merged across instances.
    pub instance: Option<usize>,
    pub path: String,
    pub lines: Vec<String>,
}

/// Frames the daemon sends on a subscribed connection (after the subscription's [`Response`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Log(LogRecord),
    /// This follower fell behind and lost `count` lines (the files have them).
    Skipped {
        count: u64,
    },
    Reload(ReloadStep),
    Snapshot(Snapshot),
    /// Lines of a `logs` tail, oldest first: each file's lines in one or more consecutive frames
    /// (one with no lines for an empty file), files one after the other. Frames stay far below
    /// [`MAX_FRAME_BYTES`] however long the tail.
    Tail(LogTail),
}

/// One step of a rolling reload, as it happens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStep {
    pub app: String,
    pub index: usize,
    pub step: ReloadPhase,
    pub old_pid: Option<u32>,
    pub new_pid: Option<u32>,
    /// Milliseconds from the successor's start to its readiness (`Ready`, `Done`).
    pub ready_ms: Option<u64>,
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadPhase {
    /// A successor is starting beside the running instance.
    Starting,
    /// The successor is ready; the old process is draining.
    Ready,
    /// The old process exited; the successor serves.
    Done,
    /// The successor failed; the old process keeps serving and the reload stops.
    Failed,
    /// An instance was added or removed (a changed `instances`).
    Scaled,
}

/// What a reload did to one app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadSummary {
    pub app: String,
    pub replaced: usize,
    pub added: usize,
    pub removed: usize,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Started {
        started: Vec<String>,
        already_running: Vec<String>,
    },
    List {
        apps: Vec<AppStatus>,
    },
    /// Stop, restart and delete: the apps acted upon (after every instance of them has stopped).
    Done {
        apps: Vec<String>,
    },
    /// Sent once everything is stopped, just before the daemon exits.
    Killed {
        instances_stopped: usize,
        forced: usize,
    },
    /// The end of a tail (its lines came before, as [`Event::Tail`] frames): at most `per_file`
    /// lines of each file were sent, the request's count capped at [`MAX_TAIL_LINES`]. A follow
    /// subscription's events come after this.
    Logs {
        per_file: usize,
    },
    /// Every instance of these apps was replaced.
    Reloaded {
        apps: Vec<ReloadSummary>,
    },
    Described(Box<crate::status::AppDescription>),
    /// `save`: where the dump went and what it holds.
    Saved {
        path: String,
        apps: Vec<String>,
    },
    Snapshot(Snapshot),
    /// `signal`: the instances signalled, as (index, pid).
    Signalled {
        app: String,
        signal: SignalName,
        sent: Vec<(usize, u32)>,
    },
    /// The request was refused or failed; nothing after this frame belongs to it.
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error { kind, message: message.into() }
    }
}

/// Why a request was not done, for a program to branch on; the message beside it is for a person
/// and may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No app of that name, no instance of that index, no process to signal.
    NotFound,
    /// The request or a spec it carries breaks a rule (a limit, a changed socket); nothing was touched.
    Invalid,
    /// A reload of the app is already under way.
    Busy,
    /// Something was tried and failed: a socket in use, a dump not written, a new process that
    /// did not come up.
    Failed,
    /// A stop, restart or delete of the app ended a reload of it.
    Interrupted,
    /// The daemon is stopping every app and takes no new work.
    ShuttingDown,
    /// The daemon went away before it answered.
    Stopped,
    /// A frame that is not a request, or a request sent the wrong way (a stream as a call).
    BadRequest,
}

/// A signal `chatctl signal` may send to an instance. A closed list, by name: SIGSEGV and the
/// like are not messages to a program, and a number would mean different signals on different
/// systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalName {
    #[serde(rename = "SIGHUP")]
    Hup,
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGQUIT")]
    Quit,
    #[serde(rename = "SIGKILL")]
    Kill,
    #[serde(rename = "SIGUSR1")]
    Usr1,
    #[serde(rename = "SIGUSR2")]
    Usr2,
    #[serde(rename = "SIGTERM")]
    Term,
    #[serde(rename = "SIGCONT")]
    Cont,
    #[serde(rename = "SIGSTOP")]
    Stop,
    #[serde(rename = "SIGTSTP")]
    Tstp,
    #[serde(rename = "SIGWINCH")]
    Winch,
    #[serde(rename = "SIGALRM")]
    Alrm,
}

impl SignalName {
    pub const ALL: [SignalName; 12] = [
        SignalName::Hup,
        SignalName::Int,
        SignalName::Quit,
        SignalName::Kill,
        SignalName::Usr1,
        SignalName::Usr2,
        SignalName::Term,
        SignalName::Cont,
        SignalName::Stop,
        SignalName::Tstp,
        SignalName::Winch,
        SignalName::Alrm,
    ];

    /// The name with its `SIG` prefix, as `kill -l` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalName::Hup => "SIGHUP",
            SignalName::Int => "SIGINT",
            SignalName::Quit => "SIGQUIT",
            SignalName::Kill => "SIGKILL",
            SignalName::Usr1 => "SIGUSR1",
            SignalName::Usr2 => "SIGUSR2",
            SignalName::Term => "SIGTERM",
            SignalName::Cont => "SIGCONT",
            SignalName::Stop => "SIGSTOP",
            SignalName::Tstp => "SIGTSTP",
            SignalName::Winch => "SIGWINCH",
            SignalName::Alrm => "SIGALRM",
        }
    }
}

impl std::fmt::Display for SignalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SignalName {
    type Err = String;

    /// `SIGUSR2`, `USR2`, `sigusr2`: with or without the prefix, in any case.
    fn from_str(text: &str) -> Result<SignalName, String> {
        let upper = text.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        SignalName::ALL.into_iter().find(|s| &s.as_str()[3..] == bare).ok_or_else(|| {
            let known: Vec<&str> = SignalName::ALL.iter().map(|s| s.as_str()).collect();
            format!("{text:?}: not a signal chatctl sends (one of {})", known.join(", "))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("control socket I/O")]
    Io(#[from] std::io::Error),
    #[error("frame longer than {MAX_FRAME_BYTES} bytes")]
    TooBig,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads one frame; `Ok(None)` on a clean end of stream. `buf` is reused between calls.
pub async fn read_frame<R, T>(reader: &mut R, buf: &mut Vec<u8>) -> Result<Option<T>, FrameError>
where
    R: AsyncBufRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    buf.clear();
    let limit = MAX_FRAME_BYTES as u64 + 1;
    let n = (&mut *reader).take(limit).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if n > MAX_FRAME_BYTES { FrameError::TooBig } else { FrameError::Truncated });
    }
    Ok(Some(serde_json::from_slice(&buf[..n - 1])?))
}

pub async fn write_frame<W, T>(writer: &mut W, value: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut bytes = serde_json::to_vec(value)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooBig);
    }
    bytes.push(b'\n');
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
        let mut wire = Vec::new();
        write_frame(&mut wire, &value).await.expect("UNWRAP: writing to a Vec cannot fail");
        let mut reader = BufReader::new(wire.as_slice());
        let mut buf = Vec::new();
        let back: Option<T> = read_frame(&mut reader, &mut buf).await.expect("frame decodes");
        assert_eq!(back.as_ref(), Some(&value));
        let end: Option<T> = read_frame(&mut reader, &mut buf).await.expect("clean end");
        assert!(end.is_none());
    }

    /// Which variant, by an exhaustive match: a new variant does not compile until it is named
    /// here, and then `every_variant_round_trips` fails until it is in its list.
    fn request_variant(request: &Request) -> &'static str {
        match request {
            Request::Call(call) => match call {
                Call::Start { .. } => "start",
                Call::List => "list",
                Call::Stop { .. } => "stop",
                Call::Restart { .. } => "restart",
                Call::Delete { .. } => "delete",
                Call::Signal { .. } => "signal",
                Call::Kill => "kill",
                Call::Flush { .. } => "flush",
                Call::ReloadLogs => "reload_logs",
                Call::Describe { .. } => "describe",
                Call::Save => "save",
                Call::Snapshot => "snapshot",
            },
            Request::Rollout(rollout) => match rollout {
                Rollout::Reload { .. } => "reload",
                Rollout::ReloadInstance { .. } => "reload_instance",
                Rollout::Scale { .. } => "scale",
            },
            Request::Subscribe(subscription) => match subscription {
                Subscription::Logs { .. } => "logs",
                Subscription::Monitor { .. } => "monitor",
            },
        }
    }
    const REQUESTS: usize = 17;

    fn response_variant(response: &Response) -> &'static str {
        match response {
            Response::Started { .. } => "started",
            Response::List { .. } => "list",
            Response::Done { .. } => "done",
            Response::Killed { .. } => "killed",
            Response::Logs { .. } => "logs",
            Response::Reloaded { .. } => "reloaded",
            Response::Described(_) => "described",
            Response::Saved { .. } => "saved",
            Response::Snapshot(_) => "snapshot",
            Response::Signalled { .. } => "signalled",
            Response::Error { .. } => "error",
        }
    }
    const RESPONSES: usize = 11;

    fn event_variant(event: &Event) -> &'static str {
        match event {
            Event::Log(_) => "log",
            Event::Skipped { .. } => "skipped",
            Event::Reload(_) => "reload",
            Event::Snapshot(_) => "snapshot",
            Event::Tail(_) => "tail",
        }
    }
    const EVENTS: usize = 5;

    fn welcome_variant(welcome: &Welcome) -> &'static str {
        match welcome {
            Welcome::Accepted { .. } => "accepted",
            Welcome::Refused { .. } => "refused",
        }
    }

    fn spec() -> AppSpec {
        let text = "[apps.chat]\nscript = \"bin/chat\"\nport = 3000\nhealth = { path = \"/health\" }\n";
        let eco = crate::ecosystem::Ecosystem::parse(text, std::path::Path::new("/srv/e.toml")).expect("valid");
        eco.resolve(None, None, &Default::default()).expect("resolves").remove(0)
    }

    fn status() -> AppStatus {
        use crate::status::{ChatFigures, ExitKind, InstanceStatus, Phase};
        AppStatus {
            name: "chat".into(),
            profile: Some("production".into()),
            exec_mode: crate::ecosystem::ExecMode::Cluster,
            script: "bin/chat".into(),
            port: Some(3000),
            instances: vec![InstanceStatus {
                index: 0,
                status: Phase::Online,
                pid: Some(42),
                port: Some(3000),
                admin_addr: Some("127.0.0.1:4000".into()),
                uptime_ms: Some(5),
                restarts: 1,
                memory_bytes: Some(1 << 20),
                cpu_percent: Some(1.5),
                last_exit: Some(ExitKind::Code(1)),
                note: Some("restarted".into()),
                last_probe: Some((true, 3)),
                chat: Some(ChatFigures {
                    connections: 2,
                    rooms: 1,
                    messages: 9,
                    dropped: 0,
                    handed: 1,
                    taken: 0,
                    degraded: Some("redis link down".into()),
                }),
            }],
            log_issue: Some("disk full".into()),
            build: None,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot { apps: vec![status()], daemon_pid: 1, daemon_memory_bytes: Some(2), daemon_cpu_percent: Some(0.5) }
    }

    #[tokio::test]
    async fn every_variant_round_trips() {
        use std::collections::BTreeSet;
        round_trip(Hello { protocol: PROTOCOL_VERSION, version: "0.1.0".into() }).await;
        let mut seen = BTreeSet::new();
        for welcome in [
            Welcome::Accepted { protocol: 1, version: "x".into(), pid: 7 },
            Welcome::Refused { protocol: 2, version: "y".into(), pid: 7 },
        ] {
            seen.insert(welcome_variant(&welcome));
            round_trip(welcome).await;
        }
        assert_eq!(seen.len(), 2, "{seen:?}");

        let mut seen = BTreeSet::new();
        for request in [
            Call::Start { apps: vec![spec()] }.into(),
            Call::List.into(),
            Call::Stop { app: None, instance: None }.into(),
            Call::Restart { app: Some("chat".into()), instance: Some(1) }.into(),
            Subscription::Monitor { every_ms: 500 }.into(),
            Call::Delete { app: Some("line\nbreak".into()) }.into(),
            Call::Kill.into(),
            Subscription::Logs { app: None, lines: 15, stream: Some(LogStream::Err), follow: true }.into(),
            Call::Flush { app: Some("chat".into()) }.into(),
            Call::ReloadLogs.into(),
            Rollout::Reload { apps: vec![spec()], batch: Some(2) }.into(),
            Rollout::Scale { app: "chat".into(), to: ScaleTo::By(-1) }.into(),
            Rollout::Scale { app: "chat".into(), to: ScaleTo::Exactly(3) }.into(),
            Rollout::ReloadInstance { app: "chat".into(), instance: 3 }.into(),
            Call::Describe { app: "chat".into() }.into(),
            Call::Save.into(),
            Call::Snapshot.into(),
            Call::Signal { app: "chat".into(), instance: Some(1), signal: SignalName::Usr2 }.into(),
            Call::Signal { app: "chat".into(), instance: None, signal: SignalName::Winch }.into(),
        ] {
            let request: Request = request;
            seen.insert(request_variant(&request));
            round_trip(request).await;
        }
        assert_eq!(seen.len(), REQUESTS, "a request variant is missing: {seen:?}");

        let mut seen = BTreeSet::new();
        let description = crate::status::AppDescription {
            spec: spec(),
            status: status(),
            instances: vec![crate::status::InstanceDetail {
                index: 0,
                sockets: vec!["http 0.0.0.0:3000".into()],
                log_files: vec!["/logs/chat-out.log".into()],
                history: vec![crate::status::HistoryEntry {
                    at: crate::time::Timestamp::now_millis(),
                    event: "online".into(),
                }],
                probes: vec![],
                memory_peak_bytes: Some(3),
            }],
        };
        let mut responses = vec![
            Response::Started { started: vec!["a".into()], already_running: vec![] },
            Response::List { apps: vec![status()] },
            Response::Done { apps: vec!["a".into()] },
            Response::Killed { instances_stopped: 3, forced: 1 },
            Response::Logs { per_file: MAX_TAIL_LINES },
            Response::Reloaded {
                apps: vec![ReloadSummary { app: "a".into(), replaced: 4, added: 0, removed: 1, duration_ms: 9 }],
            },
            Response::Described(Box::new(description)),
            Response::Saved { path: "/home/dump.json".into(), apps: vec!["a".into()] },
            Response::Snapshot(snapshot()),
            Response::Signalled { app: "a".into(), signal: SignalName::Hup, sent: vec![(0, 12), (1, 13)] },
        ];
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::Invalid,
            ErrorKind::Busy,
            ErrorKind::Failed,
            ErrorKind::Interrupted,
            ErrorKind::ShuttingDown,
            ErrorKind::Stopped,
            ErrorKind::BadRequest,
        ] {
            responses.push(Response::error(kind, format!("{kind:?}")));
        }
        for response in responses {
            seen.insert(response_variant(&response));
            round_trip(response).await;
        }
        assert_eq!(seen.len(), RESPONSES, "a response variant is missing: {seen:?}");

        let mut seen = BTreeSet::new();
        let record = LogRecord {
            time: crate::time::Timestamp::now_millis(),
            app: "a".into(),
            instance: 0,
            stream: LogStream::Out,
            message: "m".into(),
        };
        for event in [
            Event::Log(record),
            Event::Skipped { count: 3 },
            Event::Tail(LogTail {
                app: "a".into(),
                stream: LogStream::Out,
                instance: Some(1),
                path: "/x".into(),
                lines: vec!["l".into()],
            }),
            Event::Reload(ReloadStep {
                app: "a".into(),
                index: 2,
                step: ReloadPhase::Ready,
                old_pid: Some(1),
                new_pid: Some(2),
                ready_ms: Some(3),
                message: None,
            }),
            Event::Snapshot(snapshot()),
        ] {
            seen.insert(event_variant(&event));
            round_trip(event).await;
        }
        assert_eq!(seen.len(), EVENTS, "an event variant is missing: {seen:?}");
    }

    #[test]
    fn the_wire_form_is_one_type_tag_per_request() {
        let wire = serde_json::to_string(&Request::from(Call::Stop { app: Some("a".into()), instance: None }))
            .expect("UNWRAP: a request serializes");
        assert_eq!(wire, r#"{"type":"stop","app":"a","instance":null}"#);
        let back: Request = serde_json::from_str(r#"{"type":"monitor","every_ms":5}"#).expect("a monitor request");
        assert_eq!(back, Request::Subscribe(Subscription::Monitor { every_ms: 5 }));
    }

    #[test]
    fn scale_targets() {
        assert_eq!("3".parse::<ScaleTo>().map(|s| s.from(5)), Ok(Some(3)));
        assert_eq!("+2".parse::<ScaleTo>().map(|s| s.from(5)), Ok(Some(7)));
        assert_eq!("-9".parse::<ScaleTo>().map(|s| s.from(5)), Ok(Some(1)));
        assert!("0".parse::<ScaleTo>().is_err() && "many".parse::<ScaleTo>().is_err());
    }

    #[test]
    fn signal_names() {
        for (text, want) in [("SIGUSR2", SignalName::Usr2), ("usr2", SignalName::Usr2), ("SigHup", SignalName::Hup)] {
            assert_eq!(text.parse::<SignalName>(), Ok(want), "{text}");
        }
        for every in SignalName::ALL {
            assert_eq!(every.as_str().parse::<SignalName>(), Ok(every));
            let wire = serde_json::to_string(&every).expect("UNWRAP: a unit variant serializes");
            assert_eq!(wire, format!("\"{every}\""));
        }
        for bad in ["SIGSEGV", "9", "", "SIG", "USR3"] {
            let error = bad.parse::<SignalName>().expect_err(bad);
            assert!(error.contains("SIGUSR2"), "{error}");
        }
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let big = vec![b'x'; MAX_FRAME_BYTES + 10];
        let mut buf = Vec::new();
        let got = read_frame::<_, Request>(&mut BufReader::new(big.as_slice()), &mut buf).await;
        assert!(matches!(got, Err(FrameError::TooBig)), "{got:?}");
        let got = read_frame::<_, Request>(&mut BufReader::new(&b"{\"type\":\"list\""[..]), &mut buf).await;
        assert!(matches!(got, Err(FrameError::Truncated)), "{got:?}");
        let got = read_frame::<_, Request>(&mut BufReader::new(&b"{\"type\":\"nope\"}\n"[..]), &mut buf).await;
        assert!(matches!(got, Err(FrameError::Json(_))), "{got:?}");
        // A known request with a bad field is told about the field, not "no variant matched".
        let got =
            read_frame::<_, Request>(&mut BufReader::new(&b"{\"type\":\"scale\",\"app\":1}\n"[..]), &mut buf).await;
        let error = got.expect_err("a number for an app name").to_string();
        assert!(error.contains("invalid type"), "{error}");
    }
}
