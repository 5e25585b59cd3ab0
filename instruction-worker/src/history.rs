//! The recent changes of every file, for `since_rev` recovery: per file at most
//! `history_per_file` revisions and `history_bytes_per_file` bytes (the newest always kept),
//! and over all files at most `history_bytes_total`, reached by dropping the oldest changes
//! first, whichever file they belong to.
//!
//! Oldest-first over all files keeps the same time window for every file: a client away for
//! a few seconds finds the changes of those seconds for any file it watched. (Dropping whole
//! files, least recently used first, as a cache would, churned at the peak preset: with
//! 10,000 files written in turn every file is as old as the next, and most publishes found
//! their file dropped and started it again.)
//!
//! The order of the changes is one queue of (path, revision) in publish order. A change the
//! per-file caps dropped stays in that queue until it reaches the front (it is then skipped),
//! so the queue is also kept under twice the changes held plus [`SLACK`]: past that its oldest
//! entries go, held or not.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ferry_protocol::{ChangeEvent, ChangeOp, History};

use crate::bus::LocalBusOptions;

/// What a file's history weighs beyond its changes.
pub const FILE_OVERHEAD: usize = 256;

/// Entries of the order queue allowed beyond twice the changes held.
pub const SLACK: usize = 1024;

type Hasher = foldhash::fast::RandomState;

#[derive(Default)]
struct FileHistory {
    events: VecDeque<Arc<ChangeEvent>>,
    /// What `events` weigh.
    bytes: usize,
}

impl FileHistory {
    /// Drops the oldest change; what it weighed.
    fn pop_oldest(&mut self) -> Option<usize> {
        let oldest = self.events.pop_front()?;
        let bytes = event_bytes(&oldest);
        self.bytes -= bytes;
        Some(bytes)
    }
}

/// See the module documentation.
pub(crate) struct ChangeHistory {
    options: LocalBusOptions,
    files: HashMap<Arc<str>, FileHistory, Hasher>,
    /// Every change recorded, oldest first, including those dropped since.
    order: VecDeque<(Arc<str>, u64)>,
    /// Changes held in `files`.
    held: usize,
    /// What `files` weighs: its changes and [`FILE_OVERHEAD`] per file.
    bytes: u64,
}

/// What a change weighs in the history.
pub fn event_bytes(event: &ChangeEvent) -> usize {
    let payload = match &event.change {
        ChangeOp::Put { content } | ChangeOp::Append { content } => content.len(),
        ChangeOp::Patch { insert, .. } => insert.len(),
        ChangeOp::Delete => 0,
    };
    payload + event.path.len() + event.author.len() + 64
}

impl ChangeHistory {
    pub(crate) fn new(options: LocalBusOptions) -> ChangeHistory {
        ChangeHistory {
            options,
            files: HashMap::default(),
            order: VecDeque::new(),
            held: 0,
            bytes: 0,
        }
    }

    /// Files with a history, and what they weigh.
    pub(crate) fn size(&self) -> (u64, u64) {
        (self.files.len() as u64, self.bytes)
    }

    pub(crate) fn record(&mut self, event: &Arc<ChangeEvent>) {
        let file = match self.files.get_mut(&*event.path) {
            Some(file) => file,
            None => {
                self.bytes += FILE_OVERHEAD as u64;
                self.files.entry(event.path.clone()).or_default()
            }
        };
        if file.events.back().is_some_and(|last| last.rev >= event.rev) {
            // Out of order (e.g. a store reopened from older data): restart the history.
            self.bytes -= file.bytes as u64;
            self.held -= file.events.len();
            file.events.clear();
            file.bytes = 0;
        }
        let bytes = event_bytes(event);
        file.events.push_back(event.clone());
        file.bytes += bytes;
        self.bytes += bytes as u64;
        self.held += 1;
        while file.events.len() > self.options.history_per_file.max(1)
            || (file.bytes > self.options.history_bytes_per_file && file.events.len() > 1)
        {
            let Some(dropped) = file.pop_oldest() else { break };
            self.bytes -= dropped as u64;
            self.held -= 1;
        }
        self.order.push_back((event.path.clone(), event.rev));
        while self.bytes > self.options.history_bytes_total
            || self.order.len() > 2 * self.held + SLACK
        {
            let Some((path, rev)) = self.order.pop_front() else { break };
            self.drop_oldest(&path, rev);
        }
    }

    /// Drops `path`'s oldest change if it is revision `rev` (otherwise a per-file cap
    /// dropped it already), and the file's history once it is empty.
    fn drop_oldest(&mut self, path: &str, rev: u64) {
        let Some(file) = self.files.get_mut(path) else { return };
        if file.events.front().is_some_and(|e| e.rev == rev) {
            if let Some(dropped) = file.pop_oldest() {
                self.bytes -= dropped as u64;
                self.held -= 1;
            }
        }
        if file.events.is_empty() {
            self.files.remove(path);
            self.bytes -= FILE_OVERHEAD as u64;
        }
    }

    pub(crate) fn since(&self, path: &str, since_rev: u64) -> History {
        let Some(file) = self.files.get(path) else {
            return History::Gap { current_rev: None };
        };
        let (Some(first), Some(last)) = (file.events.front(), file.events.back()) else {
            return History::Gap { current_rev: None };
        };
        if since_rev > last.rev || since_rev + 1 < first.rev {
            return History::Gap { current_rev: Some(last.rev) };
        }
        History::Events(file.events.iter().filter(|e| e.rev > since_rev).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(path: &str, rev: u64, bytes: usize) -> Arc<ChangeEvent> {
        Arc::new(ChangeEvent {
            path: Arc::from(path),
            rev,
            change: ChangeOp::Put { content: Bytes::from(vec![b'x'; bytes]) },
            author: Arc::from("u"),
            ts_ms: rev,
            partition: 0,
        })
    }

    fn oldest(history: &ChangeHistory, path: &str) -> Option<u64> {
        history.files.get(path).and_then(|f| f.events.front()).map(|e| e.rev)
    }

    #[test]
    fn the_total_budget_drops_the_oldest_changes_of_every_file_alike() {
        let options = LocalBusOptions {
            history_per_file: 1000,
            history_bytes_per_file: 1 << 20,
            history_bytes_total: 100 * 1_000,
        };
        let mut history = ChangeHistory::new(options);
        for rev in 1..=100 {
            for f in 0..10 {
                history.record(&event(&format!("/f/{f}"), rev, 1_000 - 64 - 4 - 1));
            }
        }
        let (files, bytes) = history.size();
        assert_eq!(files, 10, "every file keeps its recent changes");
        assert!(bytes <= 100_000, "{bytes}");
        let oldest: Vec<u64> =
            (0..10).map(|f| oldest(&history, &format!("/f/{f}")).unwrap()).collect();
        assert!(oldest.iter().all(|&r| r >= 90 && r <= oldest[0] + 1), "{oldest:?}");
        assert_eq!(
            history.since("/f/9", 98),
            History::Events(vec![event("/f/9", 99, 931), event("/f/9", 100, 931)])
        );
        assert_eq!(history.since("/f/9", 10), History::Gap { current_rev: Some(100) });
    }

    #[test]
    fn the_byte_count_follows_every_way_a_change_leaves() {
        let options = LocalBusOptions {
            history_per_file: 3,
            history_bytes_per_file: 5_000,
            history_bytes_total: 20_000,
        };
        let mut history = ChangeHistory::new(options);
        for rev in 1..=50 {
            history.record(&event("/capped", rev, 100));
            history.record(&event(&format!("/many/{}", rev % 7), rev, 2_000));
        }
        // Back to an older revision: the file starts again.
        history.record(&event("/capped", 2, 100));
        let expected: u64 = history
            .files
            .values()
            .map(|f| {
                let held: usize = f.events.iter().map(|e| event_bytes(e)).sum();
                assert_eq!(f.bytes, held);
                (FILE_OVERHEAD + held) as u64
            })
            .sum();
        assert_eq!(history.size().1, expected);
        assert_eq!(history.held, history.files.values().map(|f| f.events.len()).sum::<usize>());
        assert!(expected <= 20_000);
        assert_eq!(history.since("/capped", 1), History::Events(vec![event("/capped", 2, 100)]));
    }

    #[test]
    fn one_hot_file_under_its_cap_does_not_grow_the_order_without_bound() {
        let options = LocalBusOptions { history_per_file: 3, ..LocalBusOptions::default() };
        let mut history = ChangeHistory::new(options);
        history.record(&event("/cold", 1, 10));
        for rev in 1..=100_000 {
            history.record(&event("/hot", rev, 10));
        }
        assert!(history.order.len() <= 2 * history.held + SLACK, "{}", history.order.len());
        assert_eq!(history.held, 3, "the cold file's old change went with the queue's slack");
        assert_eq!(oldest(&history, "/hot"), Some(99_998));
    }
}
