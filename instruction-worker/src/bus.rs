//! `LocalBus`: the in-process [`ChangeBus`]. Subscriptions by topic, delivery on the
//! publisher's thread, and a bounded per-file history for `since_rev` recovery.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_protocol::{ChangeBus, ChangeEvent, EventSink, History, SubscriptionId, Topic};
use parking_lot::{Mutex, RwLock};

/// How much history a [`LocalBus`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalBusOptions {
    /// Revisions kept per file (default 1,000).
    pub history_per_file: usize,
    /// Bytes kept per file (default 1 MiB); the oldest revisions go first, the newest is
    /// always kept.
    pub history_bytes_per_file: usize,
    /// Bytes kept over all files, approximately (a file is re-weighed when its history grew or
    /// shrank by a quarter); default 256 MiB. The files used least recently lose their
    /// history first.
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

/// What a file's history weighs beyond its events.
const FILE_OVERHEAD: usize = 256;

type Sinks = Vec<(SubscriptionId, Arc<dyn EventSink>)>;

#[derive(Default)]
struct Subscriptions {
    by_path: HashMap<String, Sinks>,
    by_prefix: HashMap<String, Sinks>,
    topics: HashMap<SubscriptionId, Topic>,
}

#[derive(Default)]
struct FileHistory {
    events: VecDeque<Arc<ChangeEvent>>,
    bytes: usize,
    /// `bytes` when the cache last weighed this file.
    weighed: usize,
}

/// The in-process change bus. See the module documentation.
pub struct LocalBus {
    options: LocalBusOptions,
    subscriptions: RwLock<Subscriptions>,
    next_id: AtomicU64,
    history: moka::sync::Cache<Arc<str>, Arc<Mutex<FileHistory>>>,
}

fn event_bytes(event: &ChangeEvent) -> usize {
    use ferry_protocol::ChangeOp;
    let payload = match &event.change {
        ChangeOp::Put { content } | ChangeOp::Append { content } => content.len(),
        ChangeOp::Patch { insert, .. } => insert.len(),
        ChangeOp::Delete => 0,
    };
    payload + event.path.len() + event.author.len() + 64
}

impl LocalBus {
    pub fn new(options: LocalBusOptions) -> LocalBus {
        LocalBus {
            options,
            subscriptions: RwLock::new(Subscriptions::default()),
            next_id: AtomicU64::new(1),
            history: moka::sync::Cache::builder()
                .max_capacity(options.history_bytes_total)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .weigher(|path: &Arc<str>, file: &Arc<Mutex<FileHistory>>| {
                    let bytes = path.len() + FILE_OVERHEAD + file.lock().bytes;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// Active subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.read().topics.len()
    }

    /// Files that have a history now, and the bytes it weighs (bounded by
    /// `history_bytes_total`).
    pub fn history_size(&self) -> (u64, u64) {
        self.history.run_pending_tasks();
        (self.history.entry_count(), self.history.weighted_size())
    }

    fn record(&self, event: &Arc<ChangeEvent>) {
        let entry = self.history.get_with(event.path.clone(), Default::default);
        let reweigh = {
            let mut file = entry.lock();
            if file.events.back().is_some_and(|last| last.rev >= event.rev) {
                // Out of order (e.g. a store reopened from older data): restart the history.
                file.events.clear();
                file.bytes = 0;
            }
            file.bytes += event_bytes(event);
            file.events.push_back(event.clone());
            while file.events.len() > self.options.history_per_file.max(1)
                || (file.bytes > self.options.history_bytes_per_file && file.events.len() > 1)
            {
                if let Some(old) = file.events.pop_front() {
                    file.bytes -= event_bytes(&old);
                }
            }
            // The cache weighs an entry when it is inserted: insert again once the weight
            // moved by a quarter (at least 4 KiB), so that the total stays bounded.
            let moved = file.bytes.abs_diff(file.weighed);
            let reweigh = moved >= 4096.max(file.weighed / 4);
            if reweigh {
                file.weighed = file.bytes;
            }
            reweigh
        };
        if reweigh {
            self.history.insert(event.path.clone(), entry);
        }
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
        self.record(&event);
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
        let Some(file) = self.history.get(path) else {
            return History::Gap { current_rev: None };
        };
        let file = file.lock();
        let (Some(first), Some(last)) = (file.events.front(), file.events.back()) else {
            return History::Gap { current_rev: None };
        };
        if since_rev > last.rev || since_rev + 1 < first.rev {
            return History::Gap { current_rev: Some(last.rev) };
        }
        History::Events(file.events.iter().filter(|e| e.rev > since_rev).cloned().collect())
    }
}
