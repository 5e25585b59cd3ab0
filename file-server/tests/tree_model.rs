//! Random commit batches, reopens and compactions against a `BTreeMap` model.
//!
//! 48 cases by default; `FERRY_TREE_MODEL_CASES=N` runs more (a soak).

mod tree_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_file_server::backend::StorageDir;
use ferry_file_server::crash_sim::CrashSimDir;
use ferry_file_server::tree::{verify_tree, Snapshot, TreeFile, TreeReader};
use ferry_file_server::{FilePath, Record};
use proptest::prelude::*;
use tree_support::*;

/// Keys of very different lengths, so that a few dozen of them already need several branch
/// levels (a branch page holds as few as three 1 KiB keys).
fn key(i: u16) -> FilePath {
    let pad = "p".repeat(1 + (usize::from(i) * 389) % 1000);
    path(&format!("/k{:02}/{pad}", i % 50))
}

#[derive(Debug, Clone)]
enum Op {
    /// (key index, content length or None for a delete)
    Commit(Vec<(u16, Option<usize>)>),
    Reopen,
    Compact,
}

fn length() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![
        1 => Just(None),
        6 => (0usize..1100).prop_map(Some),
        1 => (1025usize..20_000).prop_map(Some),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec((0u16..50, length()), 0..40).prop_map(Op::Commit),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ]
}

fn check(snapshot: &Snapshot, model: &BTreeMap<FilePath, Record>) {
    let scanned: Vec<_> = snapshot.scan("", None).map(|r| r.unwrap()).collect();
    assert_eq!(scanned.len(), model.len());
    for ((p, meta, deleted), (mp, mr)) in scanned.iter().zip(model) {
        assert_eq!(p, mp);
        assert_eq!(meta, &mr.meta);
        assert_eq!(*deleted, mr.is_deleted());
    }
    for (p, r) in model {
        assert_eq!(snapshot.get(p).unwrap().as_ref(), Some(r));
    }
    assert!(snapshot.get(&path("/absent")).unwrap().is_none());
    let live = model.values().filter(|r| !r.is_deleted()).count() as u64;
    assert_eq!(snapshot.header().live_entries, live);
    assert_eq!(snapshot.header().tombstones, model.len() as u64 - live);
    let prefix = "/k1";
    let expected: Vec<_> = model.keys().filter(|p| p.as_str().starts_with(prefix)).collect();
    let got: Vec<_> = snapshot.scan(prefix, None).map(|r| r.unwrap().0).collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), expected);
    if let Some(mid) = expected.get(expected.len() / 2) {
        let got: Vec<_> = snapshot.scan(prefix, Some(mid.as_str())).map(|r| r.unwrap().0).collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), expected[expected.len() / 2 + 1..]);
    }
}

fn cases() -> u32 {
    std::env::var("FERRY_TREE_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn tree_matches_a_btreemap_model(ops in prop::collection::vec(op(), 1..25)) {
        let sim = CrashSimDir::new("/sim/p000");
        let dir: Arc<dyn StorageDir> = Arc::new(sim);
        let mut tree = TreeFile::open(dir.clone(), 0, 1).unwrap();
        let reader = TreeReader::open(dir.clone()).unwrap();
        let mut model: BTreeMap<FilePath, Record> = BTreeMap::new();
        let mut lsn = 0;
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Commit(changes) => {
                    let mut items = Vec::new();
                    for (k, len) in changes {
                        let p = key(k);
                        if items.iter().any(|(q, _)| q == &p) {
                            continue;
                        }
                        let rev = model.get(&p).map_or(0, |r| r.meta.rev) + 1;
                        let record = match len {
                            Some(len) => live(rev, content(n as u64 * 100 + u64::from(k), len)),
                            None => tombstone(rev),
                        };
                        items.push((p, record));
                    }
                    let items = batch(items);
                    lsn += 1;
                    tree.commit(&items, lsn).unwrap();
                    model.extend(items);
                }
                Op::Reopen => tree = TreeFile::open(dir.clone(), 0, 1).unwrap(),
                Op::Compact => {
                    tree.compact().unwrap();
                    prop_assert_eq!(tree.header().garbage_pages, 0);
                }
            }
            prop_assert_eq!(tree.header().checkpoint_lsn, lsn);
            check(&tree.snapshot(), &model);
            check(&reader.snapshot().unwrap(), &model);
        }
        let report = verify_tree(dir).unwrap();
        prop_assert!(report.is_ok(), "{:?}", report.problems);
    }
}
