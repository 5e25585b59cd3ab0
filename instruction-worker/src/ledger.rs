//! The idempotency ledger of one partition: which (subject, key) writes were applied and what
//! they answered, kept in memory and persisted through the store itself so that it survives a
//! restart.
//!
//! The ledger lives in `S` reserved files of the partition (`/.ferry-idem-<n>`, the `n` chosen
//! so that the file hashes to the partition), used as a ring of slots of `keys_per_slot`
//! entries: a batch's keys are appended to the current slot; when it is full the next slot is
//! overwritten (its keys forgotten) with a header of a higher generation. So between
//! `(S - 1) * keys_per_slot` and `S * keys_per_slot` recent keys per partition are remembered.
//!
//! Ordering: a batch's ledger record is appended to the partition's WAL after the batch's
//! keyed writes, in one atomic WAL group with them (`Store::group`), and the answers are sent
//! only once the group is durable. So an answered write is always in the ledger, and a crash
//! keeps a keyed write together with its key or loses both: a retry after a crash never
//! applies a write a second time.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ferry_file_server::{Change, FilePath, Store, StoreError};
use ferry_protocol::AnswerBody;
use serde::{Deserialize, Serialize};

/// The path prefix of the ledger files (inside Ferry's reserved namespace).
pub const LEDGER_PATH_PREFIX: &str = "/.ferry-idem-";

const LEDGER_FORMAT: &str = "ferry-idempotency";
const LEDGER_AUTHOR: &str = "ferry";

/// (subject, key).
pub(crate) type IdemKey = (Arc<str>, String);

/// The ledger's index: (subject, key) -> the first answer. foldhash rather than SipHash: the
/// keys come from authenticated clients, and hashing was most of a slot's rotation.
type Index = hashbrown::HashMap<IdemKey, AnswerBody, foldhash::fast::RandomState>;

/// A borrowed (subject, key), to look one up without allocating. Hashes as [`IdemKey`] does.
struct KeyRef<'a>(&'a str, &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl hashbrown::Equivalent<IdemKey> for KeyRef<'_> {
    fn equivalent(&self, key: &IdemKey) -> bool {
        *key.0 == *self.0 && key.1 == self.1
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    ledger: String,
    generation: u64,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    s: Arc<str>,
    k: String,
    a: AnswerBody,
}

/// The ledger paths of every partition in `partitions`, `slots` each.
pub(crate) fn slot_paths(
    store: &Store,
    partitions: &[u32],
    slots: usize,
) -> HashMap<u32, Vec<FilePath>> {
    let mut out: HashMap<u32, Vec<FilePath>> =
        partitions.iter().map(|&p| (p, Vec::with_capacity(slots))).collect();
    let mut missing = partitions.len();
    let mut n = 0u64;
    while missing > 0 {
        let path =
            FilePath::parse(&format!("{LEDGER_PATH_PREFIX}{n}")).expect("ledger paths are valid");
        n += 1;
        if let Some(paths) = out.get_mut(&store.partition_of(&path)) {
            if paths.len() < slots {
                paths.push(path);
                if paths.len() == slots {
                    missing -= 1;
                }
            }
        }
    }
    out
}

/// One partition's ledger. See the module documentation.
pub(crate) struct KeyLedger {
    slots: Vec<FilePath>,
    keys_per_slot: usize,
    current: usize,
    generation: u64,
    /// Entries in the current slot.
    count: usize,
    per_slot: Vec<Vec<IdemKey>>,
    index: Index,
}

impl KeyLedger {
    /// Loads the ledger kept in `slots`.
    pub(crate) fn load(
        store: &Store,
        slots: Vec<FilePath>,
        keys_per_slot: usize,
    ) -> Result<KeyLedger, StoreError> {
        let mut loaded: Vec<(u64, usize, Vec<Entry>)> = Vec::new();
        for (i, path) in slots.iter().enumerate() {
            let Some(record) = store.get(path)? else { continue };
            let content = record.content.as_deref().unwrap_or_default();
            let mut lines = content.split(|&b| b == b'\n').filter(|l| !l.is_empty());
            let header: Option<Header> = lines.next().and_then(|l| serde_json::from_slice(l).ok());
            let Some(header) = header.filter(|h| h.ledger == LEDGER_FORMAT) else {
                tracing::warn!(%path, "ignoring an idempotency ledger file without a header");
                continue;
            };
            let mut entries = Vec::new();
            for line in lines {
                match serde_json::from_slice::<Entry>(line) {
                    Ok(entry) => entries.push(entry),
                    Err(e) => tracing::warn!(path = %path, error = %e, "ignoring a ledger line"),
                }
            }
            loaded.push((header.generation, i, entries));
        }
        loaded.sort_by_key(|(generation, _, _)| *generation);
        let mut ledger = KeyLedger {
            per_slot: vec![Vec::new(); slots.len()],
            slots,
            keys_per_slot: keys_per_slot.max(1),
            current: 0,
            generation: 0,
            count: 0,
            index: Index::default(),
        };
        for (generation, slot, entries) in loaded {
            ledger.current = slot;
            ledger.generation = generation;
            ledger.count = entries.len();
            for entry in entries {
                let key = (entry.s, entry.k);
                ledger.per_slot[slot].push(key.clone());
                ledger.index.insert(key, entry.a);
            }
        }
        Ok(ledger)
    }

    /// The original answer of an applied write with this key.
    pub(crate) fn lookup(&self, subject: &Arc<str>, key: &str) -> Option<&AnswerBody> {
        self.index.get(&KeyRef(subject, key))
    }

    /// Remembers `entries` and returns the change that persists them, to be submitted after
    /// the writes they answer.
    pub(crate) fn record(&mut self, entries: Vec<(IdemKey, AnswerBody)>) -> Option<Change> {
        if entries.is_empty() {
            return None;
        }
        let fresh = self.count == 0 || self.count + entries.len() > self.keys_per_slot;
        if fresh && self.count > 0 {
            self.current = (self.current + 1) % self.slots.len();
            self.count = 0;
            for key in std::mem::take(&mut self.per_slot[self.current]) {
                self.index.remove(&key);
            }
        }
        let mut text = Vec::new();
        if fresh {
            self.generation += 1;
            let header = Header { ledger: LEDGER_FORMAT.into(), generation: self.generation };
            push_line(&mut text, &header);
        }
        for ((subject, key), answer) in entries {
            push_line(&mut text, &Entry { s: subject.clone(), k: key.clone(), a: answer.clone() });
            self.per_slot[self.current].push((subject.clone(), key.clone()));
            self.index.insert((subject, key), answer);
            self.count += 1;
        }
        let path = self.slots[self.current].clone();
        Some(if fresh {
            Change::put(path, text, LEDGER_AUTHOR)
        } else {
            Change::append(path, text, LEDGER_AUTHOR)
        })
    }
}

fn push_line<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    // Strings, integers and JSON values: serializing into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("ledger entries serialize");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_key_finds_its_entry_and_no_other() {
        let mut index = Index::default();
        index.insert((Arc::from("alice"), "k1".to_owned()), AnswerBody::Written { rev: 1 });
        index.insert((Arc::from("bob"), "k1".to_owned()), AnswerBody::Written { rev: 2 });
        assert_eq!(index.get(&KeyRef("alice", "k1")), Some(&AnswerBody::Written { rev: 1 }));
        assert_eq!(index.get(&KeyRef("bob", "k1")), Some(&AnswerBody::Written { rev: 2 }));
        assert!(index.get(&KeyRef("alic", "ek1")).is_none());
        assert!(index.get(&KeyRef("alice", "k2")).is_none());
        assert!(index.get(&KeyRef("carol", "k1")).is_none());
    }
}
