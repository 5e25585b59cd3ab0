//! Process crashes: a child process (this test binary, re-run in child mode) writes under load
//! with the `always` policy and prints every acknowledged change; the parent SIGKILLs it at
//! a random moment, then checks that every tree verifies, that the store opens, and that
//! every acknowledged change is there with its revision. The same data directory carries on
//! through all kills, so recovered stores are recovered again.
//!
//! `FERRY_CRASH_KILLS=N` kills N times instead of the default 30.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_file_server::backend::FsDir;
use ferry_file_server::store::partition_dir;
use ferry_file_server::tree::verify_tree;
use ferry_file_server::{Change, FilePath, InitOptions, Store, StoreOptions, WalSync};

const TEST_NAME: &str = "acknowledged_changes_survive_sigkill";
const CHILD_ENV: &str = "FERRY_CRASH_CHILD_DIR";
const PARTITIONS: u32 = 4;
/// More than `ROUND_CALLERS_PER_LOG` per partition, so that the child's callers of
/// `Store::apply` share sync rounds while most of them wait, and sync their own logs when fewer
/// do: both ways are killed mid-flight.
const THREADS: u64 = 12;
const FILES_PER_THREAD: u64 = 25;

fn options() -> StoreOptions {
    StoreOptions {
        wal_sync: WalSync::Always,
        flush_interval_ms: 20,
        flush_max_dirty: 200,
        wal_segment_bytes: 256 << 10,
        wal_preallocate_bytes: 64 << 10,
        ..StoreOptions::default()
    }
}

#[test]
fn acknowledged_changes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        run_child(Path::new(&dir));
        return;
    }
    let kills: u32 =
        std::env::var("FERRY_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Store::init(dir, InitOptions { partitions: PARTITIONS, partition_depth: 2 }).unwrap();
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
            as u64
            | 1;
    let mut rng = seed;
    // path -> highest acknowledged revision
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut total_acks = 0u64;
    for kill in 0..kills {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = crossbeam_channel::unbounded::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the child to have opened (and so recovered) the store.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = lines_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("kill {kill}: the child never became ready"));
            // libtest's "test NAME ... " has no newline of its own.
            if line.ends_with("READY") {
                break;
            }
        }
        rng = xorshift(rng);
        let run_for = Duration::from_millis(20 + rng % 250);
        let until = Instant::now() + run_for;
        let mut acks_this_run = 0;
        while let Ok(line) = lines_rx.recv_deadline(until) {
            acks_this_run += record_ack(&line, &mut acked);
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "kill {kill}: the child was not killed: {status}");
        reader.join().unwrap();
        // Lines fully written before the kill are still in the pipe.
        for line in lines_rx.try_iter() {
            acks_this_run += record_ack(&line, &mut acked);
        }
        total_acks += acks_this_run;

        for p in 0..PARTITIONS {
            let report = verify_tree(Arc::new(FsDir::new(partition_dir(dir, p)))).unwrap();
            assert!(report.is_ok(), "kill {kill} (seed {seed}): partition {p}: {:?}", report);
        }
        let store = Store::open(dir, options())
            .unwrap_or_else(|e| panic!("kill {kill} (seed {seed}): reopen failed: {e}"));
        for (path, rev) in acked.iter_mut() {
            let fp = FilePath::parse(path).unwrap();
            let record = store
                .get(&fp)
                .unwrap()
                .unwrap_or_else(|| panic!("kill {kill} (seed {seed}): {path} rev {rev} lost"));
            let got = record.meta.rev;
            // Each writer thread has at most one change in flight, acknowledged or not.
            assert!(
                got == *rev || got == *rev + 1,
                "kill {kill} (seed {seed}): {path} acknowledged at rev {rev}, found rev {got}"
            );
            let content = String::from_utf8(record.content.clone().unwrap().to_vec()).unwrap();
            check_content(&content, got, path);
            // A recovered, unacknowledged change is durable now: the next child builds on it.
            *rev = got;
        }
        store.close().unwrap();
    }
    eprintln!("{kills} kills, {total_acks} acknowledged changes checked (seed {seed})");
    assert!(total_acks >= u64::from(kills), "the child acknowledged only {total_acks} changes");
}

fn record_ack(line: &str, acked: &mut BTreeMap<String, u64>) -> u64 {
    let Some(rest) = line.strip_prefix("ACK ") else { return 0 };
    let (path, rev) = rest.split_once(' ').expect("ACK path rev");
    let rev: u64 = rev.parse().expect("revision");
    let entry = acked.entry(path.to_owned()).or_default();
    assert!(rev > *entry, "{path}: acknowledged rev {rev} after {entry}");
    *entry = rev;
    1
}

/// Content is a run of lines `rev N` with consecutive N ending at the file's revision.
fn check_content(content: &str, rev: u64, path: &str) {
    let revs: Vec<u64> = content
        .lines()
        .map(|l| l.strip_prefix("rev ").and_then(|n| n.parse().ok()))
        .collect::<Option<_>>()
        .unwrap_or_else(|| panic!("{path}: unexpected content {content:?}"));
    assert_eq!(revs.last(), Some(&rev), "{path}: content {content:?}");
    assert!(revs.windows(2).all(|w| w[1] == w[0] + 1), "{path}: a change is missing: {revs:?}");
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Child mode: write until killed, printing `ACK path rev` after each acknowledged change.
fn run_child(dir: &Path) {
    let store = Arc::new(Store::open(dir, options()).expect("child: open"));
    println!("READY");
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut rng = xorshift((t + 1) * 0x9e37_79b9 + u64::from(std::process::id()));
                // Bounded so that a child the parent failed to kill still ends.
                for _ in 0..1_000_000 {
                    rng = xorshift(rng);
                    let path = format!("/t{t}/dir{}/f{}", rng % 3, rng % FILES_PER_THREAD);
                    let fp = FilePath::parse(&path).unwrap();
                    let rev = store.stat(&fp).unwrap().map_or(0, |m| m.rev);
                    let line = format!("rev {}\n", rev + 1);
                    // This thread is the only writer of its paths, so the revision holds.
                    let change = if rev == 0 || rng.is_multiple_of(8) {
                        Change::put(fp, line, "child")
                    } else {
                        Change::append(fp, line, "child")
                    };
                    let applied = store.apply(change.expecting(rev)).expect("child: apply");
                    println!("ACK {path} {}", applied.meta.rev);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
