//! The socket.io-client browser bundle at `/socket.io/socket.io.js` (and `.min.js`), as Node's
//! Socket.IO server serves it: many front ends load the client from the server they talk to. The
//! file is compiled in (`assets/socket.io-client/`), so nothing is fetched or read at run time.
//!
//! It is served by a middleware outside socketioxide's layer, which would otherwise take every
//! request under `/socket.io/` for engine.io (and answer this one 400).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The bundle, minified (Node serves the same code; the minified file is the one browsers want).
const BUNDLE: &[u8] = include_bytes!("../assets/socket.io-client/socket.io.min.js");
/// Its version: the ETag, so a browser revalidates cheaply and gets a new file after an upgrade.
const VERSION: &str = include_str!("../assets/socket.io-client/VERSION");

/// Paths the bundle answers, as Node's server has them.
const PATHS: [&str; 2] = ["/socket.io/socket.io.js", "/socket.io/socket.io.min.js"];

pub async fn client_bundle(request: Request, next: Next) -> Response {
    if !PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let etag = format!("\"socket.io-client-{}\"", VERSION.trim());
    let fresh = request.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str());
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { BUNDLE.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/javascript; charset=utf-8"));
    // Revalidated by its ETag (as Node's server does): a worker upgraded to another client
    // version is picked up at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=0"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}
