//! `PartitionConsumer`: the worker side of the instruction path for one partition.
//!
//! An async task consumes the partition's queue (its own channel: delivery tags are per
//! channel) and hands each message's instructions, with the partition's [`Worker`], to the
//! process's [`ApplyThread`], which applies everything waiting in rounds over all partitions
//! (several messages share group commits, several partitions one log sync). The
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
//! anything delivered but not started to the queue, ahead of later messages. It returns only
//! once the apply thread holds nothing of the partition's, its worker included.

use std::sync::Arc;

use crossbeam_channel::Sender;
use ferry_instruction_worker::Worker;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle as TaskHandle;
use tokio_util::sync::CancellationToken;

use crate::apply_thread::{ApplyThread, Job, Outcome};
use crate::codec::decode_instructions;
use crate::replies::ReplySender;
use crate::topology::Topology;

/// How a [`PartitionConsumer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Messages delivered and not yet acknowledged (default 64).
    pub prefetch: u16,
    /// Most instructions the process's [`ApplyThread`] applies in one round (default 2,048).
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
}

/// Consumes one partition's queue into a worker. See the module documentation.
pub struct PartitionConsumer {
    partition: u32,
    cancel: CancellationToken,
    task: TaskHandle<()>,
}

impl PartitionConsumer {
    /// Starts consuming `partition` on a new channel of `connection` (`prefetch` messages
    /// delivered and not yet acknowledged) into `worker` on `apply`; answers go to `replies`.
    pub async fn start(
        connection: &Connection,
        topology: &Topology,
        partition: u32,
        worker: Arc<Worker>,
        prefetch: u16,
        apply: &ApplyThread,
        replies: ReplySender,
    ) -> Result<PartitionConsumer, ConsumerError> {
        let broker = |source| ConsumerError::Broker { partition, source };
        let channel = connection.create_channel().await.map_err(broker)?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(broker)?;
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
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Outcome>();
        let cancel = CancellationToken::new();
        let feed = Feed { jobs: apply.jobs(), worker, done: done_tx };
        let task = tokio::spawn(consume(
            partition,
            channel,
            consumer,
            tag,
            feed,
            done_rx,
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

/// What a consumer hands its messages to. Dropped when the consumer stops consuming: the
/// outcomes' channel then closes once the apply thread is done with every job (each holds a
/// clone of `done`), which is how the consumer knows that nothing of its partition is left.
struct Feed {
    jobs: Sender<Job>,
    worker: Arc<Worker>,
    done: mpsc::UnboundedSender<Outcome>,
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    partition: u32,
    channel: Channel,
    mut consumer: lapin::Consumer,
    tag: String,
    feed: Feed,
    mut done: mpsc::UnboundedReceiver<Outcome>,
    replies: ReplySender,
    cancel: CancellationToken,
) {
    let mut acks = Acks::default();
    let mut feed = Some(feed);
    let mut consuming = true;
    loop {
        tokio::select! {
            _ = cancel.cancelled(), if consuming => {
                consuming = false;
                if let Err(e) = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await {
                    tracing::warn!(partition, error = %e, "cancelling the consumer");
                }
                // The outcomes end once the apply thread has applied what it holds.
                feed = None;
            }
            delivery = consumer.next(), if consuming => {
                match delivery {
                    Some(Ok(delivery)) => {
                        let tag = delivery.delivery_tag;
                        match decode_instructions(&delivery.data) {
                            Ok(instructions) => {
                                let reply_to = delivery.properties.reply_to().as_ref().map(|q| q.to_string());
                                if let Some(f) = &feed {
                                    let job = Job {
                                        worker: f.worker.clone(),
                                        done: f.done.clone(),
                                        tag,
                                        reply_to,
                                        instructions,
                                        alone: delivery.redelivered,
                                    };
                                    if f.jobs.send(job).is_err() {
                                        tracing::error!(partition, "the apply thread is gone");
                                        consuming = false;
                                        feed = None;
                                    }
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
                        feed = None;
                    }
                    None => {
                        consuming = false;
                        feed = None;
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
