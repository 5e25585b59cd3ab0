//! The clean cache's byte bound counts what a cached file really takes in memory: its
//! record, path, table slot and policy entry, not only its content.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ferry_file_server::{Change, Edit, FilePath, InitOptions, Store, StoreOptions, WalSync};

struct Counting;

/// Bytes allocated and not yet freed, by every thread (the store's background threads stay
/// idle here: no flush interval falls due and the log is left to the OS).
static NET_BYTES: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        NET_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NET_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        NET_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn the_cache_weighs_small_files_at_what_they_take() {
    let tmp = tempfile::tempdir().unwrap();
    Store::init(tmp.path(), InitOptions::default()).unwrap();
    let options = StoreOptions {
        cache_bytes: 1 << 30,
        flush_interval_ms: 3_600_000,
        flush_max_dirty: usize::MAX,
        wal_sync: WalSync::Os,
        ..StoreOptions::default()
    };
    let store = Store::open(tmp.path(), options).unwrap();
    let files = 20_000;
    let paths: Vec<FilePath> = (0..files)
        .map(|i| FilePath::parse(&format!("/home/u{}/f{i:06}", i % 50)).unwrap())
        .collect();
    let author: Arc<str> = Arc::from("writer");
    let before = NET_BYTES.load(Ordering::Relaxed);
    for path in &paths {
        let edit = Edit::Put(Bytes::from(vec![b'x'; 100]));
        let change =
            Change { path: path.clone(), edit, author: author.clone(), expected_rev: None };
        store.apply(change).unwrap();
    }
    store.flush().unwrap();
    for path in &paths {
        assert!(store.get(path).unwrap().is_some());
    }
    let held = NET_BYTES.load(Ordering::Relaxed) - before;
    let weighed: u64 = store.stats().iter().map(|p| p.cache_bytes).sum();
    // The store's other structures hold about 27 bytes per file here (measured with the cache
    // off), inside the margin.
    let ratio = weighed as f64 / held as f64;
    assert!(
        (0.8..=1.25).contains(&ratio),
        "{files} files take {held} bytes and weigh {weighed} (ratio {ratio:.2}); \
         is CACHED_FILE_OVERHEAD still right?"
    );
}
