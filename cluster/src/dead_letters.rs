//! The dead letters: instruction messages that a partition could not take (unreadable, or
//! failing the worker until the queue's delivery limit), kept in `{ns}.dead` with their
//! original routing key and RabbitMQ's `x-death` header, for `ferry dlq list` and
//! `ferry dlq replay`.
//!
//! Listing reads without losing anything: a quorum queue cannot be browsed, so [`list`] takes
//! messages with `basic.get` and holds them unacknowledged (a requeued message of a quorum queue
//! is delivered again first, so returning each at once would read the same one over and over),
//! then returns them all with one requeueing `nack`. If the process dies meanwhile, closing its
//! channel returns them just the same. The cost: each listing counts as a delivery in the
//! messages' `x-delivery-count`, and a concurrent replay does not see them while they are held.
//!
//! Replaying republishes each body to `{ns}.instructions` under its partition's routing key,
//! persistent, `mandatory` and confirmed, without the original `reply_to` (the ingress that sent
//! it answered `unavailable` long ago), and acknowledges the dead message only once the
//! republish is confirmed: a crash in between duplicates a message, which its idempotency keys
//! absorb, and never loses one. A message that names no partition, cannot be read (it would
//! only be dead-lettered again) or is refused by its partition's queue stays in the dead
//! letters and is reported.

use std::collections::BTreeMap;

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::Serialize;

use crate::codec::decode_instructions;
use crate::status::is_not_found;
use crate::topology::Topology;

/// Why the dead letters could not be read or replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    #[error("connecting to the broker at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "there is no dead-letter queue {queue}: no worker or ingress of this namespace has \
         started (is the [cluster] namespace right?)"
    )]
    NotDeclared { queue: String },
    #[error("dead letters in {queue}: {what}: {source}")]
    Broker {
        queue: String,
        what: &'static str,
        #[source]
        source: lapin::Error,
    },
}

/// A broker connection for [`list`] and [`replay`].
pub async fn connect(url: &str) -> Result<Connection, DeadLetterError> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|source| DeadLetterError::Connect { url: url.to_owned(), source })
}

/// The latest death RabbitMQ recorded in a message's `x-death` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Death {
    /// `rejected` (unreadable), `delivery_limit` (failed the worker too often), `maxlen`,
    /// `expired`.
    pub reason: String,
    /// The queue it died in.
    pub queue: String,
    /// How many times it died there for that reason.
    pub count: u64,
    /// The routing keys it had when it died.
    pub routing_keys: Vec<String>,
}

/// What one dead message holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The routing key it was dead-lettered with (its original one).
    pub routing_key: String,
    /// The partition it is replayed to; `None` when neither its routing key nor its `x-death`
    /// names one of this cluster's partitions.
    pub partition: Option<u32>,
    pub bytes: usize,
    /// Instructions in the message; `None` when its body is unreadable.
    pub instructions: Option<usize>,
    pub first_op: Option<String>,
    pub first_path: Option<String>,
    /// Why the body could not be read.
    pub unreadable: Option<String>,
    pub death: Option<Death>,
}

/// A dead letter that [`replay`] left in the dead letters, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptDeadLetter {
    pub letter: DeadLetter,
    pub why: String,
}

/// What [`replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Messages republished to their partitions and removed from the dead letters.
    pub replayed: usize,
    /// The same, by partition.
    pub by_partition: BTreeMap<u32, usize>,
    pub kept: Vec<KeptDeadLetter>,
}

/// The deaths in an `x-death` header, latest first.
pub fn deaths(headers: Option<&FieldTable>) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(entries)) =
        headers.and_then(|h| h.inner().get(&ShortString::from("x-death")))
    else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(table) => Some(death(table)),
            _ => None,
        })
        .collect()
}

fn death(table: &FieldTable) -> Death {
    let get = |key: &str| table.inner().get(&ShortString::from(key));
    let routing_keys = match get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    Death {
        reason: get("reason").and_then(text).unwrap_or_default(),
        queue: get("queue").and_then(text).unwrap_or_default(),
        count: get("count").and_then(integer).unwrap_or(0),
        routing_keys,
    }
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn integer(value: &AMQPValue) -> Option<u64> {
    match *value {
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(n)),
        AMQPValue::Timestamp(n) => Some(n),
        _ => None,
    }
}

/// Describes one dead message: its partition comes from the routing key it was dead-lettered
/// with, else from the keys recorded in its `x-death`.
pub fn describe(
    topology: &Topology,
    routing_key: &str,
    headers: Option<&FieldTable>,
    body: &[u8],
) -> DeadLetter {
    let death = deaths(headers).into_iter().next();
    let partition = topology.partition_of_routing_key(routing_key).or_else(|| {
        death
            .as_ref()
            .and_then(|d| d.routing_keys.iter().find_map(|k| topology.partition_of_routing_key(k)))
    });
    let mut letter = DeadLetter {
        routing_key: routing_key.to_owned(),
        partition,
        bytes: body.len(),
        instructions: None,
        first_op: None,
        first_path: None,
        unreadable: None,
        death,
    };
    match decode_instructions(body) {
        Ok(instructions) => {
            letter.instructions = Some(instructions.len());
            if let Some(first) = instructions.first() {
                letter.first_op = Some(first.op.name().to_owned());
                letter.first_path = Some(first.op.path().to_owned());
            }
        }
        Err(e) => letter.unreadable = Some(e.to_string()),
    }
    letter
}

/// The properties a replayed message travels with: the original ones that describe it, made
/// persistent, without `reply_to` and without the previous queue's delivery count (`x-death`
/// stays, so that a message dying again shows its whole history).
fn replay_properties(original: &BasicProperties) -> BasicProperties {
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    if let Some(headers) = original.headers() {
        let kept: BTreeMap<ShortString, AMQPValue> = headers
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != "x-delivery-count")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        properties = properties.with_headers(FieldTable::from(kept));
    }
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    properties
}

/// The broker side of one listing or replay: a channel of its own, so that its delivery tags
/// and confirms are nobody else's, and closing it returns whatever it still holds.
struct DeadQueue {
    queue: String,
    channel: Channel,
}

impl DeadQueue {
    async fn open(
        connection: &Connection,
        topology: &Topology,
    ) -> Result<DeadQueue, DeadLetterError> {
        let queue = topology.dead_letters();
        let channel = connection.create_channel().await.map_err(|source| {
            DeadLetterError::Broker { queue: queue.clone(), what: "opening a channel", source }
        })?;
        Ok(DeadQueue { queue, channel })
    }

    fn error(&self, what: &'static str) -> impl FnOnce(lapin::Error) -> DeadLetterError + '_ {
        move |source| {
            let queue = self.queue.clone();
            if is_not_found(&source) {
                DeadLetterError::NotDeclared { queue }
            } else {
                DeadLetterError::Broker { queue, what, source }
            }
        }
    }

    async fn get(&self) -> Result<Option<BasicGetMessage>, DeadLetterError> {
        self.channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(self.error("basic.get"))
    }

    /// Returns every held message up to `tag` to the queue.
    async fn requeue_upto(&self, tag: u64) -> Result<(), DeadLetterError> {
        self.channel
            .basic_nack(tag, BasicNackOptions { multiple: true, requeue: true })
            .await
            .map_err(self.error("returning the messages read"))
    }

    async fn close(self) {
        let _ = self.channel.close(200, "done with the dead letters".into()).await;
    }
}

/// Describes up to `max` dead messages, oldest first, leaving them all in the dead letters
/// (see the module documentation).
pub async fn list(
    connection: &Connection,
    topology: &Topology,
    max: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let dead = DeadQueue::open(connection, topology).await?;
    let mut letters = Vec::new();
    let mut last_tag = None;
    let mut read = async {
        while letters.len() < max {
            let Some(got) = dead.get().await? else { break };
            let delivery = got.delivery;
            last_tag = Some(delivery.delivery_tag);
            let headers = delivery.properties.headers().as_ref();
            letters.push(describe(
                topology,
                delivery.routing_key.as_str(),
                headers,
                &delivery.data,
            ));
        }
        Ok(())
    }
    .await;
    if let (Some(tag), Ok(())) = (last_tag, &read) {
        read = dead.requeue_upto(tag).await;
    }
    dead.close().await;
    read.map(|()| letters)
}

/// Replays up to `max` dead messages to their partitions (see the module documentation). Only
/// the messages dead when it starts are considered (counted by the first `basic.get`, which is
/// exact where a passive declare's count of a quorum queue lags): one that dies again during the
/// replay is not replayed twice.
pub async fn replay(
    connection: &Connection,
    topology: &Topology,
    max: usize,
) -> Result<ReplayReport, DeadLetterError> {
    let dead = DeadQueue::open(connection, topology).await?;
    let outcome = replay_on(&dead, topology, max).await;
    // Closing returns the kept messages even if returning them explicitly failed.
    dead.close().await;
    outcome
}

async fn replay_on(
    dead: &DeadQueue,
    topology: &Topology,
    max: usize,
) -> Result<ReplayReport, DeadLetterError> {
    dead.channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(dead.error("enabling publisher confirms"))?;
    let mut report = ReplayReport::default();
    let mut last_kept = None;
    let mut bound = max;
    let mut taken = 0;
    while taken < bound {
        let Some(got) = dead.get().await? else { break };
        if taken == 0 {
            bound = bound.min(got.message_count as usize + 1);
        }
        taken += 1;
        let delivery = got.delivery;
        let headers = delivery.properties.headers().as_ref();
        let letter = describe(topology, delivery.routing_key.as_str(), headers, &delivery.data);
        let partition = match (letter.partition, &letter.unreadable) {
            (Some(p), None) => p,
            (None, _) => {
                last_kept = Some(delivery.delivery_tag);
                let why = "its routing key names no partition of this cluster".to_owned();
                report.kept.push(KeptDeadLetter { letter, why });
                continue;
            }
            (Some(_), Some(_)) => {
                last_kept = Some(delivery.delivery_tag);
                let why = "its body is unreadable: it would be dead-lettered again".to_owned();
                report.kept.push(KeptDeadLetter { letter, why });
                continue;
            }
        };
        let confirm = dead
            .channel
            .basic_publish(
                topology.exchange().into(),
                Topology::routing_key(partition).into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &delivery.data,
                replay_properties(&delivery.properties),
            )
            .await
            .map_err(dead.error("republishing"))?
            .await
            .map_err(dead.error("waiting for the republish confirm"))?;
        let refused = match confirm {
            Confirmation::Ack(None) => None,
            Confirmation::Ack(Some(_)) => Some("no queue is bound to its partition (unroutable)"),
            Confirmation::Nack(_) => Some("its partition's queue refused it (full)"),
            Confirmation::NotRequested => Some("the broker did not confirm the republish"),
        };
        match refused {
            None => {
                dead.channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: false })
                    .await
                    .map_err(dead.error("acknowledging a replayed message"))?;
                report.replayed += 1;
                *report.by_partition.entry(partition).or_default() += 1;
            }
            Some(why) => {
                last_kept = Some(delivery.delivery_tag);
                report.kept.push(KeptDeadLetter { letter, why: why.to_owned() });
            }
        }
    }
    // Everything before the last kept message was acknowledged or kept: this returns the kept.
    if let Some(tag) = last_kept {
        dead.requeue_upto(tag).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferry_protocol::{Instruction, Operation, RequestId, Rights};
    use lapin::types::{FieldArray, LongString};

    use super::*;
    use crate::codec::encode_instructions;
    use crate::topology::QueueLimits;

    fn topology() -> Topology {
        Topology::new("t", 16, QueueLimits::default())
    }

    fn x_death(reason: &str, count: i64, keys: &[&str]) -> FieldTable {
        let mut death = FieldTable::default();
        death.insert("reason".into(), AMQPValue::LongString(LongString::from(reason)));
        death.insert("queue".into(), AMQPValue::LongString(LongString::from("t.p003")));
        death.insert("count".into(), AMQPValue::LongLongInt(count));
        let keys: Vec<AMQPValue> =
            keys.iter().map(|k| AMQPValue::LongString(LongString::from(*k))).collect();
        death.insert("routing-keys".into(), AMQPValue::FieldArray(FieldArray::from(keys)));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers
    }

    fn body(paths: &[&str]) -> Vec<u8> {
        let batch: Vec<Instruction> = paths
            .iter()
            .enumerate()
            .map(|(i, path)| Instruction {
                id: i as u64,
                client_id: "c".into(),
                request_id: RequestId::from(i as u64),
                subject: "alice".into(),
                rights: Arc::new(Rights::all()),
                key: format!("k{i}"),
                op: Operation::Append { path: (*path).into(), content: "x".into() },
                received_at_us: 0,
            })
            .collect();
        encode_instructions(&batch).unwrap()
    }

    #[test]
    fn a_dead_letter_is_described_from_its_body_routing_key_and_x_death() {
        let headers = x_death("delivery_limit", 6, &["p003"]);
        let letter = describe(&topology(), "p003", Some(&headers), &body(&["/a/b", "/a/c"]));
        assert_eq!(letter.partition, Some(3));
        assert_eq!(letter.instructions, Some(2));
        assert_eq!(letter.first_op.as_deref(), Some("append"));
        assert_eq!(letter.first_path.as_deref(), Some("/a/b"));
        assert_eq!(letter.unreadable, None);
        let death = letter.death.unwrap();
        assert_eq!((death.reason.as_str(), death.count), ("delivery_limit", 6));
        assert_eq!(death.queue, "t.p003");
    }

    #[test]
    fn the_partition_falls_back_to_x_death_and_is_none_when_nothing_names_one() {
        let headers = x_death("rejected", 1, &["p009"]);
        assert_eq!(describe(&topology(), "", Some(&headers), &[1]).partition, Some(9));
        let letter = describe(&topology(), "p099", None, b"junk");
        assert_eq!(letter.partition, None);
        assert_eq!(letter.death, None);
        assert!(letter.unreadable.unwrap().contains("format"), "a typed codec error");
    }

    #[test]
    fn replayed_properties_drop_reply_to_and_the_delivery_count_but_keep_x_death() {
        let mut headers = x_death("delivery_limit", 6, &["p003"]);
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(5));
        let original = BasicProperties::default()
            .with_reply_to("t.reply.i1".into())
            .with_message_id("m1".into())
            .with_headers(headers);
        let replayed = replay_properties(&original);
        assert_eq!(replayed.reply_to(), &None);
        assert_eq!(replayed.delivery_mode(), &Some(2));
        assert_eq!(replayed.message_id().as_ref().map(ShortString::as_str), Some("m1"));
        let headers = replayed.headers().as_ref().unwrap();
        assert!(headers.contains_key("x-death"));
        assert!(!headers.contains_key("x-delivery-count"));
    }
}
