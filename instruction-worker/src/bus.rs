//! `LocalBus`: the in-process [`ChangeBus`]. Subscriptions by topic, delivery on the
//! publisher's thread, and a bounded per-file history for `since_rev` recovery.
//!
//! The history is [`ChangeHistory`], under one lock: a publish holds it for a few pointer
//! moves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_protocol::{ChangeBus, ChangeEvent, EventSink, History, SubscriptionId, Topic};
use parking_lot::{Mutex, RwLock};

use crate::history::ChangeHistory;

/// How much history a [`LocalBus`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalBusOptions {
    /// Revisions kept per file (default 1,000).
    pub history_per_file: usize,
    /// Bytes kept per file (default 1 MiB); the oldest revisions go first, the newest is
    /// always kept.
    pub history_bytes_per_file: usize,
    /// Bytes kept over all files (default 256 MiB): past it the oldest changes go first,
    /// whichever file they belong to.
    pub history_bytes_total: u64,
}

impl Default for LocalBusOptions {
    fn default() -> LocalBusOptions {
        LocalBusOptions {
            history_per_file: 1000,
            history_bytes_per_file: 1 << 20,
            history_bytes_total: 256 << 20,
        }
    }
}

type Sinks = Vec<(SubscriptionId, Arc<dyn EventSink>)>;

#[derive(Default)]
struct Subscriptions {
    by_path: HashMap<String, Sinks>,
    by_prefix: HashMap<String, Sinks>,
    topics: HashMap<SubscriptionId, Topic>,
}

/// The in-process change bus. See the module documentation.
pub struct LocalBus {
    subscriptions: RwLock<Subscriptions>,
    next_id: AtomicU64,
    history: Mutex<ChangeHistory>,
}

impl LocalBus {
    pub fn new(options: LocalBusOptions) -> LocalBus {
        LocalBus {
            subscriptions: RwLock::new(Subscriptions::default()),
            next_id: AtomicU64::new(1),
            history: Mutex::new(ChangeHistory::new(options)),
        }
    }

    /// Active subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.read().topics.len()
    }

    /// Files that have a history now, and the bytes it weighs (bounded by
    /// `history_bytes_total`).
    pub fn history_size(&self) -> (u64, u64) {
        self.history.lock().size()
    }

    /// The sinks an event of `path` goes to: its file's and those of every prefix of it.
    fn sinks_for(&self, path: &str) -> Vec<Arc<dyn EventSink>> {
        let subs = self.subscriptions.read();
        let mut out: Vec<Arc<dyn EventSink>> = Vec::new();
        if let Some(sinks) = subs.by_path.get(path) {
            out.extend(sinks.iter().map(|(_, s)| s.clone()));
        }
        if !subs.by_prefix.is_empty() {
            for end in (1..=path.len()).filter(|&i| path.is_char_boundary(i)) {
                if let Some(sinks) = subs.by_prefix.get(&path[..end]) {
                    out.extend(sinks.iter().map(|(_, s)| s.clone()));
                }
            }
        }
        out
    }
}

impl ChangeBus for LocalBus {
    fn publish(&self, event: ChangeEvent) {
        let event = Arc::new(event);
        self.history.lock().record(&event);
        // Delivered outside the lock, so that a sink may subscribe or unsubscribe.
        for sink in self.sinks_for(&event.path) {
            sink.deliver(&event);
        }
    }

    fn subscribe(&self, topic: Topic, sink: Arc<dyn EventSink>) -> SubscriptionId {
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut subs = self.subscriptions.write();
        let map = match &topic {
            Topic::Path(p) => subs.by_path.entry(p.clone()),
            Topic::Prefix(p) => subs.by_prefix.entry(p.clone()),
        };
        map.or_default().push((id, sink));
        subs.topics.insert(id, topic);
        id
    }

    fn unsubscribe(&self, id: SubscriptionId) {
        let mut subs = self.subscriptions.write();
        let Some(topic) = subs.topics.remove(&id) else { return };
        let (map, key) = match &topic {
            Topic::Path(p) => (&mut subs.by_path, p),
            Topic::Prefix(p) => (&mut subs.by_prefix, p),
        };
        if let Some(sinks) = map.get_mut(key) {
            sinks.retain(|(sid, _)| *sid != id);
            if sinks.is_empty() {
                map.remove(key);
            }
        }
    }

    fn history(&self, path: &str, since_rev: u64) -> History {
        self.history.lock().since(path, since_rev)
    }
}
