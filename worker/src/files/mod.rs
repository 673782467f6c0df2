//! Temporary file sharing (the original app's feature): a guest uploads a file over HTTP, anyone
//! with its link downloads it until it expires (`FILE_RETENTION`, 24 h by default).
//!
//! - `POST /api/files` with the guest's session token (`Authorization: Bearer TOKEN`) and the file
//!   as the body (`X-File-Name` names it): streamed to a temporary name in the app's data
//!   directory, never held whole in memory, renamed into place once complete (an interrupted
//!   upload leaves nothing behind); the answer is `{id, name, size, type, expires, url}`.
//! - `GET /api/files/ID`: the bytes, as an attachment (inline only for a few image types), with
//!   `nosniff` and a sandboxing CSP; the type is what the bytes are (`infer`), never what the client
//!   said; a single `Range` is honoured. An unknown id is 404, an expired one 410.
//! - Limits, each with its own status: `FILE_MAX_SIZE` per file (413), `FILE_QUOTA` per guest and
//!   `FILE_UPLOAD_RATE` uploads per guest (429), `FILE_STORE_MAX` for the whole store (507).
//! - Where the bytes live ([`FileConfig::redis`]): without Redis, in a directory every worker of
//!   the host shares (the supervisor's `CHATCTL_DATA_DIR`), so quotas and the store's size are
//!   counted per host ([`on_disk`]); with `REDIS_URL`, in Redis, so every host serves every file
//!   and the quota and cap are counted over all hosts ([`in_redis`]). `FILE_STORE=dir` keeps them
//!   in the directory even with Redis (a directory mounted on every host, say).
//! - Every worker sweeps expired files, which is safe since removing a file twice is harmless
//!   (on disk) and the index is changed only by atomic scripts (in Redis).

mod in_redis;
mod kept;
mod on_disk;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_shared::time::unix_millis;
use futures_util::StreamExt;

pub use kept::Meta;
use kept::{Lookup, Refused};
use store::{Store, Upload};

use crate::limits::{PerKey, Rate};
use crate::session::Sessions;

/// The limits and where files live.
#[derive(Clone, Debug)]
pub struct FileConfig {
    pub dir: PathBuf,
    /// Redis to keep the bytes in (`REDIS_URL`, unless `FILE_STORE=dir`); `None`: in `dir`.
    pub redis: Option<String>,
    /// The app's name: its keys in Redis.
    pub app: String,
    pub max_size: u64,
    pub quota: u64,
    pub store_max: u64,
    pub retention: Duration,
    pub upload_rate: Option<Rate>,
}

/// Image types shown in the page rather than downloaded: none can carry script.
const INLINE: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// How often expired files and abandoned uploads are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How much of a file's start its type is read from.
const SNIFF: usize = 8192;

pub struct Files {
    config: FileConfig,
    store: Store,
    sessions: Sessions,
    /// With Redis, a token another host signed is believed when Redis keeps it for its guest.
    shared_sessions: Option<crate::store::Store>,
    /// Uploads per guest (`FILE_UPLOAD_RATE`; `None`: off).
    uploads: Option<PerKey>,
}

impl Files {
    pub fn start(
        config: FileConfig,
        sessions: Sessions,
        shared_sessions: Option<crate::store::Store>,
    ) -> std::io::Result<Arc<Files>> {
        let store = match &config.redis {
            Some(url) => {
                Store::Redis(in_redis::InRedis::new(url, &config.app, config.retention).map_err(std::io::Error::other)?)
            }
            None => Store::Disk(on_disk::OnDisk::open(&config.dir)?),
        };
        let uploads = config.upload_rate.map(PerKey::new);
        let files = Arc::new(Files { config, store, sessions, shared_sessions, uploads });
        tokio::spawn(files.clone().sweep());
        Ok(files)
    }

    async fn sweep(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(SWEEP_EVERY.min(self.config.retention.max(Duration::from_secs(1))));
        loop {
            ticks.tick().await;
            let removed = self.store.sweep(unix_millis()).await;
            if removed > 0 {
                tracing::info!(removed, "expired files deleted");
            }
        }
    }

    /// What a message carrying file `id` shows of it: `{id, name, size, type, url, expires}`, or
    /// `None` when there is no such file (or it has expired).
    pub async fn attachment(&self, id: &str) -> Option<serde_json::Value> {
        match self.store.lookup(id, unix_millis()).await {
            Ok(Lookup::Live(meta)) => Some(serde_json::json!({ "id": meta.id, "name": meta.name, "size": meta.size,
                "type": meta.kind, "url": format!("/api/files/{}", meta.id), "expires": meta.expires })),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look a shared file up");
                None
            }
        }
    }

    /// The guest an upload's `Authorization: Bearer TOKEN` names.
    async fn guest(&self, headers: &HeaderMap) -> Option<String> {
        let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?.trim();
        crate::store::believe(&self.sessions, self.shared_sessions.as_ref(), token).await.ok().map(|claims| claims.id)
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "ok": false, "error": message }))).into_response()
}

fn unavailable(e: &std::io::Error) -> Response {
    tracing::error!(error = %e, "the file store is unavailable");
    error(StatusCode::SERVICE_UNAVAILABLE, "the file store is unavailable: try again later")
}

/// `POST /api/files`.
pub async fn upload(State(files): State<Arc<Files>>, request: Request) -> Response {
    let headers = request.headers().clone();
    let Some(guest) = files.guest(&headers).await else {
        return error(StatusCode::UNAUTHORIZED, "a guest's session token is needed (Authorization: Bearer TOKEN)");
    };
    let config = &files.config;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_size) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, &format!("a file is at most {} bytes", config.max_size));
    }
    if files.uploads.as_ref().is_some_and(|uploads| uploads.take(&guest, 1) == 0) {
        return error(StatusCode::TOO_MANY_REQUESTS, "too many uploads: wait a little");
    }
    let now = unix_millis();
    let usage = match files.store.usage(&guest, now).await {
        Ok(usage) => usage,
        Err(e) => return unavailable(&e),
    };
    if usage.guest + declared.unwrap_or(0) > config.quota {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("this guest's files would pass its quota of {} bytes", config.quota),
        );
    }
    if usage.total + declared.unwrap_or(0) > config.store_max {
        return error(StatusCode::INSUFFICIENT_STORAGE, "the file store is full: try again later");
    }
    let id = random_id();
    let mut upload = match files.store.begin(&id).await {
        Ok(upload) => upload,
        Err(e) => return unavailable(&e),
    };
    // An upload without a length stops where it would pass a limit, not after.
    let limit =
        config.max_size.min(config.quota.saturating_sub(usage.guest)).min(config.store_max.saturating_sub(usage.total));
    let (size, head) = match receive(request.into_body(), &mut upload, limit).await {
        Ok(received) => received,
        Err(status) => {
            upload.abort().await;
            let message = match status {
                StatusCode::PAYLOAD_TOO_LARGE => format!(
                    "a file is at most {} bytes (and within its guest's quota and the store's room)",
                    config.max_size
                ),
                StatusCode::BAD_REQUEST => "the upload did not complete".to_owned(),
                _ => "the file could not be stored".to_owned(),
            };
            return error(status, &message);
        }
    };
    let kind = infer::get(&head).map_or_else(|| "application/octet-stream".to_owned(), |t| t.mime_type().to_owned());
    let name = headers
        .get("x-file-name")
        .and_then(|v| v.to_str().ok())
        .map(clean_name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "file".to_owned());
    let meta = Meta { id, name, size, kind, guest, expires: now + config.retention.as_millis() as u64 };
    match upload.commit(&meta, config.quota, config.store_max).await {
        Ok(()) => {}
        Err(Refused::Quota) => {
            let quota = config.quota;
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("this guest's files would pass its quota of {quota} bytes"),
            );
        }
        Err(Refused::Full) => {
            return error(StatusCode::INSUFFICIENT_STORAGE, "the file store is full: try again later");
        }
        Err(Refused::Store(e)) => {
            tracing::error!(error = %e, "cannot store an uploaded file");
            return error(StatusCode::INSUFFICIENT_STORAGE, "the file could not be stored");
        }
    }
    let url = format!("/api/files/{}", meta.id);
    axum::Json(serde_json::json!({ "ok": true, "id": meta.id, "name": meta.name, "size": meta.size,
        "type": meta.kind, "expires": meta.expires, "url": url }))
    .into_response()
}

/// Streams `body` into `upload` in the store's batches, at most `limit` bytes (`413` past it);
/// answers the size and the first bytes (the file's type is read from them).
async fn receive(body: Body, upload: &mut Upload, limit: u64) -> Result<(u64, Vec<u8>), StatusCode> {
    let mut stream = body.into_data_stream();
    let (mut size, mut head) = (0u64, Vec::with_capacity(SNIFF));
    let mut batch = Vec::with_capacity(upload.batch());
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        if head.len() < SNIFF {
            head.extend_from_slice(&chunk[..chunk.len().min(SNIFF - head.len())]);
        }
        while !chunk.is_empty() {
            let room = upload.batch() - batch.len();
            let part = chunk.split_to(room.min(chunk.len()));
            batch.extend_from_slice(&part);
            if batch.len() == upload.batch() {
                upload.write(&batch).await.map_err(not_written)?;
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        upload.write(&batch).await.map_err(not_written)?;
    }
    Ok((size, head))
}

/// A write of an upload that failed: said in the log, answered 507.
fn not_written(e: std::io::Error) -> StatusCode {
    tracing::error!(error = %e, "cannot write an upload");
    StatusCode::INSUFFICIENT_STORAGE
}

/// `GET /api/files/ID`.
pub async fn download(State(files): State<Arc<Files>>, UrlPath(id): UrlPath<String>, headers: HeaderMap) -> Response {
    let meta = match files.store.lookup(&id, unix_millis()).await {
        Ok(Lookup::Live(meta)) => meta,
        Ok(Lookup::Expired) => return error(StatusCode::GONE, "this file has expired"),
        Ok(Lookup::Missing) => return error(StatusCode::NOT_FOUND, "no such file"),
        Err(e) => return unavailable(&e),
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|r| byte_range(r, meta.size));
    let (status, start, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, meta.size),
    };
    let bytes = match files.store.read(&meta, start, len).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return error(StatusCode::NOT_FOUND, "no such file"),
        Err(e) => return unavailable(&e),
    };
    let mut response = (status, Body::from_stream(bytes)).into_response();
    let h = response.headers_mut();
    let inline = INLINE.contains(&meta.kind.as_str());
    let kind = HeaderValue::from_str(&meta.kind).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, kind);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{}/{}", start + len - 1, meta.size))
    {
        h.insert(header::CONTENT_RANGE, value);
    }
    let disposition =
        format!("{}; filename=\"{}\"", if inline { "inline" } else { "attachment" }, meta.name.replace('"', "'"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, value);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    response
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` of a file of `size` bytes: (first, last) inclusive.
fn byte_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

/// A name safe to show and to put in a header: percent-decoded (a header carries only ASCII, so
/// the page encodes it), no path, no control characters, at most 200 characters.
fn clean_name(raw: &str) -> String {
    let decoded = percent_decode(raw);
    let raw = decoded.as_str();
    let base = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    base.chars().filter(|c| !c.is_control()).take(200).collect::<String>().trim().to_owned()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn random_id() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    if let Ok(mut random) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut random, &mut bytes);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_names() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(byte_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(byte_range("bytes=100-", 100), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("a\u{7}b.txt"), "ab.txt");
        assert_eq!(clean_name("caf%C3%A9%20menu.pdf"), "café menu.pdf");
    }
}
