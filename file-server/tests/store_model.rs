//! Property test: random put/append/patch/delete/flush/reopen/compact sequences against a
//! `BTreeMap` model, revisions and refusals included; `Store::list` against a naive listing.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_file_server::crash_sim::CrashSimDir;
use ferry_file_server::{
    Change, FilePath, InitOptions, PartitionStore, Store, StoreError, StoreOptions, WalSync,
};
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
        assert_eq!(got.map(|r| (r.meta.rev, r.content.clone().unwrap().to_vec())), want, "{path}");
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

/// Paths for the listing model: users whose names are prefixes of each other (`u1`, `u10`),
/// files at the partition key itself (`/home/u1`), deeper files and short paths.
fn list_path(i: usize) -> String {
    const USERS: [&str; 6] = ["u1", "u10", "u11", "u2", "v", "u1x"];
    const NAMES: [&str; 5] = ["a", "b", "d/e", "d/f/g", "z"];
    let n = USERS.len() * NAMES.len();
    match i % (n + 4) {
        j if j < n => format!("/home/{}/{}", USERS[j / NAMES.len()], NAMES[j % NAMES.len()]),
        j if j == n => "/home/u1".into(),
        j if j == n + 1 => "/home/u10".into(),
        j if j == n + 2 => "/homer/u1/a".into(),
        _ => "/x".into(),
    }
}

const LIST_PREFIXES: [&str; 12] = [
    "",
    "/",
    "/h",
    "/home",
    "/home/",
    "/home/u1",
    "/home/u1/",
    "/home/u1/d",
    "/home/u1/d/",
    "/home/u10/",
    "/home/v/z",
    "/homer/",
];

/// What `Store::list` must return: the model's live files under `prefix` after `after`.
fn naive_list(
    model: &BTreeMap<String, bool>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    open: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    model
        .iter()
        .filter(|(path, live)| **live && path.starts_with(prefix) && open(path))
        .filter(|(path, _)| after.is_none_or(|a| path.as_str() > a))
        .map(|(path, _)| path.clone())
        .take(limit)
        .collect()
}

fn list_paths(store: &Store, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
    store.list(prefix, after, limit).unwrap().into_iter().map(|(p, _)| p.to_string()).collect()
}

/// Checks single pages and whole listings paged through with `limit`.
fn check_listing(
    store: &Store,
    model: &BTreeMap<String, bool>,
    queries: &[(usize, Option<usize>, usize)],
    open: &dyn Fn(&str) -> bool,
) -> Result<(), TestCaseError> {
    for &(prefix, after, limit) in queries {
        let prefix = LIST_PREFIXES[prefix];
        let after = after.map(list_path);
        let got = list_paths(store, prefix, after.as_deref(), limit);
        let want = naive_list(model, prefix, after.as_deref(), limit, open);
        prop_assert_eq!(got, want, "list({:?}, {:?}, {})", prefix, after, limit);
        if limit > 0 {
            let mut paged = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = list_paths(store, prefix, after.as_deref(), limit);
                paged.extend(page.iter().cloned());
                if page.len() < limit {
                    break;
                }
                after = page.last().cloned();
            }
            prop_assert_eq!(paged, naive_list(model, prefix, None, usize::MAX, open));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// `Store::list` (routed to one partition or merged over all) against a naive listing of
    /// a model, with files in the trees, in the dirty sets, deleted, and partitions not open.
    #[test]
    fn store_list_matches_a_naive_listing(
        writes in proptest::collection::vec((0..40usize, any::<bool>()), 1..80),
        flush_after in 0..80usize,
        queries in proptest::collection::vec(
            (0..LIST_PREFIXES.len(), proptest::option::of(0..40usize), 0..12usize),
            1..12,
        ),
        open_mask in 1..255u32,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        Store::init(tmp.path(), InitOptions { partitions: 8, partition_depth: 2 }).unwrap();
        let options = StoreOptions {
            // Only the explicit flush below, so that some files stay in the dirty sets.
            flush_interval_ms: 3_600_000,
            cache_bytes: 4096,
            wal_preallocate_bytes: 0,
            // Durability is not what this test is about; syncs would only slow it.
            wal_sync: WalSync::Os,
            ..StoreOptions::default()
        };
        let store = Store::open(tmp.path(), options).unwrap();
        let mut model: BTreeMap<String, bool> = BTreeMap::new();
        for (i, &(path, delete)) in writes.iter().enumerate() {
            let path = list_path(path);
            let fp = FilePath::parse(&path).unwrap();
            let live = model.get(&path).copied().unwrap_or(false);
            if delete && live {
                store.apply(Change::delete(fp, "w")).unwrap();
                model.insert(path, false);
            } else if !delete {
                store.apply(Change::put(fp, path.clone(), "w")).unwrap();
                model.insert(path, true);
            }
            if i == flush_after {
                store.flush().unwrap();
            }
        }
        check_listing(&store, &model, &queries, &|_| true)?;
        store.close().unwrap();

        let open: Vec<u32> = (0..8).filter(|p| open_mask & (1 << p) != 0).collect();
        let store = Store::open_partitions(tmp.path(), &open, options).unwrap();
        let is_open =
            |path: &str| open.contains(&store.partition_of(&FilePath::parse(path).unwrap()));
        check_listing(&store, &model, &queries, &is_open)?;
        store.close().unwrap();
    }
}
