//! The write-ahead log against the crash simulator and the real file system: recovery, torn
//! tails, group commit and the sync policies.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use ferry_file_server::backend::{FsDir, OpenMode, StorageDir};
use ferry_file_server::crash_sim::{CrashSimDir, FaultOp};
use ferry_file_server::wal::{
    segment_name, GroupSync, WalEntry, WalOp, WalOptions, WalRecovery, WalSync, WriteAheadLog,
};
use ferry_file_server::StoreError;

/// A replayed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned {
    lsn: u64,
    path: String,
    rev: u64,
    data: Vec<u8>,
}

fn open(
    dir: &CrashSimDir,
    checkpoint: u64,
    options: WalOptions,
) -> (WriteAheadLog, Vec<Owned>, WalRecovery) {
    let mut seen = Vec::new();
    let (wal, recovery) =
        WriteAheadLog::open(Arc::new(dir.clone()), checkpoint, options, &mut |lsn, e| {
            let data = match e.op {
                WalOp::Put(b) | WalOp::Append(b) => b.to_vec(),
                WalOp::Patch { insert, .. } => insert.to_vec(),
                WalOp::Delete => Vec::new(),
            };
            seen.push(Owned { lsn, path: e.path.to_owned(), rev: e.rev, data });
            Ok(())
        })
        .unwrap();
    (wal, seen, recovery)
}

fn put<'a>(path: &'a str, rev: u64, data: &'a [u8]) -> WalEntry<'a> {
    WalEntry { path, author: "tester", mtime_ms: 1, rev, op: WalOp::Put(data) }
}

/// Seeds per crash test: `FERRY_CRASH_ITERATIONS`, default 200.
fn crash_iterations() -> u64 {
    std::env::var("FERRY_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

/// The log recovered from `crashed` (`replayed` records kept) accepts a new record right
/// after them and keeps it through the next crash.
fn assert_continues_after_recovery(
    wal: WriteAheadLog,
    crashed: &CrashSimDir,
    recovery: &WalRecovery,
    replayed: usize,
    seed: u64,
    options: WalOptions,
) {
    let lsn = wal.append(&put("/b", 1, b"after")).unwrap();
    assert_eq!(lsn, recovery.next_lsn, "seed {seed}");
    wal.wait(lsn).unwrap();
    let again = crashed.crash(seed + 1);
    std::mem::forget(wal); // a crash runs no destructors
    let (_, seen, _) = open(&again, 0, options);
    assert_eq!(seen.len(), replayed + 1, "seed {seed}");
    assert_eq!(seen.last().unwrap().data, b"after", "seed {seed}");
}

fn always() -> WalOptions {
    WalOptions { sync: WalSync::Always, ..WalOptions::default() }
}

#[test]
fn records_after_the_checkpoint_are_replayed_in_order_across_segments() {
    let dir = CrashSimDir::new("/p000");
    let options = WalOptions { sync: WalSync::Always, segment_bytes: 300, preallocate_bytes: 512 };
    let (wal, seen, _) = open(&dir, 0, options);
    assert!(seen.is_empty());
    for i in 1..=20u64 {
        let path = format!("/f/{i}");
        let lsn = wal.append(&put(&path, i, &[i as u8; 40])).unwrap();
        assert_eq!(lsn, i);
        wal.wait(lsn).unwrap();
    }
    let (_, segments) = wal.size();
    assert!(segments > 3, "small segments roll: {segments}");
    wal.close().unwrap();

    let (wal, seen, recovery) = open(&dir, 7, options);
    assert_eq!(seen.iter().map(|r| r.lsn).collect::<Vec<_>>(), (8..=20).collect::<Vec<_>>());
    assert_eq!(seen[0], Owned { lsn: 8, path: "/f/8".into(), rev: 8, data: vec![8; 40] });
    assert_eq!(recovery.next_lsn, 21);
    assert_eq!(wal.append(&put("/g", 1, b"x")).unwrap(), 21);
    wal.close().unwrap();
}

#[test]
fn checkpoint_removes_only_fully_covered_segments() {
    let dir = CrashSimDir::new("/p000");
    let options = WalOptions { sync: WalSync::Always, segment_bytes: 200, preallocate_bytes: 512 };
    let (wal, _, _) = open(&dir, 0, options);
    for i in 1..=30u64 {
        let lsn = wal.append(&put("/a", i, &[0; 50])).unwrap();
        wal.wait(lsn).unwrap();
    }
    let (bytes_before, before) = wal.size();
    let removed = wal.checkpoint(15).unwrap();
    let (bytes_after, after) = wal.size();
    assert!(removed > 0);
    assert_eq!(after, before - removed);
    assert!(bytes_after < bytes_before);
    wal.close().unwrap();
    // Records 16..=30 are all still there.
    let (_, seen, _) = open(&dir, 15, options);
    assert_eq!(seen.iter().map(|r| r.lsn).collect::<Vec<_>>(), (16..=30).collect::<Vec<_>>());
    let names = dir.list().unwrap();
    let first_lsns: Vec<u64> = names.iter().filter_map(|n| n[4..24].parse().ok()).collect();
    assert!(first_lsns.iter().all(|&l| l > 10), "segments before the checkpoint remain: {names:?}");
}

#[test]
fn a_torn_tail_is_cut_and_the_log_continues_after_it() {
    let dir = CrashSimDir::new("/p000");
    let (wal, _, _) = open(&dir, 0, always());
    for i in 1..=5u64 {
        let lsn = wal.append(&put("/a", i, &[1; 100])).unwrap();
        wal.wait(lsn).unwrap();
    }
    wal.close().unwrap();
    let name = segment_name(1);
    let bytes = dir.read_file(&name).unwrap();
    // Preallocated zeros follow the records; the last record's data ends in ones.
    let len = bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    // Garble the last record's final bytes: a write torn by a crash.
    dir.corrupt(&name, len - 10, &[0xAB; 10]).unwrap();
    let (wal, seen, recovery) = open(&dir, 0, always());
    assert_eq!(seen.len(), 4);
    assert_eq!(recovery.truncated.as_ref().map(|(n, _)| n.as_str()), Some(name.as_str()));
    assert_eq!(recovery.next_lsn, 5);
    let lsn = wal.append(&put("/a", 5, b"again")).unwrap();
    assert_eq!(lsn, 5);
    wal.wait(lsn).unwrap();
    wal.close().unwrap();
    let (_, seen, recovery) = open(&dir, 0, always());
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[4].data, b"again");
    assert_eq!(recovery.truncated, None);
}

#[test]
fn lsns_continue_after_a_checkpoint_beyond_the_log() {
    // The tree may hold changes whose log records were lost (policy `os`): new records must
    // get LSNs above the checkpoint, or recovery would skip them.
    let dir = CrashSimDir::new("/p000");
    let (wal, _, _) = open(&dir, 0, always());
    let lsn = wal.append(&put("/a", 1, b"x")).unwrap();
    wal.wait(lsn).unwrap();
    wal.close().unwrap();
    let (wal, seen, recovery) = open(&dir, 100, always());
    assert!(seen.is_empty());
    assert_eq!(recovery.next_lsn, 101);
    let lsn = wal.append(&put("/a", 2, b"y")).unwrap();
    assert_eq!(lsn, 101);
    wal.wait(lsn).unwrap();
    wal.close().unwrap();
    let (_, seen, _) = open(&dir, 100, always());
    assert_eq!(seen.iter().map(|r| r.lsn).collect::<Vec<_>>(), [101]);
}

#[test]
fn a_foreign_segment_is_a_typed_error() {
    let dir = CrashSimDir::new("/p000");
    let f = dir.open_file(&segment_name(1), OpenMode::Create).unwrap();
    f.write_all_at(b"SQLite format 3\0 and then some more bytes", 0).unwrap();
    let err = WriteAheadLog::open(Arc::new(dir.clone()), 0, always(), &mut |_, _| Ok(()))
        .err()
        .expect("foreign file refused");
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    assert!(err.to_string().contains("FERRYWAL"), "{err}");
}

/// How long a test waits for a sync that must come; only a hang reaches it.
const SYNC_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn a_single_thread_pipelines_many_records_into_one_sync() {
    let gate = SyncGate::default();
    let counting = Arc::new(CountingDir::gated(Arc::new(CrashSimDir::new("/p000")), &gate));
    let (wal, _) = WriteAheadLog::open(counting.clone(), 0, always(), &mut |_, _| Ok(())).unwrap();
    let (entered, release) = gate.hold();
    let base = counting.syncs();
    let first = wal.append(&put("/a", 1, &[7; 500])).unwrap();
    entered.recv_timeout(SYNC_DEADLINE).expect("appending starts a sync, without a wait");
    // The sync of the first record is held open while the pipeline fills.
    let lsns: Vec<u64> =
        (2..=1000u64).map(|i| wal.append(&put("/a", i, &[7; 500])).unwrap()).collect();
    assert_eq!(counting.syncs(), base + 1, "one sync in progress, none started meanwhile");
    drop(release);
    wal.wait(*lsns.last().unwrap()).unwrap();
    assert_eq!(
        counting.syncs(),
        base + 2,
        "one sync covers every record appended while the previous one ran"
    );
    wal.wait(first).unwrap();
    for lsn in lsns {
        wal.wait(lsn).unwrap();
    }
    assert_eq!(counting.syncs(), base + 2, "earlier records are covered already");
    assert_eq!(wal.synced_lsn(), 1000);
}

#[test]
fn logs_appended_to_one_after_another_sync_at_the_same_time() {
    let gate = SyncGate::default();
    let logs: Vec<WriteAheadLog> = (0..4)
        .map(|p| {
            let dir = CountingDir::gated(Arc::new(CrashSimDir::new(format!("/p{p:03}"))), &gate);
            WriteAheadLog::open(Arc::new(dir), 0, always(), &mut |_, _| Ok(())).unwrap().0
        })
        .collect();
    let (entered, release) = gate.hold();
    let lsns: Vec<u64> = logs.iter().map(|wal| wal.append(&put("/a", 1, b"x")).unwrap()).collect();
    // Every log's sync is in progress before any of them finished and before any wait.
    for n in 0..logs.len() {
        entered.recv_timeout(SYNC_DEADLINE).unwrap_or_else(|_| panic!("only {n} syncs started"));
    }
    drop(release);
    for (wal, lsn) in logs.iter().zip(lsns) {
        wal.wait(lsn).unwrap();
        assert_eq!(wal.synced_lsn(), lsn);
    }
}

#[test]
fn concurrent_appenders_share_syncs() {
    let dir = CrashSimDir::new("/p000");
    let (wal, _, _) = open(&dir, 0, always());
    let wal = Arc::new(wal);
    let threads = 8;
    let per_thread = 200u64;
    let base = dir.sync_count("wal-");
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let path = format!("/t/{t}");
                for i in 1..=per_thread {
                    let lsn = wal.append(&put(&path, i, &[t as u8; 500])).unwrap();
                    wal.wait(lsn).unwrap();
                    assert!(wal.synced_lsn() >= lsn);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let syncs = dir.sync_count("wal-") - base;
    let records = threads as u64 * per_thread;
    assert!(syncs >= 1);
    assert!(syncs <= records, "never more than one sync per record: {syncs}");
    // With the in-memory backend a sync is nearly free, so sharing depends on scheduling;
    // the pipeline test above proves the batching itself. Every record is durable:
    let crashed = dir.crash(3);
    let mut count = 0;
    WriteAheadLog::open(Arc::new(crashed), 0, always(), &mut |_, _| {
        count += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(count, records);
}

#[test]
fn concurrent_appenders_on_a_real_disk_share_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let fs: Arc<dyn StorageDir> = Arc::new(FsDir::new(tmp.path()));
    let counting = Arc::new(CountingDir::new(fs));
    let (wal, _) = WriteAheadLog::open(counting.clone(), 0, always(), &mut |_, _| Ok(())).unwrap();
    let wal = Arc::new(wal);
    let threads = 8;
    let per_thread = 50u64;
    let barrier = Arc::new(Barrier::new(threads));
    let base = counting.syncs();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let path = format!("/t/{t}");
                for i in 1..=per_thread {
                    let lsn = wal.append(&put(&path, i, &[1; 500])).unwrap();
                    wal.wait(lsn).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let syncs = counting.syncs() - base;
    let records = threads as u64 * per_thread;
    // A real fsync takes long enough that the other seven threads queue up behind it.
    assert!(syncs * 2 <= records, "{syncs} fsyncs for {records} records: no group commit");
}

#[test]
fn interval_policy_acknowledges_on_write_and_syncs_in_the_background() {
    let dir = CrashSimDir::new("/p000");
    let options = WalOptions { sync: WalSync::Interval(5), ..WalOptions::default() };
    let (wal, _, _) = open(&dir, 0, options);
    let base = dir.sync_count("wal-");
    let lsn = wal.append(&put("/a", 1, b"x")).unwrap();
    wal.wait(lsn).unwrap();
    // Written to the "OS" at once, synced later by the background thread.
    assert!(dir.read_file(&segment_name(1)).unwrap().len() > 24);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wal.synced_lsn() < lsn {
        assert!(std::time::Instant::now() < deadline, "background sync never came");
        std::thread::yield_now();
    }
    assert!(dir.sync_count("wal-") > base);
    wal.close().unwrap();
}

#[test]
fn os_policy_writes_without_syncing_until_close() {
    let dir = CrashSimDir::new("/p000");
    let options = WalOptions { sync: WalSync::Os, ..WalOptions::default() };
    let (wal, _, _) = open(&dir, 0, options);
    let base = dir.sync_count("wal-");
    for i in 1..=10 {
        let lsn = wal.append(&put("/a", i, b"x")).unwrap();
        wal.wait(lsn).unwrap();
    }
    assert_eq!(dir.sync_count("wal-"), base);
    assert_eq!(wal.synced_lsn(), 0);
    wal.close().unwrap();
    assert_eq!(dir.sync_count("wal-"), base + 1);
}

#[test]
fn a_failed_sync_is_reported_to_every_waiter_and_later_appends_are_refused() {
    let dir = CrashSimDir::new("/p000");
    let (wal, _, _) = open(&dir, 0, always());
    let ok = wal.append(&put("/a", 1, b"kept")).unwrap();
    wal.wait(ok).unwrap();
    dir.fail("wal-", FaultOp::Sync, 1);
    let lost = wal.append(&put("/a", 2, b"not acknowledged")).unwrap();
    let err = wal.wait(lost).unwrap_err();
    assert!(matches!(err, StoreError::WalFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(matches!(wal.append(&put("/a", 3, b"x")), Err(StoreError::WalFailed { .. })));
    assert!(wal.wait(ok).is_err(), "a failed log answers every wait with the failure");
    drop(wal);
    // What was acknowledged survives any crash.
    for seed in 0..20 {
        let (_, seen, _) = open(&dir.crash(seed), 0, always());
        assert_eq!(seen[0].data, b"kept");
    }
}

#[test]
fn acknowledged_records_survive_every_simulated_crash() {
    let options = WalOptions { sync: WalSync::Always, segment_bytes: 2048, preallocate_bytes: 512 };
    for seed in 0..crash_iterations() {
        let dir = CrashSimDir::new("/p000");
        let (wal, _, _) = open(&dir, 0, options);
        let mut acked = 0u64;
        let n = 5 + seed % 40;
        for i in 1..=n {
            let data = vec![i as u8; (seed as usize * 37 + i as usize * 101) % 1500];
            let lsn = wal.append(&put("/a", i, &data)).unwrap();
            if i % 3 == 0 || i == n {
                wal.wait(lsn).unwrap();
                acked = lsn;
            }
        }
        // More appended but never waited for: may or may not survive.
        for i in n + 1..n + 4 {
            wal.append(&put("/a", i, &[9; 700])).unwrap();
        }
        let crashed = dir.crash(seed);
        std::mem::forget(wal); // a crash runs no destructors
        let (wal, seen, recovery) = open(&crashed, 0, options);
        assert!(seen.len() as u64 >= acked, "seed {seed}: {} < {acked}", seen.len());
        for (i, r) in seen.iter().enumerate() {
            assert_eq!(r.lsn, i as u64 + 1, "seed {seed}: a prefix, in order");
            assert_eq!(r.rev, r.lsn);
        }
        assert_continues_after_recovery(wal, &crashed, &recovery, seen.len(), seed, options);
    }
}

/// Holds `sync_data` calls of the directories that share it: while held, each sync reports
/// that it started and blocks until the hold is released.
#[derive(Clone, Default)]
struct SyncGate {
    held: Arc<std::sync::Mutex<Option<HeldSyncs>>>,
}

#[derive(Clone)]
struct HeldSyncs {
    entered: Sender<()>,
    release: Receiver<()>,
}

impl SyncGate {
    /// Holds every sync from now on. The receiver hears of each sync that starts; dropping
    /// the sender lets them all through (and every later one).
    fn hold(&self) -> (Receiver<()>, Sender<()>) {
        let (entered, entered_rx) = crossbeam_channel::unbounded();
        let (release_tx, release) = crossbeam_channel::bounded(0);
        *self.held.lock().unwrap() = Some(HeldSyncs { entered, release });
        (entered_rx, release_tx)
    }

    fn pass(&self) {
        let held = self.held.lock().unwrap().clone();
        if let Some(held) = held {
            let _ = held.entered.send(());
            // Returns once the test drops its sender.
            let _ = held.release.recv();
        }
    }
}

/// A directory wrapper that counts `sync_data` calls on its files, and can hold them.
struct CountingDir {
    inner: Arc<dyn StorageDir>,
    syncs: Arc<std::sync::atomic::AtomicU64>,
    gate: SyncGate,
}

impl CountingDir {
    fn new(inner: Arc<dyn StorageDir>) -> CountingDir {
        CountingDir::gated(inner, &SyncGate::default())
    }

    fn gated(inner: Arc<dyn StorageDir>, gate: &SyncGate) -> CountingDir {
        CountingDir { inner, syncs: Arc::default(), gate: gate.clone() }
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct CountingFile {
    inner: Arc<dyn ferry_file_server::backend::StorageFile>,
    syncs: Arc<std::sync::atomic::AtomicU64>,
    gate: SyncGate,
}

impl StorageDir for CountingDir {
    fn path(&self) -> &std::path::Path {
        self.inner.path()
    }
    fn open_file(
        &self,
        name: &str,
        mode: OpenMode,
    ) -> std::io::Result<Arc<dyn ferry_file_server::backend::StorageFile>> {
        let inner = self.inner.open_file(name, mode)?;
        let (syncs, gate) = (self.syncs.clone(), self.gate.clone());
        Ok(Arc::new(CountingFile { inner, syncs, gate }))
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }
    fn remove_file(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove_file(name)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
}

impl ferry_file_server::backend::StorageFile for CountingFile {
    fn path(&self) -> &std::path::Path {
        self.inner.path()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.gate.pass();
        self.inner.sync_data()
    }
    fn map(&self) -> std::io::Result<Arc<dyn ferry_file_server::backend::Mapping>> {
        self.inner.map()
    }
}

#[test]
fn verify_reads_every_record_and_tells_a_torn_tail_from_damage() {
    use ferry_file_server::wal::verify_wal;
    let dir = CrashSimDir::new("/p000");
    let options = WalOptions { sync: WalSync::Always, segment_bytes: 300, preallocate_bytes: 0 };
    let (wal, _, _) = open(&dir, 0, options);
    for i in 1..=20u64 {
        let path = format!("/f/{i}");
        let lsn = wal.append(&put(&path, i, &[i as u8; 40])).unwrap();
        wal.wait(lsn).unwrap();
    }
    wal.close().unwrap();
    let report = verify_wal(&dir).unwrap();
    assert!(report.is_ok());
    assert_eq!((report.records, report.first_lsn, report.last_lsn), (20, Some(1), Some(20)));
    assert!(report.segments > 3 && report.torn_tail.is_none());

    // A flipped byte in the last segment's last record: a torn tail, which recovery cuts.
    let mut names: Vec<String> =
        dir.list().unwrap().into_iter().filter(|n| n.starts_with("wal-")).collect();
    names.sort();
    let last = names.last().unwrap().clone();
    let len = dir.read_file(&last).unwrap().len() as u64;
    dir.corrupt(&last, len - 3, &[0xff]).unwrap();
    let report = verify_wal(&dir).unwrap();
    let tail = report.torn_tail.clone().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.records, tail.later_segments), (19, 0));
    assert_eq!(tail.why, "record checksum mismatch");

    // The same damage in the first segment strands every later segment: reported as damage.
    let first = names[0].clone();
    dir.corrupt(&first, SEGMENT_HEADER + 20, &[0xff]).unwrap();
    let report = verify_wal(&dir).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.torn_tail.unwrap().later_segments, names.len() - 1);
    assert_eq!(report.records, 0);
}

const SEGMENT_HEADER: u64 = ferry_file_server::wal::SEGMENT_HEADER_LEN as u64;

#[test]
fn a_segment_the_tree_already_holds_is_closed_early_and_then_deleted() {
    let dir = CrashSimDir::new("/p000");
    let options =
        WalOptions { sync: WalSync::Always, preallocate_bytes: 0, ..WalOptions::default() };
    let (wal, _, _) = open(&dir, 0, options);
    let data = [7u8; 4096];
    let count = ferry_file_server::wal::ROLL_COVERED_BYTES / data.len() as u64 + 10;
    let mut last = 0;
    for i in 0..count {
        last = wal.append(&put("/f", i + 1, &data)).unwrap();
    }
    wal.wait(last).unwrap();
    let (bytes, segments) = wal.size();
    assert!(bytes > ferry_file_server::wal::ROLL_COVERED_BYTES && segments == 1);
    // Covered, but still the segment being written: nothing to delete yet.
    assert_eq!(wal.checkpoint(last).unwrap(), 0);
    let next = wal.append(&put("/f", count + 1, b"x")).unwrap();
    wal.wait(next).unwrap();
    assert_eq!(wal.size().1, 2, "the covered segment was closed at the next append");
    assert_eq!(wal.checkpoint(next).unwrap(), 1);
    let (bytes, segments) = wal.size();
    assert_eq!(segments, 1);
    assert!(bytes < 4096, "only the new small segment is left: {bytes}");
    wal.close().unwrap();
    let (_, replayed, _) = open(&dir, next, options);
    assert!(replayed.is_empty());
}

/// The group a replayed record belongs to (its payload byte) must be whole.
#[test]
fn atomic_groups_survive_every_simulated_crash_whole_or_not_at_all() {
    // Small segments, so that groups straddle segment boundaries.
    let options = WalOptions { sync: WalSync::Always, segment_bytes: 900, preallocate_bytes: 256 };
    for seed in 0..crash_iterations() {
        let dir = CrashSimDir::new("/p000");
        let (wal, _, _) = open(&dir, 0, options);
        let groups = 2 + seed % 6;
        let mut sizes = Vec::new();
        let mut acked_groups = 0;
        let mut rev = 0;
        // Half the runs leave the syncs to the waiter instead of the syncer thread.
        let sync = if (seed / 2) % 2 == 1 { GroupSync::Caller } else { GroupSync::Syncer };
        for g in 1..=groups {
            let size = 1 + (seed + g) % 4;
            sizes.push(size);
            wal.begin_group(sync);
            let mut last = 0;
            for _ in 0..size {
                rev += 1;
                last = wal.append(&put("/a", rev, &[g as u8; 150])).unwrap();
            }
            if g == groups && seed % 2 == 0 {
                // The crash comes inside this group, once its records are durable (with the
                // syncer; a caller's group is not synced before it ends): recovery must drop
                // them, closing record missing.
                while sync == GroupSync::Syncer && wal.synced_lsn() < last {
                    std::thread::yield_now();
                }
                break;
            }
            wal.end_group(sync);
            if seed % 3 != 0 || g == groups {
                wal.wait(last).unwrap();
                acked_groups = g;
            }
        }
        let crashed = dir.crash(seed);
        std::mem::forget(wal); // a crash runs no destructors
        let (wal, seen, recovery) = open(&crashed, 0, options);
        let mut count_by_group = vec![0u64; groups as usize + 1];
        for (i, r) in seen.iter().enumerate() {
            assert_eq!(r.rev, i as u64 + 1, "seed {seed}: a prefix of the changes, in order");
            count_by_group[r.data[0] as usize] += 1;
        }
        for g in 1..=groups {
            let n = count_by_group[g as usize];
            assert!(n == 0 || n == sizes[g as usize - 1], "seed {seed}: group {g} in part: {n}");
            if g <= acked_groups {
                assert_eq!(n, sizes[g as usize - 1], "seed {seed}: acknowledged group {g} lost");
            }
        }
        if seed % 2 == 0 {
            assert_eq!(
                count_by_group[groups as usize], 0,
                "seed {seed}: an unclosed group replayed"
            );
        }
        assert_continues_after_recovery(wal, &crashed, &recovery, seen.len(), seed, options);
    }
}

#[test]
fn a_callers_group_is_synced_by_its_waiter_and_survives_a_crash_once_acknowledged() {
    let dir = CrashSimDir::new("/p000");
    let (wal, _, _) = open(&dir, 0, always());
    let synced_before = wal.synced_lsn();
    let last = append_callers_group(&wal, &[b"one", b"two"]);
    // Nothing woke the syncer thread: the records wait for their caller.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(wal.synced_lsn(), synced_before, "the syncer synced a caller's group");
    wal.wait(last).unwrap();
    assert!(wal.synced_lsn() > last, "the commit record is synced with the group");
    assert_eq!(
        contents_after_crash(&dir, wal, 7),
        [b"one", b"two"],
        "an acknowledged group is durable"
    );
}

/// Appends one put of `/a` per item in a [`GroupSync::Caller`] group and ends it; the last
/// put's LSN.
fn append_callers_group(wal: &WriteAheadLog, contents: &[&[u8]]) -> u64 {
    wal.begin_group(GroupSync::Caller);
    let mut last = 0;
    for (i, data) in contents.iter().enumerate() {
        last = wal.append(&put("/a", i as u64 + 1, data)).unwrap();
    }
    wal.end_group(GroupSync::Caller);
    last
}

/// The contents a recovery replays from `dir` after a simulated power cut (`seed`) while
/// `wal` was open.
fn contents_after_crash(dir: &CrashSimDir, wal: WriteAheadLog, seed: u64) -> Vec<Vec<u8>> {
    let crashed = dir.crash(seed);
    std::mem::forget(wal); // a crash runs no destructors
    let (_, seen, _) = open(&crashed, 0, always());
    seen.into_iter().map(|r| r.data).collect()
}

#[test]
fn records_written_unsynced_are_acknowledged_after_a_filesystem_sync_without_a_sync_of_their_own() {
    let dir = CrashSimDir::new("/p000");
    let (wal, _, _) = open(&dir, 0, always());
    let last = append_callers_group(&wal, &[b"one", b"two"]);
    let (syncs, synced) = (dir.sync_count("wal-"), wal.synced_lsn());
    let point = wal.write_unsynced().unwrap();
    assert_eq!(wal.synced_lsn(), synced, "written, not synced");
    dir.sync_filesystem().unwrap();
    wal.mark_synced(point);
    wal.wait(last).unwrap();
    assert!(wal.synced_lsn() > last, "the commit record is covered too");
    assert_eq!(dir.sync_count("wal-"), syncs, "the log was not synced on its own");
    assert_eq!(dir.filesystem_sync_count(), 1);
    let contents = contents_after_crash(&dir, wal, 11);
    assert_eq!(contents, [b"one", b"two"], "acknowledged after the file-system sync");
}

#[test]
fn records_written_unsynced_and_never_covered_are_synced_by_their_waiter() {
    let dir = CrashSimDir::new("/p000");
    let (wal, _, _) = open(&dir, 0, always());
    let last = append_callers_group(&wal, &[b"one"]);
    let syncs = dir.sync_count("wal-");
    wal.write_unsynced().unwrap();
    // The file-system sync failed or never ran: no mark_synced.
    wal.wait(last).unwrap();
    assert_eq!(dir.sync_count("wal-"), syncs + 1, "the waiter synced the log itself");
    assert_eq!(contents_after_crash(&dir, wal, 3), [b"one"], "acknowledged, so durable");
}

#[test]
fn a_grouped_record_is_acknowledged_only_once_its_group_ends() {
    let dir = CrashSimDir::new("/p000");
    let (wal, _, _) = open(&dir, 0, always());
    let wal = Arc::new(wal);
    wal.begin_group(GroupSync::Syncer);
    let lsn = wal.append(&put("/a", 1, b"grouped")).unwrap();
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let waiter = {
        let wal = wal.clone();
        std::thread::spawn(move || {
            wal.wait(lsn).unwrap();
            done_tx.send(()).unwrap();
        })
    };
    // Synced, but its group is open: no acknowledgement yet.
    while wal.synced_lsn() < lsn {
        std::thread::yield_now();
    }
    assert!(
        done.recv_timeout(Duration::from_millis(100)).is_err(),
        "acknowledged in an open group"
    );
    wal.end_group(GroupSync::Syncer);
    done.recv_timeout(Duration::from_secs(10)).expect("acknowledged once the group ended");
    waiter.join().unwrap();
    // The commit record took the next LSN; it is no change, so recovery replays one record.
    assert_eq!(wal.last_lsn(), lsn + 1);
    Arc::try_unwrap(wal).ok().expect("the waiter is gone").close().unwrap();
    let (_, seen, recovery) = open(&dir, 0, always());
    assert_eq!(seen.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![lsn]);
    assert_eq!(recovery.next_lsn, lsn + 2);
}

#[test]
fn a_preallocation_larger_than_one_zero_chunk_is_all_zeros_and_replays() {
    let dir = CrashSimDir::new("/p000");
    let prealloc = 200 << 10;
    let options =
        WalOptions { sync: WalSync::Always, segment_bytes: 1 << 20, preallocate_bytes: prealloc };
    let (wal, _, _) = open(&dir, 0, options);
    let lsn = wal.append(&put("/f/1", 1, b"hello")).unwrap();
    wal.wait(lsn).unwrap();
    let names: Vec<String> =
        dir.list().unwrap().into_iter().filter(|n| n.starts_with("wal-")).collect();
    let bytes = dir.read_file(&names[0]).unwrap();
    let records_end = bytes.len() - prealloc as usize;
    assert!(records_end > SEGMENT_HEADER as usize, "the record precedes the zeros");
    assert!(bytes[records_end..].iter().all(|&b| b == 0), "the preallocated tail is zeros");
    drop(wal);
    let crashed = dir.crash(7);
    let (_, seen, _) = open(&crashed, 0, options);
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].path.as_str(), seen[0].data.as_slice()), ("/f/1", &b"hello"[..]));
}
