//! Power cuts in the middle of commits and compactions, on the crash-simulating backend.
//!
//! A wrapper stops the I/O after N operations (every later write, `set_len`, sync, rename or
//! remove fails), for every N across a commit or a compaction; then the simulated machine
//! loses or tears whatever was not synced. Reopening must give exactly the last commit that
//! returned, or, when the header write itself was the one left unsynced, possibly the
//! interrupted one — never anything else.
//!
//! A few prepared states by default; `FERRY_TREE_CRASH_SEEDS=N` tries N of each (a soak).

mod tree_support;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_file_server::backend::{Mapping, OpenMode, StorageDir, StorageFile};
use ferry_file_server::crash_sim::CrashSimDir;
use ferry_file_server::tree::{verify_tree, TreeFile};
use ferry_file_server::{FilePath, Record, StoreError};
use tree_support::*;

/// Lets `budget` mutating operations through, then fails all of them.
struct Budget(AtomicU64);

impl Budget {
    fn spend(&self) -> io::Result<()> {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .map(|_| ())
            .map_err(|_| io::Error::other("stopped: simulated power cut"))
    }
}

struct StoppingDir {
    inner: CrashSimDir,
    budget: Arc<Budget>,
}

struct StoppingFile {
    inner: Arc<dyn StorageFile>,
    budget: Arc<Budget>,
}

impl StorageDir for StoppingDir {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        if mode == OpenMode::Create {
            self.budget.spend()?;
        }
        let inner = self.inner.open_file(name, mode)?;
        Ok(Arc::new(StoppingFile { inner, budget: self.budget.clone() }))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn remove_file(&self, name: &str) -> io::Result<()> {
        self.budget.spend()?;
        self.inner.remove_file(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.budget.spend()?;
        self.inner.rename(from, to)
    }
    fn sync(&self) -> io::Result<()> {
        self.budget.spend()?;
        self.inner.sync()
    }
}

impl StorageFile for StoppingFile {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.budget.spend()?;
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.budget.spend()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.budget.spend()?;
        self.inner.sync_data()
    }
    fn map(&self) -> io::Result<Arc<dyn Mapping>> {
        self.inner.map()
    }
}

type Model = BTreeMap<FilePath, Record>;

fn seeds(default: u64) -> u64 {
    std::env::var("FERRY_TREE_CRASH_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn random_batch(seed: u64, model: &Model, n: usize) -> Vec<(FilePath, Record)> {
    let items = (0..n as u64)
        .map(|i| {
            let k = (seed * 31 + i * 17) % 90;
            let p = path(&format!("/u{}/f{k:03}", k % 4));
            let rev = model.get(&p).map_or(0, |r| r.meta.rev) + 1;
            let rec = match (seed + i) % 7 {
                0 => tombstone(rev),
                1 => live(rev, content(seed ^ k, 3000 + (k as usize * 41) % 9000)),
                _ => live(rev, content(seed ^ k, (k as usize * 13) % 900)),
            };
            (p, rec)
        })
        .collect();
    batch(items)
}

fn state_of(dir: Arc<dyn StorageDir>) -> Model {
    let report = verify_tree(dir.clone()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let snap = TreeFile::open(dir, 0, 1).unwrap().snapshot();
    snap.scan("", None)
        .map(|r| {
            let p = r.unwrap().0;
            let rec = snap.get(&p).unwrap().unwrap();
            (p, rec)
        })
        .collect()
}

/// A directory holding a few commits; returns it with its model.
fn prepared(seed: u64) -> (CrashSimDir, Model) {
    let sim = CrashSimDir::new("/sim/p000");
    let mut tree = TreeFile::open(Arc::new(sim.clone()), 0, 1).unwrap();
    let mut model = Model::new();
    for round in 0..3 {
        let b = random_batch(seed * 10 + round, &model, 40);
        tree.commit(&b, round).unwrap();
        model.extend(b);
    }
    (sim, model)
}

/// Counts the mutating operations `f` issues on a fresh copy of the prepared state.
fn ops_needed(
    seed: u64,
    f: &dyn Fn(&mut TreeFile, &Model) -> ferry_file_server::Result<()>,
) -> u64 {
    let (sim, model) = prepared(seed);
    let budget = Arc::new(Budget(AtomicU64::new(u64::MAX)));
    let dir = Arc::new(StoppingDir { inner: sim, budget: budget.clone() });
    let mut tree = TreeFile::open(dir, 0, 1).unwrap();
    f(&mut tree, &model).unwrap();
    u64::MAX - budget.0.load(Ordering::SeqCst)
}

#[test]
fn a_power_cut_anywhere_in_a_commit_keeps_the_last_completed_commit() {
    let commit = |tree: &mut TreeFile, model: &Model| {
        tree.commit(&random_batch(999, model, 60), 10).map(|_| ())
    };
    let mut outcomes = [0u32; 2];
    for seed in 0..seeds(4) {
        let total = ops_needed(seed, &commit);
        assert!(total >= 4, "a commit writes pages, syncs, writes a header and syncs");
        for stop_after in 0..=total {
            let (sim, before) = prepared(seed);
            let mut after = before.clone();
            after.extend(random_batch(999, &before, 60));
            let budget = Arc::new(Budget(AtomicU64::new(stop_after)));
            let dir = Arc::new(StoppingDir { inner: sim.clone(), budget });
            let mut tree = TreeFile::open(dir, 0, 1).unwrap();
            let result = commit(&mut tree, &before);
            assert_eq!(result.is_ok(), stop_after == total, "stop after {stop_after} of {total}");
            for crash_seed in 0..3 {
                let found =
                    state_of(Arc::new(sim.crash(seed * 1000 + stop_after * 10 + crash_seed)));
                if stop_after == total {
                    assert_eq!(found, after, "a commit that returned is durable");
                } else if stop_after + 1 < total {
                    assert_eq!(
                        found, before,
                        "stop after {stop_after} of {total}: header not written"
                    );
                } else {
                    assert!(found == before || found == after, "header written, not synced");
                    outcomes[usize::from(found == after)] += 1;
                }
            }
        }
    }
    assert!(outcomes[0] > 0, "an unsynced header was never lost: {outcomes:?}");
}

#[test]
fn a_failed_commit_does_not_spoil_the_next_one() {
    let (sim, mut model) = prepared(7);
    let budget = Arc::new(Budget(AtomicU64::new(u64::MAX)));
    let dir = Arc::new(StoppingDir { inner: sim.clone(), budget: budget.clone() });
    let mut tree = TreeFile::open(dir, 0, 1).unwrap();
    let total = ops_needed(7, &|t, m| t.commit(&random_batch(5, m, 50), 4).map(|_| ()));
    // the header reaches the file but its sync fails: the commit reports failure
    budget.0.store(total - 1, Ordering::SeqCst);
    assert!(tree.commit(&random_batch(5, &model, 50), 4).is_err());
    budget.0.store(u64::MAX, Ordering::SeqCst);
    let next = random_batch(6, &model, 50);
    tree.commit(&next, 5).unwrap();
    model.extend(next);
    assert_eq!(tree.header().checkpoint_lsn, 5);
    for crash_seed in 0..5 {
        assert_eq!(state_of(Arc::new(sim.crash(crash_seed))), model);
    }
}

#[test]
fn a_power_cut_anywhere_in_a_compaction_loses_nothing() {
    let compact = |tree: &mut TreeFile, _: &Model| tree.compact().map(|_| ());
    let mut refused = 0;
    for seed in 0..seeds(3) {
        let total = ops_needed(seed, &compact);
        for stop_after in 0..=total {
            let (sim, mut model) = prepared(seed);
            let budget = Arc::new(Budget(AtomicU64::new(stop_after)));
            let dir = Arc::new(StoppingDir { inner: sim.clone(), budget: budget.clone() });
            let mut tree = TreeFile::open(dir, 0, 1).unwrap();
            assert_eq!(compact(&mut tree, &model).is_ok(), stop_after == total);
            // the I/O comes back: a commit that is acknowledged now must survive the crash,
            // whichever file the interrupted compaction left current
            budget.0.store(u64::MAX, Ordering::SeqCst);
            let next = random_batch(seed + 50, &model, 10);
            match tree.commit(&next, 9) {
                Ok(_) => model.extend(next),
                Err(StoreError::TreeUnusable { .. }) => refused += 1,
                Err(e) => panic!("stop after {stop_after}: {e}"),
            }
            for crash_seed in 0..3 {
                let crashed = sim.crash(seed * 1000 + stop_after * 10 + crash_seed);
                assert_eq!(
                    state_of(Arc::new(crashed.clone())),
                    model,
                    "stop after {stop_after} of {total}"
                );
                // the reopened writer cleaned up: one generation, no temporary file
                let names = crashed.list().unwrap();
                assert_eq!(names.len(), 1, "{names:?}");
            }
        }
    }
    assert!(refused > 0, "no stop point left the writer between two generations");
}
