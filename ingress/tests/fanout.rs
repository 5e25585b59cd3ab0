//! Watching under the fan-out's edge cases, over real WebSocket connections: a bus that lost
//! events, and subscriptions made while the file is being written.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{start, start_seen_through, within};
use ferry_ingress::{Authenticator, IngressOptions};
use ferry_instruction_worker::{LocalBus, LocalBusOptions, WorkerOptions};
use ferry_protocol::{ChangeBus, ChangeEvent, EventSink, History, SubscriptionId, Topic};
use serde_json::json;

/// The node's `LocalBus` as a distributed bus sees it: it can lose a topic's events (as after a
/// broker reconnect whose history does not bridge the gap) and then tells the topic's sinks.
struct LossyBus {
    inner: Arc<LocalBus>,
    sinks: Mutex<HashMap<Topic, Vec<Arc<dyn EventSink>>>>,
}

impl LossyBus {
    fn lose(&self, topic: &Topic) {
        let sinks = self.sinks.lock().unwrap().get(topic).cloned().unwrap_or_default();
        assert!(!sinks.is_empty(), "the ingress subscribed to {topic:?}");
        sinks.iter().for_each(|sink| sink.lost());
    }
}

impl ChangeBus for LossyBus {
    fn publish(&self, event: ChangeEvent) {
        self.inner.publish(event)
    }

    fn subscribe(&self, topic: Topic, sink: Arc<dyn EventSink>) -> SubscriptionId {
        self.sinks.lock().unwrap().entry(topic.clone()).or_default().push(sink.clone());
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
async fn a_bus_that_lost_events_closes_the_topics_watchers_with_4009_and_since_rev_recovers() {
    let lossy = Arc::new(Mutex::new(None::<Arc<LossyBus>>));
    let node = start_seen_through(
        IngressOptions::default(),
        Authenticator::Open,
        LocalBusOptions::default(),
        WorkerOptions::default(),
        |inner| {
            let bus = Arc::new(LossyBus { inner, sinks: Mutex::new(HashMap::new()) });
            *lossy.lock().unwrap() = Some(bus.clone());
            bus
        },
    )
    .await;
    let lossy = lossy.lock().unwrap().clone().unwrap();
    let writer = node.client().await;
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let watcher = node.client().await;
        assert_eq!(watcher.sub("/lost/a", None).await.unwrap(), 0);
        watchers.push(watcher);
    }
    let mut bystander = node.client().await;
    assert_eq!(bystander.sub("/lost/b", None).await.unwrap(), 0);
    assert_eq!(writer.put("/lost/a", "one").await.unwrap(), 1);
    for watcher in &mut watchers {
        assert_eq!(within(watcher.next_event()).await.unwrap().rev, 1);
    }

    lossy.lose(&Topic::Path("/lost/a".to_owned()));
    for watcher in &mut watchers {
        let close = within(watcher.wait_closed()).await.expect("a close frame");
        assert_eq!(
            (close.code, close.reason.as_str()),
            (4009, "changes lost: resubscribe with since_rev")
        );
    }
    node.wait_for("two connections closed as lost", |s| s.changes_lost_closed == 2).await;
    assert_eq!(node.ingress.stats().slow_consumers_closed, 0);

    // Other topics and the writer are untouched; a new watch recovers with since_rev.
    assert_eq!(writer.put("/lost/a", "two").await.unwrap(), 2);
    assert_eq!(writer.put("/lost/b", "b").await.unwrap(), 1);
    assert_eq!(within(bystander.next_event()).await.unwrap().rev, 1);
    let mut again = node.client().await;
    assert_eq!(again.sub("/lost/a", Some(1)).await.unwrap(), 2);
    let event = within(again.next_event()).await.unwrap();
    assert_eq!((event.rev, event.raw["content"].as_str()), (2, Some("two")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_made_while_the_file_is_written_gets_exactly_the_revisions_after_its_answer() {
    const MAX_WRITES: u64 = 20_000;
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let writer = node.client().await;
    let path = "/race/f";
    assert_eq!(writer.append(path, "0;").await.unwrap(), 1);
    // Pipelined appends (answers not awaited) until every watch is made, so that the worker
    // applies and publishes some between a watch's registration and the `stat` that answers
    // its `sub`.
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < MAX_WRITES {
                for _ in 0..4 {
                    sent += 1;
                    let frame = json!({"op": "append", "id": 1_000_000 + sent, "path": path, "content": "x;"});
                    writer.send_text(frame.to_string()).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (writer, sent)
        }
    });
    let mut watchers = Vec::new();
    for _ in 0..30 {
        let watcher = node.client().await;
        let base = watcher.sub(path, None).await.unwrap();
        watchers.push((watcher, base));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut writer, sent) = writing.await.unwrap();
    for _ in 0..sent {
        let answer = within(writer.next_unmatched()).await.unwrap();
        assert_eq!(answer["ok"], true, "{answer}");
    }
    let last = 1 + sent;
    let mut inside = 0;
    for (watcher, base) in &mut watchers {
        if (2..last).contains(base) {
            inside += 1;
        }
        for rev in *base + 1..=last {
            let event = within(watcher.next_event()).await.unwrap();
            assert_eq!(event.rev, rev, "watch answered rev {base}: {:?}", event.raw);
        }
    }
    assert!(inside > 0, "no watch was made while the file was written: nothing was tested");
}
