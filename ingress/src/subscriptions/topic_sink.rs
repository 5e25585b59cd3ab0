//! The bus's sink for one topic, and the tasks that fan its events out.
//!
//! The bus calls [`TopicSink::deliver`] on the publisher's thread (in `ferry serve`, the
//! instruction worker's). A topic that has only ever had one watch, the common case of a client
//! watching its own files, gets each event serialized and queued on that watch's outbox right
//! there, as the worker queues answers: a task would only add a wake-up and two polls per event
//! with nothing to share (5-8 % of the server's CPU per write with 1,000 clients, one watcher
//! per file: `BENCHMARKS.md`, 2026-12-07, sixteenth session). From its second watch on, a topic is
//! [`Sharded`](Watches::Sharded) for good: the publisher only queues the event, one allocation and
//! one bounded `try_send` per shard, whatever the number of watchers, and fan-out tasks on the
//! ingress's runtime serialize each event once and push the events in runs to every watching
//! connection's outbox, one shared entry per run (see [`fan_out`] for how a busy topic's runs
//! form). A topic's watches are split into shards, one task each: a new shard once every shard
//! holds [`SHARD_WATCHES`], up to one per runtime worker thread, so that one hot file's fan-out
//! uses every core.
//!
//! The single watch becomes the first shard's under the lock that every delivery holds, so it
//! has all the events delivered before in its outbox ahead of the shard's. Every watch belongs
//! to one shard and each shard's queue is FIFO, so a watch sees a file's events in the order
//! they were published. When a shard's queue is full, or the bus says it lost events
//! ([`EventSink::lost`]), the shard's task closes every watch it holds with
//! [`CLOSE_CHANGES_LOST`] before it delivers anything else (a single watch is closed at once): a
//! watch never silently skips an event, and the memory stays bounded by the queues.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::{ChangeEvent, EventSink};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::{event_frame, Watch};
use crate::outbox::{CloseReason, CLOSE_CHANGES_LOST};

/// A topic gets another shard (up to one per worker thread) once each has this many watches:
/// below it, a second task costs more than it saves.
const SHARD_WATCHES: usize = 64;
/// Events a task takes from its queue at a time, at most, as one run: one send to each watch,
/// before it lets the runtime's other tasks (the writers' answers among them) run.
const RUN: usize = 64;
/// Watches a task hands a run to before it yields. Each wakes a connection's writer, and
/// tokio's per-thread run queue holds 256 tasks: a run woken for 500 watches at once spilled
/// into the runtime's shared queue (a mutex) and put every task woken meanwhile, a writer's
/// request or an answer, behind all of them. In chunks, 1,000 watchers of a file changing
/// 1,000 times a second cost the server about a fifth less CPU and the writer's ack p99 fell
/// from 32-34 to 14-15 ms (`BENCHMARKS.md`, 2026-12-07, fourteenth session).
const WAKE_CHUNK: usize = 16;

/// Of the linger, this much per watch of the shard, up to the configured linger. A run costs a
/// write per watching connection at each end, and the linger bounds a shard's runs per
/// second; so a small fan-out is not held back the full linger for a saving it does not need,
/// while a shard's runs cost at most about a write per 40 us, whatever its size. 100 watchers
/// of a file changing 1,000 times a second: fan-out p99 15.5-16.6 ms with the 10 ms linger,
/// 9.2-9.7 ms with 4 ms, for a fifth more server CPU (`BENCHMARKS.md`, 2026-12-07, fifteenth
/// session).
const LINGER_PER_WATCH: Duration = Duration::from_micros(40);

/// The linger for a shard of `watches`: [`LINGER_PER_WATCH`] each, up to `max`.
fn linger_for(watches: usize, max: Duration) -> Duration {
    LINGER_PER_WATCH.saturating_mul(u32::try_from(watches).unwrap_or(u32::MAX)).min(max)
}

/// An event on its way to a shard's watches, serialized once by whichever task needs it first.
struct Fanned {
    event: Arc<ChangeEvent>,
    text: OnceLock<Utf8Bytes>,
}

impl Fanned {
    fn text(&self) -> &Utf8Bytes {
        self.text.get_or_init(|| event_frame(&self.event))
    }
}

/// What a shard's task shares with the sink.
struct ShardState {
    watches: RwLock<Vec<Arc<Watch>>>,
    /// Set when the shard's watches may have missed an event: they are closed with it before
    /// the task delivers anything more. The first reason wins.
    failure: Mutex<Option<CloseReason>>,
    failed: Notify,
}

impl ShardState {
    fn fail(&self, reason: CloseReason) {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason);
        self.failed.notify_one();
    }

    fn take_failure(&self) -> Option<CloseReason> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn failure_pending(&self) -> bool {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    fn len(&self) -> usize {
        self.watches.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}

struct Shard {
    queue: mpsc::Sender<Arc<Fanned>>,
    state: Arc<ShardState>,
}

/// A topic's local watches.
enum Watches {
    /// None yet, or none left.
    Empty,
    /// The only watch the topic has had: the publisher delivers to it.
    Single(Arc<Watch>),
    /// Served by fan-out tasks, once the topic had a second watch (even if one left since: the
    /// tasks may still hold events for a watch, which the publisher would then overtake).
    Sharded(Vec<Shard>),
}

/// The bus's sink for one topic: every local watch of it.
pub(super) struct TopicSink {
    watches: RwLock<Watches>,
    runtime: Handle,
    max_shards: usize,
    queue_capacity: usize,
    linger: Duration,
}

impl TopicSink {
    /// A sink whose fan-out tasks run on `runtime`, with `queue_capacity` events per shard:
    /// when a shard falls that far behind, the publisher gives up on its watches (4009). A
    /// busy topic's next run of events gathers until `linger` after the one before, or until
    /// it is full (see [`fan_out`]).
    pub(super) fn new(runtime: Handle, queue_capacity: usize, linger: Duration) -> TopicSink {
        let max_shards = runtime.metrics().num_workers().max(1);
        TopicSink {
            watches: RwLock::new(Watches::Empty),
            runtime,
            max_shards,
            queue_capacity,
            linger,
        }
    }

    /// Adds `watch`: as the topic's single watch if it has none and never had shards,
    /// otherwise to the smallest shard, or to a new one when every shard is full enough and the
    /// runtime has a worker thread to spare. A new watch receives the events published from now
    /// on (and possibly some published just before: the catch-up drops what it already has).
    pub(super) fn add(&self, watch: Arc<Watch>) {
        let mut watches = self.watches.write().unwrap_or_else(PoisonError::into_inner);
        match &mut *watches {
            Watches::Empty => *watches = Watches::Single(watch),
            Watches::Single(single) => {
                // Under the write lock no delivery is under way: the single watch has every
                // event published so far in its outbox, and the shard's queue starts empty.
                let shard = self.new_shard(vec![single.clone(), watch]);
                *watches = Watches::Sharded(vec![shard]);
            }
            Watches::Sharded(shards) => {
                let smallest = shards.iter().min_by_key(|shard| shard.state.len());
                match smallest {
                    Some(shard)
                        if shard.state.len() < SHARD_WATCHES || shards.len() >= self.max_shards =>
                    {
                        shard
                            .state
                            .watches
                            .write()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(watch)
                    }
                    _ => shards.push(self.new_shard(vec![watch])),
                }
            }
        }
    }

    /// A shard of `watches` and its fan-out task.
    fn new_shard(&self, watches: Vec<Arc<Watch>>) -> Shard {
        let state = Arc::new(ShardState {
            watches: RwLock::new(watches),
            failure: Mutex::new(None),
            failed: Notify::new(),
        });
        let (queue, events) = mpsc::channel(self.queue_capacity.max(1));
        // A run never holds more than a connection's send queue may: a reader keeping up is
        // not closed for a run that could not fit even in its empty queue.
        let run_max = RUN.min(self.queue_capacity.max(1));
        self.runtime.spawn(fan_out(events, state.clone(), self.linger, run_max));
        Shard { queue, state }
    }

    /// Removes the watch numbered `id`; true if the topic has no watch left.
    pub(super) fn remove(&self, id: u64) -> bool {
        let mut watches = self.watches.write().unwrap_or_else(PoisonError::into_inner);
        match &*watches {
            Watches::Empty => true,
            Watches::Single(single) if single.id == id => {
                *watches = Watches::Empty;
                true
            }
            Watches::Single(_) => false,
            Watches::Sharded(shards) => {
                let mut left = 0;
                for shard in shards {
                    let mut watches =
                        shard.state.watches.write().unwrap_or_else(PoisonError::into_inner);
                    watches.retain(|w| w.id != id);
                    left += watches.len();
                }
                left == 0
            }
        }
    }
}

impl EventSink for TopicSink {
    fn deliver(&self, event: &Arc<ChangeEvent>) {
        let watches = self.watches.read().unwrap_or_else(PoisonError::into_inner);
        match &*watches {
            Watches::Empty => {}
            Watches::Single(watch) => {
                let run: Arc<[Utf8Bytes]> = Arc::new([event_frame(event)]);
                watch.deliver_run(std::slice::from_ref(event), &run);
            }
            Watches::Sharded(shards) => {
                let fanned = Arc::new(Fanned { event: event.clone(), text: OnceLock::new() });
                for shard in shards {
                    let queued = shard.queue.try_send(fanned.clone());
                    if let Err(mpsc::error::TrySendError::Full(_)) = queued {
                        shard.state.fail(CLOSE_CHANGES_LOST);
                    }
                }
            }
        }
    }

    fn lost(&self) {
        let watches = self.watches.read().unwrap_or_else(PoisonError::into_inner);
        match &*watches {
            Watches::Empty => {}
            Watches::Single(watch) => watch.outbox.close(Some(CLOSE_CHANGES_LOST)),
            Watches::Sharded(shards) => {
                for shard in shards {
                    shard.state.fail(CLOSE_CHANGES_LOST);
                }
            }
        }
    }
}

/// A run of a topic's events in a round, and the first of the round's watches that got it. A
/// run taken between the round's chunks reached only the chunks after: the next round gives it
/// first to the watches before, and to any watch the round did not hold.
struct Run {
    published: Vec<Arc<ChangeEvent>>,
    run: Arc<[Utf8Bytes]>,
    /// Index, in the round's watches, of the first watch that got it.
    from_watch: usize,
}

/// A shard's task: delivers its queue to its watches until the sink is dropped, in rounds. A
/// round hands the events waiting when it starts (up to `run_max`) to each watch as one shared
/// run, [`WAKE_CHUNK`] watches at a time, and between chunks takes whatever has arrived since
/// as a further run for the watches still to come (the next round gives it to the others
/// first): a watch gets every event waiting when its turn comes, as a connection writer takes
/// everything queued when it writes. After a round, the next gathers events until the linger
/// ([`linger_for`] the shard's watches, up to `linger`) has passed since it or it holds
/// `run_max` (an event after a quiet spell goes at once), so that a busy topic's watchers get
/// several events per wake-up and write.
async fn fan_out(
    mut events: mpsc::Receiver<Arc<Fanned>>,
    state: Arc<ShardState>,
    linger: Duration,
    run_max: usize,
) {
    let mut batch = Vec::with_capacity(run_max);
    let mut last_run: Option<Instant> = None;
    // The last round's runs that its first watches did not get, and its watches' positions.
    let mut late: Vec<Run> = Vec::new();
    let mut late_positions: HashMap<u64, usize> = HashMap::new();
    loop {
        if late.is_empty() {
            tokio::select! {
                biased;
                () = state.failed.notified() => {}
                received = events.recv_many(&mut batch, run_max) => {
                    if received == 0 {
                        return;
                    }
                }
            }
        } else {
            take_waiting(&mut events, &mut batch, run_max);
        }
        // Within the linger the run takes what comes, until it is full: a topic busier than a
        // full run per linger goes at its own pace, and its queue does not fill meanwhile.
        let linger = linger_for(state.len(), linger);
        if let Some(due) = last_run.map(|at| at + linger).filter(|due| *due > Instant::now()) {
            let pause = tokio::time::sleep_until(due);
            tokio::pin!(pause);
            while (!batch.is_empty() || !late.is_empty()) && batch.len() < run_max {
                let room = run_max - batch.len();
                tokio::select! {
                    () = &mut pause => break,
                    received = events.recv_many(&mut batch, room) => {
                        if received == 0 {
                            break;
                        }
                    }
                }
            }
        }
        // A failure recorded before an event was queued is seen here before that event is
        // delivered (the queue orders the two), so no watch gets an event after a gap.
        if let Some(reason) = state.take_failure() {
            batch.clear();
            late.clear();
            let watches = state.watches.read().unwrap_or_else(PoisonError::into_inner);
            for watch in watches.iter() {
                watch.outbox.close(Some(reason));
            }
            continue;
        }
        if batch.is_empty() && late.is_empty() {
            continue;
        }
        // A copy, so that no lock is held across the yields: a watch removed meanwhile is
        // detached, and takes nothing more of the round.
        let watches: Vec<Arc<Watch>> =
            state.watches.read().unwrap_or_else(PoisonError::into_inner).clone();
        let mut runs = vec![Run::of(&mut batch, 0)];
        // Behind (a full run already waits), the task hands the run to every watch at once,
        // as it did before chunks: yielding then would pace it by its writers, and its queue
        // would overflow (4009) where the connections' send queues could still absorb the
        // backlog and their writers send several runs per write.
        let behind = events.len() >= run_max;
        let mut taking = !behind;
        for (i, chunk) in watches.chunks(WAKE_CHUNK).enumerate() {
            if i > 0 && !behind {
                tokio::task::yield_now().await;
            }
            if i > 0 && taking {
                take_waiting(&mut events, &mut batch, run_max);
                // An event queued after a failure was recorded is taken after it: checked
                // here, it never reaches a watch ahead of the close.
                if state.failure_pending() {
                    batch.clear();
                    taking = false;
                } else if !batch.is_empty() {
                    runs.push(Run::of(&mut batch, i * WAKE_CHUNK));
                }
            }
            for watch in chunk {
                // What the last round owes it: the late runs after its position there (all,
                // for a watch that round did not hold).
                let owed_from = match late_positions.get(&watch.id) {
                    Some(&at) => late.partition_point(|l| l.from_watch <= at),
                    None => 0,
                };
                for owed in late[owed_from..].iter().chain(&runs) {
                    if !owed.run.is_empty() {
                        watch.deliver_run(&owed.published, &owed.run);
                    }
                }
            }
        }
        late = runs.split_off(1);
        late_positions.clear();
        if !late.is_empty() {
            late_positions.extend(watches.iter().enumerate().map(|(at, w)| (w.id, at)));
        }
        last_run = Some(Instant::now());
        // A hot topic always has a run ready: without this, its task would hold a worker
        // thread until the coop budget runs out, 128 runs later.
        tokio::task::yield_now().await;
    }
}

impl Run {
    /// `batch`'s events as a run, leaving `batch` empty.
    fn of(batch: &mut Vec<Arc<Fanned>>, from_watch: usize) -> Run {
        let published = batch.iter().map(|f| f.event.clone()).collect();
        let run = batch.drain(..).map(|f| f.text().clone()).collect();
        Run { published, run, from_watch }
    }
}

/// Moves the events already waiting into `batch`, up to `run_max` in it.
fn take_waiting(
    events: &mut mpsc::Receiver<Arc<Fanned>>,
    batch: &mut Vec<Arc<Fanned>>,
    run_max: usize,
) {
    while batch.len() < run_max {
        match events.try_recv() {
            Ok(fanned) => batch.push(fanned),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outbox::{Outbox, OutboxReceiver};
    use crate::subscriptions::tests::{ev, rev_of};
    use crate::subscriptions::Feed;

    /// A live path watch with its outbox's receiving end.
    fn live_watch(id: u64, send_queue: usize) -> (Arc<Watch>, OutboxReceiver) {
        let (outbox, rx) = Outbox::new(send_queue);
        let watch = Arc::new(Watch {
            id,
            is_path: true,
            outbox: Arc::new(outbox),
            buffer_limit: send_queue,
            feed: Mutex::new(Feed::Live { last_rev: 0 }),
        });
        (watch, rx)
    }

    /// Three chunks' worth of live watches added to `sink`, with their outboxes' receivers.
    fn three_chunks_of_watches(sink: &TopicSink) -> (Vec<Arc<Watch>>, Vec<OutboxReceiver>) {
        let (watches, receivers): (Vec<_>, Vec<_>) =
            (0..3 * WAKE_CHUNK as u64).map(|id| live_watch(id, 64)).unzip();
        watches.iter().for_each(|w| sink.add(w.clone()));
        (watches, receivers)
    }

    /// A live watch added to `sink` with a second one, so that a fan-out task serves them: the
    /// first's receiver, and the second's (kept open).
    fn sharded_watch(sink: &TopicSink) -> (Arc<Watch>, OutboxReceiver, OutboxReceiver) {
        let (watch, rx) = live_watch(1, 64);
        let (second, second_rx) = live_watch(2, 64);
        sink.add(watch.clone());
        sink.add(second);
        (watch, rx, second_rx)
    }

    async fn next_rev(rx: &mut OutboxReceiver) -> u64 {
        let text = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
        rev_of(text.as_str())
    }

    /// Waits (with a deadline) until the task closed `watch`.
    async fn closed(watch: &Watch) -> Option<CloseReason> {
        let _ = tokio::time::timeout(Duration::from_secs(20), watch.outbox.closed()).await;
        watch.outbox.close_reason()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_two_watches_the_publisher_only_queues_and_the_task_delivers() {
        let sink = TopicSink::new(Handle::current(), 1024, Duration::ZERO);
        let (_, mut rx, mut second_rx) = sharded_watch(&sink);
        sink.deliver(&ev(1));
        sink.deliver(&ev(2));
        // Nothing ran the fan-out task yet: the publisher did not touch the outboxes.
        assert!(rx.try_recv().is_none());
        assert!(second_rx.try_recv().is_none());
        for rx in [&mut rx, &mut second_rx] {
            assert_eq!(next_rev(rx).await, 1);
            assert_eq!(next_rev(rx).await, 2);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_single_watch_gets_events_from_the_publisher_and_keeps_their_order_when_shared() {
        let sink = TopicSink::new(Handle::current(), 1024, Duration::ZERO);
        let (watch, mut rx) = live_watch(1, 64);
        sink.add(watch.clone());
        sink.deliver(&ev(1));
        sink.deliver(&ev(2));
        // No task ran: the publisher queued both on the outbox itself.
        let taken: Vec<u64> =
            std::iter::from_fn(|| rx.try_recv()).map(|t| rev_of(t.as_str())).collect();
        assert_eq!(taken, [1, 2]);
        sink.deliver(&ev(3));
        // A second watch: from now on a task delivers, behind what the first already has.
        let (second, mut second_rx) = live_watch(2, 64);
        sink.add(second);
        sink.deliver(&ev(4));
        assert_eq!(next_rev(&mut rx).await, 3);
        assert_eq!(next_rev(&mut rx).await, 4);
        assert_eq!(next_rev(&mut second_rx).await, 4);
        // The second leaves: the first stays with the task, which may hold events for it.
        assert!(!sink.remove(2));
        sink.deliver(&ev(5));
        assert!(rx.try_recv().is_none(), "the task delivers, not the publisher");
        assert_eq!(next_rev(&mut rx).await, 5);
        assert!(sink.remove(1), "the last watch left");
        // A loss closes a single watch at once, and nothing after it is delivered.
        let (lone, mut lone_rx) = live_watch(3, 64);
        let other = TopicSink::new(Handle::current(), 1024, Duration::ZERO);
        other.add(lone.clone());
        other.lost();
        assert_eq!(lone.outbox.close_reason(), Some(CLOSE_CHANGES_LOST));
        other.deliver(&ev(6));
        assert!(lone_rx.try_recv().is_none());
        assert!(other.remove(3));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_busy_topic_waits_out_the_linger_and_sends_what_came_meanwhile_as_one_run() {
        // Capped at one watch's share.
        let linger = LINGER_PER_WATCH;
        let sink = TopicSink::new(Handle::current(), 1024, linger);
        let (_, mut rx, _second_rx) = sharded_watch(&sink);
        let start = Instant::now();
        sink.deliver(&ev(1));
        assert_eq!(next_rev(&mut rx).await, 1);
        assert_eq!(start.elapsed(), Duration::ZERO, "the first event does not wait");
        sink.deliver(&ev(2));
        tokio::task::yield_now().await;
        sink.deliver(&ev(3));
        assert_eq!(next_rev(&mut rx).await, 2);
        assert!(start.elapsed() >= linger, "the next run waited for the linger");
        assert_eq!(rx.try_recv().map(|t| rev_of(t.as_str())), Some(3), "in the same run");
        // A quiet spell longer than the linger: the next event goes at once again.
        tokio::time::advance(2 * linger).await;
        let quiet = Instant::now();
        sink.deliver(&ev(4));
        assert_eq!(next_rev(&mut rx).await, 4);
        assert_eq!(quiet.elapsed(), Duration::ZERO);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_full_run_goes_without_waiting_and_a_topic_outpacing_the_linger_loses_nothing() {
        let linger = LINGER_PER_WATCH;
        // Four events per shard queue: the run's bound as well.
        let sink = TopicSink::new(Handle::current(), 4, linger);
        let (watch, mut rx, _second_rx) = sharded_watch(&sink);
        let start = Instant::now();
        sink.deliver(&ev(1));
        assert_eq!(next_rev(&mut rx).await, 1);
        // Twelve more events inside one linger, four at a time as the queue allows: each full
        // run leaves at once, none is lost (an overflowing queue would close the watch).
        for rev in (2..=13).step_by(4) {
            (rev..rev + 4).for_each(|r| sink.deliver(&ev(r)));
            for r in rev..rev + 4 {
                assert_eq!(next_rev(&mut rx).await, r);
            }
        }
        assert!(start.elapsed() < linger, "full runs waited for the linger");
        assert_eq!(watch.outbox.close_reason(), None);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_shard_lingers_its_watches_share_of_the_linger_up_to_the_whole() {
        let max = Duration::from_millis(50);
        // The time a busy topic's second run waits, with `watches` watching.
        async fn second_run_waits(watches: u64, max: Duration) -> Duration {
            let sink = TopicSink::new(Handle::current(), 1024, max);
            let (watch, mut rx) = live_watch(1, 64);
            sink.add(watch);
            let others: Vec<_> = (2..=watches).map(|id| live_watch(id, 64)).collect();
            others.iter().for_each(|(watch, _)| sink.add(watch.clone()));
            sink.deliver(&ev(1));
            assert_eq!(next_rev(&mut rx).await, 1);
            let start = Instant::now();
            sink.deliver(&ev(2));
            assert_eq!(next_rev(&mut rx).await, 2);
            start.elapsed()
        }
        assert_eq!(second_run_waits(1, max).await, Duration::ZERO, "the publisher delivers");
        // tokio's timers count whole milliseconds.
        let two = second_run_waits(2, max).await;
        assert!(two >= 2 * LINGER_PER_WATCH && two <= Duration::from_millis(1), "waited {two:?}");
        assert_eq!(second_run_waits(100, max).await, 100 * LINGER_PER_WATCH);
        assert_eq!(second_run_waits(2_000, max).await, max, "never more than the linger");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_run_for_many_watches_yields_between_chunks_and_a_detached_watch_takes_no_more() {
        let sink = TopicSink::new(Handle::current(), 1024, Duration::ZERO);
        let (watches, mut receivers) = three_chunks_of_watches(&sink);
        let last = watches.len() - 1;
        sink.deliver(&ev(1));
        assert_eq!(next_rev(&mut receivers[0]).await, 1);
        // The task handed the run to its first chunk and let this test run before the rest.
        assert!(receivers[WAKE_CHUNK].try_recv().is_none());
        assert!(receivers[last].try_recv().is_none());
        watches[last].detach();
        for rx in &mut receivers[1..last] {
            assert_eq!(next_rev(rx).await, 1);
        }
        // The run reached the watch next to it in the same chunk: the detached one was passed.
        assert!(receivers[last].try_recv().is_none(), "a detached watch takes nothing");
        sink.deliver(&ev(2));
        assert_eq!(next_rev(&mut receivers[last - 1]).await, 2);
        assert!(receivers[last].try_recv().is_none());
        assert_eq!(watches[last].outbox.close_reason(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_arriving_between_chunks_reach_the_rest_of_the_round_and_the_others_next() {
        let sink = TopicSink::new(Handle::current(), 1024, Duration::ZERO);
        let (watches, mut receivers) = three_chunks_of_watches(&sink);
        let (second, last) = (WAKE_CHUNK, watches.len() - 1);
        sink.deliver(&ev(1));
        assert_eq!(next_rev(&mut receivers[0]).await, 1);
        // Between the first chunk and the second: an event, and a watch the round does not hold.
        sink.deliver(&ev(2));
        let (newcomer, mut newcomer_rx) = live_watch(100, 64);
        sink.add(newcomer);
        assert_eq!(next_rev(&mut receivers[second]).await, 1);
        let same_round = receivers[second].try_recv().map(|t| rev_of(t.as_str()));
        assert_eq!(same_round, Some(2), "the second chunk got what came before its turn");
        assert!(receivers[0].try_recv().is_none(), "the first chunk had had its turn");
        assert_eq!(next_rev(&mut receivers[0]).await, 2, "the next round owes it to the first");
        assert_eq!(next_rev(&mut newcomer_rx).await, 2, "and to a watch the round did not hold");
        sink.deliver(&ev(3));
        for rev in 1..=3 {
            assert_eq!(next_rev(&mut receivers[last]).await, rev);
        }
        assert_eq!(next_rev(&mut receivers[0]).await, 3);
        assert_eq!(next_rev(&mut receivers[second]).await, 3);
        assert_eq!(next_rev(&mut newcomer_rx).await, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_topic_is_split_over_the_workers_and_every_watch_sees_every_event_in_order() {
        let sink = Arc::new(TopicSink::new(Handle::current(), 1024, Duration::ZERO));
        let mut receivers = Vec::new();
        for id in 0..300 {
            let (watch, rx) = live_watch(id, 1024);
            sink.add(watch);
            receivers.push(rx);
        }
        let sizes: Vec<usize> = match &*sink.watches.read().unwrap() {
            Watches::Sharded(shards) => shards.iter().map(|shard| shard.state.len()).collect(),
            _ => panic!("300 watches are sharded"),
        };
        assert_eq!(sizes, [150, 150]);
        let publisher = std::thread::spawn({
            let sink = sink.clone();
            move || (1..=500).for_each(|rev| sink.deliver(&ev(rev)))
        });
        for rx in &mut receivers {
            for rev in 1..=500 {
                assert_eq!(next_rev(rx).await, rev);
            }
        }
        publisher.join().unwrap();
        assert!(!sink.remove(0));
        let emptied: Vec<bool> = (1..300).map(|id| sink.remove(id)).collect();
        assert_eq!(emptied.iter().filter(|&&empty| empty).count(), 1);
        assert!(emptied[298], "the last removal empties the topic");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_overflowing_queue_closes_its_watches_as_lost_instead_of_skipping_an_event() {
        let sink = TopicSink::new(Handle::current(), 4, Duration::ZERO);
        let (watch, mut rx, _second_rx) = sharded_watch(&sink);
        // The task cannot run while this test does not yield: the fifth event finds the queue
        // full.
        (1..=6).for_each(|rev| sink.deliver(&ev(rev)));
        assert_eq!(closed(&watch).await, Some(CLOSE_CHANGES_LOST));
        assert!(rx.try_recv().is_none(), "nothing is delivered once a watch missed an event");
        // A watch that comes later starts a clean run.
        let (later, mut later_rx) = live_watch(3, 64);
        sink.add(later.clone());
        sink.deliver(&ev(7));
        assert_eq!(next_rev(&mut later_rx).await, 7);
        assert_eq!(later.outbox.close_reason(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lost_closes_every_watch_of_the_topic_with_4009_before_any_later_event() {
        let sink = TopicSink::new(Handle::current(), 1024, Duration::ZERO);
        let other = TopicSink::new(Handle::current(), 1024, Duration::ZERO);
        let (watches, mut receivers): (Vec<_>, Vec<_>) =
            (1..=3).map(|id| live_watch(id, 64)).unzip();
        watches.iter().for_each(|w| sink.add(w.clone()));
        let (bystander, mut bystander_rx) = live_watch(9, 64);
        other.add(bystander.clone());
        sink.deliver(&ev(1));
        for rx in &mut receivers {
            assert_eq!(next_rev(rx).await, 1);
        }
        sink.lost();
        sink.deliver(&ev(2));
        for (watch, rx) in watches.iter().zip(&mut receivers) {
            assert_eq!(closed(watch).await, Some(CLOSE_CHANGES_LOST));
            assert_eq!(CLOSE_CHANGES_LOST.code, 4009);
            assert!(rx.try_recv().is_none(), "the event after the loss is not delivered");
        }
        other.deliver(&ev(5));
        assert_eq!(next_rev(&mut bystander_rx).await, 5);
        assert_eq!(bystander.outbox.close_reason(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_event_after_a_loss_in_the_middle_of_a_round_reaches_no_watch() {
        let sink = TopicSink::new(Handle::current(), 1024, Duration::ZERO);
        let (watches, mut receivers) = three_chunks_of_watches(&sink);
        sink.deliver(&ev(1));
        assert_eq!(next_rev(&mut receivers[0]).await, 1);
        // Between the first chunk and the second, a loss, then an event the next chunks would
        // otherwise take on the way.
        sink.lost();
        sink.deliver(&ev(2));
        for (watch, rx) in watches.iter().zip(&mut receivers) {
            assert_eq!(closed(watch).await, Some(CLOSE_CHANGES_LOST));
            let revs: Vec<u64> =
                std::iter::from_fn(|| rx.try_recv()).map(|t| rev_of(t.as_str())).collect();
            assert!(!revs.contains(&2), "watch {} got the event after the loss", watch.id);
        }
    }
}
