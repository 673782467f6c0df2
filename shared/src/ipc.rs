//! The control protocol between the `chatctl` CLI and its daemon: newline-delimited JSON over a Unix
//! socket, a version handshake first, then one [`Request`] and one [`Response`] at a time.
//!
//! JSON strings escape newlines, so no payload (a log line, an argument) can break the framing, and an
//! operator can talk to the daemon with `socat` when debugging.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spec::AppSpec;
use crate::status::AppStatus;

/// Bumped on any incompatible change of the types in this module.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest frame either side accepts; a longer one is an error, not an allocation.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
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

/// What the CLI asks. `app: None` means every app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Run these apps; apps already known by name and running are left alone and reported.
    Start { apps: Vec<AppSpec> },
    /// The status table.
    List,
    /// Stop instances (stop signal to the group, SIGKILL after `kill_timeout`); the app stays listed.
    Stop { app: Option<String> },
    /// Stop then start every instance.
    Restart { app: Option<String> },
    /// Stop and forget.
    Delete { app: Option<String> },
    /// Stop every app, then the daemon exits.
    Kill,
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
    Error {
        message: String,
    },
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

    #[tokio::test]
    async fn every_variant_round_trips() {
        round_trip(Hello { protocol: PROTOCOL_VERSION, version: "0.1.0".into() }).await;
        round_trip(Welcome::Accepted { protocol: 1, version: "x".into(), pid: 7 }).await;
        round_trip(Welcome::Refused { protocol: 2, version: "y".into(), pid: 7 }).await;
        for request in [
            Request::Start { apps: vec![] },
            Request::List,
            Request::Stop { app: None },
            Request::Restart { app: Some("chat".into()) },
            Request::Delete { app: Some("line\nbreak".into()) },
            Request::Kill,
        ] {
            round_trip(request).await;
        }
        for response in [
            Response::Started { started: vec!["a".into()], already_running: vec![] },
            Response::List { apps: vec![] },
            Response::Done { apps: vec!["a".into()] },
            Response::Killed { instances_stopped: 3, forced: 1 },
            Response::Error { message: "no".into() },
        ] {
            round_trip(response).await;
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
    }
}
