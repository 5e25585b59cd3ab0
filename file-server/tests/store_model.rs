//! Property test: random put/append/patch/delete/flush/reopen/compact sequences against a
//! `BTreeMap` model, revisions and refusals included.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_file_server::crash_sim::CrashSimDir;
use ferry_file_server::{Change, FilePath, PartitionStore, StoreError, StoreOptions};
use proptest::prelude::*;

const PATHS: [&str; 4] = ["/a/x", "/a/y", "/b", "/b/c/d"];
const MAX_SIZE: u64 = 64;

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Vec<u8>),
    Append(usize, Vec<u8>),
    Patch(usize, u64, u64, Vec<u8>),
    Delete(usize),
    /// An unconditional change made conditional on a revision that may be wrong.
    PutExpecting(usize, u64, Vec<u8>),
    Flush,
    Reopen,
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    let path = 0..PATHS.len();
    let bytes = proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..40);
    prop_oneof![
        4 => (path.clone(), bytes.clone()).prop_map(|(p, b)| Op::Put(p, b)),
        3 => (path.clone(), bytes.clone()).prop_map(|(p, b)| Op::Append(p, b)),
        3 => (path.clone(), 0..50u64, 0..20u64, bytes.clone())
            .prop_map(|(p, at, d, b)| Op::Patch(p, at, d, b)),
        2 => path.clone().prop_map(Op::Delete),
        2 => (path, 0..4u64, bytes).prop_map(|(p, r, b)| Op::PutExpecting(p, r, b)),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ]
}

#[derive(Debug, Clone, Default)]
struct ModelFile {
    rev: u64,
    content: Option<Vec<u8>>,
}

/// What the model expects of a change: the new file, or the error kind.
fn expect(model: &BTreeMap<&str, ModelFile>, op: &Op) -> Result<ModelFile, &'static str> {
    let (path, change_rev) = match op {
        Op::Put(p, _) | Op::Append(p, _) | Op::Patch(p, ..) | Op::Delete(p) => (PATHS[*p], None),
        Op::PutExpecting(p, r, _) => (PATHS[*p], Some(*r)),
        _ => unreachable!(),
    };
    let cur = model.get(path).cloned().unwrap_or_default();
    let live = cur.content.clone();
    if let Some(expected) = change_rev {
        let actual = if live.is_some() { cur.rev } else { 0 };
        if expected != actual {
            return Err("conflict");
        }
    }
    let rev = cur.rev + 1;
    let content = match op {
        Op::Put(_, b) | Op::PutExpecting(_, _, b) => Some(b.clone()),
        Op::Append(_, b) => Some([live.unwrap_or_default(), b.clone()].concat()),
        Op::Patch(_, at, delete, b) => {
            let old = live.ok_or("not found")?;
            let end = at + delete;
            if end > old.len() as u64 {
                return Err("out of range");
            }
            if let Ok(text) = std::str::from_utf8(&old) {
                if !text.is_char_boundary(*at as usize) || !text.is_char_boundary(end as usize) {
                    return Err("splits char");
                }
            }
            Some([&old[..*at as usize], b, &old[end as usize..]].concat())
        }
        Op::Delete(_) => {
            live.ok_or("not found")?;
            None
        }
        _ => unreachable!(),
    };
    if content.as_ref().is_some_and(|c| c.len() as u64 > MAX_SIZE) {
        return Err("too large");
    }
    Ok(ModelFile { rev, content })
}

fn to_change(op: &Op) -> Change {
    let path = |p: &usize| FilePath::parse(PATHS[*p]).unwrap();
    match op {
        Op::Put(p, b) => Change::put(path(p), b.clone(), "prop"),
        Op::Append(p, b) => Change::append(path(p), b.clone(), "prop"),
        Op::Patch(p, at, d, b) => Change::patch(path(p), *at, *d, b.clone(), "prop"),
        Op::Delete(p) => Change::delete(path(p), "prop"),
        Op::PutExpecting(p, r, b) => Change::put(path(p), b.clone(), "prop").expecting(*r),
        _ => unreachable!(),
    }
}

fn kind(err: &StoreError) -> &'static str {
    match err {
        StoreError::Conflict { .. } => "conflict",
        StoreError::NotFound { .. } => "not found",
        StoreError::PatchOutOfRange { .. } => "out of range",
        StoreError::PatchSplitsChar { .. } => "splits char",
        StoreError::TooLarge { .. } => "too large",
        _ => "other",
    }
}

fn open(dir: &CrashSimDir) -> PartitionStore {
    let options = StoreOptions {
        max_file_size: MAX_SIZE,
        // Only explicit flushes, so that reopening also exercises WAL replay.
        flush_interval_ms: 3_600_000,
        flush_max_dirty: 1_000,
        cache_bytes: 512,
        wal_segment_bytes: 600,
        wal_preallocate_bytes: 256,
        ..StoreOptions::default()
    };
    PartitionStore::open(Arc::new(dir.clone()), None, 0, 1, &options).unwrap()
}

fn check(store: &PartitionStore, model: &BTreeMap<&str, ModelFile>) {
    for path in PATHS {
        let fp = FilePath::parse(path).unwrap();
        let got = store.get(&fp).unwrap();
        let want = model.get(path).and_then(|f| f.content.clone().map(|c| (f.rev, c)));
        assert_eq!(got.map(|r| (r.meta.rev, r.content.unwrap().to_vec())), want, "{path}");
    }
    let listed: Vec<String> =
        store.list("/", None, 100).unwrap().into_iter().map(|(p, _)| p.to_string()).collect();
    let expected: Vec<String> =
        model.iter().filter(|(_, f)| f.content.is_some()).map(|(p, _)| p.to_string()).collect();
    assert_eq!(listed, expected);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = CrashSimDir::new("/p000");
        let mut store = open(&dir);
        let mut model: BTreeMap<&str, ModelFile> = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Flush => { store.flush().unwrap(); }
                Op::Compact => { store.compact().unwrap(); }
                Op::Reopen => {
                    store.close().unwrap();
                    store = open(&dir);
                }
                change => {
                    let path = match change {
                        Op::Put(p, _) | Op::Append(p, _) | Op::Patch(p, ..) | Op::Delete(p)
                        | Op::PutExpecting(p, ..) => PATHS[*p],
                        _ => unreachable!(),
                    };
                    match (expect(&model, change), store.apply(to_change(change))) {
                        (Ok(file), Ok(applied)) => {
                            prop_assert_eq!(applied.meta.rev, file.rev);
                            prop_assert_eq!(applied.deleted, file.content.is_none());
                            model.insert(path, file);
                        }
                        (Err(want), Err(got)) => prop_assert_eq!(want, kind(&got), "{}", got),
                        (want, got) => prop_assert!(false, "{op:?}: model {want:?}, store {got:?}"),
                    }
                }
            }
            check(&store, &model);
        }
        store.close().unwrap();
        check(&open(&dir), &model);
    }
}
