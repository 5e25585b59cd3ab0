//! Watching files: one bus subscription per topic for the whole node (made for the first local
//! watcher, dropped after the last), fanned out to each watching connection's [`Watch`] by the
//! topic's [`TopicSink`](topic_sink::TopicSink), off the publisher's thread.
//!
//! A watch starts buffering: while the connection reads the bus's history (or a snapshot), live
//! events pile up in the watch; [`Watch::go_live`] then sends the answer, the history and the
//! buffered events merged by revision, and from then on events go straight to the connection.
//! Per file and watch every revision is sent once and in order: a path watch drops any event at
//! or below the last revision it sent.

mod topic_sink;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::{change_event_json, ChangeBus, ChangeEvent, SubscriptionId, Topic};
use tokio::runtime::Handle;

use crate::outbox::{Outbox, CLOSE_SLOW_CONSUMER};
use topic_sink::TopicSink;

/// The node's subscriptions, by topic.
pub(crate) struct Fanout {
    bus: Arc<dyn ChangeBus>,
    /// Events a topic's fan-out may be behind (per shard): as many as a connection's send
    /// queue holds, since a watcher further behind than that is closed anyway.
    queue_capacity: usize,
    /// See [`TopicSink::new`].
    linger: Duration,
    /// Held only to find or add a topic's slot, never across a call to the bus.
    topics: Mutex<HashMap<Topic, Arc<TopicSlot>>>,
    next_watch: AtomicU64,
}

/// One topic's subscription. Its lock is held across the bus's (blocking) subscribe, so that
/// the topic's other first watchers wait for it, while other topics' subscribes go ahead and
/// the bus can confirm them together.
struct TopicSlot {
    state: Mutex<SlotState>,
}

struct SlotState {
    sink: Arc<TopicSink>,
    /// `None` until the bus subscription is made.
    bus_id: Option<SubscriptionId>,
    /// Its last watch left and it was taken out of the map: a watcher that finds it so must
    /// look the topic up again.
    closed: bool,
}

impl Fanout {
    pub(crate) fn new(bus: Arc<dyn ChangeBus>, queue_capacity: usize, linger: Duration) -> Fanout {
        Fanout {
            bus,
            queue_capacity,
            linger,
            topics: Mutex::new(HashMap::new()),
            next_watch: AtomicU64::new(1),
        }
    }

    /// Adds a buffering watch of `topic` for a connection, subscribing the node to the bus if
    /// it is the topic's first. May block on the bus: call it off the async threads, but
    /// inside the runtime (`spawn_blocking`), whose worker threads run the fan-out.
    pub(crate) fn watch(
        &self,
        topic: &Topic,
        outbox: Arc<Outbox>,
        buffer_limit: usize,
    ) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            id: self.next_watch.fetch_add(1, Ordering::Relaxed),
            is_path: matches!(topic, Topic::Path(_)),
            outbox,
            buffer_limit,
            feed: Mutex::new(Feed::Buffering(Vec::new())),
        });
        loop {
            let slot = {
                let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
                let slot = topics.entry(topic.clone()).or_insert_with(|| {
                    let sink = Arc::new(TopicSink::new(
                        Handle::current(),
                        self.queue_capacity,
                        self.linger,
                    ));
                    let state = SlotState { sink, bus_id: None, closed: false };
                    Arc::new(TopicSlot { state: Mutex::new(state) })
                });
                slot.clone()
            };
            let mut state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.closed {
                continue;
            }
            state.sink.add(watch.clone());
            if state.bus_id.is_none() {
                state.bus_id = Some(self.bus.subscribe(topic.clone(), state.sink.clone()));
            }
            return watch;
        }
    }

    /// Removes a watch, which takes no event from then on; the node leaves the bus topic after
    /// its last watch. May block on the bus.
    pub(crate) fn unwatch(&self, topic: &Topic, watch: &Watch) {
        watch.detach();
        let slot = self.topics.lock().unwrap_or_else(PoisonError::into_inner).get(topic).cloned();
        let Some(slot) = slot else { return };
        let mut state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed || !state.sink.remove(watch.id) {
            return;
        }
        state.closed = true;
        // Still this slot in the map: only a closing unwatch removes one, under the slot's
        // lock held here.
        self.topics.lock().unwrap_or_else(PoisonError::into_inner).remove(topic);
        if let Some(bus_id) = state.bus_id {
            self.bus.unsubscribe(bus_id);
        }
    }

    /// Topics the node is subscribed to on the bus.
    pub(crate) fn topic_count(&self) -> usize {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One connection's subscription to one topic.
pub(crate) struct Watch {
    id: u64,
    is_path: bool,
    outbox: Arc<Outbox>,
    buffer_limit: usize,
    feed: Mutex<Feed>,
}

enum Feed {
    /// Catching up: live events wait here.
    Buffering(Vec<Arc<ChangeEvent>>),
    /// Live; for a path watch, the last revision sent (0: none yet).
    Live { last_rev: u64 },
    /// Unwatched: takes nothing more, though a fan-out task may still hold it for the rest of
    /// a run (a `sub` that replaces a watch would otherwise see that run's events twice).
    Detached,
}

/// History and live events did not join up: the caller sends a snapshot instead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Discontinuity;

impl Watch {
    /// Ends the watch: whatever is delivered to it later is dropped.
    fn detach(&self) {
        *self.feed.lock().unwrap_or_else(PoisonError::into_inner) = Feed::Detached;
    }

    /// Takes a run of the topic's events (`events[i]` serialized is `run[i]`), in the order
    /// they were published.
    fn deliver_run(&self, events: &[Arc<ChangeEvent>], run: &Arc<[Utf8Bytes]>) {
        let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *feed {
            Feed::Buffering(buffer) => {
                if buffer.len() + events.len() > self.buffer_limit {
                    self.outbox.close(Some(CLOSE_SLOW_CONSUMER));
                } else {
                    buffer.extend(events.iter().cloned());
                }
            }
            Feed::Live { .. } if !self.is_path => {
                self.outbox.send_run(run, 0);
            }
            Feed::Detached => {}
            Feed::Live { last_rev } => {
                // Nearly always the whole run, or all but its first few when the catch-up
                // already sent them: a rest of rising revisions goes as the shared run.
                let from = events.iter().position(|e| e.rev > *last_rev).unwrap_or(events.len());
                let rest = &events[from..];
                if rest.windows(2).all(|pair| pair[0].rev < pair[1].rev) {
                    if let Some(last) = rest.last() {
                        *last_rev = last.rev;
                        self.outbox.send_run(run, from);
                    }
                    return;
                }
                for (event, text) in rest.iter().zip(&run[from..]) {
                    if event.rev > *last_rev {
                        *last_rev = event.rev;
                        self.outbox.send(text.clone());
                    }
                }
            }
        }
    }

    /// Ends the catch-up of a path watch from revision `since_rev`: checks that `history`
    /// (the changes after `since_rev`) and the buffered live events form one gapless run,
    /// then sends `first(current_rev)` (the answer and any snapshot), the run, and goes live.
    /// On a discontinuity nothing is sent and the watch keeps buffering.
    pub(crate) fn go_live_from(
        &self,
        since_rev: u64,
        history: &[Arc<ChangeEvent>],
        first: impl FnOnce(u64) -> Vec<Utf8Bytes>,
    ) -> Result<(), Discontinuity> {
        let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
        let Feed::Buffering(buffer) = &mut *feed else { return Ok(()) };
        let run = merge_run(since_rev, history, buffer)?;
        let current = run.last().map_or(since_rev, |e| e.rev);
        for text in first(current) {
            self.outbox.send(text);
        }
        for event in &run {
            self.outbox.send(event_frame(event));
        }
        *feed = Feed::Live { last_rev: current };
        Ok(())
    }

    /// Ends the catch-up with no history to bridge: sends `first`, then every buffered event
    /// after `after_rev` in revision order, and goes live.
    pub(crate) fn go_live_after(&self, after_rev: u64, first: Vec<Utf8Bytes>) {
        let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
        let Feed::Buffering(buffer) = &mut *feed else { return };
        for text in first {
            self.outbox.send(text);
        }
        let mut last_rev = after_rev;
        let mut buffered = std::mem::take(buffer);
        if self.is_path {
            buffered.sort_by_key(|e| e.rev);
        }
        for event in buffered {
            if self.is_path {
                if event.rev <= last_rev {
                    continue;
                }
                last_rev = event.rev;
            }
            self.outbox.send(event_frame(&event));
        }
        *feed = Feed::Live { last_rev };
    }
}

/// `event` as the text of the frame that carries it to a client.
pub(crate) fn event_frame(event: &ChangeEvent) -> Utf8Bytes {
    Utf8Bytes::from(change_event_json(event))
}

/// The changes after `since_rev`: `history` then the buffered events it does not already
/// hold, each revision once and each the one after the previous.
fn merge_run(
    since_rev: u64,
    history: &[Arc<ChangeEvent>],
    buffer: &[Arc<ChangeEvent>],
) -> Result<Vec<Arc<ChangeEvent>>, Discontinuity> {
    let mut run: Vec<Arc<ChangeEvent>> = Vec::with_capacity(history.len() + buffer.len());
    let mut last = since_rev;
    let mut buffered: Vec<&Arc<ChangeEvent>> = buffer.iter().collect();
    buffered.sort_by_key(|e| e.rev);
    for event in history.iter().chain(buffered) {
        if event.rev <= last {
            continue;
        }
        if event.rev != last + 1 {
            return Err(Discontinuity);
        }
        last = event.rev;
        run.push(event.clone());
    }
    Ok(run)
}

#[cfg(test)]
pub(crate) mod tests {
    use ferry_protocol::ChangeOp;

    use super::*;

    pub(crate) fn ev(rev: u64) -> Arc<ChangeEvent> {
        Arc::new(ChangeEvent {
            path: "/a".into(),
            rev,
            change: ChangeOp::Append { content: format!("{rev};").into() },
            author: "t".into(),
            ts_ms: 0,
            partition: 0,
        })
    }

    fn revs(run: &[Arc<ChangeEvent>]) -> Vec<u64> {
        run.iter().map(|e| e.rev).collect()
    }

    /// A bus whose `subscribe` waits (up to 2 s) until `overlap` subscribes are in progress at
    /// once, and counts subscribes and unsubscribes.
    struct OverlapBus {
        overlap: usize,
        state: std::sync::Mutex<OverlapState>,
        cond: std::sync::Condvar,
    }

    #[derive(Default)]
    struct OverlapState {
        in_flight: usize,
        most_in_flight: usize,
        subscribes: u64,
        unsubscribes: u64,
    }

    impl OverlapBus {
        fn new(overlap: usize) -> Arc<OverlapBus> {
            let state = std::sync::Mutex::new(OverlapState::default());
            Arc::new(OverlapBus { overlap, state, cond: std::sync::Condvar::new() })
        }
    }

    impl ChangeBus for OverlapBus {
        fn publish(&self, _: ChangeEvent) {}

        fn subscribe(&self, _: Topic, _: Arc<dyn ferry_protocol::EventSink>) -> SubscriptionId {
            let mut st = self.state.lock().unwrap();
            st.in_flight += 1;
            st.subscribes += 1;
            st.most_in_flight = st.most_in_flight.max(st.in_flight);
            self.cond.notify_all();
            let wait = std::time::Duration::from_secs(2);
            let (mut st, _) = self
                .cond
                .wait_timeout_while(st, wait, |s| s.most_in_flight < self.overlap)
                .unwrap();
            st.in_flight -= 1;
            SubscriptionId(st.subscribes)
        }

        fn unsubscribe(&self, _: SubscriptionId) {
            self.state.lock().unwrap().unsubscribes += 1;
        }

        fn history(&self, _: &str, _: u64) -> ferry_protocol::History {
            ferry_protocol::History::Events(Vec::new())
        }
    }

    fn watch_of(fanout: &Fanout, path: &str) -> Arc<Watch> {
        let (outbox, _rx) = Outbox::new(8);
        fanout.watch(&Topic::Path(path.into()), Arc::new(outbox), 8)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_watchers_of_different_topics_subscribe_at_the_same_time() {
        let bus = OverlapBus::new(2);
        let fanout = Arc::new(Fanout::new(bus.clone(), 64, Duration::ZERO));
        let tasks: Vec<_> = ["/a", "/b"]
            .into_iter()
            .map(|path| {
                let fanout = fanout.clone();
                tokio::task::spawn_blocking(move || drop(watch_of(&fanout, path)))
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let st = bus.state.lock().unwrap();
        assert_eq!(st.most_in_flight, 2, "one topic's subscribe waited for the other's");
        assert_eq!((st.subscribes, fanout.topic_count()), (2, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_left_by_its_last_watcher_is_subscribed_again_by_the_next() {
        let bus = OverlapBus::new(1);
        let fanout = Arc::new(Fanout::new(bus.clone(), 64, Duration::ZERO));
        let f = fanout.clone();
        tokio::task::spawn_blocking(move || {
            let topic = Topic::Path("/a".into());
            let (first, second) = (watch_of(&f, "/a"), watch_of(&f, "/a"));
            f.unwatch(&topic, &first);
            assert_eq!(f.topic_count(), 1, "a watcher is left");
            f.unwatch(&topic, &second);
            f.unwatch(&topic, &second);
            assert_eq!(f.topic_count(), 0);
            let again = watch_of(&f, "/a");
            assert_eq!(f.topic_count(), 1);
            f.unwatch(&topic, &again);
        })
        .await
        .unwrap();
        let st = bus.state.lock().unwrap();
        assert_eq!((st.subscribes, st.unsubscribes), (2, 2));
    }

    #[test]
    fn history_and_overlapping_live_events_merge_without_duplicates() {
        let run = merge_run(3, &[ev(4), ev(5), ev(6)], &[ev(6), ev(5), ev(7), ev(8)]).unwrap();
        assert_eq!(revs(&run), [4, 5, 6, 7, 8]);
        assert_eq!(revs(&merge_run(3, &[], &[ev(2), ev(3), ev(4)]).unwrap()), [4]);
        assert!(merge_run(3, &[], &[]).unwrap().is_empty());
    }

    #[test]
    fn a_hole_between_history_and_live_is_a_discontinuity() {
        assert_eq!(merge_run(3, &[ev(4)], &[ev(6)]), Err(Discontinuity));
        assert_eq!(merge_run(3, &[ev(5)], &[]), Err(Discontinuity));
    }

    fn texts(rx: &mut crate::outbox::OutboxReceiver) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv()).map(|t| t.as_str().to_owned()).collect()
    }

    /// Hands `events` to `watch` as one run, as a topic's fan-out task does.
    fn deliver(watch: &Watch, events: &[Arc<ChangeEvent>]) {
        let run: Arc<[Utf8Bytes]> = events.iter().map(|e| event_frame(e)).collect();
        watch.deliver_run(events, &run);
    }

    pub(crate) fn rev_of(text: &str) -> u64 {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["rev"].as_u64().unwrap()
    }

    #[test]
    fn a_watch_buffers_then_sends_answer_history_and_live_in_order_once() {
        let (outbox, mut rx) = Outbox::new(64);
        let watch = Watch {
            id: 1,
            is_path: true,
            outbox: Arc::new(outbox),
            buffer_limit: 64,
            feed: Mutex::new(Feed::Buffering(Vec::new())),
        };
        deliver(&watch, &[ev(3)]);
        deliver(&watch, &[ev(4)]);
        assert!(texts(&mut rx).is_empty());
        watch
            .go_live_from(1, &[ev(2), ev(3)], |rev| {
                vec![format!("{{\"ok\":true,\"rev\":{rev}}}").into()]
            })
            .unwrap();
        deliver(&watch, &[ev(4), ev(5)]);
        deliver(&watch, &[ev(5), ev(6), ev(7)]);
        deliver(&watch, &[ev(9), ev(8), ev(10)]);
        let sent = texts(&mut rx);
        assert_eq!(
            sent.iter().map(|t| rev_of(t)).collect::<Vec<_>>(),
            [4, 2, 3, 4, 5, 6, 7, 9, 10],
            "each revision once, in order, from runs that overlap what was sent"
        );
        assert!(sent[0].contains("\"ok\""));
    }

    #[test]
    fn a_full_catch_up_buffer_closes_the_connection() {
        let (outbox, _rx) = Outbox::new(64);
        let outbox = Arc::new(outbox);
        let watch = Watch {
            id: 1,
            is_path: true,
            outbox: outbox.clone(),
            buffer_limit: 2,
            feed: Mutex::new(Feed::Buffering(Vec::new())),
        };
        deliver(&watch, &[ev(1), ev(2)]);
        assert_eq!(outbox.close_reason(), None);
        deliver(&watch, &[ev(3)]);
        assert_eq!(outbox.close_reason(), Some(CLOSE_SLOW_CONSUMER));
    }
}
