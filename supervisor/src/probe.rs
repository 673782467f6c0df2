//! The per-instance HTTP health probe: `GET <path>` on the instance's own address, 2xx or 3xx passes.
//!
//! hyper-util's client rather than reqwest: for plain-HTTP loopback probes reqwest (even without
//! default features) cost +82 s of release build and +1 MB of binary for nothing we use.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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

    /// `Ok(())` when the instance answered in time with a success status; else why not.
    pub(crate) async fn probe(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
        let uri = format!("http://{addr}{path}");
        let request = hyper::Request::get(uri.as_str())
            .header(hyper::header::USER_AGENT, concat!("chatctl-health/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| format!("bad probe request {uri}: {e}"))?;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            Ok(Err(e)) => {
                let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_else(|| e.to_string());
                Err(format!("GET {uri}: {cause}"))
            }
            Ok(Ok(response)) if response.status().is_success() || response.status().is_redirection() => Ok(()),
            Ok(Ok(response)) => Err(format!("GET {uri}: HTTP {}", response.status())),
        }
    }
}
