//! `LocalBus`: the in-process [`ChangeBus`]. Subscriptions by topic, delivery on the
//! publisher's thread, and a bounded per-file history for `since_rev` recovery.
//!
//! The histories are found through a plain map; moka only decides which files keep theirs
//! (by bytes, least recently used first) and its eviction listener takes a file out of the
//! map. A visit to moka costs a publish more than the rest of its history work together
//! (moka's `get_with` was 6 % of `ferry serve`'s CPU samples at 15,000 writes/s), so moka
//! hears of a file when it gets a history or its weight moved, and of one publish in
//! [`POLICY_SAMPLE`] per thread otherwise, which keeps its recency order close enough.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

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

/// One publish in this many (per thread) to a file that already has a history is also shown
/// to the eviction policy.
pub const POLICY_SAMPLE: u32 = 64;

thread_local! {
    static PUBLISHES: Cell<u32> = const { Cell::new(0) };
}

type Hasher = foldhash::fast::RandomState;
type SharedHistory = Arc<Mutex<FileHistory>>;
type Histories = HashMap<Arc<str>, SharedHistory, Hasher>;

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
    /// Every file that has a history. Never holds a file the policy does not.
    histories: Arc<RwLock<Histories>>,
    /// Which files keep their history (see the module documentation).
    policy: moka::sync::Cache<Arc<str>, SharedHistory, Hasher>,
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
        let histories = Arc::new(RwLock::new(Histories::default()));
        let evicted: Weak<RwLock<Histories>> = Arc::downgrade(&histories);
        let policy = moka::sync::Cache::builder()
            .max_capacity(options.history_bytes_total)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|path: &Arc<str>, file: &SharedHistory| {
                let bytes = path.len() + FILE_OVERHEAD + file.lock().bytes;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |path: Arc<Arc<str>>, file: SharedHistory, cause| {
                // Re-weighing inserts the same history again: that replaces nothing.
                if cause == moka::notification::RemovalCause::Replaced {
                    return;
                }
                if let Some(histories) = evicted.upgrade() {
                    let mut histories = histories.write();
                    if histories.get(&**path).is_some_and(|held| Arc::ptr_eq(held, &file)) {
                        histories.remove(&**path);
                    }
                }
            })
            .build_with_hasher(Hasher::default());
        LocalBus {
            options,
            subscriptions: RwLock::new(Subscriptions::default()),
            next_id: AtomicU64::new(1),
            histories,
            policy,
        }
    }

    /// Active subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.read().topics.len()
    }

    /// Files that have a history now, and the bytes it weighs (bounded by
    /// `history_bytes_total`).
    pub fn history_size(&self) -> (u64, u64) {
        self.policy.run_pending_tasks();
        (self.histories.read().len() as u64, self.policy.weighted_size())
    }

    fn history_of(&self, path: &str) -> Option<SharedHistory> {
        self.histories.read().get(path).cloned()
    }

    fn record(&self, event: &Arc<ChangeEvent>) {
        let (entry, created) = match self.history_of(&event.path) {
            Some(entry) => (entry, false),
            None => {
                let entry = SharedHistory::default();
                self.histories.write().insert(event.path.clone(), entry.clone());
                (entry, true)
            }
        };
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
        if created || reweigh {
            self.policy.insert(event.path.clone(), entry);
        } else if sampled() {
            self.policy.get(&event.path);
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

fn sampled() -> bool {
    PUBLISHES.with(|count| {
        let n = count.get().wrapping_add(1);
        count.set(n);
        n % POLICY_SAMPLE == 0
    })
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
        let Some(file) = self.history_of(path) else {
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
