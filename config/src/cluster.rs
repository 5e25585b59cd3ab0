//! The `[cluster]` section: the brokers of the distributed mode (`ferry worker`,
//! `ferry ingress`, `ferry status`, `ferry dlq`). `ferry serve` ignores it.

use serde::{Deserialize, Serialize};

use crate::error::{check_range, Invalid};

/// Where the distributed mode's brokers are and how instructions travel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// RabbitMQ, carrying instructions. Default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub broker_url: String,
    /// Redis, carrying change events, history and membership. Default `redis://127.0.0.1:6379/`.
    pub bus_url: String,
    /// Prefix of every queue, exchange and Redis key, so that clusters can share brokers.
    /// Default `ferry`.
    pub namespace: String,
    /// How long an instruction waits at the ingress for others of its partition before they
    /// travel as one AMQP message (µs). Default 2,000.
    pub linger_us: u64,
    /// Instruction messages of one partition an ingress has awaiting their confirms before the
    /// partition's next instructions wait for a confirm and travel together (Nagle's rule; 1
    /// with `linger_us = 0` is send-on-confirm). Default 64, the node's limit: no wait.
    pub in_flight_per_partition: usize,
    /// An instruction message is sent once it weighs this much. Default 65,536.
    pub max_batch_bytes: usize,
    /// How long the ingress waits for a worker's answer before answering `unavailable` (ms).
    /// Default 10,000.
    pub reply_timeout_ms: u64,
    /// AMQP messages a partition queue holds before publishes are refused (`busy`).
    /// Default 50,000.
    pub max_queue_messages: u32,
    /// Deliveries of one message before it goes to the dead letters. Default 5.
    pub delivery_limit: u32,
    /// How long a worker stays a member without a heartbeat (ms); a killed worker's partitions
    /// move after this. Default 3,000.
    pub lease_ms: u64,
    /// Revisions of each file kept in Redis for `since_rev` recovery. Default 1,000.
    pub history_per_file: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            broker_url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            bus_url: "redis://127.0.0.1:6379/".to_owned(),
            namespace: "ferry".to_owned(),
            linger_us: 2_000,
            in_flight_per_partition: 64,
            max_batch_bytes: 64 << 10,
            reply_timeout_ms: 10_000,
            max_queue_messages: 50_000,
            delivery_limit: 5,
            lease_ms: 3_000,
            history_per_file: 1_000,
        }
    }
}

impl ClusterConfig {
    pub(crate) fn check(&self, out: &mut Vec<Invalid>) {
        let mut range = |key: &str, value: u64, lo: u64, hi: u64| {
            check_range(out, format!("cluster.{key}"), value, lo, hi)
        };
        range("linger_us", self.linger_us, 0, 1_000_000);
        range("in_flight_per_partition", self.in_flight_per_partition as u64, 1, 64);
        range("max_batch_bytes", self.max_batch_bytes as u64, 1024, 64 << 20);
        range("reply_timeout_ms", self.reply_timeout_ms, 1, 3_600_000);
        range("max_queue_messages", self.max_queue_messages.into(), 1, 100_000_000);
        range("delivery_limit", self.delivery_limit.into(), 1, 1_000);
        range("lease_ms", self.lease_ms, 100, 600_000);
        range("history_per_file", self.history_per_file as u64, 1, 1_000_000);
        if !self.broker_url.starts_with("amqp://") {
            out.push(Invalid::new(
                "cluster.broker_url",
                format!("{:?}", self.broker_url),
                "an amqp:// URL, e.g. \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            ));
        }
        if !self.bus_url.starts_with("redis://") {
            out.push(Invalid::new(
                "cluster.bus_url",
                format!("{:?}", self.bus_url),
                "a redis:// URL, e.g. \"redis://127.0.0.1:6379/\"",
            ));
        }
        let namespace_ok = !self.namespace.is_empty()
            && self.namespace.len() <= 64
            && self.namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !namespace_ok {
            out.push(Invalid::new(
                "cluster.namespace",
                format!("{:?}", self.namespace),
                "1 to 64 ASCII letters, digits, '-' or '_'",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_keys() {
        let mut out = Vec::new();
        ClusterConfig::default().check(&mut out);
        assert_eq!(out, Vec::new());
        let bad = ClusterConfig {
            broker_url: "http://x".to_owned(),
            namespace: "a.b".to_owned(),
            delivery_limit: 0,
            ..ClusterConfig::default()
        };
        bad.check(&mut out);
        let keys: Vec<&str> = out.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["cluster.delivery_limit", "cluster.broker_url", "cluster.namespace"]);
    }
}
