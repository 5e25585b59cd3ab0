//! Authors as shared strings. A store holds few distinct authors (client ids) over many
//! files, so a read that made a new `Arc<str>` per record would spend more on that allocation
//! (and on freeing it) than on finding the record; a small per-thread cache hands out clones
//! of the same few instead.

use std::cell::RefCell;
use std::sync::Arc;

/// Distinct authors remembered per thread, replaced round-robin.
const SLOTS: usize = 8;

struct Recent {
    slots: [Option<Arc<str>>; SLOTS],
    next: usize,
}

thread_local! {
    static RECENT: RefCell<Recent> =
        const { RefCell::new(Recent { slots: [const { None }; SLOTS], next: 0 }) };
}

impl Recent {
    fn get_or_make(&mut self, bytes: &[u8]) -> Option<Arc<str>> {
        if let Some(hit) = self.slots.iter().flatten().find(|a| a.as_bytes() == bytes) {
            return Some(hit.clone());
        }
        let made: Arc<str> = Arc::from(std::str::from_utf8(bytes).ok()?);
        self.slots[self.next] = Some(made.clone());
        self.next = (self.next + 1) % SLOTS;
        Some(made)
    }
}

/// The author `bytes` as a shared string; `None` when they are not UTF-8.
pub(crate) fn shared(bytes: &[u8]) -> Option<Arc<str>> {
    // Unreachable only while the thread is being torn down: then allocate.
    RECENT
        .try_with(|r| r.borrow_mut().get_or_make(bytes))
        .unwrap_or_else(|_| std::str::from_utf8(bytes).ok().map(Arc::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_authors_share_one_allocation_and_bad_utf8_is_refused() {
        let a = shared(b"alice").unwrap();
        let b = shared(b"alice").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "alice");
        assert_eq!(shared(b"\xff\xfe"), None);
        assert_eq!(&*shared(b"").unwrap(), "");
    }

    #[test]
    fn more_authors_than_slots_are_all_returned_correctly() {
        for round in 0..3 {
            for i in 0..SLOTS * 2 + 1 {
                let name = format!("client-{i}");
                assert_eq!(&*shared(name.as_bytes()).unwrap(), name, "round {round}");
            }
        }
    }
}
