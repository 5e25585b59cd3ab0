//! The cache of clean file versions: moka decides what stays (bounded in bytes, TinyLFU), and
//! a [`HitTable`] mirrors what moka holds so that a hit costs one shard read lock and about
//! three memory reads.
//!
//! moka's own `get` records every read for its policy (a channel, a clock read, housekeeping);
//! at several hundred instructions per hit that alone caps a core near 3M reads/s. Here a hit
//! is answered by the mirror, and only one hit in [`POLICY_SAMPLE`] per thread is also shown
//! to moka, which is enough for its frequency sketch to tell hot files from cold ones.
//!
//! moka holds each cached path with its weight, not its record: a flush puts a new version of
//! a file already cached into the mirror only, and tells moka only when the file's weight
//! moved by a quarter (at least [`REWEIGH_BYTES`]) from the weight moka last saw, which the
//! mirror keeps beside the record. Reporting each flushed version to moka was 6 % of
//! `ferry serve`'s CPU samples at 15,000 writes/s.
//!
//! The caches of a store's partitions share one mirror (`shared_cache`), each putting in and
//! taking out only its own paths. The mirror never holds a path moka does not: a path enters
//! the mirror before moka, and moka's eviction listener removes it from the mirror. A path
//! already in the mirror is in moka too, or its eviction notice is on its way and will remove
//! the new version as well. The reverse (a notice about an eviction racing a new insert
//! removes the new version) costs a miss, never memory.

use std::cell::Cell;
use std::sync::Arc;

use super::hit_table::{Hasher, HitTable};
use crate::path::FilePath;
use crate::record::{Record, SharedRecord};

/// One hit in this many (per thread) is also reported to moka's policy. At one in 16 the
/// reports were an eighth of a cached read's time.
pub const POLICY_SAMPLE: u32 = 64;

/// A cached file's new version is weighed again by moka when its weight moved by at least a
/// quarter and at least this much.
pub const REWEIGH_BYTES: u32 = 4096;

pub(super) struct CleanCache {
    /// `false` for a zero-byte cache: nothing is kept (moka would take and drop each entry).
    enabled: bool,
    mirror: Arc<HitTable>,
    /// Each cached path's weight as moka last saw it.
    policy: moka::sync::Cache<FilePath, u32, Hasher>,
}

thread_local! {
    static HITS: Cell<u32> = const { Cell::new(0) };
}

impl CleanCache {
    /// A cache of at most `bytes` (content, path, author and a fixed overhead per file),
    /// whose hits `mirror` answers. Several caches may share one mirror: each puts in and
    /// takes out only the paths its own policy holds.
    pub(super) fn new(bytes: u64, mirror: Arc<HitTable>) -> CleanCache {
        let evicted = Arc::downgrade(&mirror);
        let policy = moka::sync::Cache::builder()
            .max_capacity(bytes)
            .weigher(|_path: &FilePath, weight: &u32| *weight)
            .eviction_listener(move |path: Arc<FilePath>, _weight, cause| {
                // A new weight replaces the old one of a path that stays.
                if cause == moka::notification::RemovalCause::Replaced {
                    return;
                }
                if let Some(mirror) = evicted.upgrade() {
                    mirror.remove(&path);
                }
            })
            .build_with_hasher(Hasher::default());
        CleanCache { enabled: bytes > 0, mirror, policy }
    }

    #[inline]
    pub(super) fn get(&self, path: &FilePath) -> Option<SharedRecord> {
        let found = self.mirror.get(path)?;
        if sampled() {
            self.show_hit(path);
        }
        Some(found)
    }

    /// Tells the policy of a hit on `path` that the mirror answered (for sampled hits).
    pub(super) fn show_hit(&self, path: &FilePath) {
        self.policy.get(path);
    }

    /// Holds `record` as the version of `path`, which must be the record's own path.
    pub(super) fn insert(&self, path: FilePath, record: SharedRecord) {
        if !self.enabled {
            return;
        }
        debug_assert_eq!(record.path_bytes(), path.as_str().as_bytes());
        let now = weight(&path, &record);
        if self.mirror.insert(record, now, |known| !reweigh(known, now)) {
            self.policy.insert(path, now);
        } else if sampled() {
            self.policy.get(&path);
        }
    }

    /// Holds `record` as the version of `path` if the cache answers reads of `path` now, and
    /// leaves the cache alone otherwise: for versions written in bulk, which should not push
    /// out the files that are read.
    pub(super) fn refresh(&self, path: FilePath, record: SharedRecord) {
        if self.mirror.get(&path).is_some() {
            self.insert(path, record);
        }
    }

    /// Drops every version under `prefix` that this cache holds.
    pub(super) fn evict_prefix(&self, prefix: &str) {
        let doomed: Vec<Arc<FilePath>> = self
            .policy
            .iter()
            .map(|(path, _)| path)
            .filter(|p| p.as_str().starts_with(prefix))
            .collect();
        for path in doomed {
            self.mirror.remove(&path);
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

/// What a cached file takes in memory besides its content, path and author: its
/// `SharedRecord`, its hit-table slot and moka's entry for it. Measured
/// (`tests/cache_weight.rs` checks it still holds): about 650 bytes per cached file of 100
/// bytes with a 17-byte path, 550 of them these.
pub const CACHED_FILE_OVERHEAD: usize = 550;

/// What a cached version costs: content, path, author and [`CACHED_FILE_OVERHEAD`].
fn weight(path: &FilePath, record: &Record) -> u32 {
    let size = path.as_str().len() + record.meta.author.len() + CACHED_FILE_OVERHEAD;
    let content = record.content.as_ref().map_or(0, |c| c.len());
    u32::try_from(size + content).unwrap_or(u32::MAX)
}

fn reweigh(known: u32, now: u32) -> bool {
    known.abs_diff(now) >= REWEIGH_BYTES.max(known / 4)
}

/// Whether this hit is one of the [`POLICY_SAMPLE`] shown to moka.
#[inline]
pub(crate) fn sampled() -> bool {
    HITS.with(|hits| {
        let n = hits.get().wrapping_add(1);
        hits.set(n);
        n % POLICY_SAMPLE == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Puts a version of `path` at `rev` with `len` bytes of content into `cache`.
    fn put(cache: &CleanCache, path: FilePath, rev: u64, len: usize) {
        let record = Record::live(rev, 1, Arc::from("t"), Bytes::from(vec![b'x'; len]));
        cache.insert(path.clone(), SharedRecord::new(&path, record));
    }

    fn path(i: usize) -> FilePath {
        FilePath::parse(&format!("/f/{i}")).unwrap()
    }

    #[test]
    fn the_mirror_holds_no_more_than_the_byte_bound_allows() {
        let cache = CleanCache::new(100_000, Arc::new(HitTable::new(8)));
        for i in 0..2_000 {
            put(&cache, path(i), 1, 1_000);
        }
        assert!(cache.weighted_size() <= 100_000);
        let held = cache.mirrored();
        assert!(held > 0 && held <= 100, "{held} files of ~1.1 KB in 100 KB");
        assert_eq!(held, (0..2_000).filter(|&i| cache.get(&path(i)).is_some()).count());
    }

    #[test]
    fn a_newer_version_replaces_the_cached_one_and_stays() {
        let cache = CleanCache::new(1 << 20, Arc::new(HitTable::new(8)));
        put(&cache, path(1), 1, 10);
        put(&cache, path(1), 2, 10);
        cache.mirrored();
        assert_eq!(cache.get(&path(1)).unwrap().meta.rev, 2);
    }

    #[test]
    fn files_that_grew_in_the_cache_are_weighed_again_and_the_bound_holds() {
        let cache = CleanCache::new(100_000, Arc::new(HitTable::new(8)));
        for i in 0..50 {
            put(&cache, path(i), 1, 100);
        }
        assert_eq!(cache.mirrored(), 50);
        // Each file grows to 10 KB in new versions: only about ten fit now.
        for rev in 2..=100 {
            for i in 0..50 {
                put(&cache, path(i), rev, 100 * rev as usize);
            }
        }
        assert!(cache.weighted_size() <= 100_000);
        // Weights are known to within a quarter: at most 100 KB / 7.5 KB files stay.
        let held = cache.mirrored();
        assert!(held > 0 && held <= 13, "{held} files of ~10 KB in 100 KB");
    }

    #[test]
    fn files_read_often_outlast_a_stream_of_files_read_once() {
        // A stream of files read once does not push out the files in steady use: room for
        // about 90 files of ~1.1 KB; 20 hot files stay in use (400 hits between two new
        // files) while 1,000 files pass through, each inserted and read once.
        let cache = CleanCache::new(100_000, Arc::new(HitTable::new(8)));
        let hot = |i: usize| FilePath::parse(&format!("/hot/{i}")).unwrap();
        for i in 0..20 {
            put(&cache, hot(i), 1, 1_000);
        }
        for i in 0..1_000 {
            for _ in 0..20 {
                for h in 0..20 {
                    cache.get(&hot(h));
                }
            }
            put(&cache, path(i), 1, 1_000);
            cache.get(&path(i));
        }
        cache.mirrored();
        let kept = (0..20).filter(|&i| cache.get(&hot(i)).is_some()).count();
        assert!(kept >= 18, "{kept} of 20 hot files kept");
    }

    #[test]
    fn small_changes_of_weight_are_not_reported_and_large_ones_are() {
        assert!(!reweigh(1_000, 1_500));
        assert!(reweigh(1_000, 5_096));
        assert!(!reweigh(100_000, 120_000));
        assert!(reweigh(100_000, 75_000));
    }

    #[test]
    fn a_zero_byte_cache_keeps_nothing() {
        let cache = CleanCache::new(0, Arc::new(HitTable::new(8)));
        put(&cache, path(1), 1, 10);
        assert_eq!(cache.mirrored(), 0);
        assert!(cache.get(&path(1)).is_none());
    }
}
