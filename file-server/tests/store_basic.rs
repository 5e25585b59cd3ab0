//! The partitioned store on a real directory: init, routing, reads through every layer,
//! reopening, the write lock and the read-only view.

use std::path::Path;

use ferry_file_server::{
    open_read_only, BatchRoute, Change, FilePath, InitOptions, Store, StoreError, StoreOptions,
    WalGroupSync, WalSync,
};

fn p(s: &str) -> FilePath {
    FilePath::parse(s).unwrap()
}

fn init(dir: &Path) {
    Store::init(dir, InitOptions { partitions: 4, partition_depth: 2 }).unwrap();
}

fn fast() -> StoreOptions {
    StoreOptions { wal_preallocate_bytes: 64 << 10, ..StoreOptions::default() }
}

#[test]
fn init_writes_the_layout_and_refuses_a_different_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init(&dir);
    init(&dir); // same layout again: fine
    let err = Store::init(&dir, InitOptions { partitions: 8, partition_depth: 2 }).unwrap_err();
    assert!(matches!(err, StoreError::LayoutMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("4 partitions"), "{err}");
    for i in 0..4 {
        assert!(dir.join(format!("p{i:03}")).is_dir());
    }
    let manifest = std::fs::read_to_string(dir.join("ferry-store.json")).unwrap();
    assert!(manifest.contains("\"partitions\": 4"), "{manifest}");
    let missing = Store::open(&tmp.path().join("nothing"), fast()).err().unwrap();
    assert!(matches!(missing, StoreError::NotInitialized { .. }), "{missing:?}");
}

#[test]
fn changes_are_readable_at_once_and_after_flush_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let store = Store::open(tmp.path(), fast()).unwrap();
    let a = p("/home/alice/notes.txt");
    let applied = store.apply(Change::put(a.clone(), "hello", "alice")).unwrap();
    assert_eq!(applied.meta.rev, 1);
    assert_eq!(store.get(&a).unwrap().unwrap().content.clone().unwrap(), "hello");
    store.apply(Change::append(a.clone(), " world", "bob").expecting(1)).unwrap();
    let meta = store.stat(&a).unwrap().unwrap();
    assert_eq!((meta.rev, meta.size, &*meta.author), (2, 11, "bob"));
    for i in 0..50 {
        store.apply(Change::put(p(&format!("/home/u{i}/f")), format!("{i}"), "x")).unwrap();
    }
    store.apply(Change::delete(p("/home/u7/f"), "x")).unwrap();
    let listed = store.list("/home/u", None, 1000).unwrap();
    assert_eq!(listed.len(), 49);
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0), "path order across partitions");
    let page = store.list("/home/u", Some(listed[9].0.as_str()), 5).unwrap();
    assert_eq!(page, listed[10..15].to_vec());

    store.flush().unwrap();
    let stats = store.stats();
    assert_eq!(stats.iter().map(|s| s.dirty).sum::<usize>(), 0);
    assert_eq!(stats.iter().map(|s| s.entries).sum::<u64>(), 50);
    assert_eq!(stats.iter().map(|s| s.tombstones).sum::<u64>(), 1);
    assert_eq!(store.get(&a).unwrap().unwrap().content.clone().unwrap(), "hello world");
    // After a flush, a change in the dirty set still wins over the tree in a listing.
    store.apply(Change::delete(p("/home/u8/f"), "x")).unwrap();
    store.apply(Change::put(p("/home/u7/f"), "back", "x").expecting(0)).unwrap();
    let listed = store.list("/home/u", None, 1000).unwrap();
    assert_eq!(listed.len(), 49);
    assert!(listed.iter().all(|(path, _)| path.as_str() != "/home/u8/f"));
    let back = listed.iter().find(|(path, _)| path.as_str() == "/home/u7/f").unwrap();
    assert_eq!(back.1.rev, 3, "re-create continues the revision after the tombstone");
    store.close().unwrap();

    let store = Store::open(tmp.path(), fast()).unwrap();
    assert_eq!(store.stat(&a).unwrap().unwrap().rev, 2);
    assert_eq!(store.stat(&p("/home/u7/f")).unwrap().unwrap().rev, 3);
    assert_eq!(store.stat(&p("/home/u8/f")).unwrap(), None);
    let err = store.apply(Change::put(a.clone(), "x", "c").expecting(1)).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { expected: 1, actual: 2, .. }), "{err:?}");
    store.close().unwrap();
}

/// Cached reads skip the dirty set's lock while it is empty: a read that starts after a write
/// was acknowledged must still see that write, whichever of dirty set, cache and tree holds it.
#[test]
fn a_reader_never_sees_a_version_older_than_an_acknowledged_one() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let store = Store::open(tmp.path(), StoreOptions { wal_sync: WalSync::Os, ..fast() }).unwrap();
    let files: Vec<FilePath> = (0..4).map(|i| p(&format!("/home/r/{i}"))).collect();
    let acked: Vec<AtomicU64> = files.iter().map(|_| AtomicU64::new(0)).collect();
    for f in &files {
        store.apply(Change::put(f.clone(), "0", "w")).unwrap();
    }
    let writes_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0u64;
            while !writes_done.load(Ordering::Acquire) {
                for (f, acked) in files.iter().zip(&acked) {
                    let floor = acked.load(Ordering::Acquire);
                    let rev = store.get(f).unwrap().unwrap().meta.rev;
                    assert!(rev >= floor, "{f}: read rev {rev} after rev {floor} was acknowledged");
                    reads += 1;
                }
            }
            reads
        });
        for round in 1..=2_000u64 {
            let i = (round % 4) as usize;
            let applied = store.apply(Change::put(files[i].clone(), round.to_string(), "w"));
            acked[i].store(applied.unwrap().meta.rev, Ordering::Release);
            // Every few writes the versions move to the tree and the cache, leaving the
            // dirty set empty, so that the reader keeps crossing between both paths.
            if round % 7 == 0 {
                store.flush().unwrap();
            }
        }
        writes_done.store(true, Ordering::Release);
        assert!(reader.join().unwrap() > 0);
    });
}

#[test]
fn readers_see_the_tree_not_the_writers_wal_tail() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let options = StoreOptions { flush_interval_ms: 3_600_000, ..fast() };
    let store = Store::open(tmp.path(), options).unwrap();
    for i in 1..=20u64 {
        store.apply(Change::append(p("/log/a"), format!("{i},"), "w")).unwrap();
    }
    let reader = open_read_only(tmp.path()).unwrap();
    assert_eq!(reader.stat(&p("/log/a")).unwrap(), None);
    assert_eq!(store.stat(&p("/log/a")).unwrap().unwrap().rev, 20);
    store.flush().unwrap();
    assert_eq!(reader.stat(&p("/log/a")).unwrap().unwrap().rev, 20);
    store.close().unwrap();
}

#[test]
fn a_second_writer_is_refused_and_a_reader_works_beside_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let store = Store::open(tmp.path(), fast()).unwrap();
    let err = Store::open(tmp.path(), fast()).err().unwrap();
    assert!(matches!(err, StoreError::Locked { pid, .. } if pid == std::process::id()), "{err:?}");
    assert!(err.to_string().contains(&format!("locked by pid {}", std::process::id())));
    store.apply(Change::put(p("/a/b"), "v1", "w")).unwrap();
    store.flush().unwrap();
    let reader = open_read_only(tmp.path()).unwrap();
    assert_eq!(reader.get(&p("/a/b")).unwrap().unwrap().content.unwrap(), "v1");
    store.apply(Change::put(p("/a/b"), "v2", "w")).unwrap();
    store.apply(Change::put(p("/a/c"), "c", "w")).unwrap();
    assert_eq!(reader.get(&p("/a/b")).unwrap().unwrap().content.unwrap(), "v1");
    store.flush().unwrap();
    assert_eq!(reader.get(&p("/a/b")).unwrap().unwrap().content.unwrap(), "v2");
    assert_eq!(reader.list("/a/", None, 10).unwrap().len(), 2);
    store.compact().unwrap();
    assert_eq!(reader.stat(&p("/a/c")).unwrap().unwrap().rev, 1);
    let snap = reader.snapshot().unwrap();
    let all: Vec<_> = snap.scan("/", None).collect::<Result<_, _>>().unwrap();
    assert_eq!(all.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["/a/b", "/a/c"]);
    store.close().unwrap();
    // Closed: the lock is free again.
    Store::open(tmp.path(), fast()).unwrap().close().unwrap();
}

#[test]
fn partitions_not_opened_here_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let probe = Store::open_partitions(tmp.path(), &[0], fast()).unwrap();
    let mine = (0..100).map(|i| p(&format!("/d{i}/x"))).find(|f| probe.partition_of(f) == 0);
    let other = (0..100).map(|i| p(&format!("/d{i}/x"))).find(|f| probe.partition_of(f) != 0);
    let (mine, other) = (mine.unwrap(), other.unwrap());
    probe.apply(Change::put(mine.clone(), "ok", "w")).unwrap();
    let err = probe.apply(Change::put(other.clone(), "no", "w")).unwrap_err();
    assert!(matches!(err, StoreError::PartitionNotOpen { .. }), "{err:?}");
    // Another "process" can own the other partitions at the same time.
    let rest = Store::open_partitions(tmp.path(), &[1, 2, 3], fast()).unwrap();
    rest.apply(Change::put(other, "yes", "w")).unwrap();
    let err = Store::open_partitions(tmp.path(), &[0], fast()).err().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    probe.close().unwrap();
    rest.close().unwrap();
}

#[test]
fn a_group_over_several_partitions_is_acknowledged_whoever_syncs_the_other_logs() {
    for mode in [WalGroupSync::Filesystem, WalGroupSync::Sequential, WalGroupSync::Parallel] {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path());
        let options = StoreOptions { wal_group_sync: mode, ..fast() };
        let store = std::sync::Arc::new(Store::open(tmp.path(), options).unwrap());
        let paths: Vec<FilePath> = (0..8).map(|i| p(&format!("/g{i}/f"))).collect();
        let touched: std::collections::BTreeSet<u32> =
            paths.iter().map(|path| store.partition_of(path)).collect();
        assert!(touched.len() >= 3, "the group spans partitions: {touched:?}");
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut group = store.group();
                let pending: Vec<_> = paths
                    .iter()
                    .map(|path| {
                        group.join(path);
                        store.submit(Change::put(path.clone(), "grouped", "w")).unwrap()
                    })
                    .collect();
                drop(group);
                for w in pending {
                    w.wait().unwrap();
                }
                done_tx.send(()).unwrap();
            })
        };
        done.recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{mode:?}: the group was never acknowledged"));
        writer.join().unwrap();
        std::sync::Arc::try_unwrap(store).ok().unwrap().close().unwrap();
        let store = Store::open(tmp.path(), options).unwrap();
        for i in 0..8 {
            let record = store.get(&p(&format!("/g{i}/f"))).unwrap().expect("kept");
            assert_eq!(record.content.clone().unwrap(), "grouped");
        }
        store.close().unwrap();
    }
}

#[test]
fn every_sync_policy_keeps_data_across_a_clean_close() {
    for sync in [WalSync::Always, WalSync::Interval(10), WalSync::Os] {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path());
        let options = StoreOptions { wal_sync: sync, ..fast() };
        let store = Store::open(tmp.path(), options).unwrap();
        let pending: Vec<_> = (0..100)
            .map(|i| store.submit(Change::put(p(&format!("/s/{i}")), "x", "w")).unwrap())
            .collect();
        for w in pending {
            w.wait().unwrap();
        }
        store.close().unwrap();
        let store = Store::open(tmp.path(), options).unwrap();
        assert_eq!(store.list("/s/", None, 1000).unwrap().len(), 100, "{sync:?}");
        store.close().unwrap();
    }
}

#[test]
fn the_flusher_runs_on_its_own_when_enough_files_are_dirty() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let options = StoreOptions { flush_interval_ms: 3_600_000, flush_max_dirty: 10, ..fast() };
    let store = Store::open_partitions(tmp.path(), &[0, 1, 2, 3], options).unwrap();
    let path = |i: usize| p(&format!("/same/dir/f{i}"));
    for i in 0..30 {
        store.apply(Change::put(path(i), "x", "w")).unwrap();
    }
    let part = store.partition_of(&path(0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stats = &store.stats()[part as usize];
        if stats.entries >= 10 {
            assert!(stats.checkpoint_lsn >= 10);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no flush without the interval: {stats:?}");
        std::thread::yield_now();
    }
    store.close().unwrap();
}

#[test]
fn steady_overwrites_keep_the_tree_bounded_through_automatic_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    Store::init(tmp.path(), InitOptions { partitions: 1, partition_depth: 2 }).unwrap();
    let options = StoreOptions { flush_interval_ms: 3_600_000, ..fast() };
    let store = Store::open(tmp.path(), options).unwrap();
    let mut max_tree = 0;
    const ROUNDS: u32 = 150;
    for round in 0..ROUNDS {
        let pending: Vec<_> = (0..20)
            .map(|f| {
                let content = vec![b'a' + (round % 26) as u8; 3000];
                store.submit(Change::put(p(&format!("/o/f{f}")), content, "w")).unwrap()
            })
            .collect();
        for w in pending {
            w.wait().unwrap();
        }
        store.flush().unwrap();
        max_tree = max_tree.max(store.stats()[0].tree_bytes);
    }
    let stats = &store.stats()[0];
    assert!(stats.tree_generation > 1, "never compacted: {stats:?}");
    // 20 live files of 3 KB need well under 1 MB; without reclaim 150 rounds take ~13 MB.
    assert!(max_tree < 10 << 20, "tree grew to {max_tree} bytes");
    assert_eq!(stats.entries, 20);
    let f7 = store.get(&p("/o/f7")).unwrap().unwrap();
    assert_eq!(
        (f7.meta.rev, f7.content.clone().unwrap()[0]),
        (u64::from(ROUNDS), b'a' + ((ROUNDS - 1) % 26) as u8)
    );
    store.close().unwrap();
}

/// A client's working set: loaded into the cache on connect, flushed and let go on leave.
#[test]
fn a_released_prefix_is_flushed_and_leaves_the_cache_and_a_loaded_one_enters_it() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let options = StoreOptions { flush_interval_ms: 60_000, ..fast() };
    let store = Store::open(tmp.path(), options).unwrap();
    let alice: Vec<FilePath> = (0..20).map(|i| p(&format!("/home/alice/{i}"))).collect();
    for path in &alice {
        store.apply(Change::put(path.clone(), "x".repeat(1000), "alice")).unwrap();
    }
    let partition = store.partition_of(&alice[0]);
    let part = store.partitions().find(|s| s.partition() == partition).unwrap();
    let stats = || part.stats();
    assert_eq!(stats().dirty, 20);

    store.release_prefix("/home/alice/");
    // Whichever flush takes the release (the one it kicked, or this one) is over when this
    // one returns: flushes hold the tree in turn.
    part.flush().unwrap();
    assert_eq!(stats().dirty, 0, "released files are flushed");
    assert_eq!(stats().cache_bytes, 0, "and are not kept in the cache");

    assert_eq!(store.load_prefix("/home/alice/", 1000).unwrap(), 20);
    let loaded = stats().cache_bytes;
    assert!(loaded >= 20 * 1000, "the working set is cached: {loaded}");
    store.release_prefix("/home/alice/");
    part.flush().unwrap();
    assert_eq!(stats().cache_bytes, 0, "the released working set left the cache");
    // Released is not lost: read from the tree.
    assert_eq!(store.get(&alice[7]).unwrap().unwrap().content.clone().unwrap().len(), 1000);
    store.close().unwrap();
}

#[test]
fn a_batch_goes_straight_to_the_trees_on_top_of_the_logged_changes() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let options = StoreOptions { flush_interval_ms: 3_600_000, ..fast() };
    let store = Store::open(tmp.path(), options).unwrap();
    let notes = p("/home/alice/notes.txt");
    let gone = p("/home/bob/old.txt");
    store.apply(Change::put(notes.clone(), "one", "alice")).unwrap();
    store.apply(Change::put(gone.clone(), "old", "bob")).unwrap();
    let logged = p("/home/carol/logged.txt");
    store.apply(Change::put(logged.clone(), "logged", "carol")).unwrap();
    let mut changes = vec![
        Change::append(notes.clone(), ", two", "admin").expecting(1),
        Change::delete(gone.clone(), "admin"),
    ];
    changes.extend((0..40).map(|i| Change::put(p(&format!("/d{i}/f")), format!("{i}"), "admin")));
    changes.push(Change::append(notes.clone(), ", three", "admin"));
    let applied = store.write_batch(&changes, BatchRoute::Trees).unwrap();
    assert_eq!(applied.len(), changes.len());
    assert!(applied.iter().zip(&changes).all(|(a, c)| a.path == c.path), "in the order given");
    assert_eq!((applied[0].meta.rev, applied[1].meta.rev, applied[1].deleted), (2, 2, true));
    assert_eq!(applied.last().unwrap().meta.rev, 3);
    let touched: std::collections::BTreeSet<u32> =
        changes.iter().map(|c| store.partition_of(&c.path)).collect();
    assert_eq!(touched.len(), 4, "the batch spans every partition");
    // In the trees now, with the logged changes before it: a reader of the trees sees them
    // all, and nothing is left dirty.
    let reader = open_read_only(tmp.path()).unwrap();
    assert_eq!(reader.get(&notes).unwrap().unwrap().content.unwrap(), "one, two, three");
    assert_eq!(reader.get(&logged).unwrap().unwrap().content.unwrap(), "logged");
    assert_eq!(reader.get(&gone).unwrap(), None);
    assert_eq!(reader.list("/d", None, 100).unwrap().len(), 40);
    assert!(store.stats().iter().all(|s| s.dirty == 0), "{:?}", store.stats());
    assert_eq!(store.get(&notes).unwrap().unwrap().meta.rev, 3);
    // Logged changes continue from the batch, and survive a reopen on top of it.
    store.apply(Change::append(notes.clone(), ", four", "alice").expecting(3)).unwrap();
    store.apply(Change::put(gone.clone(), "back", "bob")).unwrap();
    store.close().unwrap();
    let store = Store::open(tmp.path(), options).unwrap();
    let record = store.get(&notes).unwrap().unwrap();
    assert_eq!(
        (record.meta.rev, record.content.clone().unwrap()),
        (4, "one, two, three, four".into())
    );
    assert_eq!(store.stat(&gone).unwrap().unwrap().rev, 3);
    assert_eq!(store.stat(&p("/d7/f")).unwrap().unwrap().rev, 1);
    store.close().unwrap();
}

#[test]
fn a_batch_with_a_change_that_cannot_apply_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let store = Store::open(tmp.path(), fast()).unwrap();
    let a = p("/home/alice/a.txt");
    store.apply(Change::put(a.clone(), "a", "alice")).unwrap();
    store.flush().unwrap();
    let before = store.stats();
    let mut changes: Vec<Change> =
        (0..20).map(|i| Change::put(p(&format!("/d{i}/f")), "x", "admin")).collect();
    changes.push(Change::put(a.clone(), "b", "admin").expecting(7));
    for route in [BatchRoute::Trees, BatchRoute::Logs] {
        let err = store.write_batch(&changes, route).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { expected: 7, actual: 1, .. }), "{err:?}");
    }
    let after = store.stats();
    let trees = |stats: &[ferry_file_server::partition_store::PartitionStats]| {
        stats.iter().map(|s| (s.entries, s.checkpoint_lsn, s.tree_generation)).collect::<Vec<_>>()
    };
    assert_eq!(trees(&before), trees(&after));
    assert_eq!(store.list("/d", None, 100).unwrap(), Vec::new());
    assert_eq!(store.get(&a).unwrap().unwrap().content.clone().unwrap(), "a");
    // The partitions are free again.
    store.apply(Change::put(p("/d1/f"), "y", "w")).unwrap();
    store.close().unwrap();
}

/// A checkpoint inside a group would put into the tree changes that recovery may drop from
/// the log: a batch waits for the open group to end, holding no partition meanwhile.
#[test]
fn a_batch_waits_for_an_open_group_and_holds_no_partition_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let store = std::sync::Arc::new(Store::open(tmp.path(), fast()).unwrap());
    let paths: Vec<FilePath> = (0..8).map(|i| p(&format!("/g{i}/f"))).collect();
    let first = paths[0].clone();
    let mut group = store.group();
    group.join(&first);
    let grouped = store.submit(Change::put(first.clone(), "grouped", "w")).unwrap();
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let batcher = {
        let store = store.clone();
        let changes: Vec<Change> =
            paths.iter().map(|path| Change::append(path.clone(), "+batch", "admin")).collect();
        std::thread::spawn(move || {
            done_tx.send(store.write_batch(&changes, BatchRoute::Trees).unwrap()).unwrap()
        })
    };
    assert!(done.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "inside a group");
    // The group's writer can still reach every partition, the batch's included.
    let other = paths.iter().find(|path| store.partition_of(path) != store.partition_of(&first));
    group.join(other.unwrap());
    let also = store.submit(Change::put(other.unwrap().clone(), "grouped", "w")).unwrap();
    drop(group);
    grouped.wait().unwrap();
    also.wait().unwrap();
    let applied = done.recv_timeout(std::time::Duration::from_secs(10)).expect("after the group");
    batcher.join().unwrap();
    assert_eq!(applied[0].meta.rev, 2, "on top of the group's change");
    let reader = open_read_only(tmp.path()).unwrap();
    assert_eq!(reader.get(&first).unwrap().unwrap().content.unwrap(), "grouped+batch");
    std::sync::Arc::try_unwrap(store).ok().unwrap().close().unwrap();
}

#[test]
fn a_compaction_gives_back_the_logs_space_and_the_log_goes_on_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let options = StoreOptions { flush_interval_ms: 3_600_000, ..fast() };
    let store = Store::open(tmp.path(), options).unwrap();
    let paths: Vec<FilePath> = (0..40).map(|i| p(&format!("/c{i}/f"))).collect();
    for round in 0..50 {
        for path in &paths {
            store.apply(Change::put(path.clone(), format!("{round:0>400}"), "w")).unwrap();
        }
    }
    let logged: u64 = store.stats().iter().map(|s| s.wal_bytes).sum();
    assert!(logged > 800_000, "{logged}");
    store.compact().unwrap();
    for stats in store.stats() {
        assert_eq!((stats.wal_segments, stats.wal_bytes), (1, 24), "{stats:?}");
    }
    // Changes after it go to the new segments and are recovered from them.
    store.apply(Change::append(paths[3].clone(), "+after", "w")).unwrap();
    store.apply(Change::put(p("/new/f"), "new", "w")).unwrap();
    drop(store);
    let store = Store::open(tmp.path(), options).unwrap();
    let record = store.get(&paths[3]).unwrap().unwrap();
    assert_eq!(record.meta.rev, 51);
    assert!(record.content.clone().unwrap().ends_with(b"49+after"));
    assert_eq!(store.get(&p("/new/f")).unwrap().unwrap().content.clone().unwrap(), "new");
    store.close().unwrap();
}

#[test]
fn a_batch_through_the_logs_is_one_group_per_partition_flushed_later() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let options = StoreOptions { flush_interval_ms: 3_600_000, ..fast() };
    let store = Store::open(tmp.path(), options).unwrap();
    let a = p("/home/alice/a.txt");
    store.apply(Change::put(a.clone(), "a", "alice")).unwrap();
    let mut changes: Vec<Change> =
        (0..40).map(|i| Change::put(p(&format!("/s{i}/f")), format!("{i}"), "admin")).collect();
    changes.push(Change::append(a.clone(), "+b", "admin").expecting(1));
    changes.push(Change::append(a.clone(), "+c", "admin"));
    let applied = store.write_batch(&changes, BatchRoute::Logs).unwrap();
    assert!(applied.iter().zip(&changes).all(|(a, c)| a.path == c.path), "in the order given");
    assert_eq!(applied.last().unwrap().meta.rev, 3);
    assert!(applied[41].lsn > applied[40].lsn, "each change has its own record, in order");
    // In the logs and the dirty sets, not yet in the trees.
    let reader = open_read_only(tmp.path()).unwrap();
    assert_eq!(reader.list("/s", None, 100).unwrap().len(), 0);
    assert_eq!(store.stats().iter().map(|s| s.dirty).sum::<usize>(), 41);
    assert_eq!(store.get(&a).unwrap().unwrap().content.clone().unwrap(), "a+b+c");
    drop(store);
    let store = Store::open(tmp.path(), options).unwrap();
    assert_eq!(store.list("/s", None, 100).unwrap().len(), 40);
    assert_eq!(store.stat(&a).unwrap().unwrap().rev, 3);
    store.close().unwrap();
}

/// More callers of `Store::apply` than `ROUND_CALLERS_PER_LOG` per partition share sync
/// rounds across the logs: every answer is right, nothing waits for a group open in another
/// partition's log (the round writes that log up to the group), and everything is there after
/// a reopen.
#[test]
fn many_callers_share_sync_rounds_beside_an_open_group() {
    use std::sync::Arc;
    use std::time::Duration;

    const THREADS: usize = 24;
    const EACH: u64 = 40;
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let store = Arc::new(Store::open(tmp.path(), fast()).unwrap());
    const { assert!(THREADS > ferry_file_server::store::ROUND_CALLERS_PER_LOG * 4) };
    let grouped = p("/held/open");
    let held = store.partition_of(&grouped);
    // The callers' files, each in a partition other than the held group's.
    let paths: Vec<FilePath> = (0..)
        .map(|i| p(&format!("/u{i}/f")))
        .filter(|path| store.partition_of(path) != held)
        .take(THREADS)
        .collect();
    let mut group = store.group();
    group.join(&grouped);
    let in_group = store.submit(Change::put(grouped.clone(), "held", "g")).unwrap();
    let (done_tx, done) = crossbeam_channel::unbounded();
    let callers: Vec<_> = paths
        .iter()
        .cloned()
        .map(|path| {
            let (store, done_tx) = (store.clone(), done_tx.clone());
            std::thread::spawn(move || {
                for rev in 0..EACH {
                    let change = Change::append(path.clone(), format!("{rev},"), "w");
                    let applied = store.apply(change.expecting(rev)).unwrap();
                    assert_eq!(applied.meta.rev, rev + 1, "{path}");
                }
                done_tx.send(()).unwrap();
            })
        })
        .collect();
    for _ in 0..THREADS {
        done.recv_timeout(Duration::from_secs(30))
            .expect("a caller waited for the group open in another partition");
    }
    for caller in callers {
        caller.join().unwrap();
    }
    drop(group);
    in_group.wait().unwrap();
    Arc::try_unwrap(store).ok().unwrap().close().unwrap();
    let store = Store::open(tmp.path(), fast()).unwrap();
    let expected: String = (0..EACH).map(|rev| format!("{rev},")).collect();
    for path in &paths {
        let record = store.get(path).unwrap().expect("kept");
        assert_eq!(record.meta.rev, EACH);
        assert_eq!(record.content.clone().unwrap(), expected.as_str());
    }
    assert_eq!(store.get(&grouped).unwrap().unwrap().content.clone().unwrap(), "held");
    store.close().unwrap();
}

/// A batch holding at least `PARALLEL_HASH_BYTES` of puts has their hashes computed ahead, on
/// several threads: every version written, by either route, carries its content's hash, puts
/// and the appends among them alike, also after a reopen.
#[test]
fn a_large_batch_hashes_its_puts_ahead_and_every_hash_is_its_contents() {
    use ferry_file_server::record::content_hash;
    use ferry_file_server::store::PARALLEL_HASH_BYTES;

    for route in [BatchRoute::Trees, BatchRoute::Logs] {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path());
        let store = Store::open(tmp.path(), fast()).unwrap();
        let size = 32 << 10;
        let files = 2 * PARALLEL_HASH_BYTES / size + 1;
        let mut changes: Vec<Change> = (0..files)
            .map(|i| Change::put(p(&format!("/h{i}/f")), vec![i as u8; size], "w"))
            .collect();
        changes.push(Change::append(p("/h0/f"), "tail", "w"));
        let applied = store.write_batch(&changes, route).unwrap();
        assert_eq!(applied.len(), files + 1);
        let check = |store: &Store| {
            for i in 0..files {
                let record = store.get(&p(&format!("/h{i}/f"))).unwrap().expect("written");
                let content = record.content.clone().unwrap();
                assert_eq!(record.meta.hash, content_hash(&content), "{route:?}: /h{i}/f");
            }
        };
        check(&store);
        let appended = store.get(&p("/h0/f")).unwrap().unwrap();
        assert_eq!(appended.meta.size, size as u64 + 4);
        assert_eq!(applied[files].meta.hash, appended.meta.hash);
        store.close().unwrap();
        let store = Store::open(tmp.path(), fast()).unwrap();
        check(&store);
        store.close().unwrap();
    }
}
