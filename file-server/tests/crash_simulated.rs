//! Simulated power cuts: a partition store on the crash simulator runs a random workload with
//! the `always` policy, the directory is crashed at a random point (unsynced writes dropped,
//! reordered or torn), and the reopened store must hold exactly the state after some prefix
//! of the submitted changes, a prefix that includes every acknowledged change.
//!
//! `FERRY_CRASH_ITERATIONS=N` runs N seeds instead of the default 100.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_file_server::crash_sim::{CrashSimDir, FaultOp};
use ferry_file_server::{
    Change, FilePath, GroupSync, PartitionStore, PendingWrite, StoreError, StoreOptions, WalSync,
};

/// path -> (revision, content; `None` when deleted)
type Model = BTreeMap<String, (u64, Option<Vec<u8>>)>;

struct Rng(u64);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Seeds per crash test: `FERRY_CRASH_ITERATIONS`, default 100.
fn crash_iterations() -> u64 {
    std::env::var("FERRY_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

fn options() -> StoreOptions {
    StoreOptions {
        wal_sync: WalSync::Always,
        flush_max_dirty: 6,
        flush_interval_ms: 20,
        wal_segment_bytes: 1500,
        wal_preallocate_bytes: 700,
        cache_bytes: 4096,
        ..StoreOptions::default()
    }
}

fn open(dir: &CrashSimDir) -> PartitionStore {
    PartitionStore::open(Arc::new(dir.clone()), None, 0, 1, &options()).unwrap()
}

/// A random valid change against `model`, and the model after it.
fn random_change(rng: &mut Rng, model: &Model) -> (Change, Model) {
    let paths = ["/a/1", "/a/2", "/b/x", "/b/y/z", "/c"];
    let path = paths[rng.below(paths.len() as u64) as usize];
    let fp = FilePath::parse(path).unwrap();
    let current = model.get(path).cloned();
    let rev = current.as_ref().map_or(0, |c| c.0);
    let live = current.as_ref().and_then(|c| c.1.clone());
    let visible_rev = if live.is_some() { rev } else { 0 };
    let len = (rng.below(6) * rng.below(300)) as usize;
    let data: Vec<u8> = (0..len).map(|i| b'a' + ((i as u64 + rng.0) % 26) as u8).collect();
    let mut next = model.clone();
    let change = match (rng.below(4), live) {
        (0, Some(_)) => {
            next.insert(path.into(), (rev + 1, None));
            Change::delete(fp, "crash")
        }
        (1, Some(old)) => {
            let at = rng.below(old.len() as u64 + 1);
            let delete = rng.below(old.len() as u64 - at + 1);
            let mut new = old[..at as usize].to_vec();
            new.extend_from_slice(&data);
            new.extend_from_slice(&old[(at + delete) as usize..]);
            next.insert(path.into(), (rev + 1, Some(new)));
            Change::patch(fp, at, delete, data, "crash")
        }
        (2, old) => {
            let mut new = old.unwrap_or_default();
            new.extend_from_slice(&data);
            next.insert(path.into(), (rev + 1, Some(new)));
            Change::append(fp, data, "crash")
        }
        _ => {
            next.insert(path.into(), (rev + 1, Some(data.clone())));
            Change::put(fp, data, "crash")
        }
    };
    // Half the changes assert the revision they were computed against (0 when the file is
    // absent or deleted).
    let change = if rng.below(2) == 0 { change.expecting(visible_rev) } else { change };
    (change, next)
}

fn read_state(store: &PartitionStore) -> Model {
    let mut state = Model::new();
    for path in ["/a/1", "/a/2", "/b/x", "/b/y/z", "/c"] {
        let fp = FilePath::parse(path).unwrap();
        if let Some(r) = store.get(&fp).unwrap() {
            state.insert(path.into(), (r.meta.rev, r.content.as_ref().map(|c| c.to_vec())));
        }
    }
    // A deleted file is invisible to `get`; its revision shows in the next change.
    state
}

fn visible(model: &Model) -> Model {
    model.iter().filter(|(_, v)| v.1.is_some()).map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[test]
fn every_acknowledged_change_survives_a_simulated_crash() {
    for seed in 1..=crash_iterations() {
        let mut rng = Rng::seeded(seed);
        let dir = CrashSimDir::new("/p000");
        let store = open(&dir);
        let mut states = vec![Model::new()];
        let mut acknowledged = 0usize;
        let mut in_flight: Vec<(usize, PendingWrite)> = Vec::new();
        let steps = 10 + rng.below(60);
        for _ in 0..steps {
            let (change, next) = random_change(&mut rng, states.last().unwrap());
            let pending = store.submit(change).unwrap();
            states.push(next);
            in_flight.push((states.len() - 1, pending));
            if rng.below(3) == 0 {
                for (index, pending) in in_flight.drain(..) {
                    pending.wait().unwrap();
                    acknowledged = acknowledged.max(index);
                }
            }
            if rng.below(15) == 0 {
                store.flush().unwrap();
            }
            if rng.below(40) == 0 {
                store.compact().unwrap();
            }
        }
        let crashed = dir.crash(seed);
        drop(in_flight);
        drop(store);

        let store = open(&crashed);
        assert_eq!(store.partition(), 0);
        let replayed = store.recovery().replayed;
        assert!(replayed <= states.len() as u64, "seed {seed}: replayed {replayed}");
        let k = recovered_step(seed, &store, &states, acknowledged);
        // Revisions of deleted files survived too: each change continues from the prefix.
        let (change, next) = random_change(&mut rng, &states[k]);
        store.apply(change).unwrap_or_else(|e| panic!("seed {seed}: after recovery: {e}"));
        assert_eq!(read_state(&store), visible(&next), "seed {seed}");
        store.close().unwrap();
        let store = open(&crashed.crash(seed ^ 0xff));
        assert_eq!(read_state(&store), visible(&next), "seed {seed}: closed state is durable");
        store.close().unwrap();
    }
}

/// Runs of changes bound into atomic WAL groups, the background flusher running meanwhile:
/// after a crash the store holds the state after a prefix that ends between groups, never
/// inside one, and never before the last acknowledged change.
#[test]
fn a_group_of_changes_survives_a_simulated_crash_whole_or_not_at_all() {
    for seed in 1..=crash_iterations() {
        let mut rng = Rng::seeded(seed);
        let dir = CrashSimDir::new("/p000");
        let store = open(&dir);
        let mut states = vec![Model::new()];
        // States the store may recover to: none inside a group.
        let mut between_groups = vec![true];
        let mut acknowledged = 0usize;
        let groups = 3 + rng.below(12);
        let crash_inside_last = rng.below(2) == 0;
        for g in 0..groups {
            let size = 1 + rng.below(5);
            store.begin_group(GroupSync::Syncer);
            let mut pending = Vec::new();
            for i in 0..size {
                let (change, next) = random_change(&mut rng, states.last().unwrap());
                pending.push(store.submit(change).unwrap());
                states.push(next);
                between_groups.push(i + 1 == size);
            }
            if g + 1 == groups && crash_inside_last {
                *between_groups.last_mut().unwrap() = false;
                break;
            }
            store.end_group(GroupSync::Syncer);
            if rng.below(2) == 0 {
                for p in pending {
                    p.wait().unwrap();
                }
                acknowledged = states.len() - 1;
            }
            if rng.below(6) == 0 {
                store.flush().unwrap();
            }
        }
        let crashed = dir.crash(seed);
        if crash_inside_last {
            // Only so that closing the pre-crash store below does not wait for it forever.
            store.end_group(GroupSync::Syncer);
        }
        drop(store);

        let store = open(&crashed);
        let state = read_state(&store);
        let matching = (acknowledged..states.len())
            .find(|&k| between_groups[k] && visible(&states[k]) == state);
        assert!(
            matching.is_some(),
            "seed {seed}: recovered state is not the state between two groups from \
             {acknowledged} on: {state:?}"
        );
        store.close().unwrap();
    }
}

/// How far a direct batch gets before the crash in
/// [`a_direct_batch_survives_a_simulated_crash_whole_or_not_at_all`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum BatchStep {
    Applied,
    Staged,
    PagesSynced,
    HeaderWritten,
    HeaderSynced,
    Finished,
}

const BATCH_STEPS: [BatchStep; 6] = [
    BatchStep::Applied,
    BatchStep::Staged,
    BatchStep::PagesSynced,
    BatchStep::HeaderWritten,
    BatchStep::HeaderSynced,
    BatchStep::Finished,
];

/// Changes through the log (some unacknowledged) and batches written past it into the tree
/// (or, one in three, logged as one group), the flusher running meanwhile; the last batch
/// stops at a random step and the directory is crashed there. The store must recover to a
/// state after a prefix of the steps that never ends inside a batch and includes every
/// acknowledged change and every finished batch.
#[test]
fn a_direct_batch_survives_a_simulated_crash_whole_or_not_at_all() {
    for seed in 1..=crash_iterations() {
        let mut rng = Rng::seeded(seed);
        let dir = CrashSimDir::new("/p000");
        let store = open(&dir);
        // One entry per logged change and one per whole batch: nothing inside a batch.
        let mut states = vec![Model::new()];
        let mut acknowledged = 0usize;
        let mut in_flight: Vec<(usize, PendingWrite)> = Vec::new();
        let rounds = 2 + rng.below(8);
        for round in 0..rounds {
            for _ in 0..rng.below(6) {
                let (change, next) = random_change(&mut rng, states.last().unwrap());
                in_flight.push((states.len(), store.submit(change).unwrap()));
                states.push(next);
            }
            if rng.below(2) == 0 {
                for (index, pending) in in_flight.drain(..) {
                    pending.wait().unwrap();
                    acknowledged = acknowledged.max(index);
                }
            }
            let last = round + 1 == rounds;
            let stop_after = if last {
                BATCH_STEPS[rng.below(BATCH_STEPS.len() as u64) as usize]
            } else {
                BatchStep::Finished
            };
            let mut batch = loop {
                match store.try_begin_direct_batch().unwrap() {
                    Some(batch) => break batch,
                    // The flusher is committing.
                    None => store.wait_for_direct_batch(),
                }
            };
            let mut model = states.last().unwrap().clone();
            for _ in 0..1 + rng.below(5) {
                let (change, next) = random_change(&mut rng, &model);
                let applied = batch.apply(&change, None).unwrap();
                assert_eq!(Some(applied.meta.rev), next.get(change.path.as_str()).map(|v| v.0));
                model = next;
            }
            states.push(model);
            if rng.below(3) == 0 {
                // Through the log instead, as one atomic group.
                let pending = batch.log().unwrap();
                if last && rng.below(2) == 0 {
                    let crashed = dir.crash(seed);
                    drop(pending);
                    check_recovery(seed, &crashed, &states, acknowledged);
                    break;
                }
                for write in pending {
                    write.wait().unwrap();
                }
                // The log is durable up to the batch, so every change before it is too.
                acknowledged = states.len() - 1;
                if last {
                    check_recovery(seed, &dir.crash(seed), &states, acknowledged);
                }
                continue;
            }
            for step in BATCH_STEPS.into_iter().take_while(|&step| step <= stop_after) {
                match step {
                    BatchStep::Staged => batch.stage().unwrap(),
                    BatchStep::PagesSynced | BatchStep::HeaderSynced => batch.sync_tree().unwrap(),
                    BatchStep::HeaderWritten => batch.write_header().unwrap(),
                    BatchStep::Applied | BatchStep::Finished => {}
                }
            }
            if stop_after == BatchStep::Finished {
                batch.finish().unwrap();
                // The batch and every change before it are in the synced tree.
                acknowledged = states.len() - 1;
            } else {
                let crashed = dir.crash(seed);
                drop(batch);
                check_recovery(seed, &crashed, &states, acknowledged);
                break;
            }
            if last {
                check_recovery(seed, &dir.crash(seed), &states, acknowledged);
            }
        }
        drop(in_flight);
        drop(store);
    }
}

/// Opens the crashed directory and checks that it holds `states[k]` for some
/// `k >= acknowledged`.
fn check_recovery(seed: u64, crashed: &CrashSimDir, states: &[Model], acknowledged: usize) {
    let store = open(crashed);
    recovered_step(seed, &store, states, acknowledged);
    store.close().unwrap();
}

/// The `k >= acknowledged` whose state `store` holds; panics if there is none.
fn recovered_step(
    seed: u64,
    store: &PartitionStore,
    states: &[Model],
    acknowledged: usize,
) -> usize {
    let state = read_state(store);
    let matching = (acknowledged..states.len()).find(|&k| visible(&states[k]) == state);
    let Some(k) = matching else {
        panic!(
            "seed {seed}: recovered state is no step from {acknowledged} on: {state:?}\n\
             acknowledged state: {:?}",
            visible(&states[acknowledged])
        );
    };
    k
}

/// A checkpoint inside a group would put into the tree changes that recovery may drop from
/// the log: a flush waits for the open group to end.
#[test]
fn a_flush_waits_for_the_open_group() {
    let dir = CrashSimDir::new("/p000");
    let store = Arc::new(open(&dir));
    store.begin_group(GroupSync::Syncer);
    let pending = store.submit(Change::put(FilePath::parse("/a/1").unwrap(), "x", "t")).unwrap();
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let flusher = {
        let store = store.clone();
        std::thread::spawn(move || done_tx.send(store.flush().unwrap()).unwrap())
    };
    assert!(done.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "flushed a group");
    store.end_group(GroupSync::Syncer);
    let stats = done.recv_timeout(std::time::Duration::from_secs(10)).expect("flushed after");
    // The group's change and its commit record are both below the checkpoint.
    assert!(stats.checkpoint_lsn > pending.lsn(), "{stats:?}");
    pending.wait().unwrap();
    flusher.join().unwrap();
}

#[test]
fn a_failed_wal_sync_is_reported_and_loses_nothing_acknowledged() {
    let dir = CrashSimDir::new("/p000");
    let store = open(&dir);
    let a = FilePath::parse("/a/1").unwrap();
    store.apply(Change::put(a.clone(), "one", "w")).unwrap();
    dir.fail("wal-", FaultOp::Sync, 1);
    let err = store.apply(Change::put(a.clone(), "two", "w")).unwrap_err();
    assert!(matches!(err, StoreError::WalFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("reopen"), "{err}");
    // The log refuses everything after a failure rather than acknowledging on a bad disk.
    let err = store.apply(Change::put(a.clone(), "three", "w")).unwrap_err();
    assert!(matches!(err, StoreError::WalFailed { .. }), "{err:?}");
    let crashed = dir.crash(1);
    drop(store);
    let store = open(&crashed);
    let content = store.get(&a).unwrap().unwrap().content.clone().unwrap();
    assert!(content == "one" || content == "two", "{content:?}");
    store.close().unwrap();
}

#[test]
fn a_failed_tree_commit_is_kept_reported_and_retried() {
    let dir = CrashSimDir::new("/p000");
    let store = open(&dir);
    let paths: Vec<FilePath> =
        (0..5).map(|i| FilePath::parse(&format!("/f/{i}")).unwrap()).collect();
    dir.fail("tree-", FaultOp::Write, u32::MAX);
    dir.fail("tree-", FaultOp::Sync, u32::MAX);
    for path in &paths {
        store.apply(Change::put(path.clone(), path.as_str().to_owned(), "w")).unwrap();
    }
    let err = store.flush().unwrap_err();
    assert!(matches!(err, StoreError::FlushFailed { partition: 0, .. }), "{err:?}");
    let stats = store.stats();
    assert!(stats.flush_error.is_some());
    assert_eq!(stats.dirty, 5, "nothing leaves the dirty set while the tree cannot take it");
    assert_eq!(store.get(&paths[3]).unwrap().unwrap().content.clone().unwrap(), "/f/3");
    // Still acknowledged through the WAL meanwhile.
    store.apply(Change::append(paths[0].clone(), "+", "w")).unwrap();
    // A crash now loses nothing acknowledged: it is all in the WAL.
    let crashed = dir.crash(7);
    let recovered = open(&crashed);
    assert_eq!(recovered.get(&paths[0]).unwrap().unwrap().content.clone().unwrap(), "/f/0+");
    assert_eq!(recovered.list("/f/", None, 10).unwrap().len(), 5);
    recovered.close().unwrap();
    dir.clear_faults();
    let flushed = store.flush().unwrap();
    assert_eq!(flushed.files, 5);
    let stats = store.stats();
    assert_eq!((stats.dirty, stats.flush_error), (0, None));
    assert_eq!(stats.entries, 5);
    store.close().unwrap();
}

/// A compaction closes and removes the log's open segment once the tree holds it; changes
/// acknowledged after it are in the next segment, and a crash keeps them.
#[test]
fn changes_after_a_compaction_closed_the_log_survive_a_simulated_crash() {
    for seed in 1..=crash_iterations().min(30) {
        let mut rng = Rng::seeded(seed);
        let dir = CrashSimDir::new("/p000");
        let store = open(&dir);
        let mut model = Model::new();
        for _ in 0..1 + rng.below(8) {
            let (change, next) = random_change(&mut rng, &model);
            store.apply(change).unwrap();
            model = next;
        }
        store.flush().unwrap();
        store.compact().unwrap();
        let stats = store.stats();
        assert_eq!((stats.wal_segments, stats.wal_bytes), (1, 24), "seed {seed}: {stats:?}");
        for _ in 0..1 + rng.below(8) {
            let (change, next) = random_change(&mut rng, &model);
            store.apply(change).unwrap();
            model = next;
        }
        let crashed = dir.crash(seed);
        drop(store);
        let store = open(&crashed);
        assert_eq!(read_state(&store), visible(&model), "seed {seed}");
        store.close().unwrap();
    }
}
