//! The tree writer and readers end to end on the real file system.

mod tree_support;

use ferry_file_server::tree::{verify_tree, TreeFile, TreeReader};
use ferry_file_server::StoreError;
use tree_support::*;

#[test]
fn commit_get_scan_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tree = TreeFile::open(fs_dir(&tmp), 3, 16).unwrap();
    assert_eq!(tree.header().txn_id, 0);
    assert!(tree.snapshot().get(&path("/a")).unwrap().is_none());
    let big = content(7, 100_000);
    let b = batch(vec![
        (path("/docs/a.txt"), live(1, "alpha")),
        (path("/docs/b.txt"), live(1, big.clone())),
        (path("/docs/c.txt"), tombstone(2)),
        (path("/other"), live(4, "x")),
    ]);
    let stats = tree.commit(&b, 17).unwrap();
    assert_eq!(stats.txn_id, 1);
    assert_eq!(stats.overflow_pages, 25);
    let h = tree.header();
    assert_eq!((h.live_entries, h.tombstones, h.checkpoint_lsn), (3, 1, 17));
    let snap = tree.snapshot();
    assert_eq!(snap.get(&path("/docs/a.txt")).unwrap().unwrap(), live(1, "alpha"));
    assert_eq!(snap.get(&path("/docs/b.txt")).unwrap().unwrap().content.unwrap(), big);
    assert_eq!(snap.get(&path("/docs/c.txt")).unwrap().unwrap(), tombstone(2));
    assert_eq!(snap.content_of(&path("/docs/a.txt")).unwrap(), Some(&b"alpha"[..]));
    assert_eq!(snap.content_of(&path("/docs/b.txt")).unwrap(), Some(&big[..]));
    assert_eq!(snap.content_of(&path("/docs/c.txt")).unwrap(), None, "deleted");
    assert_eq!(snap.content_of(&path("/docs/d.txt")).unwrap(), None, "absent");
    let (meta, deleted) = snap.get_meta(&path("/docs/b.txt")).unwrap().unwrap();
    assert_eq!((meta.size, meta.rev, deleted), (100_000, 1, false));
    let listed: Vec<_> = snap
        .scan("/docs/", None)
        .map(|r| r.map(|(p, m, d)| (p.to_string(), m.rev, d)))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        listed,
        [
            ("/docs/a.txt".into(), 1, false),
            ("/docs/b.txt".into(), 1, false),
            ("/docs/c.txt".into(), 2, true)
        ]
    );
    let after: Vec<_> =
        snap.scan("/docs/", Some("/docs/a.txt")).map(|r| r.unwrap().0.to_string()).collect();
    assert_eq!(after, ["/docs/b.txt", "/docs/c.txt"]);

    tree.commit(&[], 99).unwrap();
    drop(tree);
    let tree = TreeFile::open(fs_dir(&tmp), 3, 16).unwrap();
    assert_eq!(tree.header().checkpoint_lsn, 99);
    assert_eq!(tree.snapshot().get(&path("/other")).unwrap().unwrap(), live(4, "x"));
    // the old snapshot still reads after more commits
    assert_eq!(snap.get(&path("/docs/a.txt")).unwrap().unwrap(), live(1, "alpha"));
    let report = verify_tree(fs_dir(&tmp)).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.live_entries, 3);
}

#[test]
fn a_second_partition_index_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    TreeFile::open(fs_dir(&tmp), 3, 16).unwrap();
    let err = TreeFile::open(fs_dir(&tmp), 4, 16).err().unwrap();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    let err = TreeFile::open(fs_dir(&tmp), 16, 16).err().unwrap();
    assert!(matches!(err, StoreError::NoSuchPartition { partition: 16, partitions: 16 }));
    assert!(matches!(
        TreeReader::open(fs_dir(&tempfile::tempdir().unwrap())),
        Err(StoreError::NotInitialized { .. })
    ));
}

#[test]
fn unsorted_batches_and_lying_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tree = TreeFile::open(fs_dir(&tmp), 0, 1).unwrap();
    let err = tree.commit(&[(path("/b"), live(1, "x")), (path("/a"), live(1, "y"))], 1);
    assert!(matches!(err, Err(StoreError::InvalidBatch { .. })));
    let mut lying = live(1, "abc");
    lying.meta.size = 9;
    assert!(matches!(tree.commit(&[(path("/a"), lying)], 1), Err(StoreError::InvalidBatch { .. })));
    assert_eq!(tree.header().txn_id, 0);
}

#[test]
fn many_commits_grow_a_deep_tree_that_compaction_shrinks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tree = TreeFile::open(fs_dir(&tmp), 0, 1).unwrap();
    let reader = TreeReader::open(fs_dir(&tmp)).unwrap();
    for round in 0..6u64 {
        let items = (0..2000u64)
            .map(|i| {
                let key = (i * 7919 + round * 13) % 3000;
                let p = path(&format!("/dir{}/file{key:05}", key % 7));
                let len = if key % 97 == 0 { 5000 } else { 300 + (key as usize % 400) };
                (p, live(round + 1, content(key + round, len)))
            })
            .collect();
        tree.commit(&batch(items), round).unwrap();
    }
    let h = tree.header();
    assert!(h.depth >= 3, "depth {}", h.depth);
    assert_eq!(h.live_entries, 3000);
    assert!(tree.needs_compaction(), "{h:?}");
    let before = tree.snapshot();
    let old_reader_snap = reader.snapshot().unwrap();
    assert_eq!(old_reader_snap.header().txn_id, 6);
    let report = verify_tree(fs_dir(&tmp)).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);

    let stats = tree.compact().unwrap();
    assert!(stats.bytes_after < stats.bytes_before / 2, "{stats:?}");
    assert_eq!(stats.generation_after, 2);
    assert!(!tree.needs_compaction());
    let report = verify_tree(fs_dir(&tmp)).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.live_entries, 3000);
    let after = tree.snapshot();
    let a: Vec<_> = before.scan("", None).map(|r| r.unwrap()).collect();
    let b: Vec<_> = after.scan("", None).map(|r| r.unwrap()).collect();
    assert_eq!(a.len(), 3000);
    assert_eq!(a, b);
    for (p, _, _) in a.iter().step_by(37) {
        assert_eq!(before.get(p).unwrap(), after.get(p).unwrap());
    }
    // the reader's old snapshot still reads the removed file; a refresh follows the new one
    assert_eq!(old_reader_snap.get(&a[0].0).unwrap(), after.get(&a[0].0).unwrap());
    let fresh = reader.snapshot().unwrap();
    assert_eq!(fresh.header().generation, 2);
    assert_eq!(fresh.get(&a[5].0).unwrap(), after.get(&a[5].0).unwrap());
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["tree-00000002.ferry"]);
}

#[test]
fn snapshots_and_readers_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ferry_file_server::tree::Snapshot>();
    send_sync::<TreeReader>();
    send_sync::<TreeFile>();
    let tmp = tempfile::tempdir().unwrap();
    let mut tree = TreeFile::open(fs_dir(&tmp), 0, 1).unwrap();
    tree.commit(&[(path("/shared"), live(1, "seen from a thread"))], 1).unwrap();
    let snap = tree.snapshot();
    let found = std::thread::spawn(move || snap.get(&path("/shared")).unwrap()).join().unwrap();
    assert_eq!(found.unwrap(), live(1, "seen from a thread"));
}
