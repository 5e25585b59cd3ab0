//! A warm point lookup is a pure descent through mapped pages: a miss allocates nothing and
//! a hit allocates only the returned record's content (a repeated author is shared).

mod tree_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ferry_file_server::tree::TreeFile;
use tree_support::*;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: the thread-locals may already be gone while a thread shuts down
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                ALLOCATIONS.with(|a| a.set(a.get() + 1));
            }
        });
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCATIONS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATIONS.with(|a| a.get()))
}

#[test]
fn warm_lookups_allocate_only_the_returned_record() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tree = TreeFile::open(fs_dir(&tmp), 0, 1).unwrap();
    for round in 0..5u64 {
        let items = (0..2000u64)
            .map(|i| {
                (
                    path(&format!("/user{}/file{:06}", i % 10, i * 5 + round)),
                    live(1, content(i, 500)),
                )
            })
            .collect();
        tree.commit(&batch(items), round).unwrap();
    }
    assert!(tree.header().depth >= 3, "depth {}", tree.header().depth);
    let snap = tree.snapshot();
    let hit = path("/user3/file004668");
    let miss = path("/user3/file004668x");
    // the first touch checksums the pages (and may allocate the verified-page bitmap) and
    // makes this thread's shared copy of the author
    assert!(snap.get(&hit).unwrap().is_some());
    assert!(snap.get(&miss).unwrap().is_none());

    let (found, n) = allocations_during(|| snap.get(&miss).unwrap());
    assert!(found.is_none());
    assert_eq!(n, 0, "a miss allocated");
    let (meta, n) = allocations_during(|| snap.get_meta(&hit).unwrap());
    assert!(meta.is_some());
    assert_eq!(n, 0, "get_meta allocated (the author should be shared)");
    let (record, n) = allocations_during(|| snap.get(&hit).unwrap());
    assert_eq!(record.unwrap().content.unwrap().len(), 500);
    assert_eq!(n, 1, "get allocates the content only");
}
