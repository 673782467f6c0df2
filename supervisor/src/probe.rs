//! The per-instance HTTP health probe: `GET <path>` on the instance's own address, 2xx or 3xx passes
//! (any answer with `any_answer`: a program with no health route is up when it answers at all).
//!
//! Never a bare TCP connect: with inherited sockets the supervisor holds every listening socket, so
//! the kernel accepts a connection into the queue whether or not the program is alive; only an
//! answer shows that the program took the connection and served it.
//!
//! hyper-util's client rather than reqwest: for plain-HTTP loopback probes reqwest (even without
//! default features) cost +82 s of release build and +1 MB of binary for nothing we use.

use std::net::SocketAddr;
use std::time::Duration;

use chat_shared::health::HealthBody;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest probe answer read for figures.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Prober {
    pub(crate) fn new() -> Prober {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // No pooling: a probe must reach the instance as it is now, not through a connection that an
        // earlier process of the same slot left behind.
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
        Prober { client }
    }

    /// `Ok` when the instance answered in time with a success status (any status with
    /// `any_answer`), with the body when it is a chat worker's `/health` (its connections, rooms
    /// and messages); else why not.
    pub(crate) async fn probe(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
        any_answer: bool,
    ) -> Result<Option<HealthBody>, String> {
        let uri = format!("http://{addr}{path}");
        let request = hyper::Request::get(uri.as_str())
            .header(hyper::header::USER_AGENT, concat!("chatctl-health/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| format!("bad probe request {uri}: {e}"))?;
        let answer = async {
            let response = self.client.request(request).await.map_err(|e| {
                let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_else(|| e.to_string());
                format!("GET {uri}: {cause}")
            })?;
            let status = response.status();
            if !(any_answer || status.is_success() || status.is_redirection()) {
                return Err(format!("GET {uri}: HTTP {status}"));
            }
            // A small body is read for the figures it may carry; a large or odd one is ignored.
            let body = Limited::new(response.into_body(), MAX_BODY).collect().await.ok().map(|b| b.to_bytes());
            Ok(body.and_then(|b| serde_json::from_slice::<HealthBody>(&b).ok()))
        };
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            Ok(result) => result,
        }
    }
}
