//! [`RedisChangeBus`]: the [`ChangeBus`] of a cluster, over Redis; the distributed counterpart
//! of the instruction worker's `LocalBus`, with the same semantics.
//!
//! Every key and channel starts with the bus's namespace `{ns}`:
//!
//! - `{ns}:h:{path}` is a stream holding the recent history of one file. An entry's id is
//!   `{rev}-1`, so that Redis itself keeps the entries in revision order and a history read can
//!   tell by revision whether it reaches back far enough. It is trimmed to about
//!   `history_per_file` entries and expires `history_ttl` after the file's last change.
//! - `{ns}:c:{path}` is the channel carrying the file's live events. A prefix subscription is a
//!   pattern subscription to `{ns}:c:{prefix}*`, with the prefix's glob characters escaped.
//!
//! Publishing never waits for the network: [`ChangeBus::publish`] encodes the event and hands
//! it to a bounded queue. One task drains the queue in batches, each batch one call of a Lua
//! script that records every event in its stream, refreshes the stream's expiry and publishes
//! it, atomically and in queue order. While a batch is on the wire the next one accumulates, so
//! batches grow with the load. If Redis is unreachable the task retries (with backoff) the
//! same batch, events queue up to `publish_queue` and the ones beyond are dropped and counted.
//!
//! All subscriptions share one RESP3 connection per bus. [`ChangeBus::subscribe`] returns once
//! Redis confirmed the subscription, so that an event published after it returns is seen live
//! or in the history the caller reads next. When that connection breaks, the bus reconnects,
//! subscribes again and, for each file topic, delivers the events it missed from the history;
//! the sinks of a topic it cannot replay for (prefix topics, or a history that no longer
//! reaches back) are told with [`EventSink::lost`].
//!
//! Sinks are called on that connection's task, in the order Redis sent the messages (per file,
//! revision order). A file topic is delivered each revision once: an event at or below the last
//! revision delivered on the topic (a replayed event arriving live too) is dropped, as the
//! ingress's watches would drop it. A sink must not subscribe: that waits for the very task
//! calling it.
//!
//! [`ChangeBus::subscribe`], [`ChangeBus::history`] and [`RedisChangeBus::connect`] block the
//! calling thread on Redis (bounded by `request_timeout`): call them off the async threads.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{ChangeBus, ChangeEvent, EventSink, History, SubscriptionId, Topic};
use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, RetryMethod, Script, Value,
};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::codec::{decode_event, encode_event, CodecError};

/// How a [`RedisChangeBus`] keeps history and how long it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisBusOptions {
    /// Revisions kept per file, approximately: Redis trims whole blocks of a stream, so a
    /// stream may hold up to about a hundred more (default 1,000).
    pub history_per_file: usize,
    /// How long a file's history outlives its last change (default one day; whole seconds).
    pub history_ttl: Duration,
    /// Events waiting to be sent to Redis, at most (default 100,000). Publishing never blocks:
    /// beyond this (Redis down or too slow) events are dropped, counted and logged.
    pub publish_queue: usize,
    /// How long a blocking call waits for Redis: connecting, a subscription's confirmation, a
    /// history read (default 5 s).
    pub request_timeout: Duration,
}

impl Default for RedisBusOptions {
    fn default() -> RedisBusOptions {
        RedisBusOptions {
            history_per_file: 1000,
            history_ttl: Duration::from_secs(24 * 3600),
            publish_queue: 100_000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a [`RedisChangeBus`] could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    #[error("invalid change bus namespace {namespace:?}: {reason}")]
    InvalidNamespace { namespace: String, reason: &'static str },
    #[error("invalid change bus option {option}: {reason}")]
    InvalidOption { option: &'static str, reason: &'static str },
    #[error("invalid redis url for the change bus")]
    InvalidUrl(#[source] RedisError),
    #[error("connecting the change bus to redis at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: RedisError,
    },
    #[error("connecting the change bus to redis at {addr} took longer than {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
}

/// Events per script call, at most: large enough for throughput, small enough that one call
/// does not hold Redis for long.
const MAX_BATCH: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often the subscription connection is pinged: a connection that died without closing
/// (a network partition) would otherwise stay silent forever.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Attempts at a batch that Redis rejects for a reason a retry will not cure.
const ATTEMPTS_ON_PERMANENT_ERROR: u32 = 3;
/// The history stream's field holding an event's body.
const BODY_FIELD: &str = "e";

/// Records and publishes a batch of events, atomically and in order.
///
/// `KEYS[i]` is the history stream of the i-th event; `ARGV` is the entries to keep per
/// stream, the expiry in seconds, then channel, entry id and body of each event. An id that
/// is not past the stream's last one means either that this batch is sent again after its
/// reply was lost (the very same entry is there: skip it, it was published already) or that
/// the store restarted from older data (start the stream over).
const RECORD_AND_PUBLISH: &str = r"
local maxlen, ttl = ARGV[1], ARGV[2]
for i, key in ipairs(KEYS) do
  local channel, id, body = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local added = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, id, 'e', body)
  local fresh = true
  if type(added) == 'table' and added.err then
    local same = redis.pcall('XRANGE', key, id, id)
    if type(same) == 'table' and #same == 1 and same[1][2][2] == body then
      fresh = false
    else
      redis.call('DEL', key)
      redis.call('XADD', key, 'MAXLEN', '~', maxlen, id, 'e', body)
    end
  end
  if fresh then
    redis.call('EXPIRE', key, ttl)
    redis.call('PUBLISH', channel, body)
  end
end
return #KEYS
";

/// The change bus over Redis. See the module documentation.
pub struct RedisChangeBus {
    shared: Arc<Shared>,
    publish_queue: mpsc::Sender<Outgoing>,
    control: mpsc::UnboundedSender<Control>,
    commands: ConnectionManager,
    runtime: Handle,
    next_id: AtomicU64,
    /// Stops the bus's tasks when the bus is dropped.
    cancel: CancellationToken,
}

/// What the bus's callers and tasks share.
struct Shared {
    names: Names,
    options: RedisBusOptions,
    registry: RwLock<Registry>,
    published: AtomicU64,
    /// Events taken into the publish queue, and those the publisher is done with (sent or
    /// dropped): equal when nothing waits to go to Redis.
    accepted: AtomicU64,
    settled: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

/// One event on its way to Redis, named by the publishing thread so that the one task sending
/// to Redis has less to do.
struct Outgoing {
    stream_key: String,
    channel: String,
    stream_id: String,
    body: Vec<u8>,
}

/// Asks the subscription task to make Redis's subscriptions match the registry, and to say so
/// on the sender once they do.
struct Control {
    ack: Option<crossbeam_channel::Sender<()>>,
}

type Sinks = Arc<Vec<(SubscriptionId, Arc<dyn EventSink>)>>;

#[derive(Default)]
struct TopicSinks {
    /// Replaced, not mutated, so that delivery can take them out of the lock cheaply.
    sinks: Sinks,
    /// A subscriber gave up waiting for Redis's confirmation: once it comes, the topic's sinks
    /// are told they may have missed events.
    lost_pending: bool,
}

/// The bus's subscriptions, as its callers made them.
#[derive(Default)]
struct Registry {
    by_path: HashMap<String, TopicSinks>,
    by_prefix: HashMap<String, TopicSinks>,
    topics: HashMap<SubscriptionId, Topic>,
}

impl Registry {
    fn entry_mut(&mut self, topic: &Topic) -> Option<&mut TopicSinks> {
        match topic {
            Topic::Path(path) => self.by_path.get_mut(path),
            Topic::Prefix(prefix) => self.by_prefix.get_mut(prefix),
        }
    }

    fn sinks(&self, topic: &Topic) -> Option<Sinks> {
        let entry = match topic {
            Topic::Path(path) => self.by_path.get(path),
            Topic::Prefix(prefix) => self.by_prefix.get(prefix),
        };
        entry.map(|entry| entry.sinks.clone())
    }

    fn add(&mut self, id: SubscriptionId, topic: Topic, sink: Arc<dyn EventSink>) {
        let entry = match &topic {
            Topic::Path(path) => self.by_path.entry(path.clone()).or_default(),
            Topic::Prefix(prefix) => self.by_prefix.entry(prefix.clone()).or_default(),
        };
        let mut sinks = Vec::clone(&entry.sinks);
        sinks.push((id, sink));
        entry.sinks = Arc::new(sinks);
        self.topics.insert(id, topic);
    }

    /// Removes a subscription; returns whether it was its topic's last.
    fn remove(&mut self, id: SubscriptionId) -> bool {
        let Some(topic) = self.topics.remove(&id) else { return false };
        let (map, key) = match &topic {
            Topic::Path(path) => (&mut self.by_path, path),
            Topic::Prefix(prefix) => (&mut self.by_prefix, prefix),
        };
        let Some(entry) = map.get_mut(key) else { return false };
        let sinks: Vec<_> = entry.sinks.iter().filter(|(sid, _)| *sid != id).cloned().collect();
        if sinks.is_empty() {
            map.remove(key);
            true
        } else {
            entry.sinks = Arc::new(sinks);
            false
        }
    }

    fn topics(&self) -> HashSet<Topic> {
        let paths = self.by_path.keys().map(|path| Topic::Path(path.clone()));
        paths.chain(self.by_prefix.keys().map(|prefix| Topic::Prefix(prefix.clone()))).collect()
    }
}

impl RedisChangeBus {
    /// Connects to Redis at `url` (e.g. `redis://127.0.0.1:6379`) and starts the bus's tasks
    /// on `runtime`. `namespace` (e.g. `ferry`) prefixes every key and channel, so that
    /// clusters and tests can share one Redis. Blocks until connected: call it off the async
    /// threads.
    pub fn connect(
        url: &str,
        namespace: &str,
        options: RedisBusOptions,
        runtime: Handle,
    ) -> Result<RedisChangeBus, BusError> {
        check_namespace(namespace)?;
        check_options(&options)?;
        let info = url.into_connection_info().map_err(BusError::InvalidUrl)?;
        let addr = info.addr().to_string();
        let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.clone()).map_err(BusError::InvalidUrl)?;
        let pubsub_client =
            Client::open(info.set_redis_settings(resp3)).map_err(BusError::InvalidUrl)?;

        let names = Names::new(namespace);
        let pubsub_name = names.pubsub_client_name();
        let timeout = options.request_timeout;
        let config = ConnectionManagerConfig::new()
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MAX)
            .set_number_of_retries(1)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let connecting = {
            let pubsub_client = pubsub_client.clone();
            async move {
                let commands = ConnectionManager::new_with_config(client, config).await?;
                let pubsub = open_pubsub(&pubsub_client, &pubsub_name, timeout).await?;
                Ok::<_, RedisError>((commands, pubsub))
            }
        };
        let (commands, pubsub) = block_on_with_timeout(&runtime, timeout, connecting)
            .ok_or_else(|| BusError::ConnectTimeout { addr: addr.clone(), timeout })?
            .map_err(|source| BusError::Connect { addr, source })?;

        let shared = Arc::new(Shared {
            names,
            options,
            registry: RwLock::new(Registry::default()),
            published: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        let (publish_tx, publish_rx) = mpsc::channel(options.publish_queue);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        runtime.spawn(run_publisher(shared.clone(), commands.clone(), publish_rx, cancel.clone()));
        let subscriptions = SubscriptionTask {
            shared: shared.clone(),
            client: pubsub_client,
            commands: commands.clone(),
            control: control_rx,
            cancel: cancel.clone(),
            confirmed: HashSet::new(),
            last_rev: HashMap::new(),
            acks: Vec::new(),
        };
        runtime.spawn(subscriptions.run(pubsub));
        Ok(RedisChangeBus {
            shared,
            publish_queue: publish_tx,
            control: control_tx,
            commands,
            runtime,
            next_id: AtomicU64::new(1),
            cancel,
        })
    }

    /// Events Redis recorded and published.
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// Waits (blocking: call it off the async threads) until every event published so far
    /// went to Redis or was dropped, at most `timeout`; whether it got there. A worker calls it
    /// before it exits, so that the last changes it acknowledged reach their watchers.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let target = self.shared.accepted.load(Ordering::Acquire);
        while self.shared.settled.load(Ordering::Acquire) < target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Events handed to sinks (one per sink).
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Events that never reached Redis: the publish queue was full, or Redis refused them.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Times the subscription connection was lost and made again.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Events waiting to be sent to Redis.
    pub fn publish_backlog(&self) -> usize {
        self.publish_queue.max_capacity() - self.publish_queue.capacity()
    }

    /// Active subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.shared.registry.read().topics.len()
    }

    /// The name the bus gives its subscription connection (`CLIENT SETNAME`), to find it in
    /// `CLIENT LIST`.
    pub fn pubsub_client_name(&self) -> String {
        self.shared.names.pubsub_client_name()
    }

    fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        block_on_with_timeout(&self.runtime, self.shared.options.request_timeout, future)
    }
}

impl Drop for RedisChangeBus {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl ChangeBus for RedisChangeBus {
    fn publish(&self, event: ChangeEvent) {
        let body = match encode_event(&event) {
            Ok(body) => body,
            Err(err) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                error!(path = %event.path, rev = event.rev, error = %err, "dropping a change event that cannot be encoded");
                return;
            }
        };
        let names = &self.shared.names;
        let outgoing = Outgoing {
            stream_key: names.stream_key(&event.path),
            channel: names.channel(&event.path),
            stream_id: stream_id(event.rev),
            body,
        };
        match self.publish_queue.try_send(outgoing) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per thousand drops: a full queue drops events by the thousand.
                if dropped % 1000 == 1 {
                    let why = match err {
                        mpsc::error::TrySendError::Full(_) => "the publish queue is full",
                        mpsc::error::TrySendError::Closed(_) => "the bus is shut down",
                    };
                    warn!(dropped_total = dropped, "dropping change events: {why}");
                }
            }
        }
    }

    fn subscribe(&self, topic: Topic, sink: Arc<dyn EventSink>) -> SubscriptionId {
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.shared.registry.write().add(id, topic.clone(), sink);
        let (ack, acked) = crossbeam_channel::bounded(1);
        let confirmed = self.control.send(Control { ack: Some(ack) }).is_ok()
            && acked.recv_timeout(self.shared.options.request_timeout).is_ok();
        if !confirmed {
            warn!(?topic, "redis did not confirm a change bus subscription in time; its events until then may be missed");
            if let Some(entry) = self.shared.registry.write().entry_mut(&topic) {
                entry.lost_pending = true;
            }
        }
        id
    }

    fn unsubscribe(&self, id: SubscriptionId) {
        if self.shared.registry.write().remove(id) {
            // Nobody waits for Redis to confirm: events still arriving find no sink.
            let _ = self.control.send(Control { ack: None });
        }
    }

    fn history(&self, path: &str, since_rev: u64) -> History {
        let key = self.shared.names.stream_key(path);
        let mut commands = self.commands.clone();
        let read = self.block_on(async move { read_history(&mut commands, &key, since_rev).await });
        match read {
            Some(Ok(history)) => history,
            Some(Err(err)) => {
                warn!(path, since_rev, error = %err, "reading a file's change history from redis failed");
                History::Gap { current_rev: None }
            }
            None => {
                warn!(path, since_rev, "reading a file's change history from redis timed out");
                History::Gap { current_rev: None }
            }
        }
    }
}

/// Runs `future` on `runtime` and waits for it on this thread, at most `timeout`.
fn block_on_with_timeout<T: Send + 'static>(
    runtime: &Handle,
    timeout: Duration,
    future: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let task = runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    let result = rx.recv_timeout(timeout).ok();
    if result.is_none() {
        task.abort();
    }
    result
}

fn check_namespace(namespace: &str) -> Result<(), BusError> {
    let reason = if namespace.is_empty() {
        "it is empty"
    } else if namespace.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it contains whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(BusError::InvalidNamespace { namespace: namespace.to_owned(), reason })
}

fn check_options(options: &RedisBusOptions) -> Result<(), BusError> {
    let invalid = |option, reason| Err(BusError::InvalidOption { option, reason });
    if options.history_per_file == 0 {
        return invalid("history_per_file", "must be at least 1");
    }
    if options.history_ttl < Duration::from_secs(1) {
        return invalid("history_ttl", "must be at least one second");
    }
    if options.publish_queue == 0 {
        return invalid("publish_queue", "must be at least 1");
    }
    if options.request_timeout.is_zero() {
        return invalid("request_timeout", "must not be zero");
    }
    Ok(())
}

/// The next delay of a backoff doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
fn next_backoff(delay: Duration) -> Duration {
    (delay * 2).min(BACKOFF_MAX)
}

/// Sends the publish queue to Redis in order, a batch at a time, until the bus is dropped.
async fn run_publisher(
    shared: Arc<Shared>,
    mut redis: ConnectionManager,
    mut queue: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
) {
    let script = Script::new(RECORD_AND_PUBLISH);
    let ttl_s = shared.options.history_ttl.as_secs();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut call = script.prepare_invoke();
        call.arg(shared.options.history_per_file).arg(ttl_s);
        for event in &batch {
            call.key(&event.stream_key);
            call.arg(&event.channel).arg(&event.stream_id).arg(&event.body[..]);
        }
        let mut failures = 0;
        let mut delay = BACKOFF_MIN;
        loop {
            let err = match call.invoke_async::<usize>(&mut redis).await {
                Ok(_) => {
                    shared.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    shared.settled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if failures > 0 {
                        info!(failures, "publishing change events to redis again");
                    }
                    break;
                }
                Err(err) => err,
            };
            failures += 1;
            let permanent = matches!(err.retry_method(), RetryMethod::NoRetry);
            if permanent && failures >= ATTEMPTS_ON_PERMANENT_ERROR {
                shared.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                shared.settled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                error!(events = batch.len(), error = %err, "redis refuses a batch of change events; dropping it");
                break;
            }
            if failures == 1 {
                warn!(error = %err, backlog = queue.len() + batch.len(), "publishing change events to redis failed; retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => {
                    let lost = batch.len() + queue.len();
                    shared.dropped.fetch_add(lost as u64, Ordering::Relaxed);
                    shared.settled.fetch_add(lost as u64, Ordering::Relaxed);
                    warn!(events = lost, "change bus closed while redis was unreachable; its unsent events are dropped");
                    return;
                }
            }
            delay = next_backoff(delay);
        }
        batch.clear();
    }
}

/// Opens the bus's subscription connection: RESP3, so that pushes and replies share it, and
/// named, so that an operator can tell it apart.
async fn open_pubsub(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<PubSubConnection, RedisError> {
    let (pushes_tx, pushes) = mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(pushes_tx);
    let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
    redis::cmd("CLIENT").arg("SETNAME").arg(name).exec_async(&mut connection).await?;
    Ok(PubSubConnection { connection, pushes })
}

struct PubSubConnection {
    connection: MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

/// Owns the subscription connection: keeps Redis's subscriptions equal to the registry's
/// topics, delivers messages to sinks, and reconnects.
struct SubscriptionTask {
    shared: Arc<Shared>,
    client: Client,
    commands: ConnectionManager,
    control: mpsc::UnboundedReceiver<Control>,
    cancel: CancellationToken,
    /// Topics Redis confirmed on the current connection.
    confirmed: HashSet<Topic>,
    /// Per file topic, the last revision delivered or, before the first, the history's latest
    /// when the topic was subscribed: where a replay after a reconnect starts.
    last_rev: HashMap<String, u64>,
    /// Subscribers waiting for the next successful reconciliation.
    acks: Vec<crossbeam_channel::Sender<()>>,
}

/// Why the subscription connection must be made again.
struct Disconnected;

impl SubscriptionTask {
    async fn run(mut self, first: PubSubConnection) {
        let mut pubsub = first;
        loop {
            if self.serve(&mut pubsub).await.is_ok() {
                return;
            }
            warn!("lost the change bus's redis subscription connection; reconnecting");
            match self.reconnect().await {
                Some(again) => pubsub = again,
                None => return,
            }
        }
    }

    /// Serves one connection: `Ok` when the bus is dropped, `Err` when the connection broke.
    /// Subscription changes go before events: a flood of events would otherwise keep every
    /// new watcher's subscribe waiting (each change is one short round trip, and all queued
    /// changes share it).
    async fn serve(&mut self, pubsub: &mut PubSubConnection) -> Result<(), Disconnected> {
        let start = tokio::time::Instant::now() + HEALTH_CHECK_EVERY;
        let mut health_check = tokio::time::interval_at(start, HEALTH_CHECK_EVERY);
        health_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Ok(()),
                _ = health_check.tick() => {
                    let ping = redis::cmd("PING").exec_async(&mut pubsub.connection).await;
                    if let Err(err) = ping {
                        warn!(error = %err, "the change bus's redis subscription connection does not answer");
                        return Err(Disconnected);
                    }
                }
                control = self.control.recv() => {
                    let Some(control) = control else { return Ok(()) };
                    self.acks.extend(control.ack);
                    // Requests that queued meanwhile are answered by the same reconciliation.
                    while let Ok(control) = self.control.try_recv() {
                        self.acks.extend(control.ack);
                    }
                    if let Err(err) = self.reconcile(&mut pubsub.connection).await {
                        warn!(error = %err, "updating the change bus's redis subscriptions failed");
                        return Err(Disconnected);
                    }
                    for ack in self.acks.drain(..) {
                        let _ = ack.send(());
                    }
                }
                push = pubsub.pushes.recv() => match push {
                    Some(push) if push.kind != PushKind::Disconnection => self.on_push(push),
                    _ => return Err(Disconnected),
                },
            }
        }
    }

    /// Makes a new connection (with backoff), subscribes every topic again and replays what
    /// the topics missed. `None` when the bus was dropped meanwhile.
    async fn reconnect(&mut self) -> Option<PubSubConnection> {
        let missed: Vec<(Topic, Option<u64>)> = self
            .confirmed
            .drain()
            .map(|topic| {
                let since = match &topic {
                    Topic::Path(path) => self.last_rev.get(path).copied(),
                    Topic::Prefix(_) => None,
                };
                (topic, since)
            })
            .collect();
        let name = self.shared.names.pubsub_client_name();
        let timeout = self.shared.options.request_timeout;
        let mut delay = BACKOFF_MIN;
        let mut attempts = 0u64;
        let pubsub = loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => return None,
            }
            delay = next_backoff(delay);
            attempts += 1;
            let attempt = async {
                let mut pubsub = open_pubsub(&self.client, &name, timeout).await?;
                self.reconcile(&mut pubsub.connection).await?;
                Ok::<_, RedisError>(pubsub)
            };
            match attempt.await {
                Ok(pubsub) => break pubsub,
                Err(err) => {
                    self.confirmed.clear();
                    // Once in a while, not at every attempt: Redis may be down for long.
                    if attempts % 50 == 1 {
                        warn!(attempts, error = %err, "reconnecting the change bus's subscriptions failed; retrying");
                    }
                }
            }
        };
        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        // Replayed before any message of the new connection: those come after, in order.
        let replayed = self.replay(missed).await;
        info!(replayed, "change bus subscriptions restored");
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
        // A break during the replay shows as a disconnection push, handled by `serve`.
        Some(pubsub)
    }

    /// Delivers the events each topic missed while disconnected, or tells its sinks they lost
    /// some. Returns the events replayed.
    async fn replay(&mut self, missed: Vec<(Topic, Option<u64>)>) -> usize {
        let mut replayed = 0;
        for (topic, since) in missed {
            let Some(sinks) = self.shared.registry.read().sinks(&topic) else { continue };
            let history = match (&topic, since) {
                (Topic::Path(path), Some(since)) => {
                    let key = self.shared.names.stream_key(path);
                    match read_history(&mut self.commands, &key, since).await {
                        Ok(history) => Some(history),
                        Err(err) => {
                            warn!(path, error = %err, "reading a file's change history to replay it failed");
                            None
                        }
                    }
                }
                _ => None,
            };
            match (history, since) {
                (Some(History::Events(events)), _) => {
                    let Topic::Path(path) = &topic else { continue };
                    for event in events {
                        replayed += usize::from(self.deliver_to_path(path, event));
                    }
                }
                // No history and nothing ever seen: nothing happened to the file.
                (Some(History::Gap { current_rev: None }), Some(0)) => {}
                _ => {
                    debug!(?topic, "the change bus cannot replay a topic's missed events");
                    for (_, sink) in sinks.iter() {
                        sink.lost();
                    }
                }
            }
        }
        replayed
    }

    /// Subscribes to the registry's new topics and unsubscribes from the ones it dropped.
    async fn reconcile(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), RedisError> {
        let wanted = self.shared.registry.read().topics();
        let names = &self.shared.names;
        let gone: Vec<Topic> = self.confirmed.difference(&wanted).cloned().collect();
        let (channels, patterns) = names.subscription_names(&gone);
        if !channels.is_empty() {
            connection.unsubscribe(&channels).await?;
        }
        if !patterns.is_empty() {
            connection.punsubscribe(&patterns).await?;
        }
        for topic in &gone {
            self.confirmed.remove(topic);
        }
        self.last_rev.retain(|path, _| wanted.contains(&Topic::Path(path.clone())));

        let new: Vec<Topic> = wanted.difference(&self.confirmed).cloned().collect();
        let (channels, patterns) = names.subscription_names(&new);
        if !channels.is_empty() {
            connection.subscribe(&channels).await?;
        }
        if !patterns.is_empty() {
            connection.psubscribe(&patterns).await?;
        }
        let unknown: Vec<String> = new
            .iter()
            .filter_map(|topic| match topic {
                Topic::Path(path) if !self.last_rev.contains_key(path) => Some(path.clone()),
                _ => None,
            })
            .collect();
        self.confirmed.extend(new);
        if !unknown.is_empty() {
            // Without it a reconnect before the topic's first event reports `lost`, nothing
            // worse: a warning is enough.
            match latest_revisions(&mut self.commands, names, &unknown).await {
                Ok(latest) => self.last_rev.extend(unknown.into_iter().zip(latest)),
                Err(err) => {
                    warn!(error = %err, "reading the latest revisions of new change bus topics failed")
                }
            }
        }
        self.report_pending_losses();
        Ok(())
    }

    /// Tells the sinks of confirmed topics whose subscriber gave up waiting that they may have
    /// missed events.
    fn report_pending_losses(&self) {
        let mut lost = Vec::new();
        {
            let mut registry = self.shared.registry.write();
            let Registry { by_path, by_prefix, .. } = &mut *registry;
            let entries = by_path.values_mut().chain(by_prefix.values_mut());
            for entry in entries.filter(|entry| entry.lost_pending) {
                entry.lost_pending = false;
                lost.push(entry.sinks.clone());
            }
        }
        for (_, sink) in lost.iter().flat_map(|sinks| sinks.iter()) {
            sink.lost();
        }
    }

    fn on_push(&mut self, push: PushInfo) {
        let names = &self.shared.names;
        match (push.kind, push.data.as_slice()) {
            (PushKind::Message, [channel, body]) => {
                let (Some(channel), Some(body)) = (as_str(channel), as_bytes(body)) else { return };
                let Some(path) = names.path_of_channel(channel) else { return };
                if let Some(event) = decode_message(channel, body) {
                    self.deliver_to_path(path, event);
                }
            }
            (PushKind::PMessage, [pattern, channel, body]) => {
                let (Some(pattern), Some(channel), Some(body)) =
                    (as_str(pattern), as_str(channel), as_bytes(body))
                else {
                    return;
                };
                let Some(prefix) = names.prefix_of_pattern(pattern) else { return };
                let Some(sinks) = self.shared.registry.read().sinks(&Topic::Prefix(prefix)) else {
                    return;
                };
                if let Some(event) = decode_message(channel, body) {
                    self.deliver(&sinks, &event);
                }
            }
            _ => {}
        }
    }

    /// Delivers an event of a file topic unless it was delivered already (a replayed event
    /// also arriving live). Returns whether it was delivered.
    fn deliver_to_path(&mut self, path: &str, event: Arc<ChangeEvent>) -> bool {
        let Some(sinks) = self.shared.registry.read().sinks(&Topic::Path(path.to_owned())) else {
            return false;
        };
        match self.last_rev.get_mut(path) {
            Some(last) if event.rev <= *last => return false,
            Some(last) => *last = event.rev,
            None => {
                self.last_rev.insert(path.to_owned(), event.rev);
            }
        }
        self.deliver(&sinks, &event);
        true
    }

    fn deliver(&self, sinks: &Sinks, event: &Arc<ChangeEvent>) {
        for (_, sink) in sinks.iter() {
            sink.deliver(event);
        }
        self.shared.delivered.fetch_add(sinks.len() as u64, Ordering::Relaxed);
    }
}

fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

fn as_str(value: &Value) -> Option<&str> {
    as_bytes(value).and_then(|bytes| std::str::from_utf8(bytes).ok())
}

fn decode_message(channel: &str, body: &[u8]) -> Option<Arc<ChangeEvent>> {
    match decode_event(body) {
        Ok(event) => Some(Arc::new(event)),
        Err(err) => {
            warn!(channel, error = %err, "ignoring an unreadable change event from redis");
            None
        }
    }
}

/// Why a file's history could not be read.
#[derive(Debug, thiserror::Error)]
enum HistoryError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("history entry {id} of {key} has no readable revision or body")]
    BadEntry { key: String, id: String },
    #[error("history entry {id} of {key}: {source}")]
    Decode {
        key: String,
        id: String,
        #[source]
        source: CodecError,
    },
}

/// A stream's entries as XRANGE returns them: id, then field-value pairs flattened.
type StreamEntries = Vec<(String, Vec<Vec<u8>>)>;

/// Reads, atomically, the stream's first and last entries and the entries after `since_rev`.
async fn read_history(
    redis: &mut ConnectionManager,
    key: &str,
    since_rev: u64,
) -> Result<History, HistoryError> {
    let start = format!("{}-0", since_rev.saturating_add(1));
    let (first, last, after): (StreamEntries, StreamEntries, StreamEntries) = redis::pipe()
        .atomic()
        .cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .cmd("XRANGE")
        .arg(key)
        .arg(start)
        .arg("+")
        .query_async(redis)
        .await?;
    let revision = |entries: &StreamEntries| -> Result<Option<u64>, HistoryError> {
        entries
            .first()
            .map(|(id, _)| {
                rev_of_stream_id(id)
                    .ok_or_else(|| HistoryError::BadEntry { key: key.to_owned(), id: id.clone() })
            })
            .transpose()
    };
    let (first, last) = (revision(&first)?, revision(&last)?);
    let events = after
        .iter()
        .map(|(id, fields)| {
            let bad = || HistoryError::BadEntry { key: key.to_owned(), id: id.clone() };
            let body = entry_body(fields).ok_or_else(bad)?;
            let event = decode_event(body).map_err(|source| HistoryError::Decode {
                key: key.to_owned(),
                id: id.clone(),
                source,
            })?;
            Ok(Arc::new(event))
        })
        .collect::<Result<Vec<_>, HistoryError>>()?;
    Ok(history_from_stream(since_rev, first, last, events))
}

/// The latest revision in each path's history, 0 for none.
async fn latest_revisions(
    redis: &mut ConnectionManager,
    names: &Names,
    paths: &[String],
) -> Result<Vec<u64>, RedisError> {
    let mut pipe = redis::pipe();
    for path in paths {
        pipe.cmd("XREVRANGE").arg(names.stream_key(path)).arg("+").arg("-").arg("COUNT").arg(1);
    }
    let latest: Vec<StreamEntries> = pipe.query_async(redis).await?;
    Ok(latest
        .iter()
        .map(|entries| entries.first().and_then(|(id, _)| rev_of_stream_id(id)).unwrap_or(0))
        .collect())
}

fn entry_body(fields: &[Vec<u8>]) -> Option<&[u8]> {
    fields
        .chunks_exact(2)
        .find(|pair| pair[0] == BODY_FIELD.as_bytes())
        .map(|pair| pair[1].as_slice())
}

/// What a history read answers, given the revisions of the stream's first and last entries
/// (`None`: no stream) and its events after `since_rev`, in order.
fn history_from_stream(
    since_rev: u64,
    first: Option<u64>,
    last: Option<u64>,
    after: Vec<Arc<ChangeEvent>>,
) -> History {
    let (Some(first), Some(last)) = (first, last) else {
        return History::Gap { current_rev: None };
    };
    if since_rev > last || first > since_rev.saturating_add(1) {
        return History::Gap { current_rev: Some(last) };
    }
    History::Events(after.into_iter().filter(|event| event.rev > since_rev).collect())
}

/// A history entry's id: its revision, and a sequence number Redis wants above 0.
fn stream_id(rev: u64) -> String {
    format!("{rev}-1")
}

fn rev_of_stream_id(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// Escapes the characters Redis's glob patterns treat specially.
pub(crate) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The inverse of [`glob_escape`]; `None` for a pattern it cannot have made.
fn glob_unescape(pattern: &str) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '*' | '?' | '[' | ']' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The Redis names of one namespace.
#[derive(Debug, Clone)]
struct Names {
    namespace: String,
    channel_prefix: String,
    pattern_prefix: String,
}

impl Names {
    fn new(namespace: &str) -> Names {
        let channel_prefix = format!("{namespace}:c:");
        let pattern_prefix = glob_escape(&channel_prefix);
        Names { namespace: namespace.to_owned(), channel_prefix, pattern_prefix }
    }

    fn stream_key(&self, path: &str) -> String {
        format!("{}:h:{path}", self.namespace)
    }

    fn channel(&self, path: &str) -> String {
        format!("{}{path}", self.channel_prefix)
    }

    fn pattern(&self, prefix: &str) -> String {
        format!("{}{}*", self.pattern_prefix, glob_escape(prefix))
    }

    fn pubsub_client_name(&self) -> String {
        format!("ferry-bus:{}:pubsub", self.namespace)
    }

    /// The file a message's channel belongs to.
    fn path_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.channel_prefix.as_str())
    }

    /// The prefix topic a pattern message was sent for.
    fn prefix_of_pattern(&self, pattern: &str) -> Option<String> {
        glob_unescape(pattern.strip_prefix(self.pattern_prefix.as_str())?.strip_suffix('*')?)
    }

    /// The channels and patterns of `topics`.
    fn subscription_names(&self, topics: &[Topic]) -> (Vec<String>, Vec<String>) {
        let mut channels = Vec::new();
        let mut patterns = Vec::new();
        for topic in topics {
            match topic {
                Topic::Path(path) => channels.push(self.channel(path)),
                Topic::Prefix(prefix) => patterns.push(self.pattern(prefix)),
            }
        }
        (channels, patterns)
    }
}

#[cfg(test)]
mod tests {
    use ferry_protocol::ChangeOp;

    use super::*;

    fn event(rev: u64) -> Arc<ChangeEvent> {
        Arc::new(ChangeEvent {
            path: "/a".into(),
            rev,
            change: ChangeOp::Delete,
            author: "bob".into(),
            ts_ms: 1,
            partition: 0,
        })
    }

    fn revs(history: &History) -> Option<Vec<u64>> {
        match history {
            History::Events(events) => Some(events.iter().map(|e| e.rev).collect()),
            History::Gap { .. } => None,
        }
    }

    #[test]
    fn glob_characters_are_escaped_and_unescaped() {
        assert_eq!(glob_escape(r"/a*b?c[d]e\f"), r"/a\*b\?c\[d\]e\\f");
        assert_eq!(glob_escape("/plain/é"), "/plain/é");
        for text in [r"/a*b?c[d]e\f", "", r"\", "*", "/é/"] {
            assert_eq!(glob_unescape(&glob_escape(text)).as_deref(), Some(text));
        }
        assert_eq!(glob_unescape("a*"), None);
        assert_eq!(glob_unescape(r"a\"), None);
    }

    #[test]
    fn a_pattern_message_maps_back_to_its_prefix_topic() {
        let names = Names::new("ns[1]");
        let pattern = names.pattern("/docs/*?/");
        assert_eq!(pattern, r"ns\[1\]:c:/docs/\*\?/*");
        assert_eq!(names.prefix_of_pattern(&pattern).as_deref(), Some("/docs/*?/"));
        assert_eq!(names.prefix_of_pattern(&names.pattern("")).as_deref(), Some(""));
        assert_eq!(names.prefix_of_pattern(&Names::new("other").pattern("/docs/")), None);
        assert_eq!(names.prefix_of_pattern(r"ns\[1\]:c:/docs/"), None);
        assert_eq!(names.path_of_channel(&names.channel("/a b")), Some("/a b"));
        assert_eq!(names.path_of_channel("other:c:/a"), None);
        assert_eq!(names.stream_key("/a"), "ns[1]:h:/a");
    }

    #[test]
    fn topics_split_into_channels_and_patterns() {
        let names = Names::new("n");
        let topics = [Topic::Path("/a".into()), Topic::Prefix("/b".into())];
        assert_eq!(
            names.subscription_names(&topics),
            (vec!["n:c:/a".to_owned()], vec!["n:c:/b*".to_owned()])
        );
    }

    #[test]
    fn stream_ids_carry_the_revision() {
        assert_eq!(stream_id(0), "0-1");
        assert_eq!(rev_of_stream_id(&stream_id(42)), Some(42));
        assert_eq!(rev_of_stream_id("x-1"), None);
        assert_eq!(rev_of_stream_id("7"), None);
    }

    #[test]
    fn history_is_events_when_the_stream_reaches_back_to_the_asked_revision() {
        let after = || vec![event(4), event(5)];
        assert_eq!(revs(&history_from_stream(3, Some(1), Some(5), after())), Some(vec![4, 5]));
        assert_eq!(revs(&history_from_stream(3, Some(4), Some(5), after())), Some(vec![4, 5]));
        assert_eq!(revs(&history_from_stream(5, Some(4), Some(5), vec![])), Some(vec![]));
        assert_eq!(revs(&history_from_stream(0, Some(1), Some(5), after())), Some(vec![4, 5]));
    }

    #[test]
    fn history_is_a_gap_when_trimmed_ahead_absent_or_behind() {
        assert_eq!(
            history_from_stream(2, Some(4), Some(5), vec![event(4), event(5)]),
            History::Gap { current_rev: Some(5) }
        );
        assert_eq!(
            history_from_stream(9, Some(4), Some(5), vec![]),
            History::Gap { current_rev: Some(5) }
        );
        assert_eq!(history_from_stream(0, None, None, vec![]), History::Gap { current_rev: None });
        assert_eq!(
            history_from_stream(u64::MAX, Some(1), Some(5), vec![]),
            History::Gap { current_rev: Some(5) }
        );
    }

    #[test]
    fn an_entry_body_is_found_by_field() {
        let fields = vec![b"x".to_vec(), b"1".to_vec(), b"e".to_vec(), b"body".to_vec()];
        assert_eq!(entry_body(&fields), Some(&b"body"[..]));
        assert_eq!(entry_body(&fields[..2]), None);
    }

    #[test]
    fn bad_namespaces_and_options_are_typed_errors() {
        assert!(matches!(check_namespace(""), Err(BusError::InvalidNamespace { .. })));
        let err = check_namespace("a b").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid change bus namespace "a b": it contains whitespace or control characters"#
        );
        assert!(check_namespace("ferry").is_ok());
        let options = RedisBusOptions { history_per_file: 0, ..RedisBusOptions::default() };
        assert!(matches!(
            check_options(&options),
            Err(BusError::InvalidOption { option: "history_per_file", .. })
        ));
        let options = RedisBusOptions {
            history_ttl: Duration::from_millis(10),
            ..RedisBusOptions::default()
        };
        assert!(matches!(
            check_options(&options),
            Err(BusError::InvalidOption { option: "history_ttl", .. })
        ));
        assert!(check_options(&RedisBusOptions::default()).is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let mut delay = BACKOFF_MIN;
        let mut seen = vec![];
        for _ in 0..7 {
            seen.push(delay.as_millis());
            delay = next_backoff(delay);
        }
        assert_eq!(seen, [50, 100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn the_registry_reports_a_topics_last_sink() {
        struct Nothing;
        impl EventSink for Nothing {
            fn deliver(&self, _: &Arc<ChangeEvent>) {}
        }
        let mut registry = Registry::default();
        let topic = Topic::Prefix("/p".into());
        registry.add(SubscriptionId(1), topic.clone(), Arc::new(Nothing));
        registry.add(SubscriptionId(2), topic.clone(), Arc::new(Nothing));
        assert_eq!(registry.topics(), HashSet::from([topic.clone()]));
        assert!(!registry.remove(SubscriptionId(1)));
        assert!(!registry.remove(SubscriptionId(1)));
        assert!(registry.remove(SubscriptionId(2)));
        assert!(registry.topics().is_empty());
        assert!(registry.sinks(&topic).is_none());
    }
}
