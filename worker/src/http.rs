//! Plain HTTP routes: `/health` (what the supervisor probes) and `/api/socket/stats`, and how a
//! draining worker answers on its kept-alive connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chat_shared::health::{HealthBody, HealthStatus};
use serde_json::{Value, json};
use socketioxide::SocketIo;

use crate::bus::{Adapter, BusDriver};

/// What every route may read. Owned by an `Arc`; only `draining` ever changes.
pub struct WorkerState {
    pub started: Instant,
    /// Room messages delivered (for `/health`, which the supervisor samples).
    pub messages: Arc<AtomicU64>,
    pub draining: AtomicBool,
    /// Cluster mode: the public port is shared by every instance of the host.
    pub shared_port: bool,
    pub instance: Option<String>,
    pub io: SocketIo<Adapter>,
    /// Figures summed over every worker that shares this one's bus.
    pub cluster: Arc<crate::cluster_stats::ClusterStats>,
    /// How this worker reaches the others (for `/health`).
    pub link: BusDriver,
    /// Its end of the polling sessions' handoff (cluster mode).
    pub handoff: Option<Arc<crate::handoff::Handoff>>,
}

/// Routes served on the public port (with the Socket.IO layer added by the caller).
pub fn router(state: Arc<WorkerState>) -> Router {
    Router::new()
        .route("/health", get(public_health))
        .route("/api/socket/stats", get(public_stats))
        .route("/", get(crate::web::index))
        .route("/assets/{file}", get(crate::web::asset))
        .with_state(state)
}

/// While draining, every answer says `Connection: close`, and hyper closes the connection once it
/// is sent: a kept-alive client learns it must reconnect (landing on another instance) from the
/// answer to its next request, instead of finding the connection closed under it at the moment it
/// sends one (the keep-alive close race: read errors in `wrk`, failed requests in browsers that do
/// not retry). Connections that send nothing are closed later, once idle for the drain's grace.
///
/// A websocket upgrade is left alone: its `Connection: upgrade` is what makes it one.
///
/// The outermost layer (see `serve`): it must see socketioxide's answers too (polling responses,
/// websocket upgrades), which never reach the routes' own layers.
pub async fn close_when_draining(
    State(state): State<Arc<WorkerState>>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    if state.draining.load(Ordering::Relaxed) && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// The header a long-polling handshake's answer names its session in, for a balancer in front of
/// several hosts to send the session's later requests to the same host (HAProxy: `stick
/// store-response res.hdr(x-socket-sid)` and `stick match url_param(sid)`; see
/// `deploy/haproxy.cfg`). The sid is otherwise only in the answer's body, which a balancer does
/// not read. (Within a host, instances hand such requests to each other: see `handoff`.)
pub const SESSION_HEADER: &str = "x-socket-sid";

/// Names the session of a long-polling handshake in [`SESSION_HEADER`]. Only the handshake's
/// answer is read (a few hundred bytes); every other request passes untouched.
pub async fn name_session(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let query = req.uri().query().unwrap_or("");
    let handshake = req.method() == axum::http::Method::GET
        && req.uri().path().starts_with("/socket.io")
        && query.split('&').any(|p| p == "transport=polling")
        && !query.split('&').any(|p| p.starts_with("sid="));
    let response = next.run(req).await;
    if !handshake || response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, HANDSHAKE_MAX).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "handshake too large").into_response();
    };
    if let Some(sid) = handshake_sid(&bytes).and_then(|sid| axum::http::HeaderValue::from_str(sid).ok()) {
        parts.headers.insert(SESSION_HEADER, sid);
    }
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The most a handshake's answer is read (it is a few hundred bytes).
const HANDSHAKE_MAX: usize = 16 << 10;

/// The `sid` of an engine.io open packet (`0{"sid":"...",...}`).
fn handshake_sid(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?.strip_prefix('0')?;
    let start = text.find("\"sid\":\"")? + 7;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
        .filter(|sid| sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// Copies a request's URI and headers out of the connection's read buffer.
///
/// hyper parses them as slices of that buffer (8-16 KiB), and socketioxide keeps every socket's
/// request head for the socket's life, so each idle connection kept its whole buffer alive: 16 of
/// the 31 KiB an idle connection cost (measured with massif over 2,000 connections; `chatctl-bench
/// chat-memory` shows the effect). The copy is a few hundred bytes, once per request.
///
/// Headers a browser sends that nothing in the worker reads are left out of the copy: cookies
/// (often a kilobyte or more, and better not kept at all), the user agent and its client hints, the
/// languages, the referrer. Kept for each socket's life, they were 1.5 KiB of a Chrome's
/// connection (`chatctl-bench chat-memory`, "a browser's headers").
pub async fn detach_head(mut req: axum::extract::Request) -> axum::extract::Request {
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
    let headers = std::mem::take(req.headers_mut());
    let mut copied = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter().filter(|(name, _)| !unread(name.as_str())) {
        let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) else { continue };
        copy.set_sensitive(value.is_sensitive());
        let name = HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        copied.append(name, copy);
    }
    *req.headers_mut() = copied;
    if let Ok(uri) = Uri::try_from(req.uri().to_string()) {
        *req.uri_mut() = uri;
    }
    req
}

/// Request headers the worker never reads (the Socket.IO handshake, CORS, origins and client
/// addresses use others).
fn unread(name: &str) -> bool {
    matches!(name, "cookie" | "user-agent" | "accept-language" | "referer")
        || name.starts_with("sec-ch-")
        || name.starts_with("sec-fetch-")
}

/// Routes served on the private admin listener: only what the supervisor reads.
pub fn admin_router(state: Arc<WorkerState>) -> Router<Arc<WorkerState>> {
    let _ = state;
    Router::new().route("/health", get(health)).route("/api/socket/stats", get(stats))
}

/// The supervisor's probe: 503 while draining, so a draining instance is never taken for a ready one.
async fn health(State(state): State<Arc<WorkerState>>) -> (StatusCode, Json<HealthBody>) {
    let body = health_body(&state).await;
    let code = if body.status == HealthStatus::Draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(body))
}

/// `/health` on the public port. In cluster mode that port is the whole host's (every instance
/// accepts on it), so it answers for the host: a load balancer probing it must not take the host
/// out because one instance of it is being replaced. A draining instance there answers 200 with
/// its state in the body (and `Connection: close`, so the balancer's next probe reaches a serving
/// instance); the per-instance truth stays on the admin listener the supervisor probes. In fork
/// mode each port is its own backend and its instance answers 503 while draining, as on the admin
/// listener.
async fn public_health(State(state): State<Arc<WorkerState>>) -> (StatusCode, Json<HealthBody>) {
    if !state.shared_port {
        return health(State(state)).await;
    }
    (StatusCode::OK, Json(health_body(&state).await))
}

async fn health_body(state: &WorkerState) -> HealthBody {
    let draining = state.draining.load(Ordering::SeqCst);
    let cluster = state.link.health();
    // Degraded: cut off from the other workers, or Redis refusing what the chat keeps there.
    let status = match (draining, cluster.connected && cluster.refusal.is_none()) {
        (true, _) => HealthStatus::Draining,
        (false, false) => HealthStatus::Degraded,
        (false, true) => HealthStatus::Ok,
    };
    HealthBody {
        status,
        uptime_ms: state.started.elapsed().as_millis() as u64,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        instance: state.instance.clone(),
        connections: state.io.sockets().len(),
        rooms: state.io.local().rooms().await.map_or(0, |r| r.iter().filter(|r| !r.starts_with('@')).count()),
        messages: state.messages.load(Ordering::Relaxed),
        cluster: Some(cluster),
        handoff: state.handoff.as_ref().map(|h| h.figures()),
    }
}

/// `/api/socket/stats` on the public port: figures, no names. Room names are what guests chose to
/// meet in (a private room's name is its only secret), so anyone who can reach the port must not
/// be able to list them; the admin listener, which only the supervisor's host reaches, lists them.
async fn public_stats(State(state): State<Arc<WorkerState>>) -> Json<Value> {
    let Json(mut stats) = stats(State(state)).await;
    stats["rooms"] = Value::from(stats["rooms"].as_array().map_or(0, Vec::len));
    if let Some(stats) = stats.as_object_mut() {
        stats.remove("pid");
    }
    Json(stats)
}

/// `/api/socket/stats` on the admin listener: every room of this worker with its members here.
async fn stats(State(state): State<Arc<WorkerState>>) -> Json<Value> {
    let mut rooms: Vec<Value> = match state.io.local().rooms().await {
        // Rooms starting with '@' are the server's own (a guest's direct-message room).
        Ok(rooms) => rooms
            .into_iter()
            .filter(|room| !room.starts_with('@'))
            .map(|room| {
                let members = state.io.within(room.clone()).sockets().len();
                json!({ "name": room, "members": members })
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing rooms failed");
            Vec::new()
        }
    };
    rooms.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(json!({
        "sockets": state.io.sockets().len(),
        "rooms": rooms,
        "namespaces": state.io.nsps().iter().map(|ns| ns.ns_path().to_string()).collect::<Vec<_>>(),
        "instance": state.instance,
        "pid": std::process::id(),
        // Summed from the workers' latest reports (see `cluster_stats`): never waits on a worker.
        "cluster": state.cluster.figures(),
        "link": state.link.health(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sid_of_a_handshake() {
        let open = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(handshake_sid(open), Some("lv_VI97HAXpY6yYWAAAC"));
        assert_eq!(handshake_sid(b"4hello"), None);
        assert_eq!(handshake_sid(br#"0{"sid":"a b"}"#), None);
    }
}
