//! A reader in another process reads continuously while the writer commits and compacts.
//!
//! Every commit moves some amount between `/a` and `/b`, so every consistent snapshot has
//! them summing to `TOTAL`. The child process is this test binary run again with
//! `FERRY_TREE_READER_DIR` set, running only the ignored `reader_child`.

mod tree_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_file_server::tree::{TreeFile, TreeReader};
use ferry_file_server::Record;
use tree_support::*;

const TOTAL: u64 = 1000;
const DIR_VAR: &str = "FERRY_TREE_READER_DIR";

/// A balance as content: the number, padded to an inline or an overflow size.
fn balance(rev: u64, value: u64, large: bool) -> Record {
    let mut text = format!("{value:010}").into_bytes();
    text.resize(if large { 6000 } else { 300 }, b'.');
    live(rev, text)
}

fn value_of(record: &Record) -> u64 {
    let content = record.content.as_ref().expect("balances are never deleted");
    std::str::from_utf8(&content[..10]).unwrap().parse().unwrap()
}

#[test]
#[ignore = "the reader half of the test below, run by it in a child process"]
fn reader_child() {
    let dir = std::env::var_os(DIR_VAR).expect("FERRY_TREE_READER_DIR names the tree to read");
    let dir = fs_dir_at(Path::new(&dir));
    let reader = TreeReader::open(dir).unwrap();
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut snapshots, mut last) = (0u64, (0u64, 0u64));
    let mut generations = std::collections::BTreeSet::new();
    let mut txns = std::collections::BTreeSet::new();
    loop {
        assert!(Instant::now() < deadline, "the writer never finished");
        let snap = reader.snapshot().unwrap();
        let h = *snap.header();
        assert!((h.generation, h.txn_id) >= last, "went back from {last:?} to {h:?}");
        last = (h.generation, h.txn_id);
        generations.insert(h.generation);
        txns.insert(h.txn_id);
        let a = snap.get(&path("/a")).unwrap().unwrap();
        let b = snap.get(&path("/b")).unwrap().unwrap();
        assert_eq!(value_of(&a) + value_of(&b), TOTAL, "inconsistent snapshot {h:?}");
        snapshots += 1;
        if snap.get_meta(&path("/done")).unwrap().is_some() {
            break;
        }
    }
    println!("snapshots={snapshots} commits={} generations={}", txns.len(), generations.len());
}

fn fs_dir_at(dir: &Path) -> std::sync::Arc<dyn ferry_file_server::backend::StorageDir> {
    std::sync::Arc::new(ferry_file_server::backend::FsDir::new(dir))
}

#[test]
fn a_reader_process_sees_only_consistent_snapshots_while_the_writer_commits_and_compacts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tree = TreeFile::open(fs_dir(&tmp), 0, 1).unwrap();
    let mut rev = 1;
    let (mut a, mut b) = (TOTAL / 2, TOTAL / 2);
    tree.commit(&[(path("/a"), balance(rev, a, false)), (path("/b"), balance(rev, b, true))], 0)
        .unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reader_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, tmp.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.by_ref().map(|l| l.unwrap()).any(|l| l.ends_with("ready")),
        "child did not start"
    );

    let started = Instant::now();
    let mut compactions = 0;
    let mut commits = 0u64;
    while commits < 400 && (started.elapsed() < Duration::from_secs(3) || compactions < 2) {
        commits += 1;
        rev += 1;
        let amount = (commits * 37) % 100;
        if commits.is_multiple_of(2) && a >= amount {
            (a, b) = (a - amount, b + amount);
        } else if b >= amount {
            (a, b) = (a + amount, b - amount);
        }
        // filler files make the tree deeper and the garbage larger
        let mut items: Vec<_> = (0..20)
            .map(|i| {
                let p = path(&format!("/fill/{:04}", (commits * 7 + i) % 500));
                (p, live(rev, content(commits + i, 700)))
            })
            .collect();
        items.push((path("/a"), balance(rev, a, commits.is_multiple_of(3))));
        items.push((path("/b"), balance(rev, b, !commits.is_multiple_of(3))));
        tree.commit(&batch(items), commits).unwrap();
        if commits.is_multiple_of(40) {
            tree.compact().unwrap();
            compactions += 1;
        }
    }
    tree.commit(&[(path("/done"), live(1, "yes"))], commits + 1).unwrap();
    // libtest may print "test reader_child ... " in front of the child's own output
    let summary: Vec<String> = lines
        .map(|l| l.unwrap())
        .filter_map(|l| l.find("snapshots=").map(|at| l[at..].to_owned()))
        .collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "reader process failed: {status}");
    assert_eq!(summary.len(), 1, "child printed no summary");
    eprintln!("writer: {commits} commits, {compactions} compactions; reader: {}", summary[0]);
    let numbers: Vec<u64> =
        summary[0].split(' ').map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap()).collect();
    assert!(numbers[1] >= 2, "the reader saw only {} commits", numbers[1]);
    assert!(numbers[2] >= 2, "the reader never followed a compaction: {}", summary[0]);
}
