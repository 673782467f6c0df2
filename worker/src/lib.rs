//! `chat-worker`: the chat server that `chatctl` runs, wire-compatible with socket.io-client v4.
//!
//! # Theory of operation
//! `main` reads the configuration from the environment and adopts the listening sockets (inherited
//! from the supervisor, or bound) before the runtime starts, then calls [`serve`] with a shutdown
//! future. [`serve`] runs the public listener (HTTP routes + Socket.IO) and, when supervised, the
//! private admin listener on which the supervisor probes this instance's `/health`.
//!
//! On shutdown the worker reports `draining` on `/health` and stops accepting (the supervisor's
//! shared socket stays open, so new connections wait for the other instances). Every answer from
//! then on carries `Connection: close`, so each kept-alive client learns from its next answer to
//! reconnect, landing on another instance. After a grace it closes the connections that stayed
//! idle all along, and every Socket.IO session (clients reconnect), lets in-flight HTTP requests
//! finish, and returns when all is done or when the drain deadline passes, whichever comes first.
//!
//! # Layout
//! - `config`: environment variables → [`Config`].
//! - `listeners`: inherited fds (`LISTEN_FDS`) or a bound port.
//! - `admission`: the descriptor limit, the cap on connections that keeps a reserve for the admin
//!   listener and the bus, and the wait for a connection's first line.
//! - `handoff`: a polling session's connections reach the instance that has it (cluster mode).
//! - `files`: temporary file sharing (upload, download, limits, expiry) in the app's data directory.
//! - `bundle`: the socket.io-client browser bundle at `/socket.io/socket.io.js`, as Node serves it.
//! - `http`: `/health`, `/api/socket/stats`, and the copy of each request head out of hyper's
//!   read buffer (socketioxide keeps every socket's head).
//! - `realtime`: Socket.IO guests, rooms, messages, presence, calls, recovery, limits.
//! - `session`: signed guest session tokens (identity and rooms survive a reconnect).
//! - `bus`: the adapter's driver over Redis, the daemon's local bus, or nothing (a bus of one),
//!   and the named channels the workers copy state through.
//! - `store`: sessions and history streams kept in Redis itself.
//! - `cluster_stats`: live figures summed from every worker's reports.
//! - `web`: the chat's web client at `/`, compiled in.

pub mod admission;
pub mod bundle;
pub mod bus;
pub mod cluster_stats;
pub mod config;
pub mod drain;
pub mod files;
pub mod handoff;
pub mod http;
pub mod listeners;
pub mod origins;
pub mod realtime;
pub mod session;
pub mod store;
pub mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use socketioxide::SocketIo;
use tokio::sync::watch;

pub use config::Config;
use drain::Draining;
pub use listeners::Listeners;

/// The Socket.IO adapter: rooms shared through Redis, the daemon's bus, or a bus of one.
pub type Adapter = socketioxide_redis::CustomRedisAdapter<socketioxide::adapter::Emitter, bus::BusDriver>;

/// What every handler may read. Owned by an `Arc`; only `draining` ever changes.
pub struct WorkerState {
    pub started: Instant,
    /// Room messages delivered (for `/health`, which the supervisor samples).
    pub messages: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub draining: AtomicBool,
    /// Cluster mode: the public port is shared by every instance of the host (see `http`).
    pub shared_port: bool,
    pub instance: Option<String>,
    pub io: SocketIo<Adapter>,
    /// Figures summed over every worker that shares this one's bus.
    pub cluster: Arc<cluster_stats::ClusterStats>,
    /// How this worker reaches the others (for `/health`).
    pub link: bus::BusDriver,
    /// Its end of the polling sessions' handoff (cluster mode).
    pub handoff: Option<Arc<handoff::Handoff>>,
}

/// Bytes read from a websocket at a time.
const WS_READ_BUFFER: usize = 1024;

/// The longest a starting worker waits for Redis before it starts degraded (and keeps trying).
const REDIS_FIRST_TRY: Duration = Duration::from_secs(1);

/// The longest a starting worker waits for the others' calls and history.
const CATCH_UP: Duration = Duration::from_millis(500);

/// Serves until `shutdown` resolves, then drains within `config.shutdown_timeout`.
pub async fn serve(listeners: Listeners, config: &Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    // An oversized packet closes that one connection (engine.io's max payload), not the worker.
    let max = config.max_payload;
    let driver = match (&config.redis_url, &config.bus) {
        // Redis spans every host, so it replaces the local bus, which stays as its stand-in for the
        // workers of this host while Redis is away.
        (Some(url), local) => bus::BusDriver::redis(url, REDIS_FIRST_TRY, local.as_deref()).await,
        (None, Some(path)) => match bus::BusDriver::connect(path).await {
            Ok(driver) => driver,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot reach the local bus: rooms stay on this worker");
                bus::BusDriver::solo()
            }
        },
        (None, None) => bus::BusDriver::solo(),
    };
    // One set of channels per app: every app of the daemon shares its bus.
    let prefix = format!("socket.io/{}", config.app.as_deref().unwrap_or("chat"));
    let stats_channel = bus::Channel::new(driver.clone(), format!("{prefix}-stats"));
    let cluster = Arc::new(cluster_stats::ClusterStats::new(Some(stats_channel), config.stats_interval));
    let listen_task = tokio::spawn(cluster.clone().listen());
    // A dead or hung worker must not stall cluster-wide queries (member lists) for long.
    let adapter_config = socketioxide_redis::RedisAdapterConfig::new()
        .with_request_timeout(Duration::from_millis(500))
        .with_prefix(prefix.clone());
    let adapter = socketioxide_redis::RedisAdapterCtr::new_with_driver(driver.clone(), adapter_config);
    let (layer, io) = SocketIo::builder()
        .with_adapter::<Adapter>(adapter)
        .max_payload(max)
        .ws_max_message_size(usize::try_from(max).unwrap_or(usize::MAX))
        .ws_max_frame_size(usize::try_from(max).unwrap_or(usize::MAX))
        // Chat frames are small: a 1 KiB read buffer (4 KiB by default) saves ~3 KiB per idle
        // connection; a large frame takes a few more reads.
        .ws_read_buffer_size(WS_READ_BUFFER)
        .build_layer();
    let secret = match &config.session_secret {
        Some(secret) => secret.clone(),
        None => {
            // With Redis a token is also believed when it is the one Redis keeps for its guest.
            if config.redis_url.is_none() {
                tracing::warn!("no CHAT_SESSION_SECRET: guest sessions last only as long as this process");
            }
            session::random_secret()?
        }
    };
    let shared_sessions = config.redis_url.as_ref().map(|_| {
        let app = config.app.as_deref().unwrap_or("chat");
        store::Store::new(driver.clone(), app, config.session_ttl, realtime::HISTORY_COUNT, realtime::HISTORY_AGE)
    });
    let files = files::Files::start(
        config.files.clone(),
        session::Sessions::new(secret.clone(), config.session_ttl),
        shared_sessions.clone(),
    )
    .map_err(|e| std::io::Error::other(format!("file store {}: {e}", config.files.dir.display())))?;
    let messages = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let chat = realtime::Chat::new(
        config.instance.as_deref(),
        session::Sessions::new(secret, config.session_ttl),
        messages.clone(),
        realtime::History::bounded(
            realtime::HISTORY_COUNT,
            realtime::HISTORY_AGE,
            config.history_rooms,
            usize::try_from(config.history_bytes).unwrap_or(usize::MAX),
        ),
        realtime::Limits {
            socket: config.message_rate,
            joins: config.join_rate,
            signals: config.signal_rate,
            address: config.address_rate,
            trusted_proxies: config.trusted_proxies.clone(),
            call_ring: config.call_ring,
        },
        realtime::IceConfig {
            urls: config.ice_servers.clone(),
            turn_secret: config.turn_secret.clone(),
            turn_ttl: config.turn_ttl,
        },
        Some(realtime::Shared {
            calls: bus::Channel::new(driver.clone(), format!("{prefix}-calls")),
            history: bus::Channel::new(driver.clone(), format!("{prefix}-history")),
            sync: bus::Channel::new(driver.clone(), format!("{prefix}-sync")),
            rates: bus::Channel::new(driver.clone(), format!("{prefix}-rates")),
            files: Some(files.clone()),
            store: shared_sessions,
        }),
    );
    let chat = Arc::new(chat);
    let follow_task = tokio::spawn(chat.clone().follow(io.clone()));
    // Before any listener serves: a reload's successor must know the calls and history first.
    chat.catch_up(CATCH_UP).await;
    realtime::register(&io, chat, config.origins.clone()).await.map_err(std::io::Error::other)?;
    let admission =
        admission::Admission::new(config.max_connections.unwrap_or_else(|| admission::cap_for(admission::fd_limit())));
    // In cluster mode a polling session's requests are handed to the instance that has it.
    let handoff = config.handoff.as_deref().and_then(|dir| {
        let instance = config.instance.as_deref().unwrap_or("0");
        match handoff::Handoff::start(dir, instance, io.clone(), admission.clone()) {
            Ok(started) => Some(started),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot take connections from the other instances: polling clients need sticky sessions");
                None
            }
        }
    });
    let (handoff, incomings) = handoff.unzip();
    let incomings = incomings.unwrap_or_else(handoff::Incomings::local);
    let state = Arc::new(WorkerState {
        started: Instant::now(),
        messages,
        draining: AtomicBool::new(false),
        // Only cluster mode gives an instance a private admin listener beside the shared port.
        shared_port: listeners.admin.is_some(),
        instance: config.instance.clone(),
        io: io.clone(),
        cluster,
        link: driver.clone(),
        handoff: handoff.clone(),
    });
    // Draining is two steps: first stop accepting (the shared socket's queue goes to the other
    // instances) while connections already accepted deliver their requests; then shut the
    // connections down gracefully. Doing both at once (axum's plain graceful shutdown) closes a
    // connection accepted a moment before whose request had not been read yet: a failed request.
    let (accepting_tx, accepting_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            // An error means the sender is gone, which only happens once we are shutting down anyway.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    // Nagle off: socketioxide's small frames otherwise wait for ACKs (p99 29 ms instead of 2.8 ms).
    let public = tokio::net::TcpListener::from_std(listeners.public)?;
    tracing::info!(
        addr = ?public.local_addr().ok(),
        inherited = listeners.inherited,
        max_connections = admission.cap(),
        "serving"
    );
    let nodelay = public.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let public =
        handoff::Routed::new(Draining::new(admission::Capped::new(nodelay, admission), accepting_rx), incomings);
    // The client bundle outside socketioxide's layer, which takes everything under /socket.io/.
    let mut router = http::router(state.clone())
        .merge(
            axum::Router::new()
                .route("/api/files", axum::routing::post(files::upload))
                .route("/api/files/{id}", axum::routing::get(files::download))
                .with_state(files),
        )
        .layer(layer)
        .layer(axum::middleware::from_fn(bundle::client_bundle));
    if let Some(handoff) = &handoff {
        router = router.layer(axum::middleware::from_fn_with_state(handoff.clone(), handoff::observe));
    }
    let mut router = router.layer(axum::middleware::map_request(http::detach_head));
    if let Some(origins) = &config.origins {
        router = router.layer(origins.cors_layer());
    }
    // Outermost, so that every answer a draining worker gives says `Connection: close`.
    let router = router.layer(axum::middleware::map_response_with_state(state.clone(), http::close_when_draining));
    // The peer address reaches the Socket.IO handlers (rate limits per client address).
    let service = router.into_make_service_with_connect_info::<drain::PeerAddr>();
    let public_task = tokio::spawn(axum::serve(public, service).with_graceful_shutdown(stopped()).into_future());
    let admin_task = match listeners.admin {
        Some(admin) => {
            let admin = tokio::net::TcpListener::from_std(admin)?;
            let router = http::admin_router(state.clone()).with_state(state.clone());
            Some(tokio::spawn(axum::serve(admin, router).with_graceful_shutdown(stopped()).into_future()))
        }
        None => None,
    };

    let stats_task = tokio::spawn(broadcast_stats(state.clone(), config.stats_interval));
    shutdown.await;
    stats_task.abort();
    listen_task.abort();
    follow_task.abort();
    let begun = Instant::now();
    state.draining.store(true, Ordering::SeqCst);
    let open = io.sockets().len();
    tracing::info!(sockets = open, deadline_ms = config.shutdown_timeout.as_millis() as u64, "draining");
    let _ = accepting_tx.send(true);
    if let Some(handoff) = &handoff {
        handoff.close();
    }
    tokio::time::sleep(DRAIN_IDLE_GRACE.min(config.shutdown_timeout / 2)).await;
    let _ = stop_tx.send(true);
    let drain = async {
        // Clients told to go reconnect; with the shared socket they land on another instance.
        io.close().await;
        if let Err(e) = public_task.await {
            tracing::error!(error = %e, "public listener task failed");
        }
        if let Some(task) = admin_task {
            let _ = task.await;
        }
    };
    match tokio::time::timeout(config.shutdown_timeout, drain).await {
        Ok(()) => tracing::info!(elapsed_ms = begun.elapsed().as_millis() as u64, "drained"),
        Err(_) => tracing::warn!(
            deadline_ms = config.shutdown_timeout.as_millis() as u64,
            "drain deadline passed; exiting with connections still open"
        ),
    }
    Ok(())
}

/// Every `every`, publishes this worker's figures to the others and tells every local client
/// (volatile: a slow client just misses one) the cluster's connected users, rooms and messages per
/// second, with this worker's own under `local`.
async fn broadcast_stats(state: Arc<WorkerState>, every: Duration) {
    // Unique across hosts too (pids are not): the pid and when this worker started.
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let worker = format!("{}-{}", std::process::id(), since_epoch.as_nanos());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = (state.messages.load(Ordering::Relaxed), Instant::now());
    loop {
        ticks.tick().await;
        let (messages, now) = (state.messages.load(Ordering::Relaxed), Instant::now());
        let rate = messages.saturating_sub(last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(0.001);
        last = (messages, now);
        let rooms: Vec<String> = state.io.local().rooms().await.map_or_else(
            |_| Vec::new(),
            |rooms| rooms.into_iter().filter(|r| !r.starts_with('@')).map(|r| r.to_string()).collect(),
        );
        let report = cluster_stats::Report {
            worker: worker.clone(),
            users: state.io.sockets().len(),
            rooms,
            messages_per_second: (rate * 10.0).round() / 10.0,
        };
        let local = serde_json::json!({
            "users": report.users,
            "rooms": report.rooms.len(),
            "messages_per_second": report.messages_per_second,
        });
        state.cluster.publish(report);
        let cluster = state.cluster.figures();
        let stats = serde_json::json!({
            "scope": "cluster",
            "instance": state.instance,
            "workers": cluster.workers,
            "users": cluster.users,
            "rooms": cluster.rooms,
            "messages_per_second": cluster.messages_per_second,
            "local": local,
        });
        let _ = state.io.local().volatile().emit("stats", &stats).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; the worker will only stop when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
    }
}

/// Between "stop accepting" and "close idle connections": time for connections accepted just
/// before to deliver their first request, and for kept-alive clients to send their next one and
/// be told `Connection: close` in its answer. A connection still open and idle when it ends has
/// sent nothing since the drain began: closing it can only race a client that stayed quiet this
/// long and sends at that very moment (a browser retries such a request; a load balancer's pool
/// does too). Every drained instance holds a reload for this long (they drain one at a time).
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);

/// Upper bound on a drain, whatever the configuration says.
pub const MAX_SHUTDOWN: Duration = Duration::from_secs(300);
