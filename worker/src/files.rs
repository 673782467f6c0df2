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
//! - Every worker of a host shares the directory (the supervisor's `CHATCTL_DATA_DIR`), so quotas
//!   and the store's size are counted per host, from the directory itself; every worker sweeps
//!   expired files, which is safe since removing a file twice is harmless.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::realtime::Rate;
use crate::session::Sessions;

/// The limits and where files live.
#[derive(Clone, Debug)]
pub struct FileConfig {
    pub dir: PathBuf,
    pub max_size: u64,
    pub quota: u64,
    pub store_max: u64,
    pub retention: Duration,
    pub upload_rate: Option<Rate>,
}

/// What is kept beside each file (`ID.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub name: String,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub guest: String,
    /// Unix milliseconds.
    pub expires: u64,
}

/// Image types shown in the page rather than downloaded: none can carry script.
const INLINE: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// How often expired files and abandoned temporary files are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub struct Files {
    config: FileConfig,
    sessions: Sessions,
    /// Uploads per guest (`std::sync::Mutex`: held for a lookup, never across an await).
    rates: Mutex<std::collections::HashMap<String, Bucket>>,
}

/// Uploads left to a guest: `rate` a second, at most its burst saved up.
struct Bucket {
    tokens: f64,
    last: std::time::Instant,
}

impl Bucket {
    fn take(&mut self, rate: Rate) -> bool {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate.per_second).min(rate.burst);
        self.last = now;
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }
}

impl Files {
    pub fn start(config: FileConfig, sessions: Sessions) -> std::io::Result<Arc<Files>> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&config.dir)?;
        let files = Arc::new(Files { config, sessions, rates: Mutex::default() });
        tokio::spawn(files.clone().sweep());
        Ok(files)
    }

    async fn sweep(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(SWEEP_EVERY.min(self.config.retention.max(Duration::from_secs(1))));
        loop {
            ticks.tick().await;
            let removed = sweep_dir(&self.config.dir, now_ms()).await;
            if removed > 0 {
                tracing::info!(removed, "expired files deleted");
            }
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.config.dir.join(id)
    }

    /// What a message carrying file `id` shows of it: `{id, name, size, type, url, expires}`, or
    /// `None` when there is no such file (or it has expired).
    pub async fn attachment(&self, id: &str) -> Option<serde_json::Value> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        let bytes = tokio::fs::read(self.config.dir.join(format!("{id}.json"))).await.ok()?;
        let meta: Meta = serde_json::from_slice(&bytes).ok()?;
        (meta.expires > now_ms()).then(|| {
            serde_json::json!({ "id": meta.id, "name": meta.name, "size": meta.size, "type": meta.kind,
                "url": format!("/api/files/{}", meta.id), "expires": meta.expires })
        })
    }
}

/// Deletes every expired file (and its metadata) and temporary files older than an hour (uploads
/// a dead worker left); returns how many files went.
pub async fn sweep_dir(dir: &Path, now: u64) -> usize {
    let mut removed = 0;
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return 0 };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".json") {
            let expired =
                match tokio::fs::read(entry.path()).await.ok().and_then(|b| serde_json::from_slice::<Meta>(&b).ok()) {
                    Some(meta) => meta.expires <= now,
                    None => true,
                };
            if expired {
                // Another worker may be sweeping too: a file already gone is fine.
                let _ = tokio::fs::remove_file(dir.join(id)).await;
                let _ = tokio::fs::remove_file(entry.path()).await;
                removed += 1;
            }
        } else if name.starts_with(".upload-") {
            let old = entry.metadata().await.ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            if old.is_some_and(|age| age > Duration::from_secs(3600)) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
    removed
}

/// Every live file's metadata in `dir`.
async fn metas(dir: &Path, now: u64) -> Vec<Meta> {
    let mut found = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return found };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.file_name().to_string_lossy().ends_with(".json")
            && let Some(meta) =
                tokio::fs::read(entry.path()).await.ok().and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
            && meta.expires > now
        {
            found.push(meta);
        }
    }
    found
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "ok": false, "error": message }))).into_response()
}

/// `POST /api/files`.
pub async fn upload(State(files): State<Arc<Files>>, request: Request) -> Response {
    let headers = request.headers().clone();
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(guest) = token.and_then(|t| files.sessions.verify(t.trim()).ok()) else {
        return error(StatusCode::UNAUTHORIZED, "a guest's session token is needed (Authorization: Bearer TOKEN)");
    };
    let config = &files.config;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_size) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, &format!("a file is at most {} bytes", config.max_size));
    }
    if let Some(rate) = config.upload_rate {
        let allowed = files.rates.lock().map_or(true, |mut rates| {
            let fresh = || Bucket { tokens: rate.burst, last: std::time::Instant::now() };
            rates.entry(guest.id.clone()).or_insert_with(fresh).take(rate)
        });
        if !allowed {
            return error(StatusCode::TOO_MANY_REQUESTS, "too many uploads: wait a little");
        }
    }
    let now = now_ms();
    let live = metas(&config.dir, now).await;
    let used: u64 = live.iter().filter(|m| m.guest == guest.id).map(|m| m.size).sum();
    if used + declared.unwrap_or(0) > config.quota {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("this guest's files would pass its quota of {} bytes", config.quota),
        );
    }
    let stored: u64 = live.iter().map(|m| m.size).sum();
    if stored + declared.unwrap_or(0) > config.store_max {
        return error(StatusCode::INSUFFICIENT_STORAGE, "the file store is full: try again later");
    }
    let id = random_id();
    let tmp = config.dir.join(format!(".upload-{id}"));
    let written = receive(request.into_body(), &tmp, config.max_size.min(config.quota - used)).await;
    let size = match written {
        Ok(size) => size,
        Err(status) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            let message = match status {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    format!("a file is at most {} bytes (and within its guest's quota)", config.max_size)
                }
                _ => "the upload did not complete".to_owned(),
            };
            return error(status, &message);
        }
    };
    let kind = sniff(&tmp).await;
    let name = headers
        .get("x-file-name")
        .and_then(|v| v.to_str().ok())
        .map(clean_name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "file".to_owned());
    let meta =
        Meta { id: id.clone(), name, size, kind, guest: guest.id, expires: now + config.retention.as_millis() as u64 };
    let renamed = async {
        tokio::fs::rename(&tmp, files.path(&id)).await?;
        let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
        tokio::fs::write(config.dir.join(format!("{id}.json")), json).await
    };
    if let Err(e) = renamed.await {
        tracing::error!(error = %e, "cannot store an uploaded file");
        let _ = tokio::fs::remove_file(&tmp).await;
        let _ = tokio::fs::remove_file(files.path(&id)).await;
        return error(StatusCode::INSUFFICIENT_STORAGE, "the file could not be stored");
    }
    let url = format!("/api/files/{id}");
    axum::Json(serde_json::json!({ "ok": true, "id": meta.id, "name": meta.name, "size": meta.size,
        "type": meta.kind, "expires": meta.expires, "url": url }))
    .into_response()
}

/// Streams `body` into `path`, at most `limit` bytes (`413` past it).
async fn receive(body: Body, path: &Path, limit: u64) -> Result<u64, StatusCode> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|_| StatusCode::INSUFFICIENT_STORAGE)?;
    // Every write of a tokio file is a trip to the blocking pool: body chunks (a few KiB each) are
    // gathered into 1 MiB writes. (Measured: uploads are bound by reading the body, not by this;
    // see `chatctl-bench files`.)
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        file.write_all(&chunk).await.map_err(|_| StatusCode::INSUFFICIENT_STORAGE)?;
    }
    file.flush().await.map_err(|_| StatusCode::INSUFFICIENT_STORAGE)?;
    Ok(size)
}

/// The type the bytes say they are (`application/octet-stream` when they say nothing known).
async fn sniff(path: &Path) -> String {
    let mut head = vec![0u8; 8192];
    let n = match tokio::fs::File::open(path).await {
        Ok(mut file) => file.read(&mut head).await.unwrap_or(0),
        Err(_) => 0,
    };
    infer::get(&head[..n]).map_or_else(|| "application/octet-stream".to_owned(), |t| t.mime_type().to_owned())
}

/// `GET /api/files/ID`.
pub async fn download(State(files): State<Arc<Files>>, UrlPath(id): UrlPath<String>, headers: HeaderMap) -> Response {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return error(StatusCode::NOT_FOUND, "no such file");
    }
    let meta_path = files.config.dir.join(format!("{id}.json"));
    let Some(meta) = tokio::fs::read(&meta_path).await.ok().and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
    else {
        return error(StatusCode::NOT_FOUND, "no such file");
    };
    if meta.expires <= now_ms() {
        let _ = tokio::fs::remove_file(files.path(&id)).await;
        let _ = tokio::fs::remove_file(&meta_path).await;
        return error(StatusCode::GONE, "this file has expired");
    }
    let Ok(mut file) = tokio::fs::File::open(files.path(&id)).await else {
        return error(StatusCode::NOT_FOUND, "no such file");
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|r| byte_range(r, meta.size));
    let (status, start, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, meta.size),
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file");
    }
    let body = Body::from_stream(chunks(file.take(len)));
    let mut response = (status, body).into_response();
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

/// A file's bytes as a body stream, 64 KiB at a time.
fn chunks(
    reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
    futures_util::stream::unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; 64 << 10];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), reader))
            }
            Err(e) => Some((Err(e), reader)),
        }
    })
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
