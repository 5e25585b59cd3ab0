//! `WorkerNode`: one `ferry worker` process. It heartbeats into Redis, computes the partitions
//! it owns among the live workers ([`crate::assignment`]), and opens or releases partitions
//! until what it holds matches what it owns.
//!
//! Taking a partition: open its store alone (taking the partition's write lock and replaying
//! its WAL), load its idempotency ledger, then consume its queue. The lock is what makes the
//! handover safe: while the previous owner still holds it, opening fails with `Locked` and is
//! retried at the next tick, so a queue is never consumed by two processes and a store never
//! has two writers, even when two workers briefly disagree about the membership.
//!
//! Releasing a partition: stop its consumer (finish, answer and acknowledge what was given to
//! the worker; return the rest to the queue), then flush and close the store, which releases
//! the lock for the next owner. A worker killed outright releases nothing: the kernel drops its
//! locks, RabbitMQ returns its unacknowledged messages, and its lease in Redis expires after
//! `lease`, when the others take its partitions over from its WAL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_file_server::store::read_layout;
use ferry_file_server::{Store, StoreError, StoreOptions};
use ferry_instruction_worker::{Worker, WorkerOptions};
use ferry_logger::InstructionLog;
use ferry_protocol::ChangeBus;
use lapin::{Connection, ConnectionProperties};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::apply_thread::ApplyThread;
use crate::assignment::owned_by;
use crate::membership::{Membership, MembershipError, Role};
use crate::partition_consumer::{ConsumerOptions, PartitionConsumer};
use crate::replies::Replies;
use crate::topology::{QueueLimits, Topology};

/// How a [`WorkerNode`] runs.
#[derive(Clone)]
pub struct WorkerNodeOptions {
    /// Unique in the cluster (e.g. host and pid).
    pub id: String,
    pub data_dir: PathBuf,
    pub amqp_url: String,
    pub redis_url: String,
    pub namespace: String,
    /// `cache_bytes` is for the whole process: each open partition gets its share.
    pub store: StoreOptions,
    pub worker: WorkerOptions,
    pub consumer: ConsumerOptions,
    pub queue_limits: QueueLimits,
    /// How long a heartbeat keeps the worker a member (default 3 s).
    pub lease: Duration,
    /// How often the worker heartbeats and rebalances (default 250 ms).
    pub tick: Duration,
}

impl WorkerNodeOptions {
    pub fn new(id: &str, data_dir: PathBuf, amqp_url: &str, redis_url: &str) -> WorkerNodeOptions {
        WorkerNodeOptions {
            id: id.to_owned(),
            data_dir,
            amqp_url: amqp_url.to_owned(),
            redis_url: redis_url.to_owned(),
            namespace: "ferry".to_owned(),
            store: StoreOptions::default(),
            worker: WorkerOptions::default(),
            consumer: ConsumerOptions::default(),
            queue_limits: QueueLimits::default(),
            lease: Duration::from_secs(3),
            tick: Duration::from_millis(250),
        }
    }
}

/// Why a worker node stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerNodeError {
    #[error("reading the data directory's layout: {0}")]
    Layout(#[source] StoreError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("starting the apply thread: {0}")]
    ApplyThread(#[source] std::io::Error),
}

/// What a running node holds, for status and tests.
#[derive(Debug, Default)]
pub struct NodeState {
    owned: Mutex<Vec<u32>>,
    members: Mutex<Vec<String>>,
}

impl NodeState {
    /// The partitions this node consumes now.
    pub fn owned(&self) -> Vec<u32> {
        self.owned.lock().clone()
    }

    /// The live workers at the last heartbeat.
    pub fn members(&self) -> Vec<String> {
        self.members.lock().clone()
    }
}

struct Held {
    store: Arc<Store>,
    consumer: PartitionConsumer,
}

const REPLIES_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker connection and the answers' way back over it, shared by every partition.
struct Broker {
    connection: Connection,
    replies: Replies,
}

impl Broker {
    fn is_up(&self) -> bool {
        self.connection.status().connected() && !self.replies.has_failed()
    }

    /// Sends the answers handed over so far, then closes the connection. On a connection that
    /// is already gone the writes may hang for a while: their answers are lost anyway (the
    /// ingress times them out), so the wait is bounded.
    async fn close(self, why: &str) {
        if tokio::time::timeout(REPLIES_CLOSE_TIMEOUT, self.replies.close()).await.is_err() {
            tracing::warn!("the last answers were not written in time");
        }
        let _ = self.connection.close(200, why.into()).await;
    }
}

/// One worker process. See the module documentation.
pub struct WorkerNode {
    options: WorkerNodeOptions,
    bus: Arc<dyn ChangeBus>,
    log: Option<InstructionLog>,
    topology: Topology,
    membership: Membership,
    state: Arc<NodeState>,
    held: BTreeMap<u32, Held>,
    broker: Option<Broker>,
    /// Instructions applied by this process, over every partition it held.
    applied: Arc<AtomicU64>,
    /// Applies what every partition consumer receives.
    apply: ApplyThread,
}

impl WorkerNode {
    /// Connects to Redis and checks the layout; the broker is connected by [`WorkerNode::run`]
    /// (and reconnected whenever it is lost).
    pub async fn new(
        options: WorkerNodeOptions,
        bus: Arc<dyn ChangeBus>,
        log: Option<InstructionLog>,
    ) -> Result<WorkerNode, WorkerNodeError> {
        let layout = read_layout(&options.data_dir).map_err(WorkerNodeError::Layout)?;
        let membership =
            Membership::connect(&options.redis_url, &options.namespace, Role::Worker).await?;
        membership.agree_layout(layout.partitions, layout.partition_depth).await?;
        let topology = Topology::new(&options.namespace, layout.partitions, options.queue_limits);
        let applied = Arc::new(AtomicU64::new(0));
        let apply = ApplyThread::start(options.consumer.max_batch, applied.clone())
            .map_err(WorkerNodeError::ApplyThread)?;
        Ok(WorkerNode {
            options,
            bus,
            log,
            topology,
            membership,
            state: Arc::new(NodeState::default()),
            held: BTreeMap::new(),
            broker: None,
            applied,
            apply,
        })
    }

    pub fn state(&self) -> Arc<NodeState> {
        self.state.clone()
    }

    /// Runs until `shutdown`, then leaves the membership and releases every partition.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.options.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.rebalance().await;
        }
        // Leave first, so that the others start taking over while the partitions close; they
        // wait for each lock.
        if let Err(e) = self.membership.leave(&self.options.id).await {
            tracing::warn!(error = %e, "leaving the membership");
        }
        let all: Vec<u32> = self.held.keys().copied().collect();
        for p in all {
            self.release(p).await;
        }
        if let Some(broker) = self.broker.take() {
            broker.close("ferry worker stopping").await;
        }
        // Every consumer has stopped: the thread holds nothing and ends at once.
        let apply = self.apply;
        let _ = tokio::task::spawn_blocking(move || apply.stop()).await;
        tracing::info!(id = %self.options.id, "worker node stopped");
    }

    async fn rebalance(&mut self) {
        let members = match self.membership.heartbeat(&self.options.id, self.options.lease).await {
            Ok(members) => members,
            Err(e) => {
                // Without Redis the lease lapses and the others may take over: they can only
                // once the locks are free, so keep serving what is held.
                tracing::warn!(error = %e, "heartbeat failed");
                return;
            }
        };
        *self.state.members.lock() = members.clone();
        if !self.broker_ready().await {
            return;
        }
        let wanted = owned_by(&self.options.id, self.topology.partitions, &members);
        let ended: Vec<u32> =
            self.held.iter().filter(|(_, h)| h.consumer.has_ended()).map(|(p, _)| *p).collect();
        let gone: Vec<u32> = self.held.keys().filter(|p| !wanted.contains(p)).copied().collect();
        for p in ended.into_iter().chain(gone) {
            if self.held.contains_key(&p) {
                self.release(p).await;
            }
        }
        for p in wanted {
            if !self.held.contains_key(&p) {
                self.acquire(p).await;
            }
        }
        *self.state.owned.lock() = self.held.keys().copied().collect();
        let owned: Vec<String> = self.held.keys().map(u32::to_string).collect();
        let mut fields = vec![
            ("pid", std::process::id().to_string()),
            ("partitions", owned.join(",")),
            ("data_dir", self.options.data_dir.display().to_string()),
            ("applied", self.applied.load(Ordering::Relaxed).to_string()),
        ];
        if let Some(broker) = &self.broker {
            let stats = broker.replies.stats();
            fields.push(("answers", stats.answers.load(Ordering::Relaxed).to_string()));
            fields.push(("reply_messages", stats.messages.load(Ordering::Relaxed).to_string()));
        }
        if let Err(e) =
            self.membership.describe(&self.options.id, &fields, self.options.lease).await
        {
            tracing::debug!(error = %e, "describing the worker");
        }
    }

    /// Whether the broker connection is up, connecting if needed. A lost connection (or reply
    /// channel) ends every consumer; their partitions are released and taken again on the new
    /// connection.
    async fn broker_ready(&mut self) -> bool {
        if self.broker.as_ref().is_some_and(Broker::is_up) {
            return true;
        }
        if self.broker.is_some() {
            tracing::warn!("broker connection lost: releasing the partitions");
            let all: Vec<u32> = self.held.keys().copied().collect();
            for p in all {
                self.release(p).await;
            }
            *self.state.owned.lock() = Vec::new();
            if let Some(broker) = self.broker.take() {
                broker.close("reconnecting").await;
            }
        }
        let connection = match Connection::connect(
            &self.options.amqp_url,
            ConnectionProperties::default(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "connecting to the broker");
                return false;
            }
        };
        let declared = match connection.create_channel().await {
            Ok(channel) => {
                let declared = self.topology.declare(&channel).await;
                let _ = channel.close(200, "declared".into()).await;
                declared
            }
            Err(e) => Err(e),
        };
        if let Err(e) = declared {
            tracing::warn!(error = %e, "declaring the broker topology");
            return false;
        }
        match Replies::start(&connection).await {
            Ok(replies) => {
                self.broker = Some(Broker { connection, replies });
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "opening the reply channel");
                false
            }
        }
    }

    async fn acquire(&mut self, partition: u32) {
        let Some(broker) = &self.broker else { return };
        let mut store_options = self.options.store;
        store_options.cache_bytes =
            self.options.store.cache_bytes / u64::from(self.topology.partitions);
        let dir = self.options.data_dir.clone();
        let opened = tokio::task::spawn_blocking(move || {
            Store::open_partitions(&dir, &[partition], store_options)
        })
        .await;
        let store = match opened {
            Ok(Ok(store)) => Arc::new(store),
            Ok(Err(StoreError::Locked { pid, .. })) => {
                tracing::debug!(partition, pid, "partition still held by its previous owner");
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(partition, error = %e, "opening the partition");
                return;
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "opening the partition");
                return;
            }
        };
        let worker = match Worker::new(
            store.clone(),
            self.bus.clone(),
            self.log.clone(),
            self.options.worker.clone(),
        ) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                tracing::error!(partition, error = %e, "starting the partition's worker");
                close_store(store).await;
                return;
            }
        };
        match PartitionConsumer::start(
            &broker.connection,
            &self.topology,
            partition,
            worker,
            self.options.consumer.prefetch,
            &self.apply,
            broker.replies.sender(),
        )
        .await
        {
            Ok(consumer) => {
                tracing::info!(partition, "partition taken");
                self.held.insert(partition, Held { store, consumer });
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "consuming the partition");
                close_store(store).await;
            }
        }
    }

    async fn release(&mut self, partition: u32) {
        let Some(held) = self.held.remove(&partition) else { return };
        // Dropping the consumer's worker leaves the store with one owner again.
        held.consumer.stop().await;
        close_store(held.store).await;
        tracing::info!(partition, "partition released");
    }
}

async fn close_store(store: Arc<Store>) {
    let closed = tokio::task::spawn_blocking(move || match Arc::try_unwrap(store) {
        Ok(store) => store.close(),
        Err(store) => {
            tracing::error!("a partition store is still shared at release: flushing only");
            store.flush().map(drop)
        }
    })
    .await;
    match closed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "closing a partition store"),
        Err(e) => tracing::error!(error = %e, "closing a partition store"),
    }
}
