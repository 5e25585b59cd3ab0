//! Backlog drain: instructions queued on RabbitMQ while no worker runs, then workers started;
//! how long they take to apply and answer all of them.
//!
//! `cargo bench -p ferry-cluster --bench backlog -- [--instructions 200000] [--workers 2]
//! [--size 500] [--files 2000]`
//!
//! The ingress side is an [`AmqpQueue`] in this process (what `ferry ingress` uses, without
//! the WebSocket), publishing `put`s of `--size` bytes over `--files` files; the workers are
//! [`WorkerNode`]s in this process on a temporary data directory, publishing their change
//! events to Redis like `ferry worker`. Prints one JSON line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_cluster::amqp_queue::{AmqpQueue, AmqpQueueOptions, PartitionLayout};
use ferry_cluster::redis_bus::{RedisBusOptions, RedisChangeBus};
use ferry_cluster::topology::{QueueLimits, Topology};
use ferry_cluster::worker_node::{WorkerNode, WorkerNodeOptions};
use ferry_file_server::{InitOptions, Store};
use ferry_protocol::{Instruction, InstructionQueue, Operation, QueueError, RequestId, Rights};
use tokio_util::sync::CancellationToken;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Backlog drain (see the module documentation).
#[derive(clap::Parser)]
struct Args {
    /// Instructions queued before the workers start.
    #[arg(long, default_value_t = 200_000)]
    instructions: u64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Content bytes per `put`.
    #[arg(long, default_value_t = 500)]
    size: usize,
    /// Files the puts spread over.
    #[arg(long, default_value_t = 2000)]
    files: u64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Args { instructions: total, workers, size, files, .. } = clap::Parser::parse();
    let namespace = format!("backlog{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Store::init(&data, InitOptions::default()).unwrap();
    let layout = PartitionLayout { partitions: 16, depth: 2 };
    let topology = Topology::new(
        &namespace,
        layout.partitions,
        QueueLimits { max_messages: 1_000_000, delivery_limit: 5 },
    );
    let options =
        AmqpQueueOptions { reply_timeout: Duration::from_secs(900), ..AmqpQueueOptions::default() };
    let queue = AmqpQueue::start(AMQP_URL, topology.clone(), layout, "backlog-ingress", options)
        .await
        .expect("connecting the ingress side");
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let content = bytes::Bytes::from(vec![b'x'; size]);
    let rights = Arc::new(Rights::all());
    let queued_at = Instant::now();
    for id in 1..=total {
        let instruction = Instruction {
            id,
            client_id: "backlog".into(),
            request_id: RequestId::from(id),
            subject: "bench".into(),
            rights: rights.clone(),
            key: format!("b{id}"),
            op: Operation::Put {
                path: format!("/home/u{}/f", id % files),
                content: content.clone(),
                if_rev: None,
            },
            received_at_us: 0,
        };
        let mut pending = Some(instruction);
        while let Some(instruction) = pending.take() {
            let (answered, failed) = (answered.clone(), failed.clone());
            let reply = Box::new(move |a: ferry_protocol::Answer| {
                if a.result.is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            });
            match queue.submit(instruction.clone(), reply) {
                Ok(()) => {}
                Err(QueueError::Busy) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    pending = Some(instruction);
                }
                Err(e) => panic!("submitting: {e}"),
            }
        }
    }
    // Every instruction is on the broker once its partition queues hold them all.
    let connection = lapin::Connection::connect(AMQP_URL, Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let published = queue.stats().messages_published.load(Ordering::Relaxed);
    loop {
        let mut depth = 0u64;
        for p in 0..layout.partitions {
            let q = channel
                .queue_declare(
                    topology.partition_queue(p).into(),
                    lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                    Default::default(),
                )
                .await
                .unwrap();
            depth += u64::from(q.message_count());
        }
        let now_published = queue.stats().messages_published.load(Ordering::Relaxed);
        if depth >= now_published && now_published >= published {
            break;
        }
        assert!(Instant::now() < deadline, "the backlog never reached the broker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queue_secs = queued_at.elapsed().as_secs_f64();
    let messages = queue.stats().messages_published.load(Ordering::Relaxed);

    let started = Instant::now();
    let stop = CancellationToken::new();
    let mut nodes = Vec::new();
    let mut buses = Vec::new();
    for w in 0..workers {
        let (ns, handle) = (namespace.clone(), tokio::runtime::Handle::current());
        let bus = tokio::task::spawn_blocking(move || {
            RedisChangeBus::connect(REDIS_URL, &ns, RedisBusOptions::default(), handle)
        })
        .await
        .unwrap()
        .expect("connecting to redis");
        let mut o = WorkerNodeOptions::new(&format!("w{w}"), data.clone(), AMQP_URL, REDIS_URL);
        o.namespace = namespace.clone();
        o.queue_limits = topology.limits;
        let bus = Arc::new(bus);
        buses.push(bus.clone());
        let node = WorkerNode::new(o, bus, None).await.expect("starting a worker");
        nodes.push(tokio::spawn(node.run(stop.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    while answered.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "the backlog did not drain in 15 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = started.elapsed().as_secs_f64();
    stop.cancel();
    for node in nodes {
        let _ = node.await;
    }
    println!(
        "{{\"bench\":\"backlog\",\"instructions\":{total},\"amqp_messages\":{messages},\"workers\":{workers},\"size\":{size},\"queue_secs\":{queue_secs:.1},\"drain_secs\":{drain_secs:.1},\"drain_per_sec\":{:.0},\"answered_ok\":{},\"failed\":{}}}",
        total as f64 / drain_secs,
        answered.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    let _ = topology.delete(&channel).await;
    // The buses publish behind the answers: wait for their last events, or the history keys
    // deleted below come back.
    let flushed = tokio::task::spawn_blocking(move || {
        buses.iter().all(|bus| bus.flush(Duration::from_secs(60)))
    })
    .await
    .unwrap_or(false);
    if !flushed {
        eprintln!("backlog: the change buses did not flush within 60 s; history keys may remain");
    }
    // The workers' change history for this namespace, so that runs leave nothing behind.
    if let Ok(client) = redis::Client::open(REDIS_URL) {
        if let Ok(mut redis) = client.get_multiplexed_async_connection().await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{namespace}:*"))
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(chunk).query_async(&mut redis).await;
            }
        }
    }
}
