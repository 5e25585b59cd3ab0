//! Ferry's edge: the WebSocket server clients connect to, and the Rust client for it.
//!
//! The server ([`Ingress`]) speaks the protocol of `docs/PROTOCOL.md` on `GET /v1/ws` and answers
//! `GET /healthz`, `GET /readyz`, `GET /v1/route` (the least loaded ingress node for a new
//! client, [`placement`]) and `GET /metrics` (OpenMetrics text, once given a registry:
//! [`Ingress::expose_metrics`]). It authenticates each handshake ([`auth`]), enforces the
//! per-connection and per-node limits, stamps the subject and rights on every instruction and
//! hands it to an [`InstructionQueue`](ferry_protocol::InstructionQueue); it watches files
//! through a [`ChangeBus`](ferry_protocol::ChangeBus), one bus subscription per topic for all of
//! its connections. It knows nothing of the store or of which queue and bus it is given: the
//! in-process ones of `ferry serve` or RabbitMQ and Redis.
//!
//! [`client`] is the Rust client used by `ferry client`, the tests and the bench's read-back;
//! [`direct_client`] is a leaner one for a load generator's connections (`ferry bench`): one
//! task drives each.
//!
//! What a client meets at the edge, besides the answers of `docs/PROTOCOL.md`:
//!
//! | when | what |
//! |------|------|
//! | token missing, forged, malformed or expired | HTTP 401 at the handshake |
//! | `Origin` not in `allowed_origins` | HTTP 403 at the handshake |
//! | node at `max_connections`, or shutting down | HTTP 503 at the handshake |
//! | no complete request head within `handshake_timeout` | the TCP connection is dropped |
//! | a frame or message over `max_frame_bytes` | close 1009 "frame too large" |
//! | the send queue (`send_queue` frames) full | close 4008 "slow consumer" |
//! | changes of a watched topic lost (by the bus, or the node's fan-out fell behind) | close 4009 "changes lost: resubscribe with since_rev" |
//! | nothing received for `idle_timeout` (pings every `ping_interval`) | close 1001 "idle timeout" |
//! | the server stops | in-flight requests answered, then close 1001 "server shutting down" |
//! | a WebSocket protocol violation | close 1002 "protocol error" |
//! | over `max_requests_per_sec` | answer `busy`, connection stays open |
//! | over `max_subscriptions` | answer `limit_exceeded`, connection stays open |
//! | a binary frame | answer `bad_request` without `id`, connection stays open |
//!
//! A subject's working set (`home_prefix`): on its first connection to the node the ingress
//! asks the worker to read those files into its cache; after its last one closes, to flush
//! them promptly and let them leave the cache (`Operation::WorkingSet`, answered to no one).

pub mod auth;
pub mod client;
pub mod direct_client;
mod metrics;
mod outbox;
pub mod placement;
mod rate;
mod server;
mod session;
mod signal;
mod subscriptions;

use std::time::Duration;

pub use auth::{issue_token, AuthError, Authenticator, Claims, Identity};
pub use outbox::{
    CloseReason, CLOSE_CHANGES_LOST, CLOSE_IDLE, CLOSE_PROTOCOL, CLOSE_SHUTDOWN,
    CLOSE_SLOW_CONSUMER, CLOSE_TOO_LARGE,
};
pub use server::{ws_url, Ingress, IngressStats};

/// How an ingress node runs (the binary maps the `[ingress]` section to this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressOptions {
    /// Largest frame or message in bytes; larger closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// Requests per second per connection; more are answered `busy`.
    pub max_requests_per_sec: u32,
    /// Subscriptions per connection; more are answered `limit_exceeded`.
    pub max_subscriptions: usize,
    /// Open WebSocket connections on the node; more get HTTP 503.
    pub max_connections: usize,
    /// Frames queued per connection; a full queue closes it with 4008.
    pub send_queue: usize,
    /// After a run of a topic's events went out, how long the next run waits to gather more,
    /// at most: a shard of the topic's watches waits 40 us per watch up to this.
    pub fanout_linger: Duration,
    /// TCP accept to complete HTTP request head.
    pub handshake_timeout: Duration,
    /// Silence after which a connection is closed with 1001.
    pub idle_timeout: Duration,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// On shutdown, how long in-flight requests may take.
    pub drain_timeout: Duration,
    /// Allowed `Origin` values; empty allows all.
    pub allowed_origins: Vec<String>,
    /// The working set loaded on connect; `{sub}` is the subject.
    pub home_prefix: String,
    /// Names of the application's own ops (`Operation::Custom`), parsed as such.
    pub custom_ops: Vec<String>,
    /// `GET /v1/route` sends clients only to nodes under this share of their
    /// `max_connections`, in percent; when every node is at it, 503 with `Retry-After`.
    pub route_threshold_percent: u32,
}

impl Default for IngressOptions {
    fn default() -> Self {
        IngressOptions {
            max_frame_bytes: 1024 * 1024,
            max_requests_per_sec: 1_000,
            max_subscriptions: 1_000,
            max_connections: 20_000,
            send_queue: 1_024,
            fanout_linger: Duration::from_millis(10),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            home_prefix: "/home/{sub}/".to_owned(),
            custom_ops: Vec::new(),
            route_threshold_percent: 90,
        }
    }
}
