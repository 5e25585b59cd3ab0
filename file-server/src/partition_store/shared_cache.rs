//! What the partitions of one store share for cached reads: one [`HitTable`] for the clean
//! files of all of them, and the count of all their dirty files. A read that finds no
//! partition dirty and the path in the table is answered without knowing the path's
//! partition: computing it (a byte-serial hash of the path's first segments) and following
//! the partition's pointers made a cached read of 100,000 files a third slower.
//!
//! Each partition still keeps its own count, its own moka policy and its own byte budget; the
//! table holds only what the partitions' policies hold (see `clean_cache`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::hit_table::HitTable;
use crate::path::FilePath;
use crate::record::SharedRecord;

/// Hit-table shards per partition: the table's shards stay as small as one partition's own
/// table was.
const SHARDS_PER_PARTITION: usize = 8;

pub(crate) struct SharedCache {
    hits: Arc<HitTable>,
    /// The sum of the partitions' [`DirtyCount`]s.
    dirty_files: AtomicUsize,
}

impl SharedCache {
    pub(crate) fn new(partitions: usize) -> Arc<SharedCache> {
        Arc::new(SharedCache {
            hits: Arc::new(HitTable::new(partitions.saturating_mul(SHARDS_PER_PARTITION))),
            dirty_files: AtomicUsize::new(0),
        })
    }

    pub(super) fn hits(&self) -> &Arc<HitTable> {
        &self.hits
    }

    /// What the table knows of `path`. Only while no partition has a dirty file: a dirty
    /// version would shadow the cached one, and flushes fill the table before versions leave
    /// a dirty set.
    #[inline]
    pub(crate) fn lookup(&self, path: &FilePath) -> Lookup {
        if self.dirty_files.load(Ordering::Acquire) != 0 {
            return Lookup::Dirty;
        }
        match self.hits.get(path) {
            Some(record) => Lookup::Hit(record),
            None => Lookup::NotCached,
        }
    }
}

/// The answer of [`SharedCache::lookup`].
pub(crate) enum Lookup {
    /// The current version (a tombstone too).
    Hit(SharedRecord),
    /// No partition was dirty and the path is not cached: its partition's tree holds it if
    /// anything does (unless a change arrived since, which the partition's read sees).
    NotCached,
    /// Some partition has dirty files: the path's partition must be asked in full.
    Dirty,
}

/// One partition's count of dirty files, also counted in its store's [`SharedCache`].
pub(super) struct DirtyCount {
    own: AtomicUsize,
    shared: Arc<SharedCache>,
}

impl DirtyCount {
    pub(super) fn new(files: usize, shared: Arc<SharedCache>) -> DirtyCount {
        shared.dirty_files.fetch_add(files, Ordering::Release);
        DirtyCount { own: AtomicUsize::new(files), shared }
    }

    /// Records the dirty set's new length. Called under the partition state's write lock
    /// each time the set changes, after the change: a reader that sees the new count sees
    /// the new set (and, once it is zero, the cache that the flush filled).
    pub(super) fn set(&self, files: usize) {
        let before = self.own.swap(files, Ordering::AcqRel);
        // Wrapping: a shrinking set adds the two's complement of the difference.
        self.shared.dirty_files.fetch_add(files.wrapping_sub(before), Ordering::Release);
    }

    pub(super) fn is_zero(&self) -> bool {
        self.own.load(Ordering::Acquire) == 0
    }
}

impl Drop for DirtyCount {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_total_is_the_sum_of_the_partitions_counts() {
        let shared = SharedCache::new(2);
        let total = || shared.dirty_files.load(Ordering::Acquire);
        let a = DirtyCount::new(3, shared.clone());
        let b = DirtyCount::new(0, shared.clone());
        assert_eq!(total(), 3);
        b.set(5);
        a.set(1);
        assert_eq!(total(), 6);
        assert!(!a.is_zero());
        a.set(0);
        assert!(a.is_zero());
        assert_eq!(total(), 5);
        drop(b);
        assert_eq!(total(), 0);
    }
}
