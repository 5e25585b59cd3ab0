//! The table that answers clean-cache hits: shards of open-addressing tables whose 16-byte
//! slots hold half the path's hash, the weight moka last saw for the path and the cached
//! [`SharedRecord`], which holds its own path beside its reference count.
//!
//! Why not a general concurrent map: with the key in its own allocation a hit follows the
//! table's slot to the key's string and then to the record, and past the CPU caches each of
//! those is a trip to memory (a read of a cached 500-byte file among 100,000 was about five).
//! Here a hit touches the table's control bytes and one slot, which for 100,000 files fit in
//! about 2 MB (the CPU's caches, mostly), and the record's first line.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::path::FilePath;
use crate::record::SharedRecord;

/// The hasher of this table and of moka's policy beside it. foldhash rather than SipHash:
/// hashing the path was a sixth of a cached read. It is randomly seeded too, with weaker
/// guarantees against deliberately colliding paths.
pub(super) type Hasher = foldhash::fast::RandomState;

pub(super) struct HitTable {
    /// A power of two of them, so that readers on several cores rarely meet on one lock's
    /// cache line and each shard's table stays small (a growing table rehashes all of it).
    shards: Box<[Shard]>,
    hasher: Hasher,
}

/// A cache line of its own, so that one shard's lock traffic does not slow its neighbours.
#[repr(align(64))]
struct Shard(RwLock<HashTable<Slot>>);

struct Slot {
    /// The low half of the path's hash: a mismatch spares the record's line and the byte
    /// comparison. (A table that grows hashes its keys again, which is rare enough to leave
    /// the other half's room to `weight`.)
    check: u32,
    /// The weight the eviction policy was last told for this path.
    weight: u32,
    record: SharedRecord,
}

impl Slot {
    /// Whether this slot is the path with these bytes and hash.
    #[inline]
    fn holds(&self, hash: u64, path: &[u8]) -> bool {
        self.check == hash as u32 && self.record.path_bytes() == path
    }
}

impl HitTable {
    /// A table of at least `shards` shards.
    pub(super) fn new(shards: usize) -> HitTable {
        let count = shards.clamp(1, 1 << 16).next_power_of_two();
        let shards = (0..count).map(|_| Shard(RwLock::new(HashTable::new()))).collect();
        HitTable { shards, hasher: Hasher::default() }
    }

    /// The path's hash and the shard that holds it.
    #[inline]
    fn locate(&self, path: &[u8]) -> (u64, &RwLock<HashTable<Slot>>) {
        let hash = self.hasher.hash_one(path);
        // Bits that neither the slot's check (the low 32) nor hashbrown use for a shard of
        // under 2^32 slots: it takes the low bits for the position and the top seven as the
        // tag. At most 2^16 shards.
        let shard = (hash >> 32) as usize & (self.shards.len() - 1);
        (hash, &self.shards[shard].0)
    }

    #[inline]
    pub(super) fn get(&self, path: &FilePath) -> Option<SharedRecord> {
        let wanted = path.as_str().as_bytes();
        let (hash, shard) = self.locate(wanted);
        let table = shard.read();
        table.find(hash, |s| s.holds(hash, wanted)).map(|s| s.record.clone())
    }

    /// Holds `record` as its path's version, which weighs `weight`. A path already held keeps
    /// the weight recorded for it as long as `still_close(recorded)`. Returns whether `weight`
    /// was recorded (a new path, or a weight that moved): the policy must then hear of it.
    pub(super) fn insert(
        &self,
        record: SharedRecord,
        weight: u32,
        still_close: impl FnOnce(u32) -> bool,
    ) -> bool {
        let wanted = record.path_bytes();
        let (hash, shard) = self.locate(wanted);
        let mut table = shard.write();
        let rehash = |s: &Slot| self.hasher.hash_one(s.record.path_bytes());
        match table.entry(hash, |s| s.holds(hash, wanted), rehash) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                let slot = slot.get_mut();
                slot.record = record;
                let moved = !still_close(slot.weight);
                if moved {
                    slot.weight = weight;
                }
                moved
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(Slot { check: hash as u32, weight, record });
                true
            }
        }
    }

    pub(super) fn remove(&self, path: &FilePath) {
        let wanted = path.as_str().as_bytes();
        let (hash, shard) = self.locate(wanted);
        let mut table = shard.write();
        if let Ok(slot) = table.find_entry(hash, |s| s.holds(hash, wanted)) {
            slot.remove();
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Record, INLINE_PATH};
    use bytes::Bytes;
    use std::sync::Arc;

    fn record(path: &FilePath, rev: u64) -> SharedRecord {
        SharedRecord::new(path, Record::live(rev, 1, Arc::from("t"), Bytes::from_static(b"x")))
    }

    fn path(s: &str) -> FilePath {
        FilePath::parse(s).unwrap()
    }

    #[test]
    fn four_slots_fill_a_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn short_and_long_paths_are_found_and_told_apart() {
        let table = HitTable::new(8);
        let short = path("/home/a/x");
        let long = path(&format!("/home/a/{}", "y".repeat(INLINE_PATH)));
        let longer = path(&format!("/home/a/{}z", "y".repeat(INLINE_PATH)));
        let edge = path(&format!("/{}", "e".repeat(INLINE_PATH - 1)));
        table.insert(record(&short, 1), 1, |_| true);
        table.insert(record(&long, 2), 1, |_| true);
        table.insert(record(&edge, 3), 1, |_| true);
        assert_eq!(table.get(&short).unwrap().meta.rev, 1);
        assert_eq!(table.get(&long).unwrap().meta.rev, 2);
        assert_eq!(table.get(&edge).unwrap().meta.rev, 3);
        assert!(table.get(&longer).is_none());
        assert!(table.get(&path("/home/a/x2")).is_none());
        table.insert(record(&short, 4), 1, |_| true);
        assert_eq!(table.get(&short).unwrap().meta.rev, 4);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn a_held_path_keeps_its_recorded_weight_until_it_moved() {
        let table = HitTable::new(8);
        let p = path("/a/b");
        assert!(table.insert(record(&p, 1), 100, |_| unreachable!("a new path")));
        let mut seen = None;
        assert!(!table.insert(record(&p, 2), 120, |w| {
            seen = Some(w);
            true
        }));
        assert_eq!(seen, Some(100));
        assert_eq!(table.get(&p).unwrap().meta.rev, 2);
        assert!(table.insert(record(&p, 3), 900, |w| w == 900));
        assert!(!table.insert(record(&p, 4), 5, |w| w == 900));
        table.remove(&p);
        assert!(table.get(&p).is_none());
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn paths_are_found_after_the_table_grew() {
        let table = HitTable::new(8);
        for i in 0..5_000 {
            table.insert(record(&path(&format!("/g/{i}")), i), 1, |_| true);
        }
        assert!((0..5_000).all(|i| table.get(&path(&format!("/g/{i}"))).unwrap().meta.rev == i));
        assert!(table.get(&path("/g/5000")).is_none());
    }
}
