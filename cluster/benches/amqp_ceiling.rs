//! The raw RabbitMQ ceiling Ferry's distributed mode is compared with: `lapin` publishing
//! 500-byte persistent messages, one per message, with publisher confirms, over the same kind
//! of queues Ferry uses (a namespace's partition quorum queues, declared by
//! `Topology::declare`), consumed and acknowledged as fast as the broker delivers. The client
//! is tuned: one channel per consumer, acks with `multiple` every 50 deliveries or when idle,
//! 256 publishes in flight, and a single-threaded runtime. On two cores the multi-threaded
//! runtime spent most of its time switching between its threads and lapin's I/O thread:
//! 7,400 messages/s against 13,000 single-threaded at 128 in flight (2026-12-06), and 15,800
//! at 256 (512 adds nothing).
//!
//! `cargo bench -p ferry-cluster --bench amqp_ceiling -- [--seconds 10] [--warmup 2]
//! [--size 500] [--partitions 16] [--in-flight 32] [--url amqp://...]`
//!
//! Prints one JSON line: messages/s consumed over the measured window and the publish ->
//! consume latency percentiles. The queues live in a namespace of their own, deleted at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_cluster::topology::{QueueLimits, Topology};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

/// The raw RabbitMQ ceiling (see the module documentation).
#[derive(clap::Parser)]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Message bytes.
    #[arg(long, default_value_t = 500)]
    size: usize,
    /// Queues, one per partition.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Publishes awaiting their confirms.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = <Args as clap::Parser>::parse();
    let namespace = format!("ceiling{}", std::process::id());
    let topology = Topology::new(&namespace, a.partitions, QueueLimits::default());
    let connection = Connection::connect(&a.url, ConnectionProperties::default())
        .await
        .expect("connecting to RabbitMQ");
    let setup = connection.create_channel().await.unwrap();
    topology.declare(&setup).await.expect("declaring the queues");

    let consumed = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
    let consumer_connection = Connection::connect(&a.url, ConnectionProperties::default())
        .await
        .expect("connecting the consumers");
    for p in 0..a.partitions {
        let channel = consumer_connection.create_channel().await.unwrap();
        channel.basic_qos(256, BasicQosOptions::default()).await.unwrap();
        let mut consumer = channel
            .basic_consume(
                topology.partition_queue(p).into(),
                format!("ceiling-{p}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (consumed, measuring, latencies) =
            (consumed.clone(), measuring.clone(), latencies.clone());
        tokio::spawn(async move {
            let mut unacked = 0u32;
            let mut last = 0u64;
            loop {
                let next = if unacked > 0 {
                    match tokio::time::timeout(Duration::from_millis(1), consumer.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            let ack = BasicAckOptions { multiple: true };
                            let _ = channel.basic_ack(last, ack).await;
                            unacked = 0;
                            continue;
                        }
                    }
                } else {
                    consumer.next().await
                };
                let Some(Ok(delivery)) = next else { return };
                if measuring.load(Ordering::Relaxed) {
                    consumed.fetch_add(1, Ordering::Relaxed);
                    let sent = u64::from_le_bytes(delivery.data[..8].try_into().unwrap());
                    latencies.lock().push(now_us().saturating_sub(sent));
                }
                last = delivery.delivery_tag;
                unacked += 1;
                if unacked >= 50 {
                    let _ = channel.basic_ack(last, BasicAckOptions { multiple: true }).await;
                    unacked = 0;
                }
            }
        });
    }

    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let permits = Arc::new(Semaphore::new(a.in_flight));
    let start = Instant::now();
    let total = Duration::from_secs_f64(a.warmup + a.seconds);
    let mut body = vec![b'x'; a.size.max(8)];
    let mut sent = 0u64;
    let mut window_start = None;
    while start.elapsed() < total {
        if window_start.is_none() && start.elapsed() >= Duration::from_secs_f64(a.warmup) {
            measuring.store(true, Ordering::Relaxed);
            window_start = Some((Instant::now(), consumed.load(Ordering::Relaxed)));
        }
        let permit = permits.clone().acquire_owned().await.unwrap();
        body[..8].copy_from_slice(&now_us().to_le_bytes());
        let p = (sent % u64::from(a.partitions)) as u32;
        let confirm = channel
            .basic_publish(
                topology.exchange().into(),
                Topology::routing_key(p).into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publishing");
        tokio::spawn(async move {
            let _ = confirm.await;
            drop(permit);
        });
        sent += 1;
    }
    measuring.store(false, Ordering::Relaxed);
    let (t0, c0) = window_start.expect("the run outlasted its warm-up");
    let elapsed = t0.elapsed().as_secs_f64();
    let rate = (consumed.load(Ordering::Relaxed) - c0) as f64 / elapsed;
    let mut lat = std::mem::take(&mut *latencies.lock());
    lat.sort_unstable();
    let pct = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)));
    let ms = |v: Option<&u64>| v.map_or(f64::NAN, |us| *us as f64 / 1000.0);
    println!(
        "{{\"bench\":\"amqp_ceiling\",\"messages_per_sec\":{rate:.0},\"size\":{},\"partitions\":{},\"in_flight\":{},\"seconds\":{elapsed:.1},\"latency_p50_ms\":{:.2},\"latency_p99_ms\":{:.2}}}",
        a.size,
        a.partitions,
        a.in_flight,
        ms(pct(0.5)),
        ms(pct(0.99)),
    );
    let _ = topology.delete(&setup).await;
}
