//! The HTTP side: accepting TCP connections (with the handshake timeout), the routes, and the
//! checks made before a WebSocket upgrade (shutdown, Origin, token, connection limit).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ferry_protocol::{ChangeBus, InstructionQueue};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::metrics::{self, RequestMetrics};
use crate::placement::{choose, NodeLoad, Peers};
use crate::signal::Signal;
use crate::subscriptions::Fanout;
use crate::IngressOptions;

/// Bytes read from a connection's socket at a time: small, because the buffer is resident for
/// every idle connection (8 KiB made one cost 14.7 KB, 2 KiB 8.5 KB); a larger frame still
/// arrives whole, in several reads.
const READ_BUFFER_BYTES: usize = 2 * 1024;
/// Bytes of frames gathered before a write to the socket (tungstenite's default is 128 KiB).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// What every connection of a node shares.
pub(crate) struct Shared {
    pub(crate) options: IngressOptions,
    pub(crate) auth: Authenticator,
    pub(crate) queue: Arc<dyn InstructionQueue>,
    pub(crate) bus: Arc<dyn ChangeBus>,
    pub(crate) fanout: Fanout,
    /// Raised when `serve` stops accepting: every connection drains and closes.
    pub(crate) shutdown: Signal,
    /// Short and unique per process start: prefixes client ids and assigned idempotency keys,
    /// so that keys never repeat across restarts.
    pub(crate) node_tag: String,
    pub(crate) key_prefix: String,
    connections: AtomicUsize,
    /// Open connections per subject: a working set is released after its subject's last one.
    subjects: parking_lot::Mutex<HashMap<Arc<str>, usize>>,
    slow_consumers: AtomicU64,
    changes_lost: AtomicU64,
    next_connection: AtomicU64,
    next_instruction: AtomicU64,
    tracker: TaskTracker,
    peers: Peers,
    /// Where clients reach this node, once it listens.
    url: std::sync::OnceLock<String>,
    pub(crate) requests: RequestMetrics,
    /// What `GET /metrics` shows, once [`Ingress::expose_metrics`] was called.
    metrics: std::sync::OnceLock<Registry>,
}

impl Shared {
    pub(crate) fn count_slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_changes_lost(&self) {
        self.changes_lost.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> IngressStats {
        IngressStats {
            connections: self.connections.load(Ordering::Acquire),
            bus_topics: self.fanout.topic_count(),
            slow_consumers_closed: self.slow_consumers.load(Ordering::Relaxed),
            changes_lost_closed: self.changes_lost.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn next_instruction_id(&self) -> u64 {
        self.next_instruction.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a connection of `subject`; true if it is the subject's first on this node.
    pub(crate) fn subject_connected(&self, subject: &Arc<str>) -> bool {
        let mut subjects = self.subjects.lock();
        let count = subjects.entry(subject.clone()).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Uncounts a connection of `subject`; true if it was the subject's last on this node.
    pub(crate) fn subject_disconnected(&self, subject: &Arc<str>) -> bool {
        let mut subjects = self.subjects.lock();
        let Some(count) = subjects.get_mut(subject) else { return false };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        subjects.remove(subject);
        true
    }
}

/// One open WebSocket connection's place under `max_connections`; freed on drop.
pub(crate) struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`Ingress::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressStats {
    /// Open WebSocket connections.
    pub connections: usize,
    /// Topics the node is subscribed to on the change bus.
    pub bus_topics: usize,
    /// Connections closed with 4008 "slow consumer" so far.
    pub slow_consumers_closed: u64,
    /// Connections closed with 4009 "changes lost" so far.
    pub changes_lost_closed: u64,
}

/// A WebSocket ingress node. See the crate documentation.
pub struct Ingress {
    shared: Arc<Shared>,
}

impl Ingress {
    /// An ingress that submits to `queue` and watches `bus`; nothing runs until
    /// [`Ingress::serve`].
    pub fn new(
        options: IngressOptions,
        auth: Authenticator,
        queue: Arc<dyn InstructionQueue>,
        bus: Arc<dyn ChangeBus>,
    ) -> Ingress {
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let node_tag = format!("{:x}-{:x}", started % (1 << 40), std::process::id());
        let fanout = Fanout::new(bus.clone(), options.send_queue, options.fanout_linger);
        Ingress {
            shared: Arc::new(Shared {
                options,
                auth,
                queue,
                fanout,
                bus,
                shutdown: Signal::default(),
                key_prefix: "ferry".to_owned(),
                node_tag,
                connections: AtomicUsize::new(0),
                subjects: parking_lot::Mutex::new(HashMap::new()),
                slow_consumers: AtomicU64::new(0),
                changes_lost: AtomicU64::new(0),
                next_connection: AtomicU64::new(1),
                next_instruction: AtomicU64::new(1),
                tracker: TaskTracker::new(),
                peers: Peers::default(),
                url: std::sync::OnceLock::new(),
                requests: RequestMetrics::new(),
                metrics: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Counters of this node.
    pub fn stats(&self) -> IngressStats {
        self.shared.stats()
    }

    /// Serves `GET /metrics` from `registry` (OpenMetrics text), with the node's own figures
    /// added to it (see [`crate::metrics`]); without this call the route answers 404. Only the
    /// first call counts.
    pub fn expose_metrics(&self, mut registry: Registry) {
        metrics::register(&self.shared, &mut registry);
        let _ = self.shared.metrics.set(registry);
    }

    /// The other ingress nodes' loads, for `GET /v1/route` (the distributed mode refreshes
    /// them; alone, a node routes every client to itself).
    pub fn set_peers(&self, peers: Vec<NodeLoad>) {
        self.shared.peers.set(peers);
    }

    /// Serves `listener` until `shutdown` is cancelled, then stops accepting, lets every
    /// connection's in-flight requests be answered (up to `drain_timeout`), closes every
    /// connection with 1001 and returns once all are gone.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) {
        let shared = &self.shared;
        if let Ok(addr) = listener.local_addr() {
            let _ = shared.url.set(ws_url(addr));
        }
        let router = Router::new()
            .route("/v1/ws", get(upgrade))
            .route("/v1/route", get(route))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics_text))
            .with_state(shared.clone());
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: give closing connections a
                        // moment instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            let handshake = shared.options.handshake_timeout;
            let stop = shared.clone();
            shared.tracker.spawn(async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(handshake);
                let connection =
                    builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
                tokio::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    _ = stop.shutdown.raised() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "http connection ended");
                }
            });
        }
        drop(listener);
        shared.shutdown.raise();
        shared.tracker.close();
        shared.tracker.wait().await;
    }
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    if shared.shutdown.is_raised() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        let open = shared.connections.load(Ordering::Acquire);
        (StatusCode::OK, format!("ready: {open} connections\n")).into_response()
    }
}

/// `GET /metrics`: what [`Ingress::expose_metrics`] was given, read now.
async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    let Some(registry) = shared.metrics.get() else {
        return (StatusCode::NOT_FOUND, "metrics are not exposed on this node\n").into_response();
    };
    match metrics::render(registry) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n").into_response()
        }
    }
}

/// `GET /v1/route`: `{"url":..,"connections":..,"capacity":..}` of the least loaded node under
/// the threshold, or 503 with `Retry-After` when every node is at it.
async fn route(State(shared): State<Arc<Shared>>) -> Response {
    let this = NodeLoad {
        url: shared.url.get().cloned().unwrap_or_default(),
        connections: shared.connections.load(Ordering::Acquire),
        capacity: shared.options.max_connections,
    };
    let nodes = shared.peers.with(this);
    match choose(&nodes, shared.options.route_threshold_percent) {
        Some(node) if !shared.shutdown.is_raised() => Json(node.clone()).into_response(),
        _ => {
            let body = serde_json::json!({"error": {"code": "unavailable", "message":
                "every ingress node is at its connection threshold: retry later"}});
            (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], Json(body))
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    if shared.shutdown.is_raised() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let allowed = &shared.options.allowed_origins;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !allowed.is_empty() && !allowed.iter().any(|a| a == origin) {
            return (StatusCode::FORBIDDEN, format!("origin {origin:?} is not allowed\n"))
                .into_response();
        }
    }
    let token = bearer(&headers).or(query.token.as_deref());
    let identity = match shared.auth.authenticate(token) {
        Ok(identity) => identity,
        Err(e) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                format!("{e}\n"),
            )
                .into_response()
        }
    };
    let limit = shared.options.max_connections;
    let taken = shared
        .connections
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1));
    if taken.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("this node has its {limit} connections\n"),
        )
            .into_response();
    }
    let slot = ConnectionSlot(shared.clone());
    let conn_id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let max = shared.options.max_frame_bytes;
    let token = shared.tracker.token();
    // Small read buffers keep idle connections cheap; tungstenite grows them for big frames.
    let ws = ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max);
    ws.on_upgrade(move |socket| async move {
        let _token = token;
        crate::session::run(shared, socket, identity, conn_id, slot).await;
    })
}

/// The address a listener is bound to, for printing.
pub fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/v1/ws")
}
