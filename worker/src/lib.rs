//! `chat-worker`: the chat server that `chatctl` runs, wire-compatible with socket.io-client v4.
//!
//! # Theory of operation
//! `main` reads the configuration from the environment and adopts the listening sockets (inherited
//! from the supervisor, or bound) before the runtime starts, then calls [`serve`] with a shutdown
//! future. [`serve`] has the worker [`build`]: its link to the other workers, Socket.IO, the chat,
//! the file store and the routes, ready once it knows what the running workers know; then it runs
//! the public listener (HTTP routes + Socket.IO) and, when supervised, the private admin listener
//! on which the supervisor probes this instance's `/health`, and drains on shutdown.
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
//! - `http`: `/health`, `/api/socket/stats`, the state every route reads, and the copy of each
//!   request head out of hyper's read buffer (socketioxide keeps every socket's head).
//! - `limits`: token buckets, per socket and per client address across the cluster.
//! - `realtime`: Socket.IO guests, rooms, messages, presence, calls, recovery, rate limits.
//! - `session`: signed guest session tokens (identity and rooms survive a reconnect).
//! - `bus`: the Socket.IO adapter and its driver over Redis, the daemon's local bus, or nothing (a
//!   bus of one), and the named channels the workers copy state through; on a Redis Cluster, each
//!   room's channels on its shard.
//! - `redis_conn`: Redis as `REDIS_URL` names it, one server or a Redis Cluster.
//! - `store`: sessions and history streams kept in Redis itself.
//! - `cluster_stats`: live figures summed from every worker's reports, and the `stats` broadcast.
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
pub mod limits;
pub mod listeners;
pub mod origins;
pub mod realtime;
mod redis_conn;
pub mod session;
pub mod store;
pub mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use socketioxide::SocketIo;
use tokio::sync::watch;

use bus::{Adapter, BusDriver};
pub use config::Config;
use drain::Draining;
use http::WorkerState;
pub use listeners::Listeners;

/// Bytes read from a websocket at a time (`chatctl-bench chat-memory`: 1 KiB -> 256 bytes, 15.5 ->
/// 14.7 KiB per idle connection).
const WS_READ_BUFFER: usize = 256;

/// The longest a starting worker waits for Redis before it starts degraded (and keeps trying).
const REDIS_FIRST_TRY: Duration = Duration::from_secs(1);

/// The longest a starting worker waits for the others' calls and history.
const CATCH_UP: Duration = Duration::from_millis(500);

/// A cluster-wide question (a room's member list) waits this long for a dead or hung worker.
const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// A worker built from its configuration, ready to serve: its routes, and what runs beside them.
pub struct Worker {
    /// The public routes: HTTP, the web client, files and Socket.IO, every layer applied.
    pub router: axum::Router,
    /// The private routes the supervisor probes (cluster mode).
    pub admin: axum::Router,
    state: Arc<WorkerState>,
    admission: admission::Admission,
    handoff: Option<Arc<handoff::Handoff>>,
    incomings: handoff::Incomings,
    /// Tasks that follow the other workers; stopped when the worker drains.
    followers: Vec<tokio::task::JoinHandle<()>>,
}

/// Builds the worker: its link to the other workers, Socket.IO, the chat, the file store and the
/// routes. Returns once it knows what the running workers know (a reload's successor must, before
/// it serves). `shared_port`: cluster mode, where the public port is every instance's.
pub async fn build(config: &Config, shared_port: bool) -> std::io::Result<Worker> {
    let driver = connect_bus(config).await;
    // One set of channels per app: every app of the daemon shares its bus.
    let prefix = format!("socket.io/{}", config.app.as_deref().unwrap_or("chat"));
    let channel = |name: &str| bus::Channel::new(driver.clone(), format!("{prefix}-{name}"));
    let cluster = Arc::new(cluster_stats::ClusterStats::new(Some(channel("stats")), config.stats_interval));
    let mut followers = vec![tokio::spawn(cluster.clone().listen())];
    let adapter_config = socketioxide_redis::RedisAdapterConfig::new()
        .with_request_timeout(CLUSTER_REQUEST_TIMEOUT)
        .with_prefix(prefix.clone());
    let adapter = socketioxide_redis::RedisAdapterCtr::new_with_driver(driver.clone(), adapter_config);
    // On a Redis Cluster each room's broadcasts (the adapter's channel for the namespace, named by
    // socketioxide-redis) and messages travel on channels of their own, on one shard.
    driver.shard_rooms_of(vec![format!("{prefix}-request#/#"), format!("{prefix}-history")]);
    // An oversized packet closes that one connection (engine.io's max payload), not the worker.
    let max = usize::try_from(config.max_payload).unwrap_or(usize::MAX);
    let (layer, io) = SocketIo::builder()
        .with_adapter::<Adapter>(adapter)
        .max_payload(config.max_payload)
        .ws_max_message_size(max)
        .ws_max_frame_size(max)
        // Chat frames are small: a 256-byte read buffer (4 KiB by default) costs an idle connection
        // 3.8 KiB less (0.8 KiB less than 1 KiB did); a large frame (a call's SDP, a few KiB)
        // takes a few more reads.
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
    let sessions = || session::Sessions::new(secret.clone(), config.session_ttl);
    let store = config.redis_url.as_ref().map(|_| {
        let app = config.app.as_deref().unwrap_or("chat");
        store::Store::new(driver.clone(), app, config.session_ttl, realtime::HISTORY_COUNT, realtime::HISTORY_AGE)
    });
    let files = files::Files::start(config.files.clone(), sessions(), store.clone())
        .map_err(|e| std::io::Error::other(format!("file store {}: {e}", config.files.dir.display())))?;
    let delivered = Arc::new(AtomicU64::new(0));
    let shared = realtime::Shared {
        calls: channel("calls"),
        history: channel("history"),
        sync: channel("sync"),
        rates: channel("rates"),
        link: Some(driver.clone()),
        files: Some(files.clone()),
        store,
    };
    let chat = Arc::new(chat(config, sessions(), delivered.clone(), shared));
    followers.push(tokio::spawn(chat.clone().follow(io.clone())));
    followers.push(tokio::spawn(sweep_rooms(driver.clone(), io.clone())));
    // Before any listener serves: a reload's successor must know the calls and history first.
    chat.catch_up(CATCH_UP).await;
    realtime::register(&io, chat, config.origins.clone()).await?;
    let admission =
        admission::Admission::new(config.max_connections.unwrap_or_else(|| admission::cap_for(admission::fd_limit())));
    let (handoff, incomings) = handoff(config, &io, &admission);
    let state = Arc::new(WorkerState {
        started: Instant::now(),
        messages: delivered,
        draining: AtomicBool::new(false),
        shared_port,
        instance: config.instance.clone(),
        io,
        cluster,
        link: driver,
        handoff: handoff.clone(),
    });
    let stats = cluster_stats::broadcast(
        state.io.clone(),
        state.cluster.clone(),
        state.messages.clone(),
        state.instance.clone(),
        config.stats_interval,
    );
    followers.push(tokio::spawn(stats));
    let router = public_router(config, &state, layer, files);
    let admin = http::admin_router(state.clone()).with_state(state.clone());
    Ok(Worker { router, admin, state, admission, handoff, incomings, followers })
}

/// Stops hearing the rooms this worker has no socket in any more, and starts hearing those it has
/// sockets in but does not hear (on a Redis Cluster, see `bus`).
async fn sweep_rooms(driver: BusDriver, io: SocketIo<Adapter>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(bus::SWEEP_EVERY) => {}
            () = driver.resync() => {}
        }
        let local = async {
            match io.local().rooms().await {
                Ok(rooms) => rooms.into_iter().map(|room| room.to_string()).collect(),
                // Keep everything rather than drop a room in use.
                Err(_) => std::collections::HashSet::from_iter(driver.followed()),
            }
        };
        driver.sweep(local).await;
    }
}

/// Redis spans every host, so it replaces the local bus, which stays as its stand-in for the
/// workers of this host while Redis is away; without either, a bus of one.
async fn connect_bus(config: &Config) -> BusDriver {
    match (&config.redis_url, &config.bus) {
        (Some(url), local) => BusDriver::redis(url, REDIS_FIRST_TRY, local.as_deref()).await,
        (None, Some(path)) => match BusDriver::connect(path).await {
            Ok(driver) => driver,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot reach the local bus: rooms stay on this worker");
                BusDriver::solo()
            }
        },
        (None, None) => BusDriver::solo(),
    }
}

fn chat(
    config: &Config,
    sessions: session::Sessions,
    delivered: Arc<AtomicU64>,
    shared: realtime::Shared,
) -> realtime::Chat {
    let history = realtime::History::bounded(
        realtime::HISTORY_COUNT,
        realtime::HISTORY_AGE,
        config.history_rooms,
        usize::try_from(config.history_bytes).unwrap_or(usize::MAX),
    );
    let limits = realtime::Limits {
        socket: config.message_rate,
        joins: config.join_rate,
        signals: config.signal_rate,
        address: config.address_rate,
        trusted_proxies: config.trusted_proxies.clone(),
        call_ring: config.call_ring,
    };
    let ice = realtime::IceConfig {
        urls: config.ice_servers.clone(),
        turn_secret: config.turn_secret.clone(),
        turn_ttl: config.turn_ttl,
    };
    realtime::Chat::new(config.instance.as_deref(), sessions, delivered, history, limits, ice, Some(shared))
}

/// In cluster mode a polling session's requests are handed to the instance that has it.
fn handoff(
    config: &Config,
    io: &SocketIo<Adapter>,
    admission: &admission::Admission,
) -> (Option<Arc<handoff::Handoff>>, handoff::Incomings) {
    let started = config.handoff.as_deref().and_then(|dir| {
        let instance = config.instance.as_deref().unwrap_or("0");
        match handoff::Handoff::start(dir, instance, io.clone(), admission.clone()) {
            Ok(started) => Some(started),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot take connections from the other instances: polling clients need sticky sessions");
                None
            }
        }
    });
    let (handoff, incomings) = started.unzip();
    (handoff, incomings.unwrap_or_else(handoff::Incomings::local))
}

/// The public routes with every layer, outermost last.
fn public_router(
    config: &Config,
    state: &Arc<WorkerState>,
    socket_io: socketioxide::layer::SocketIoLayer<Adapter>,
    files: Arc<files::Files>,
) -> axum::Router {
    // The client bundle outside socketioxide's layer, which takes everything under /socket.io/.
    let mut router = http::router(state.clone())
        .merge(
            axum::Router::new()
                .route("/api/files", axum::routing::post(files::upload))
                .route("/api/files/{id}", axum::routing::get(files::download))
                .with_state(files),
        )
        .layer(socket_io)
        // Around socketioxide's layer: it answers the handshake.
        .layer(axum::middleware::from_fn(http::name_session))
        .layer(axum::middleware::from_fn(bundle::client_bundle));
    if let Some(handoff) = &state.handoff {
        router = router.layer(axum::middleware::from_fn_with_state(handoff.clone(), handoff::observe));
    }
    let mut router = router.layer(axum::middleware::map_request(http::detach_head));
    if let Some(origins) = &config.origins {
        router = router.layer(origins.cors_layer());
    }
    // Outermost, so that every answer a draining worker gives says `Connection: close`.
    router.layer(axum::middleware::map_response_with_state(state.clone(), http::close_when_draining))
}

/// Serves until `shutdown` resolves, then drains within `config.shutdown_timeout`.
pub async fn serve(listeners: Listeners, config: &Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    // Only cluster mode gives an instance a private admin listener beside the shared port.
    let worker = build(config, listeners.admin.is_some()).await?;
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
    let public = tokio::net::TcpListener::from_std(listeners.public)?;
    tracing::info!(
        addr = ?public.local_addr().ok(),
        inherited = listeners.inherited,
        max_connections = worker.admission.cap(),
        "serving"
    );
    // Nagle off: socketioxide's small frames otherwise wait for ACKs (p99 29 ms instead of 2.8 ms).
    let nodelay = public.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let capped = admission::Capped::new(nodelay, worker.admission.clone());
    let public = handoff::Routed::new(Draining::new(capped, accepting_rx), worker.incomings);
    // The peer address reaches the Socket.IO handlers (rate limits per client address).
    let service = worker.router.into_make_service_with_connect_info::<drain::PeerAddr>();
    let public_task = tokio::spawn(axum::serve(public, service).with_graceful_shutdown(stopped()).into_future());
    let admin_task = match listeners.admin {
        Some(admin) => {
            let admin = tokio::net::TcpListener::from_std(admin)?;
            Some(tokio::spawn(axum::serve(admin, worker.admin).with_graceful_shutdown(stopped()).into_future()))
        }
        None => None,
    };
    shutdown.await;
    for task in &worker.followers {
        task.abort();
    }
    let listening = async {
        if let Err(e) = public_task.await {
            tracing::error!(error = %e, "public listener task failed");
        }
        if let Some(task) = admin_task {
            let _ = task.await;
        }
    };
    let stopping = Stopping { accepting: accepting_tx, connections: stop_tx };
    drain(&worker.state, worker.handoff.as_deref(), stopping, listening, config.shutdown_timeout).await;
    Ok(())
}

/// What tells the listeners to stop: accepting first, then the connections.
struct Stopping {
    accepting: watch::Sender<bool>,
    connections: watch::Sender<bool>,
}

/// Drains within `deadline`: reports draining, stops accepting, gives kept-alive clients a grace
/// to be told `Connection: close`, then closes every Socket.IO session and waits for `listening`
/// (the listeners' tasks) to finish their requests.
async fn drain(
    state: &WorkerState,
    handoff: Option<&handoff::Handoff>,
    stopping: Stopping,
    listening: impl Future<Output = ()>,
    deadline: Duration,
) {
    let begun = Instant::now();
    state.draining.store(true, Ordering::SeqCst);
    tracing::info!(sockets = state.io.sockets().len(), deadline_ms = deadline.as_millis() as u64, "draining");
    let _ = stopping.accepting.send(true);
    if let Some(handoff) = handoff {
        handoff.close();
    }
    tokio::time::sleep(DRAIN_IDLE_GRACE.min(deadline / 2)).await;
    let _ = stopping.connections.send(true);
    let drained = async {
        // Clients told to go reconnect; with the shared socket they land on another instance.
        state.io.clone().close().await;
        listening.await;
    };
    match tokio::time::timeout(deadline, drained).await {
        Ok(()) => tracing::info!(elapsed_ms = begun.elapsed().as_millis() as u64, "drained"),
        Err(_) => tracing::warn!(
            deadline_ms = deadline.as_millis() as u64,
            "drain deadline passed; exiting with connections still open"
        ),
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
