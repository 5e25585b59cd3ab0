//! The cache of clean file versions: moka decides what stays (bounded in bytes, TinyLFU), and
//! a [`HitTable`] mirrors what moka holds so that a hit costs one shard read lock and about
//! three memory reads.
//!
//! moka's own `get` records every read for its policy (a channel, a clock read, housekeeping);
//! at several hundred instructions per hit that alone caps a core near 3M reads/s. Here a hit
//! is answered by the mirror, and only one hit in [`POLICY_SAMPLE`] per thread is also shown
//! to moka, which is enough for its frequency sketch to tell hot files from cold ones.
//!
//! The mirror never holds more than moka: a version enters the mirror before moka, and moka's
//! eviction listener removes it from the mirror only if the mirror still holds that very
//! version (`Arc::ptr_eq`), so a late notice about an older version cannot remove a newer one.

use std::cell::Cell;
use std::sync::Arc;

use super::hit_table::{Hasher, HitTable};
use crate::path::FilePath;
use crate::record::Record;

/// One hit in this many (per thread) is also reported to moka's policy. At one in 16 the
/// reports were an eighth of a cached read's time.
pub const POLICY_SAMPLE: u32 = 64;

pub(super) struct CleanCache {
    /// `false` for a zero-byte cache: nothing is kept (moka would take and drop each entry).
    enabled: bool,
    mirror: Arc<HitTable>,
    policy: moka::sync::Cache<FilePath, Arc<Record>, Hasher>,
}

thread_local! {
    static HITS: Cell<u32> = const { Cell::new(0) };
}

impl CleanCache {
    /// A cache of at most `bytes` (content, path, author and a fixed overhead per file).
    pub(super) fn new(bytes: u64) -> CleanCache {
        let mirror = Arc::new(HitTable::new());
        let evicted = Arc::downgrade(&mirror);
        let policy = moka::sync::Cache::builder()
            .max_capacity(bytes)
            .weigher(|path: &FilePath, record: &Arc<Record>| {
                let size = path.as_str().len() + record.meta.author.len() + 96;
                let content = record.content.as_ref().map_or(0, |c| c.len());
                u32::try_from(size + content).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |path: Arc<FilePath>, record: Arc<Record>, _cause| {
                if let Some(mirror) = evicted.upgrade() {
                    mirror.remove_if_held(&path, &record);
                }
            })
            .build_with_hasher(Hasher::default());
        CleanCache { enabled: bytes > 0, mirror, policy }
    }

    pub(super) fn get(&self, path: &FilePath) -> Option<Arc<Record>> {
        let found = self.mirror.get(path)?;
        let sampled = HITS.with(|hits| {
            let n = hits.get().wrapping_add(1);
            hits.set(n);
            n % POLICY_SAMPLE == 0
        });
        if sampled {
            self.policy.get(path);
        }
        Some(found)
    }

    pub(super) fn insert(&self, path: FilePath, record: Arc<Record>) {
        if !self.enabled {
            return;
        }
        self.mirror.insert(&path, record.clone());
        self.policy.insert(path, record);
    }

    /// Drops every cached version under `prefix`.
    pub(super) fn evict_prefix(&self, prefix: &str) {
        self.mirror.remove_prefix(prefix);
        let doomed: Vec<Arc<FilePath>> = self
            .policy
            .iter()
            .map(|(path, _)| path)
            .filter(|p| p.as_str().starts_with(prefix))
            .collect();
        for path in doomed {
            self.policy.invalidate(&*path);
        }
    }

    /// Bytes held, by the weigher, once pending evictions have run.
    pub(super) fn weighted_size(&self) -> u64 {
        self.policy.run_pending_tasks();
        self.policy.weighted_size()
    }

    #[cfg(test)]
    fn mirrored(&self) -> usize {
        self.policy.run_pending_tasks();
        self.mirror.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(rev: u64, len: usize) -> Arc<Record> {
        Arc::new(Record::live(rev, 1, Arc::from("t"), Bytes::from(vec![b'x'; len])))
    }

    fn path(i: usize) -> FilePath {
        FilePath::parse(&format!("/f/{i}")).unwrap()
    }

    #[test]
    fn the_mirror_holds_no_more_than_the_byte_bound_allows() {
        let cache = CleanCache::new(100_000);
        for i in 0..2_000 {
            cache.insert(path(i), record(1, 1_000));
        }
        assert!(cache.weighted_size() <= 100_000);
        let held = cache.mirrored();
        assert!(held > 0 && held <= 100, "{held} files of ~1.1 KB in 100 KB");
        assert_eq!(held, (0..2_000).filter(|&i| cache.get(&path(i)).is_some()).count());
    }

    #[test]
    fn a_newer_version_survives_the_eviction_notice_of_an_older_one() {
        let cache = CleanCache::new(1 << 20);
        let old = record(1, 10);
        let new = record(2, 10);
        cache.insert(path(1), old);
        cache.insert(path(1), new.clone());
        cache.mirrored();
        assert!(Arc::ptr_eq(&cache.get(&path(1)).unwrap(), &new));
    }

    #[test]
    fn a_zero_byte_cache_keeps_nothing() {
        let cache = CleanCache::new(0);
        cache.insert(path(1), record(1, 10));
        assert_eq!(cache.mirrored(), 0);
        assert!(cache.get(&path(1)).is_none());
    }
}
