//! The `[ingress]` section: where the WebSocket server listens and the limits it enforces on
//! every connection.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::{check_range, Invalid};

/// Settings of the WebSocket edge (`/v1/ws`, `/healthz`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Address and port the server binds. Default `127.0.0.1:7700`.
    pub listen: String,
    /// Largest WebSocket frame (and message) in bytes; a larger one closes the connection with
    /// 1009. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Requests per second one connection may send; more are answered `busy`. Default 1,000.
    pub max_requests_per_sec: u32,
    /// Subscriptions one connection may hold; more are answered `limit_exceeded`. Default 1,000.
    pub max_subscriptions: usize,
    /// Open WebSocket connections on this node; further upgrades get HTTP 503. Default 20,000.
    pub max_connections: usize,
    /// Frames (answers and events) queued for one connection; a client that lets it fill is
    /// closed with 4008 "slow consumer". Default 1,024.
    pub send_queue: usize,
    /// After a topic's events went to its watchers, the next ones wait until this long has
    /// passed (or 64 have gathered) and go together, one write per connection: a file changing
    /// a thousand times a second reaches each watcher in runs instead of a write per event. A
    /// topic with few watchers waits less: 40 us per watcher its fan-out task serves (a
    /// topic's watchers are split over up to one task per runtime thread), up to this. An
    /// event after a quiet spell goes at once; answers never wait. 0 sends every event as soon
    /// as it can. Default 10 ms.
    pub fanout_linger_ms: u64,
    /// Longest time from TCP accept to a complete HTTP request head. Default 5,000 ms.
    pub handshake_timeout_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed. Default
    /// 60,000 ms.
    pub idle_timeout_ms: u64,
    /// The server pings every connection this often. Default 20,000 ms.
    pub ping_interval_ms: u64,
    /// On shutdown, how long in-flight requests may take to be answered. Default 5,000 ms.
    pub drain_timeout_ms: u64,
    /// Origins allowed to open a WebSocket (exact match, e.g. `https://app.example`); empty
    /// allows every origin. Requests without an `Origin` header (non-browser clients) are
    /// always allowed. Default empty.
    pub allowed_origins: Vec<String>,
    /// The working set read into the cache on a subject's first connection to a node, and
    /// flushed and let go after its last; `{sub}` is replaced by the token's subject. Default
    /// `/home/{sub}/`.
    pub home_prefix: String,
    /// `GET /v1/route` sends new clients only to ingress nodes under this share of their
    /// `max_connections` (percent); when all are at it, 503 with `Retry-After`. Default 90.
    pub route_threshold_percent: u32,
    /// Serve `GET /metrics` (OpenMetrics text: requests, errors, latency, connections, the
    /// store's and the logger's figures) on the same address as the WebSocket. It shows counts
    /// and sizes, never a file's path or content, and asks for no token. Default true.
    pub metrics: bool,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            listen: "127.0.0.1:7700".to_owned(),
            max_frame_bytes: 1024 * 1024,
            max_requests_per_sec: 1_000,
            max_subscriptions: 1_000,
            max_connections: 20_000,
            send_queue: 1_024,
            fanout_linger_ms: 10,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            ping_interval_ms: 20_000,
            drain_timeout_ms: 5_000,
            allowed_origins: Vec::new(),
            home_prefix: "/home/{sub}/".to_owned(),
            route_threshold_percent: 90,
            metrics: true,
        }
    }
}

impl IngressConfig {
    pub(crate) fn check(&self, out: &mut Vec<Invalid>) {
        let mut range = |key: &str, value: u64, lo: u64, hi: u64| {
            check_range(out, format!("ingress.{key}"), value, lo, hi)
        };
        range("max_frame_bytes", self.max_frame_bytes as u64, 256, 1 << 30);
        range("max_requests_per_sec", self.max_requests_per_sec.into(), 1, 10_000_000);
        range("max_subscriptions", self.max_subscriptions as u64, 1, 10_000_000);
        range("max_connections", self.max_connections as u64, 1, 10_000_000);
        range("send_queue", self.send_queue as u64, 1, 10_000_000);
        range("fanout_linger_ms", self.fanout_linger_ms, 0, 1_000);
        range("handshake_timeout_ms", self.handshake_timeout_ms, 1, 3_600_000);
        range("idle_timeout_ms", self.idle_timeout_ms, 1, 86_400_000);
        range("ping_interval_ms", self.ping_interval_ms, 1, 86_400_000);
        range("drain_timeout_ms", self.drain_timeout_ms, 0, 3_600_000);
        range("route_threshold_percent", self.route_threshold_percent.into(), 1, 100);
        if self.listen.parse::<SocketAddr>().is_err() {
            out.push(Invalid::new(
                "ingress.listen",
                format!("{:?}", self.listen),
                "an IP address and port, e.g. \"127.0.0.1:7700\"",
            ));
        }
        if self.ping_interval_ms >= self.idle_timeout_ms {
            out.push(Invalid::new(
                "ingress.ping_interval_ms",
                self.ping_interval_ms.to_string(),
                "less than ingress.idle_timeout_ms (a pong must be able to arrive in time)",
            ));
        }
        if !self.home_prefix.starts_with('/') || !self.home_prefix.ends_with('/') {
            out.push(Invalid::new(
                "ingress.home_prefix",
                format!("{:?}", self.home_prefix),
                "an absolute prefix starting and ending with '/', e.g. \"/home/{sub}/\"",
            ));
        }
        for origin in &self.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                out.push(Invalid::new(
                    "ingress.allowed_origins",
                    format!("{origin:?}"),
                    "origins like \"https://app.example\" (scheme and host, no trailing '/')",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let mut out = Vec::new();
        IngressConfig::default().check(&mut out);
        assert_eq!(out, Vec::new());
    }

    #[test]
    fn bad_values_name_their_keys() {
        let config = IngressConfig {
            listen: "localhost".to_owned(),
            send_queue: 0,
            ping_interval_ms: 90_000,
            home_prefix: "home/{sub}".to_owned(),
            allowed_origins: vec!["app.example".to_owned()],
            ..IngressConfig::default()
        };
        let mut out = Vec::new();
        config.check(&mut out);
        let keys: Vec<&str> = out.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "ingress.send_queue",
                "ingress.listen",
                "ingress.ping_interval_ms",
                "ingress.home_prefix",
                "ingress.allowed_origins",
            ]
        );
    }
}
