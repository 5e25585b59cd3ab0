//! The dead letters on the machine's RabbitMQ, each test in a namespace of its own (deleted at
//! the end): listing leaves them in place, replaying moves the good ones back to their
//! partitions, and poison messages really end up there.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_cluster::apply_thread::ApplyThread;
use ferry_cluster::codec::{decode_answers, encode_instructions};
use ferry_cluster::dead_letters::{list, replay};
use ferry_cluster::partition_consumer::{ConsumerOptions, PartitionConsumer};
use ferry_cluster::replies::Replies;
use ferry_cluster::topology::{QueueLimits, Topology};
use ferry_file_server::{InitOptions, Store, StoreOptions, WalSync};
use ferry_instruction_worker::{LocalBus, LocalBusOptions, Worker, WorkerOptions};
use ferry_protocol::{
    ChangeBus, ChangeEvent, EventSink, History, Instruction, Operation, RequestId, Rights,
    SubscriptionId, Topic,
};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A namespace of our own on the shared broker; its queues and exchanges are deleted on drop.
struct Namespace {
    topology: Topology,
}

impl Namespace {
    async fn declare(partitions: u32, limits: QueueLimits, channel: &Channel) -> Namespace {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("dlq{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let topology = Topology::new(&name, partitions, limits);
        topology.declare(channel).await.unwrap();
        Namespace { topology }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        // Its own runtime: drop may run inside the test's.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.unwrap().block_on(async {
                if let Ok(connection) = Connection::connect(AMQP_URL, Default::default()).await {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = topology.delete(&channel).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn connect() -> (Connection, Channel) {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (connection, channel)
}

fn instruction(id: u64, key: &str, op: Operation) -> Instruction {
    Instruction {
        id,
        client_id: "c1".into(),
        request_id: RequestId::from(id),
        subject: "alice".into(),
        rights: Arc::new(Rights::all()),
        key: key.to_owned(),
        op,
        received_at_us: 0,
    }
}

fn append(path: &str, content: &str) -> Operation {
    Operation::Append { path: path.into(), content: content.to_owned().into() }
}

async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(confirm, Confirmation::Ack(None), "{routing_key} routed and confirmed");
}

async fn depth(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.unwrap();
    let _ = channel.close(200, "depth read".into()).await;
    q.message_count()
}

/// Waits until `queue` holds `expected` ready messages (quorum queues count asynchronously).
async fn depth_reaches(connection: &Connection, queue: &str, expected: u32) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let found = depth(connection, queue).await;
        if found == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{queue} holds {found} messages, expected {expected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes one message from a partition queue (single-active-consumer queues refuse `basic.get`).
async fn take_one(connection: &Connection, queue: &str) -> Delivery {
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "dlq-test".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(TIMEOUT, consumer.next()).await.unwrap().unwrap().unwrap();
    let _ = channel.close(200, "took one".into()).await;
    delivery
}

/// An `x-death` header as RabbitMQ writes it when a partition queue dead-letters a message.
fn x_death(queue: &str, routing_key: &str) -> FieldTable {
    let mut death = FieldTable::default();
    death.insert("reason".into(), AMQPValue::LongString(LongString::from("delivery_limit")));
    death.insert("queue".into(), AMQPValue::LongString(LongString::from(queue)));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(LongString::from(
            routing_key,
        ))])),
    );
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_keeps_dead_letters_and_replay_moves_the_good_ones_to_their_partitions() {
    let (connection, channel) = connect().await;
    let ns = Namespace::declare(4, QueueLimits::default(), &channel).await;
    let t = &ns.topology;
    let body1 = encode_instructions(&[
        instruction(1, "k1", append("/home/a/x", "1")),
        instruction(2, "k2", append("/home/a/y", "2")),
    ])
    .unwrap();
    let body2 = encode_instructions(&[instruction(3, "k3", append("/home/b/x", "3"))]).unwrap();
    let body3 = encode_instructions(&[instruction(4, "k4", append("/home/c/x", "4"))]).unwrap();
    let bogus = encode_instructions(&[instruction(5, "k5", append("/home/d/x", "5"))]).unwrap();
    // As the partition queues dead-letter them: their own routing key, `x-death`, `reply_to`.
    let dead = |queue: &str, key: &str| {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_reply_to(t.reply_queue("gone").into())
            .with_headers(x_death(queue, key))
    };
    publish(&channel, &t.dead_letters(), "p001", &body1, dead(&t.partition_queue(1), "p001")).await;
    publish(&channel, &t.dead_letters(), "p002", &body2, dead(&t.partition_queue(2), "p002")).await;
    // Re-published by hand without its key: `x-death` still says where it belongs.
    publish(&channel, &t.dead_letters(), "", &body3, dead(&t.partition_queue(3), "p003")).await;
    publish(&channel, &t.dead_letters(), "p077", &bogus, BasicProperties::default()).await;
    depth_reaches(&connection, &t.dead_letters(), 4).await;

    let letters = list(&connection, t, 100).await.unwrap();
    assert_eq!(letters.len(), 4, "{letters:?}");
    let by_key = |key: &str| letters.iter().find(|l| l.routing_key == key).unwrap();
    let first = by_key("p001");
    assert_eq!(first.partition, Some(1));
    assert_eq!(first.instructions, Some(2));
    assert_eq!(first.first_op.as_deref(), Some("append"));
    assert_eq!(first.first_path.as_deref(), Some("/home/a/x"));
    let death = first.death.as_ref().unwrap();
    assert_eq!((death.reason.as_str(), death.count), ("delivery_limit", 1));
    assert_eq!(death.queue, t.partition_queue(1));
    assert_eq!(by_key("").partition, Some(3));
    assert_eq!(by_key("p077").partition, None);
    assert_eq!(by_key("p077").death, None);
    // Listing took nothing away, and a bounded listing stops at its bound.
    depth_reaches(&connection, &t.dead_letters(), 4).await;
    assert_eq!(list(&connection, t, 2).await.unwrap().len(), 2);
    assert_eq!(list(&connection, t, 100).await.unwrap().len(), 4);

    let report = replay(&connection, t, 100).await.unwrap();
    assert_eq!(report.replayed, 3, "{report:?}");
    assert_eq!(report.by_partition.into_iter().collect::<Vec<_>>(), [(1, 1), (2, 1), (3, 1)]);
    assert_eq!(report.kept.len(), 1);
    assert_eq!(report.kept[0].letter.routing_key, "p077");
    assert!(report.kept[0].why.contains("names no partition"), "{}", report.kept[0].why);

    depth_reaches(&connection, &t.partition_queue(0), 0).await;
    for (p, body) in [(1, &body1), (2, &body2), (3, &body3)] {
        depth_reaches(&connection, &t.partition_queue(p), 1).await;
        let got = take_one(&connection, &t.partition_queue(p)).await;
        assert_eq!(&got.data, body, "partition {p}'s body");
        assert_eq!(got.routing_key.as_str(), Topology::routing_key(p));
        assert_eq!(got.properties.reply_to(), &None, "nobody waits for these answers");
        assert_eq!(got.properties.delivery_mode(), &Some(2));
    }
    depth_reaches(&connection, &t.dead_letters(), 1).await;
    let left = list(&connection, t, 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].routing_key, "p077");
    // Nothing to replay is not an error.
    let again = replay(&connection, t, 100).await.unwrap();
    assert_eq!((again.replayed, again.kept.len()), (0, 1));
    depth_reaches(&connection, &t.dead_letters(), 1).await;
}

/// A change bus that fails (panics) for one directory: its instructions make the worker fail
/// every time they are applied.
struct FailingBus {
    inner: LocalBus,
}

impl ChangeBus for FailingBus {
    fn publish(&self, event: ChangeEvent) {
        assert!(!event.path.starts_with("/poison/"), "the bus refuses {}", event.path);
        self.inner.publish(event);
    }

    fn subscribe(&self, topic: Topic, sink: Arc<dyn EventSink>) -> SubscriptionId {
        self.inner.subscribe(topic, sink)
    }

    fn unsubscribe(&self, id: SubscriptionId) {
        self.inner.unsubscribe(id)
    }

    fn history(&self, path: &str, since_rev: u64) -> History {
        self.inner.history(path, since_rev)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_and_repeatedly_failing_messages_reach_the_dead_letters() {
    let (connection, channel) = connect().await;
    let limits = QueueLimits { delivery_limit: 2, ..QueueLimits::default() };
    let ns = Namespace::declare(4, limits, &channel).await;
    let t = &ns.topology;
    let dir = tempfile::tempdir().unwrap();
    Store::init(dir.path(), InitOptions { partitions: 4, partition_depth: 2 }).unwrap();
    let options = StoreOptions { wal_sync: WalSync::Os, ..StoreOptions::default() };
    let store = Arc::new(Store::open(dir.path(), options).unwrap());
    let bus = Arc::new(FailingBus { inner: LocalBus::new(LocalBusOptions::default()) });
    let worker = Arc::new(Worker::new(store, bus, None, WorkerOptions::default()).unwrap());
    let applied = Arc::new(AtomicU64::new(0));
    let replies = Replies::start(&connection).await.unwrap();
    let options = ConsumerOptions::default();
    let apply = ApplyThread::start(options.max_batch, applied.clone()).unwrap();
    let consumer = PartitionConsumer::start(
        &connection,
        t,
        0,
        worker,
        options.prefetch,
        &apply,
        replies.sender(),
    )
    .await
    .unwrap();

    let persistent = BasicProperties::default().with_delivery_mode(2);
    publish(&channel, &t.exchange(), "p000", b"\x01not messagepack", persistent.clone()).await;
    depth_reaches(&connection, &t.dead_letters(), 1).await;
    // No idempotency key: every delivery applies it again and fails again.
    let poison = encode_instructions(&[instruction(7, "", append("/poison/x", "boom"))]).unwrap();
    publish(&channel, &t.exchange(), "p000", &poison, persistent.clone()).await;
    depth_reaches(&connection, &t.dead_letters(), 2).await;

    let letters = list(&connection, t, 10).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let unreadable = letters.iter().find(|l| l.unreadable.is_some()).unwrap();
    assert_eq!(unreadable.partition, Some(0));
    assert_eq!(unreadable.death.as_ref().unwrap().reason, "rejected");
    let failing = letters.iter().find(|l| l.unreadable.is_none()).unwrap();
    assert_eq!(failing.first_path.as_deref(), Some("/poison/x"));
    assert_eq!((failing.routing_key.as_str(), failing.partition), ("p000", Some(0)));
    let death = failing.death.as_ref().unwrap();
    assert_eq!(death.reason, "delivery_limit");
    assert_eq!(death.queue, t.partition_queue(0));
    assert_eq!(applied.load(Ordering::Relaxed), 0, "failed batches are not counted as applied");

    // The partition goes on: a good message after the poison is applied and answered.
    let replies = connection.create_channel().await.unwrap();
    let reply_queue = t.reply_queue("dlq-test");
    t.declare_reply_queue(&replies, "dlq-test").await.unwrap();
    let good = encode_instructions(&[instruction(8, "k8", append("/home/ok/x", "fine"))]).unwrap();
    publish(
        &channel,
        &t.exchange(),
        "p000",
        &good,
        persistent.with_reply_to(reply_queue.as_str().into()),
    )
    .await;
    let deadline = Instant::now() + TIMEOUT;
    let answer = loop {
        let got = replies
            .basic_get(reply_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if let Some(got) = got {
            break decode_answers(&got.delivery.data).unwrap();
        }
        assert!(Instant::now() < deadline, "no answer to the good message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].instruction_id, 8);
    assert!(answer[0].result.is_ok(), "{:?}", answer[0].result);
    assert_eq!(applied.load(Ordering::Relaxed), 1);
    consumer.stop().await;
    apply.stop();
    depth_reaches(&connection, &t.dead_letters(), 2).await;
}
