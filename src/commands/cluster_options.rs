//! From the `[cluster]` configuration section to the distributed mode's own option types.

use std::time::Duration;

use ferry_cluster::amqp_queue::AmqpQueueOptions;
use ferry_cluster::redis_bus::RedisBusOptions;
use ferry_cluster::topology::QueueLimits;
use ferry_config::ClusterConfig;

pub fn queue_limits(c: &ClusterConfig) -> QueueLimits {
    QueueLimits { max_messages: c.max_queue_messages, delivery_limit: c.delivery_limit }
}

pub fn amqp_queue_options(c: &ClusterConfig) -> AmqpQueueOptions {
    AmqpQueueOptions {
        linger: Duration::from_micros(c.linger_us),
        in_flight_per_partition: c.in_flight_per_partition,
        max_batch_bytes: c.max_batch_bytes,
        reply_timeout: Duration::from_millis(c.reply_timeout_ms),
        ..AmqpQueueOptions::default()
    }
}

pub fn bus_options(c: &ClusterConfig) -> RedisBusOptions {
    RedisBusOptions { history_per_file: c.history_per_file, ..RedisBusOptions::default() }
}

/// A process id unique in the cluster: host, pid and start time.
pub fn node_id(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 1_000_000);
    format!("{role}-{host}-{}-{started}", std::process::id())
}
