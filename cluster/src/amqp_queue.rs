//! `AmqpQueue`: the ingress side of the instruction path, an [`InstructionQueue`] over
//! RabbitMQ.
//!
//! `submit` never blocks: it files the reply under the instruction's id and hands the
//! instruction to the node's publisher task. The publisher groups instructions by partition
//! and sends each group as one AMQP message, persistent, `mandatory`, with publisher confirms
//! and the node's reply queue in `reply_to`. When a group goes is [`crate::batcher`]'s rule: after
//! `linger`, or once it reaches `max_batch_bytes` or `max_batch_instructions`, and, while
//! `in_flight_per_partition` of the partition's messages await their confirms, when a confirm
//! comes (Nagle's rule; see that module for why the default leaves it off). One channel carries
//! every message, so a partition's messages reach its queue in the order the ingress received
//! them.
//!
//! A confirmed message is the worker's to answer: its answers come back on the reply queue
//! (a reply message may carry answers to several instruction messages) and are matched by
//! instruction id. A message the broker refused (`nack`: the partition queue is full) is
//! answered `busy`; one it could not route, or one whose connection failed, `unavailable`. An
//! instruction not answered within `reply_timeout` is answered `unavailable` (it may still be
//! applied; its idempotency key makes a retry safe). While the broker is unreachable, `submit`
//! refuses at once; while `in_flight_messages` are unconfirmed and a full batch waits, the
//! publisher stops taking instructions, and `submit` answers `busy` once `submit_capacity` wait.
//!
//! A `list` whose prefix spans partitions is scattered to every partition and its pages merged.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use ferry_file_server::partition::{partition_of, partition_of_prefix};
use ferry_file_server::FilePath;
use ferry_protocol::{
    Answer, AnswerBody, ErrorBody, ErrorCode, Instruction, InstructionQueue, ListEntry, Operation,
    QueueError, ReplyTo, RequestId,
};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batcher::{BatchLimits, Batcher};
use crate::codec::{decode_answers, encode_instructions};
use crate::topology::Topology;

/// How an [`AmqpQueue`] batches and waits.
#[derive(Debug, Clone)]
pub struct AmqpQueueOptions {
    /// How long an instruction waits for others of its partition when fewer than
    /// `in_flight_per_partition` of its messages await confirms (default 2 ms; see
    /// [`crate::batcher`]).
    pub linger: Duration,
    /// A batch this heavy is sent without waiting for its partition's confirms (default
    /// 64 KiB).
    pub max_batch_bytes: usize,
    /// Or one holding this many instructions (default 256).
    pub max_batch_instructions: usize,
    /// Unconfirmed messages of one partition; its next instructions wait for a confirm and
    /// then travel together (default 64, `in_flight_messages`: the linger decides; 1 with a
    /// zero linger is send-on-confirm).
    pub in_flight_per_partition: usize,
    /// Instruction messages published and not yet confirmed, over all partitions (default 64).
    pub in_flight_messages: usize,
    /// Instructions waiting for the publisher before `submit` answers `busy` (default 50,000).
    pub submit_capacity: usize,
    /// How long an instruction waits for its answer (default 10 s).
    pub reply_timeout: Duration,
}

impl Default for AmqpQueueOptions {
    fn default() -> AmqpQueueOptions {
        AmqpQueueOptions {
            linger: Duration::from_millis(2),
            max_batch_bytes: 64 << 10,
            max_batch_instructions: 256,
            in_flight_per_partition: 64,
            in_flight_messages: 64,
            submit_capacity: 50_000,
            reply_timeout: Duration::from_secs(10),
        }
    }
}

/// How the cluster's paths map to partitions (read from the data directory's manifest or
/// from Redis, where workers publish it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLayout {
    pub partitions: u32,
    pub depth: u32,
}

impl PartitionLayout {
    /// The partition that orders `op`, or `None` for a listing that spans partitions.
    pub fn route(&self, op: &Operation) -> Option<u32> {
        match op {
            Operation::List { prefix, .. } => {
                partition_of_prefix(prefix, self.depth, self.partitions)
            }
            // Not worth a message to every partition: a working set spread over partitions
            // is loaded from (and released in) the partitions partition 0's worker holds.
            Operation::WorkingSet { prefix, .. } => {
                Some(partition_of_prefix(prefix, self.depth, self.partitions).unwrap_or(0))
            }
            // An invalid path is refused by whichever worker gets it.
            op => Some(
                FilePath::parse(op.path())
                    .map_or(0, |p| partition_of(&p, self.depth, self.partitions)),
            ),
        }
    }
}

/// Counters for `ferry status` and the tests.
#[derive(Debug, Default)]
pub struct AmqpQueueStats {
    pub submitted: AtomicU64,
    pub messages_published: AtomicU64,
    pub answered: AtomicU64,
    pub refused_busy: AtomicU64,
    pub failed_unavailable: AtomicU64,
    pub timed_out: AtomicU64,
    pub late_answers: AtomicU64,
    pub connects: AtomicU64,
}

/// Why an [`AmqpQueue`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpQueueError {
    #[error("connecting to the broker at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("declaring the broker topology: {source}")]
    Declare {
        #[source]
        source: lapin::Error,
    },
}

/// Ids of the parts of a scattered listing: above every id an ingress hands out.
const SCATTER_ID_BASE: u64 = 1 << 63;

enum Waiter {
    One {
        reply: ReplyTo,
        request_id: RequestId,
    },
    /// One partition's page of a scattered listing.
    Part(Arc<Mutex<Gather>>),
}

struct PendingEntry {
    waiter: Waiter,
    deadline: Instant,
}

/// A listing scattered to every partition, merged when the last page arrives.
struct Gather {
    reply: Option<ReplyTo>,
    instruction_id: u64,
    request_id: RequestId,
    limit: usize,
    remaining: u32,
    entries: Vec<ListEntry>,
    more: bool,
    error: Option<ErrorBody>,
}

impl Gather {
    fn add(&mut self, result: Result<AnswerBody, ErrorBody>) {
        match result {
            Ok(AnswerBody::Listing { entries, next }) => {
                self.more |= next.is_some();
                self.entries.extend(entries);
            }
            Ok(other) => {
                self.error.get_or_insert(ErrorBody::new(
                    ErrorCode::Internal,
                    format!("a partition answered a listing with {other:?}"),
                ));
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self.remaining -= 1;
        if self.remaining == 0 {
            if let Some(reply) = self.reply.take() {
                reply(self.answer());
            }
        }
    }

    /// Every partition answered its first `limit` entries after `after`: the first `limit` of
    /// their union are the page, and there may be more if anything was cut.
    fn answer(&mut self) -> Answer {
        let result = match self.error.take() {
            Some(e) => Err(e),
            None => {
                let mut entries = std::mem::take(&mut self.entries);
                entries.sort_by(|a, b| a.path.cmp(&b.path));
                let cut = entries.len() > self.limit;
                entries.truncate(self.limit);
                let next = if cut || self.more {
                    entries.last().map(|e| e.path.to_string())
                } else {
                    None
                };
                Ok(AnswerBody::Listing { entries, next })
            }
        };
        Answer { instruction_id: self.instruction_id, request_id: self.request_id.clone(), result }
    }
}

/// Replies waiting for answers, by instruction id.
#[derive(Default)]
struct PendingReplies {
    map: Mutex<HashMap<u64, PendingEntry>>,
}

impl PendingReplies {
    fn insert(&self, id: u64, waiter: Waiter, deadline: Instant) {
        self.map.lock().insert(id, PendingEntry { waiter, deadline });
    }

    fn take(&self, id: u64) -> Option<Waiter> {
        self.map.lock().remove(&id).map(|e| e.waiter)
    }

    fn expired(&self, now: Instant) -> Vec<(u64, Waiter)> {
        let mut map = self.map.lock();
        let ids: Vec<u64> =
            map.iter().filter(|(_, e)| e.deadline <= now).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| map.remove(&id).map(|e| (id, e.waiter))).collect()
    }

    fn drain(&self) -> Vec<(u64, Waiter)> {
        self.map.lock().drain().map(|(id, e)| (id, e.waiter)).collect()
    }
}

fn deliver(waiter: Waiter, answer: Answer) {
    match waiter {
        Waiter::One { reply, .. } => reply(answer),
        Waiter::Part(gather) => gather.lock().add(answer.result),
    }
}

/// Answers a waiter with an error; for a scattered part, the listing fails as a whole.
fn fail(waiter: Waiter, instruction_id: u64, error: ErrorBody) {
    match waiter {
        Waiter::One { reply, request_id } => {
            reply(Answer { instruction_id, request_id, result: Err(error) })
        }
        Waiter::Part(gather) => gather.lock().add(Err(error)),
    }
}

struct Outgoing {
    partition: u32,
    instruction: Instruction,
}

struct Shared {
    topology: Topology,
    layout: PartitionLayout,
    node: String,
    options: AmqpQueueOptions,
    pending: PendingReplies,
    connected: AtomicBool,
    next_scatter_id: AtomicU64,
    stats: AmqpQueueStats,
}

impl Shared {
    fn answer_error(&self, id: u64, code: ErrorCode, message: &str) {
        if let Some(waiter) = self.pending.take(id) {
            fail(waiter, id, ErrorBody::new(code, message));
        }
    }

    fn answer(&self, answer: Answer) {
        match self.pending.take(answer.instruction_id) {
            Some(waiter) => {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
                deliver(waiter, answer);
            }
            None => {
                self.stats.late_answers.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn fail_all(&self, message: &str) {
        for (id, waiter) in self.pending.drain() {
            self.stats.failed_unavailable.fetch_add(1, Ordering::Relaxed);
            fail(waiter, id, ErrorBody::new(ErrorCode::Unavailable, message));
        }
    }
}

/// The RabbitMQ instruction queue of one ingress node. See the module documentation.
pub struct AmqpQueue {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
}

impl AmqpQueue {
    /// Starts the node's publisher, reply consumer and reconnection loop on `runtime`, and
    /// waits for the first connection (so that a wrong URL fails at start, not at the first
    /// instruction). Later connection losses are retried for as long as the queue lives.
    pub async fn start(
        url: &str,
        topology: Topology,
        layout: PartitionLayout,
        node: &str,
        options: AmqpQueueOptions,
    ) -> Result<AmqpQueue, AmqpQueueError> {
        let (tx, rx) = mpsc::channel(options.submit_capacity.max(1));
        let shared = Arc::new(Shared {
            topology,
            layout,
            node: node.to_owned(),
            options,
            pending: PendingReplies::default(),
            connected: AtomicBool::new(false),
            next_scatter_id: AtomicU64::new(SCATTER_ID_BASE),
            stats: AmqpQueueStats::default(),
        });
        let first = connect(url, &shared).await?;
        let stop = CancellationToken::new();
        tokio::spawn(run(url.to_owned(), shared.clone(), rx, first, stop.clone()));
        tokio::spawn(expire_replies(shared.clone(), stop.clone()));
        Ok(AmqpQueue { shared, tx, stop })
    }

    pub fn stats(&self) -> &AmqpQueueStats {
        &self.shared.stats
    }

    /// Whether the broker is reachable now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Instructions waiting for their answers.
    pub fn pending(&self) -> usize {
        self.shared.pending.map.lock().len()
    }

    fn enqueue(&self, outgoing: Outgoing) -> Result<(), QueueError> {
        match self.tx.try_send(outgoing) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(QueueError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(QueueError::Unavailable),
        }
    }

    fn scatter(&self, instruction: Instruction, reply: ReplyTo) -> Result<(), QueueError> {
        let Operation::List { limit, .. } = &instruction.op else {
            unreachable!("only listings are scattered")
        };
        let partitions = self.shared.layout.partitions;
        let gather = Arc::new(Mutex::new(Gather {
            reply: Some(reply),
            instruction_id: instruction.id,
            request_id: instruction.request_id.clone(),
            limit: *limit as usize,
            remaining: partitions,
            entries: Vec::new(),
            more: false,
            error: None,
        }));
        let deadline = Instant::now() + self.shared.options.reply_timeout;
        for partition in 0..partitions {
            let id = self.shared.next_scatter_id.fetch_add(1, Ordering::Relaxed);
            let mut part = instruction.clone();
            part.id = id;
            self.shared.pending.insert(id, Waiter::Part(gather.clone()), deadline);
            if let Err(e) = self.enqueue(Outgoing { partition, instruction: part }) {
                // The parts already queued answer later and find the listing failed.
                self.shared.pending.take(id);
                let mut g = gather.lock();
                g.reply = None;
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Drop for AmqpQueue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl InstructionQueue for AmqpQueue {
    /// RabbitMQ redelivers a message whose worker died before acknowledging it.
    fn may_redeliver(&self) -> bool {
        true
    }

    fn submit(&self, instruction: Instruction, reply: ReplyTo) -> Result<(), QueueError> {
        if !self.is_connected() {
            return Err(QueueError::Unavailable);
        }
        self.shared.stats.submitted.fetch_add(1, Ordering::Relaxed);
        let Some(partition) = self.shared.layout.route(&instruction.op) else {
            return self.scatter(instruction, reply);
        };
        let id = instruction.id;
        let deadline = Instant::now() + self.shared.options.reply_timeout;
        let request_id = instruction.request_id.clone();
        self.shared.pending.insert(id, Waiter::One { reply, request_id }, deadline);
        match self.enqueue(Outgoing { partition, instruction }) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Not taken: the caller answers, so the reply must not be called.
                self.shared.pending.take(id);
                Err(e)
            }
        }
    }
}

async fn connect(url: &str, shared: &Arc<Shared>) -> Result<Live, AmqpQueueError> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|source| AmqpQueueError::Connect { url: url.to_owned(), source })?;
    let declare = |source| AmqpQueueError::Declare { source };
    let channel = connection.create_channel().await.map_err(declare)?;
    shared.topology.declare(&channel).await.map_err(declare)?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(declare)?;
    let replies = connection.create_channel().await.map_err(declare)?;
    shared.topology.declare_reply_queue(&replies, &shared.node).await.map_err(declare)?;
    let consumer = replies
        .basic_consume(
            shared.topology.reply_queue(&shared.node).into(),
            format!("{}-replies", shared.node).into(),
            BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(declare)?;
    shared.stats.connects.fetch_add(1, Ordering::Relaxed);
    shared.connected.store(true, Ordering::Release);
    Ok(Live { connection, channel, consumer })
}

struct Live {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
}

/// Keeps the node connected: runs the publisher and the reply consumer on a connection until
/// it fails, then answers everything pending `unavailable` and reconnects with backoff.
async fn run(
    url: String,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Outgoing>,
    first: Live,
    stop: CancellationToken,
) {
    let mut live = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Some(conn) = live.take() {
            backoff = Duration::from_millis(50);
            let failed = CancellationToken::new();
            let replies =
                tokio::spawn(consume_replies(shared.clone(), conn.consumer, failed.clone()));
            let events =
                tokio::spawn(watch_connection(conn.connection.events_listener(), failed.clone()));
            let reason =
                publish(&shared, &mut rx, &conn.channel, failed.clone(), stop.clone()).await;
            failed.cancel();
            shared.connected.store(false, Ordering::Release);
            replies.abort();
            events.abort();
            let _ = conn.connection.close(200, "ferry ingress stopping".into()).await;
            if stop.is_cancelled() {
                shared.fail_all("the ingress is stopping");
                return;
            }
            tracing::warn!(%reason, "broker connection lost; reconnecting");
            shared.fail_all("the broker connection was lost before the answer came");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        // Whatever was submitted while down was refused by `submit`; drop stragglers.
        while let Ok(outgoing) = rx.try_recv() {
            shared.answer_error(
                outgoing.instruction.id,
                ErrorCode::Unavailable,
                "the broker is unreachable",
            );
        }
        match connect(&url, &shared).await {
            Ok(conn) => {
                tracing::info!("broker connection re-established");
                live = Some(conn);
            }
            Err(e) => {
                tracing::debug!(error = %e, "reconnecting to the broker");
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn watch_connection(
    events: impl futures_util::Stream<Item = lapin::Event> + Send + 'static,
    failed: CancellationToken,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let lapin::Event::Error(e) = event {
            tracing::warn!(error = %e, "broker connection error");
            failed.cancel();
            return;
        }
    }
}

async fn consume_replies(
    shared: Arc<Shared>,
    mut consumer: lapin::Consumer,
    failed: CancellationToken,
) {
    while let Some(delivery) = consumer.next().await {
        match delivery {
            Ok(delivery) => match decode_answers(&delivery.data) {
                Ok(answers) => answers.into_iter().for_each(|a| shared.answer(a)),
                Err(e) => tracing::error!(error = %e, "unreadable answer message"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "reply consumer failed");
                break;
            }
        }
    }
    failed.cancel();
}

/// About what an instruction weighs in its message.
fn weight(instruction: &Instruction) -> usize {
    let payload = match &instruction.op {
        Operation::Put { content, .. } | Operation::Append { content, .. } => content.len(),
        Operation::Patch { insert, .. } => insert.len(),
        _ => 0,
    };
    payload + instruction.op.path().len() + instruction.key.len() + 160
}

/// What became of one published instruction message.
struct Settled {
    partition: u32,
    ids: Vec<u64>,
    outcome: Sent,
}

enum Sent {
    Confirmed,
    /// Confirmed, but no queue took it (`mandatory`): unroutable.
    Returned,
    /// Nacked: the partition's queue is full.
    Refused,
    /// The connection failed before the confirm came.
    Unconfirmed,
    /// The channel did not take the message: it is gone.
    NotTaken(lapin::Error),
}

type InFlight = Pin<Box<dyn Future<Output = Settled> + Send>>;

/// Sends batches until the connection fails or the node stops; returns why it ended. What is
/// waiting or unconfirmed then is answered by the caller (`fail_all`).
async fn publish(
    shared: &Arc<Shared>,
    rx: &mut mpsc::Receiver<Outgoing>,
    channel: &Channel,
    failed: CancellationToken,
    stop: CancellationToken,
) -> String {
    let options = &shared.options;
    let mut batcher = Batcher::new(
        shared.topology.partitions,
        BatchLimits {
            max_bytes: options.max_batch_bytes,
            max_items: options.max_batch_instructions,
            in_flight_per_partition: options.in_flight_per_partition,
            in_flight_total: options.in_flight_messages,
            linger: options.linger,
        },
    );
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    loop {
        let now = Instant::now();
        while let Some((partition, batch)) = batcher.next_ready(now) {
            let Some(mut sending) = send(shared, channel, partition, batch) else {
                batcher.settled(partition);
                continue;
            };
            // lapin queues the frames on the first poll: polling now keeps the messages in
            // the order they were made (the order per partition) and sends them at once.
            match futures_util::poll!(&mut sending) {
                Poll::Ready(settled) => {
                    if let Err(reason) = settle(shared, &mut batcher, settled) {
                        return reason;
                    }
                }
                Poll::Pending => in_flight.push(sending),
            }
        }
        let due = batcher.next_due();
        tokio::select! {
            _ = failed.cancelled() => return "the connection failed".to_owned(),
            _ = stop.cancelled() => return "stopping".to_owned(),
            Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(reason) = settle(shared, &mut batcher, settled) {
                    return reason;
                }
            }
            received = rx.recv(), if batcher.accepting() => {
                let Some(first) = received else { return "the queue was dropped".to_owned() };
                let now = Instant::now();
                let mut next = Some(first);
                while let Some(outgoing) = next {
                    let w = weight(&outgoing.instruction);
                    batcher.push(outgoing.partition, outgoing.instruction, w, now);
                    next = if batcher.accepting() { rx.try_recv().ok() } else { None };
                }
            }
            _ = sleep_until(due), if due.is_some() => {}
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Makes one batch's message and the future of its publish and confirm, or answers the batch
/// at once (`None`) when it cannot be encoded.
fn send(
    shared: &Arc<Shared>,
    channel: &Channel,
    partition: u32,
    batch: Vec<Instruction>,
) -> Option<InFlight> {
    let ids: Vec<u64> = batch.iter().map(|i| i.id).collect();
    let body = match encode_instructions(&batch) {
        Ok(body) => body,
        Err(e) => {
            for id in ids {
                shared.answer_error(id, ErrorCode::Internal, &e.to_string());
            }
            return None;
        }
    };
    shared.stats.messages_published.fetch_add(1, Ordering::Relaxed);
    let channel = channel.clone();
    let exchange = shared.topology.exchange();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_reply_to(shared.topology.reply_queue(&shared.node).into());
    Some(Box::pin(async move {
        let published = channel
            .basic_publish(
                exchange.into(),
                Topology::routing_key(partition).into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &body,
                properties,
            )
            .await;
        let outcome = match published {
            Ok(confirm) => match confirm.await {
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Sent::Confirmed,
                Ok(Confirmation::Ack(Some(_))) => Sent::Returned,
                Ok(Confirmation::Nack(_)) => Sent::Refused,
                Err(_) => Sent::Unconfirmed,
            },
            Err(e) => Sent::NotTaken(e),
        };
        Settled { partition, ids, outcome }
    }))
}

/// Frees the message's in-flight slot and answers its instructions if the broker refused
/// them; an error means the channel is gone.
fn settle(
    shared: &Shared,
    batcher: &mut Batcher<Instruction>,
    settled: Settled,
) -> Result<(), String> {
    batcher.settled(settled.partition);
    let refusal = match settled.outcome {
        Sent::Confirmed => return Ok(()),
        Sent::Returned => (
            ErrorCode::Unavailable,
            "no partition queue took the instruction (unroutable)",
            &shared.stats.failed_unavailable,
        ),
        Sent::Refused => {
            (ErrorCode::Busy, "the partition's queue is full", &shared.stats.refused_busy)
        }
        Sent::Unconfirmed => (
            ErrorCode::Unavailable,
            "the broker connection failed before confirming",
            &shared.stats.failed_unavailable,
        ),
        Sent::NotTaken(e) => {
            for id in settled.ids {
                shared.answer_error(id, ErrorCode::Unavailable, "the broker did not take it");
            }
            return Err(format!("publishing failed: {e}"));
        }
    };
    for id in settled.ids {
        refusal.2.fetch_add(1, Ordering::Relaxed);
        shared.answer_error(id, refusal.0, refusal.1);
    }
    Ok(())
}

/// Answers `unavailable` to instructions whose answer is overdue.
async fn expire_replies(shared: Arc<Shared>, stop: CancellationToken) {
    let period = (shared.options.reply_timeout / 10)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (id, waiter) in shared.pending.expired(Instant::now()) {
            shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            let message = "no answer from the worker in time (the change may still apply: \
                           retry with the same key)";
            fail(waiter, id, ErrorBody::new(ErrorCode::Unavailable, message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> ListEntry {
        ListEntry { path: path.into(), rev: 1, size: 1, mtime_ms: 1 }
    }

    fn gather(limit: usize, parts: u32) -> (Arc<Mutex<Gather>>, Arc<Mutex<Option<Answer>>>) {
        let out = Arc::new(Mutex::new(None));
        let sink = out.clone();
        let g = Gather {
            reply: Some(Box::new(move |a| *sink.lock() = Some(a))),
            instruction_id: 5,
            request_id: RequestId::from("r"),
            limit,
            remaining: parts,
            entries: Vec::new(),
            more: false,
            error: None,
        };
        (Arc::new(Mutex::new(g)), out)
    }

    #[test]
    fn scattered_pages_merge_in_path_order_with_a_next_when_cut() {
        let (g, out) = gather(3, 2);
        g.lock()
            .add(Ok(AnswerBody::Listing { entries: vec![entry("/b"), entry("/d")], next: None }));
        assert!(out.lock().is_none());
        g.lock()
            .add(Ok(AnswerBody::Listing { entries: vec![entry("/a"), entry("/c")], next: None }));
        let answer = out.lock().take().unwrap();
        let Ok(AnswerBody::Listing { entries, next }) = answer.result else { panic!() };
        let paths: Vec<&str> = entries.iter().map(|e| &*e.path).collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert_eq!(next.as_deref(), Some("/c"));
        assert_eq!(answer.instruction_id, 5);
    }

    #[test]
    fn a_scattered_listing_fails_when_one_part_fails() {
        let (g, out) = gather(10, 2);
        g.lock().add(Err(ErrorBody::new(ErrorCode::Unavailable, "x")));
        g.lock().add(Ok(AnswerBody::Listing { entries: vec![entry("/a")], next: None }));
        let answer = out.lock().take().unwrap();
        assert_eq!(answer.result.unwrap_err().code, ErrorCode::Unavailable);
    }

    #[test]
    fn routing_pins_deep_listings_and_scatters_shallow_ones() {
        let layout = PartitionLayout { partitions: 16, depth: 2 };
        let list = |prefix: &str| Operation::List { prefix: prefix.into(), limit: 5, after: None };
        assert_eq!(layout.route(&list("/")), None);
        assert_eq!(layout.route(&list("/home/")), None);
        let put =
            Operation::Put { path: "/home/alice/x".into(), content: "1".into(), if_rev: None };
        assert_eq!(layout.route(&list("/home/alice/")), layout.route(&put));
        let release = Operation::WorkingSet { prefix: "/home/alice/".into(), load: false };
        assert_eq!(layout.route(&release), layout.route(&put));
        assert!(layout.route(&put).unwrap() < 16);
    }
}
