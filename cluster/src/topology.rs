//! RabbitMQ names and queue arguments. Every process declares the same topology at start
//! (declaring is idempotent while the arguments agree), so that no process depends on
//! another having started first.
//!
//! - `{ns}.instructions`, a direct exchange; partition `p` routes with key `p007`;
//! - `{ns}.p007`, one durable quorum queue per partition, single-active-consumer, bounded
//!   (`x-max-length` with `reject-publish`: a full partition nacks the publish and the ingress
//!   answers `busy`), with `x-delivery-limit` and dead-lettering to `{ns}.dead`;
//! - `{ns}.dead`, a fanout exchange and a durable quorum queue of the same name: poison
//!   messages, kept with their original routing key for `ferry dlq replay`;
//! - `{ns}.reply.{node}`, one exclusive auto-delete queue per ingress node for the answers.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

/// How the partition queues are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// AMQP messages (each a batch of instructions) a partition queue holds before it refuses
    /// publishes (default 50,000).
    pub max_messages: u32,
    /// Deliveries of one message before it is dead-lettered (default 5).
    pub delivery_limit: u32,
}

impl Default for QueueLimits {
    fn default() -> QueueLimits {
        QueueLimits { max_messages: 50_000, delivery_limit: 5 }
    }
}

/// The names of one Ferry cluster's exchanges and queues; `namespace` lets several clusters
/// (or tests) share a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub namespace: String,
    pub partitions: u32,
    pub limits: QueueLimits,
}

impl Topology {
    pub fn new(namespace: &str, partitions: u32, limits: QueueLimits) -> Topology {
        Topology { namespace: namespace.to_owned(), partitions, limits }
    }

    pub fn exchange(&self) -> String {
        format!("{}.instructions", self.namespace)
    }

    pub fn routing_key(partition: u32) -> String {
        format!("p{partition:03}")
    }

    pub fn partition_queue(&self, partition: u32) -> String {
        format!("{}.{}", self.namespace, Topology::routing_key(partition))
    }

    pub fn dead_letters(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    pub fn reply_queue(&self, node: &str) -> String {
        format!("{}.reply.{node}", self.namespace)
    }

    /// The partition a routing key names, for replaying dead letters.
    pub fn partition_of_routing_key(&self, key: &str) -> Option<u32> {
        let p: u32 = key.strip_prefix('p')?.parse().ok()?;
        (p < self.partitions).then_some(p)
    }

    fn partition_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(self.limits.max_messages)),
        );
        args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("reject-publish")));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.limits.delivery_limit)),
        );
        // At-least-once dead-lettering (3.10+, needs `reject-publish`): a poison message is
        // not lost on its way to the dead letters.
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString(LongString::from("at-least-once")),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(self.dead_letters())),
        );
        args
    }

    /// Declares the exchanges, the partition queues and the dead-letter queue.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letters().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        let queue = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(self.dead_letters().into(), queue, quorum).await?;
        channel
            .queue_bind(
                self.dead_letters().into(),
                self.dead_letters().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for p in 0..self.partitions {
            channel
                .queue_declare(
                    self.partition_queue(p).into(),
                    queue,
                    self.partition_queue_arguments(),
                )
                .await?;
            channel
                .queue_bind(
                    self.partition_queue(p).into(),
                    self.exchange().into(),
                    Topology::routing_key(p).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of the namespace, messages included (the teardown of
    /// tests and benchmarks; never done by a running process).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for p in 0..self.partitions {
            channel
                .queue_delete(self.partition_queue(p).into(), QueueDeleteOptions::default())
                .await?;
        }
        channel.queue_delete(self.dead_letters().into(), QueueDeleteOptions::default()).await?;
        for exchange in [self.exchange(), self.dead_letters()] {
            channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await?;
        }
        Ok(())
    }

    /// Declares the node's reply queue: it lives as long as the node's connection.
    pub async fn declare_reply_queue(&self, channel: &Channel, node: &str) -> lapin::Result<()> {
        let options =
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        channel
            .queue_declare(self.reply_queue(node).into(), options, FieldTable::default())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespaced_and_routing_keys_map_back_to_partitions() {
        let t = Topology::new("t1", 16, QueueLimits::default());
        assert_eq!(t.partition_queue(7), "t1.p007");
        assert_eq!(t.exchange(), "t1.instructions");
        assert_eq!(t.reply_queue("n1"), "t1.reply.n1");
        assert_eq!(t.partition_of_routing_key("p007"), Some(7));
        assert_eq!(t.partition_of_routing_key("p016"), None);
        assert_eq!(t.partition_of_routing_key("x1"), None);
    }

    #[test]
    fn partition_queues_are_bounded_quorum_queues_with_dead_lettering() {
        let t = Topology::new("t1", 1, QueueLimits { max_messages: 9, delivery_limit: 3 });
        let args = t.partition_queue_arguments();
        let get = |k: &str| args.inner().get(&lapin::types::ShortString::from(k)).cloned();
        assert_eq!(get("x-single-active-consumer"), Some(AMQPValue::Boolean(true)));
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(9)));
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(3)));
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString(LongString::from("reject-publish")))
        );
    }
}
