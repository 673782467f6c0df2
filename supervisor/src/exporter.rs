//! `/metrics`: the daemon's figures in the Prometheus text format, on a loopback address given by
//! `CHATCTL_METRICS` (off by default). Each scrape renders what the daemon already knows; nothing
//! is sampled for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

use crate::daemon::msg::Msg;

/// The variable naming the address to serve `/metrics` on.
pub const METRICS_VAR: &str = "CHATCTL_METRICS";

type Labels = Vec<(String, String)>;

/// One instance's figures.
pub(crate) struct InstanceFigures {
    pub(crate) app: String,
    pub(crate) instance: usize,
    pub(crate) up: bool,
    pub(crate) restarts: u64,
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) cpu_percent: Option<f32>,
    pub(crate) health_latency_seconds: Option<f64>,
    pub(crate) health_failures: u64,
    pub(crate) chat: Option<chat_shared::status::ChatFigures>,
}

/// One app's figures.
pub(crate) struct AppFigures {
    pub(crate) app: String,
    pub(crate) reloads: u64,
    pub(crate) log_lines: u64,
    pub(crate) log_bytes: u64,
}

pub(crate) fn render(instances: &[InstanceFigures], apps: &[AppFigures]) -> String {
    let mut registry = Registry::with_prefix("chatctl");
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(name, help, family.clone());
        family
    };
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let up = gauge(&mut registry, "instance_up", "1 when the instance is online");
    let restarts = counter(&mut registry, "instance_restarts", "Times the instance was started again");
    let memory = gauge(&mut registry, "instance_memory_bytes", "Resident memory of the instance's process tree");
    let cpu = gauge(&mut registry, "instance_cpu_percent", "CPU of the instance's process tree, percent of one core");
    let latency = gauge(&mut registry, "health_latency_seconds", "Duration of the last health probe");
    let failures = counter(&mut registry, "health_failures", "Failed health probes");
    let reloads = counter(&mut registry, "reloads", "Rolling reloads begun");
    let connections = gauge(&mut registry, "chat_connections", "Socket.IO connections on a chat worker");
    let rooms = gauge(&mut registry, "chat_rooms", "Rooms with members on a chat worker");
    let messages = counter(&mut registry, "chat_messages", "Room messages delivered by a chat worker since it started");
    let dropped = counter(
        &mut registry,
        "chat_dropped",
        "Messages from the other workers a chat worker dropped because it fell behind",
    );
    let handed = counter(
        &mut registry,
        "chat_handed",
        "Connections a chat worker accepted and handed to the instance with their polling session",
    );
    let taken = counter(
        &mut registry,
        "chat_taken",
        "Connections a chat worker took from another instance for one of its polling sessions",
    );
    let degraded = gauge(
        &mut registry,
        "chat_degraded",
        "1 when a chat worker serves its own clients only (its link to the other workers, Redis or the bus, is down)",
    );
    let lines = counter(&mut registry, "log_lines", "Lines captured from the app's instances");
    let bytes = counter(&mut registry, "log_bytes", "Bytes captured from the app's instances");
    for i in instances {
        let labels = vec![("app".to_owned(), i.app.clone()), ("instance".to_owned(), i.instance.to_string())];
        up.get_or_create(&labels).set(if i.up { 1.0 } else { 0.0 });
        restarts.get_or_create(&labels).inc_by(i.restarts);
        failures.get_or_create(&labels).inc_by(i.health_failures);
        if let Some(m) = i.memory_bytes {
            memory.get_or_create(&labels).set(m as f64);
        }
        if let Some(c) = i.cpu_percent {
            cpu.get_or_create(&labels).set(f64::from(c));
        }
        if let Some(l) = i.health_latency_seconds {
            latency.get_or_create(&labels).set(l);
        }
        if let Some(c) = &i.chat {
            connections.get_or_create(&labels).set(c.connections as f64);
            rooms.get_or_create(&labels).set(c.rooms as f64);
            messages.get_or_create(&labels).inc_by(c.messages);
            degraded.get_or_create(&labels).set(if c.degraded.is_some() { 1.0 } else { 0.0 });
            dropped.get_or_create(&labels).inc_by(c.dropped);
            handed.get_or_create(&labels).inc_by(c.handed);
            taken.get_or_create(&labels).inc_by(c.taken);
        }
    }
    for a in apps {
        let labels = vec![("app".to_owned(), a.app.clone())];
        reloads.get_or_create(&labels).inc_by(a.reloads);
        lines.get_or_create(&labels).inc_by(a.log_lines);
        bytes.get_or_create(&labels).inc_by(a.log_bytes);
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// The address from `CHATCTL_METRICS`, which must be a loopback one.
pub fn address_from_env() -> Result<Option<SocketAddr>, String> {
    let Ok(text) = std::env::var(METRICS_VAR) else { return Ok(None) };
    let addr: SocketAddr = text.parse().map_err(|e| format!("{METRICS_VAR}={text:?}: {e} (e.g. 127.0.0.1:9209)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{METRICS_VAR}={text:?}: /metrics is served on loopback addresses only"));
    }
    Ok(Some(addr))
}

/// Serves `GET /metrics` until the daemon stops.
pub(crate) async fn serve(listener: tokio::net::TcpListener, tx: mpsc::UnboundedSender<Msg>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move { Ok::<_, Infallible>(answer(request, &tx).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(request: Request<hyper::body::Incoming>, tx: &mpsc::UnboundedSender<Msg>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String, kind: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = hyper::header::HeaderValue::from_str(kind) {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "see /metrics\n".into(), "text/plain");
    }
    let (text_tx, text_rx) = oneshot::channel();
    if tx.send(Msg::Metrics(text_tx)).is_err() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping\n".into(), "text/plain");
    }
    match text_rx.await {
        Ok(text) => reply(StatusCode::OK, text, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping\n".into(), "text/plain"),
    }
}
