//! Which live worker owns which partition: rendezvous (highest random weight) hashing. Every
//! worker computes the same owners from the same member list, with no coordinator; when a
//! worker joins it takes about `1/n` of the partitions, each from whoever had it, and when one
//! leaves only its partitions move.

/// The owner of `partition` among `workers` (ids), or `None` when there are none.
pub fn owner(partition: u32, workers: &[String]) -> Option<&str> {
    workers.iter().max_by_key(|w| (weight(partition, w), w.as_str())).map(String::as_str)
}

/// The partitions of `0..partitions` that `worker` owns among `workers`.
pub fn owned_by(worker: &str, partitions: u32, workers: &[String]) -> Vec<u32> {
    (0..partitions).filter(|&p| owner(p, workers) == Some(worker)).collect()
}

/// FNV-1a 64 of the worker id and the partition, then a 64-bit finalizer (FNV alone mixes the
/// last bytes poorly, which would skew ownership between ids that differ only at the end).
fn weight(partition: u32, worker: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in worker.as_bytes().iter().chain(&partition.to_le_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_order_does_not_matter() {
        let a = ids(&["w-1", "w-2", "w-3"]);
        let b = ids(&["w-3", "w-1", "w-2"]);
        let mut seen = 0;
        for w in &a {
            let mine = owned_by(w, 64, &a);
            assert_eq!(mine, owned_by(w, 64, &b));
            seen += mine.len();
        }
        assert_eq!(seen, 64);
        assert_eq!(owner(0, &[]), None);
    }

    #[test]
    fn a_joining_worker_takes_partitions_only_for_itself() {
        let before = ids(&["w-1", "w-2"]);
        let after = ids(&["w-1", "w-2", "w-3"]);
        let mut moved = 0;
        for p in 0..256 {
            let (old, new) = (owner(p, &before).unwrap(), owner(p, &after).unwrap());
            if old != new {
                assert_eq!(new, "w-3", "partition {p} moved between old workers");
                moved += 1;
            }
        }
        // About a third; far from none and far from all.
        assert!((50..120).contains(&moved), "{moved} of 256 moved");
    }

    #[test]
    fn a_leaving_worker_gives_up_only_its_own_partitions() {
        let before = ids(&["a", "b", "c", "d"]);
        let after = ids(&["a", "b", "d"]);
        for p in 0..256 {
            let old = owner(p, &before).unwrap();
            if old != "c" {
                assert_eq!(owner(p, &after).unwrap(), old);
            }
        }
    }

    #[test]
    fn ownership_is_spread_evenly() {
        let workers: Vec<String> = (0..4).map(|i| format!("host-{i}")).collect();
        for w in &workers {
            let n = owned_by(w, 1024, &workers).len();
            assert!((200..312).contains(&n), "{w} owns {n} of 1024");
        }
    }
}
