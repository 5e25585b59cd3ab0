//! `PartitionConsumer`: the worker side of the instruction path for one partition.
//!
//! An async task consumes the partition's queue (its own channel: delivery tags are per
//! channel) and hands each message's instructions to the partition's apply thread, which runs
//! [`Worker::apply_batch`] over everything waiting (several messages share group commits). The
//! worker answers only once the changes are in the WAL; the task then hands the message's
//! answers to the process's [`Replies`](crate::replies::Replies), which batches them per reply
//! queue with the answers of its other messages and partitions, and acknowledges every message
//! answered so far with one `multiple` ack. A message is therefore acknowledged to RabbitMQ only
//! after what it asked is durable; one that was delivered and not acknowledged when the process
//! died is redelivered to the next owner and deduplicated by its idempotency keys.
//!
//! An unreadable message is rejected without requeue (dead-lettered at once). A message whose
//! batch made the worker panic is returned with requeue and, redelivered, applied alone: the
//! innocent messages of the batch then succeed, and the queue's delivery limit sends the poison
//! one to the dead letters after a few attempts, so it cannot stall its partition.
//!
//! [`PartitionConsumer::stop`] is the handover: cancel the consumer, let the apply thread
//! finish what it was given, answer and acknowledge it, then close the channel, which returns
//! anything delivered but not started to the queue, ahead of later messages.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use ferry_instruction_worker::Worker;
use ferry_protocol::{Answer, Instruction, ReplyTo};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle as TaskHandle;
use tokio_util::sync::CancellationToken;

use crate::codec::decode_instructions;
use crate::replies::ReplySender;
use crate::topology::Topology;

/// How a [`PartitionConsumer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Messages delivered and not yet acknowledged (default 64).
    pub prefetch: u16,
    /// Most instructions applied as one batch (default 2,048).
    pub max_batch: usize,
}

impl Default for ConsumerOptions {
    fn default() -> ConsumerOptions {
        ConsumerOptions { prefetch: 64, max_batch: 2048 }
    }
}

/// Why a partition could not be consumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    #[error("consuming partition {partition}: {source}")]
    Broker {
        partition: u32,
        #[source]
        source: lapin::Error,
    },
    #[error("starting the apply thread of partition {partition}: {source}")]
    Spawn {
        partition: u32,
        #[source]
        source: std::io::Error,
    },
}

/// One delivered message, for the apply thread.
struct Job {
    tag: u64,
    reply_to: Option<String>,
    instructions: Vec<Instruction>,
    /// A redelivered message is applied in a batch of its own: if it was returned because its
    /// batch made the worker panic, only a poison message fails again, and the innocent
    /// messages of that batch do not use up their deliveries with it.
    alone: bool,
}

/// What the apply thread made of one message.
enum Outcome {
    Answered {
        tag: u64,
        reply_to: Option<String>,
        answers: Vec<Answer>,
    },
    /// The worker panicked while applying the batch holding this message.
    Failed {
        tag: u64,
    },
}

/// Consumes one partition's queue into a worker. See the module documentation.
pub struct PartitionConsumer {
    partition: u32,
    cancel: CancellationToken,
    task: TaskHandle<()>,
}

impl PartitionConsumer {
    /// Starts consuming `partition` on a new channel of `connection`; answers go to
    /// `replies`, and `applied` counts the instructions applied (for the node's description in
    /// `ferry status`).
    pub async fn start(
        connection: &Connection,
        topology: &Topology,
        partition: u32,
        worker: Arc<Worker>,
        options: ConsumerOptions,
        applied: Arc<AtomicU64>,
        replies: ReplySender,
    ) -> Result<PartitionConsumer, ConsumerError> {
        let broker = |source| ConsumerError::Broker { partition, source };
        let channel = connection.create_channel().await.map_err(broker)?;
        channel.basic_qos(options.prefetch, BasicQosOptions::default()).await.map_err(broker)?;
        let tag = format!("ferry-worker-{}-p{partition:03}", std::process::id());
        let consumer = channel
            .basic_consume(
                topology.partition_queue(partition).into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Outcome>();
        let max_batch = options.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name(format!("ferry-apply-p{partition:03}"))
            .spawn(move || apply_loop(&worker, &jobs_rx, &done_tx, max_batch, &applied))
            .map_err(|source| ConsumerError::Spawn { partition, source })?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(consume(
            partition,
            channel,
            consumer,
            tag,
            jobs_tx,
            done_rx,
            thread,
            replies,
            cancel.clone(),
        ));
        Ok(PartitionConsumer { partition, cancel, task })
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Whether consuming ended by itself (the channel or connection failed): the owner should
    /// release the partition and take it again.
    pub fn has_ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Hands the partition back: see the module documentation. Returns once everything given
    /// to the worker is answered and acknowledged (or the channel is gone).
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(partition = self.partition, error = %e, "partition consumer task failed");
        }
    }
}

fn apply_loop(
    worker: &Worker,
    jobs: &Receiver<Job>,
    done: &mpsc::UnboundedSender<Outcome>,
    max_batch: usize,
    applied_total: &AtomicU64,
) {
    let mut held: Option<Job> = None;
    loop {
        let Some(first) = held.take().or_else(|| jobs.recv().ok()) else { return };
        let mut count = first.instructions.len();
        let alone = first.alone;
        let mut batch = vec![first];
        while count < max_batch && !alone {
            match jobs.try_recv() {
                Ok(job) if job.alone => {
                    held = Some(job);
                    break;
                }
                Ok(job) => {
                    count += job.instructions.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        // `apply_batch` answers every instruction before it returns, in order.
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let mut items: Vec<(Instruction, ReplyTo)> = Vec::with_capacity(count);
        let mut shapes = Vec::with_capacity(batch.len());
        for job in batch {
            shapes.push((job.tag, job.reply_to, job.instructions.len()));
            for instruction in job.instructions {
                let answers = answers.clone();
                items.push((instruction, Box::new(move |a| answers.lock().push(a))));
            }
        }
        let applied = std::panic::catch_unwind(AssertUnwindSafe(|| worker.apply_batch(items)));
        if applied.is_ok() {
            applied_total.fetch_add(count as u64, Ordering::Relaxed);
        }
        let mut answers = std::mem::take(&mut *answers.lock()).into_iter();
        for (tag, reply_to, n) in shapes {
            let outcome = if applied.is_ok() {
                Outcome::Answered { tag, reply_to, answers: answers.by_ref().take(n).collect() }
            } else {
                Outcome::Failed { tag }
            };
            if done.send(outcome).is_err() {
                return;
            }
        }
        if applied.is_err() {
            tracing::error!(
                "the worker panicked applying a batch: its messages go back to the queue"
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    partition: u32,
    channel: Channel,
    mut consumer: lapin::Consumer,
    tag: String,
    jobs: Sender<Job>,
    mut done: mpsc::UnboundedReceiver<Outcome>,
    thread: JoinHandle<()>,
    replies: ReplySender,
    cancel: CancellationToken,
) {
    let mut acks = Acks::default();
    let mut jobs = Some(jobs);
    let mut consuming = true;
    loop {
        tokio::select! {
            _ = cancel.cancelled(), if consuming => {
                consuming = false;
                if let Err(e) = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await {
                    tracing::warn!(partition, error = %e, "cancelling the consumer");
                }
                // The apply thread ends once it has applied what it holds.
                jobs = None;
            }
            delivery = consumer.next(), if consuming => {
                match delivery {
                    Some(Ok(delivery)) => {
                        let tag = delivery.delivery_tag;
                        match decode_instructions(&delivery.data) {
                            Ok(instructions) => {
                                let reply_to = delivery.properties.reply_to().as_ref().map(|q| q.to_string());
                                if let Some(jobs) = &jobs {
                                    let alone = delivery.redelivered;
                                    let _ = jobs.send(Job { tag, reply_to, instructions, alone });
                                }
                            }
                            Err(e) => {
                                tracing::error!(partition, error = %e, "unreadable instruction message: dead-lettered");
                                acks.flush(&channel).await;
                                let _ = channel.basic_reject(tag, BasicRejectOptions { requeue: false }).await;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(partition, error = %e, "partition consumer failed");
                        consuming = false;
                        jobs = None;
                    }
                    None => {
                        consuming = false;
                        jobs = None;
                    }
                }
            }
            outcome = done.recv() => {
                let Some(outcome) = outcome else { break };
                handle(&channel, &replies, &mut acks, outcome).await;
                while let Ok(outcome) = done.try_recv() {
                    handle(&channel, &replies, &mut acks, outcome).await;
                }
                acks.flush(&channel).await;
            }
        }
    }
    acks.flush(&channel).await;
    drop(jobs);
    if thread.join().is_err() {
        tracing::error!(partition, "the apply thread panicked");
    }
    // Whatever was delivered and not acknowledged goes back to the queue.
    let _ = channel.close(200, "partition released".into()).await;
}

/// Acknowledgements waiting to be sent as one `multiple` ack.
#[derive(Default)]
struct Acks {
    upto: Option<u64>,
}

impl Acks {
    async fn flush(&mut self, channel: &Channel) {
        if let Some(tag) = self.upto.take() {
            if let Err(e) = channel.basic_ack(tag, BasicAckOptions { multiple: true }).await {
                tracing::warn!(error = %e, "acknowledging instruction messages");
            }
        }
    }
}

async fn handle(channel: &Channel, replies: &ReplySender, acks: &mut Acks, outcome: Outcome) {
    match outcome {
        Outcome::Answered { tag, reply_to, answers } => {
            if let Some(queue) = reply_to {
                replies.send(queue, answers);
            }
            acks.upto = Some(tag);
        }
        Outcome::Failed { tag } => {
            acks.flush(channel).await;
            let options = BasicNackOptions { multiple: false, requeue: true };
            if let Err(e) = channel.basic_nack(tag, options).await {
                tracing::warn!(error = %e, "returning a failed instruction message");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_file_server::{InitOptions, Store, StoreOptions, WalSync};
    use ferry_instruction_worker::{LocalBus, LocalBusOptions, WorkerOptions};
    use ferry_protocol::{
        ChangeBus, ChangeEvent, EventSink, History, Operation, RequestId, Rights, SubscriptionId,
        Topic,
    };

    use super::*;

    /// A bus that panics on changes of `/poison/`: the worker fails whatever batch holds one.
    struct PoisonedBus(LocalBus);

    impl ChangeBus for PoisonedBus {
        fn publish(&self, event: ChangeEvent) {
            assert!(!event.path.starts_with("/poison/"), "poisoned");
            self.0.publish(event)
        }
        fn subscribe(&self, topic: Topic, sink: Arc<dyn EventSink>) -> SubscriptionId {
            self.0.subscribe(topic, sink)
        }
        fn unsubscribe(&self, id: SubscriptionId) {
            self.0.unsubscribe(id)
        }
        fn history(&self, path: &str, since_rev: u64) -> History {
            self.0.history(path, since_rev)
        }
    }

    /// Delivery `tag` of instruction `id`.
    fn job(tag: u64, id: u64, path: &str, alone: bool) -> Job {
        let instruction = Instruction {
            id,
            client_id: "c".into(),
            request_id: RequestId::from(id),
            subject: "s".into(),
            rights: Arc::new(Rights::all()),
            // No key for the poison one: every delivery applies it again (and fails again).
            key: if path.starts_with("/poison/") { String::new() } else { format!("k{id}") },
            op: Operation::Append { path: path.into(), content: "x".into() },
            received_at_us: 0,
        };
        Job { tag, reply_to: None, instructions: vec![instruction], alone }
    }

    /// Runs `apply_loop` over `jobs` (all queued before it starts, so that it batches them).
    fn outcomes(worker: &Worker, jobs: Vec<Job>) -> Vec<(u64, bool)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        jobs.into_iter().for_each(|j| tx.send(j).unwrap());
        drop(tx);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        apply_loop(worker, &rx, &done_tx, 100, &AtomicU64::new(0));
        let mut out = Vec::new();
        while let Ok(outcome) = done_rx.try_recv() {
            out.push(match outcome {
                Outcome::Answered { tag, .. } => (tag, true),
                Outcome::Failed { tag } => (tag, false),
            });
        }
        out
    }

    #[test]
    fn redelivered_messages_are_applied_alone_so_only_the_poison_one_fails_again() {
        let dir = tempfile::tempdir().unwrap();
        Store::init(dir.path(), InitOptions { partitions: 1, partition_depth: 2 }).unwrap();
        let options = StoreOptions { wal_sync: WalSync::Os, ..StoreOptions::default() };
        let store = Arc::new(Store::open(dir.path(), options).unwrap());
        let bus = Arc::new(PoisonedBus(LocalBus::new(LocalBusOptions::default())));
        let worker = Worker::new(store, bus, None, WorkerOptions::default()).unwrap();
        // First delivery: one batch, which the poison message makes panic.
        let first =
            outcomes(&worker, vec![job(1, 1, "/poison/x", false), job(2, 2, "/home/a", false)]);
        assert_eq!(first, [(1, false), (2, false)]);
        // Redelivered: each alone; the innocent one is answered (from its idempotency key).
        let again =
            outcomes(&worker, vec![job(3, 1, "/poison/x", true), job(4, 2, "/home/a", true)]);
        assert_eq!(again, [(3, false), (4, true)]);
    }
}
