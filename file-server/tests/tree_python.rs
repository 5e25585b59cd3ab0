//! The Python reference reader (`tools/ferry_reader.py`, standard library only) reads trees
//! written by Rust: the same listing and the same content, byte for byte. Needs `python3`.

mod tree_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use ferry_file_server::backend::{FsDir, StorageDir};
use ferry_file_server::partition::partition_of;
use ferry_file_server::tree::{file_name, TreeFile, TreeReader, PAGE_SIZE};
use ferry_file_server::{FilePath, Record};
use tree_support::*;

const PARTITIONS: u32 = 3;

fn reader_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/ferry_reader.py")
}

fn python(args: &[&Path]) -> Output {
    Command::new("python3")
        .arg(reader_script())
        .args(args)
        .output()
        .expect("python3 must be installed to run this test (scripts/test.sh installs it)")
}

fn partition_dir(data: &Path, p: u32) -> PathBuf {
    data.join(format!("p{p:03}"))
}

/// A data directory of three partitions written by Rust; returns every stored record.
fn write_data_dir(data: &Path) -> BTreeMap<FilePath, Record> {
    let mut model = BTreeMap::new();
    let mut per_partition: Vec<Vec<(FilePath, Record)>> = vec![Vec::new(); PARTITIONS as usize];
    for i in 0..400u64 {
        let p = path(&format!("/home/user{}/docs/file-{i:04}.txt", i % 9));
        let len = match i % 10 {
            0 => 20_000 + i as usize,
            1 => 0,
            2 => 1024,
            3 => 1025,
            _ => 100 + (i as usize * 7) % 900,
        };
        per_partition[partition_of(&p, 2, PARTITIONS) as usize].push((p, live(1, content(i, len))));
    }
    for (part, items) in per_partition.into_iter().enumerate() {
        let dir = partition_dir(data, part as u32);
        std::fs::create_dir_all(&dir).unwrap();
        let mut tree = TreeFile::open(Arc::new(FsDir::new(&dir)), part as u32, PARTITIONS).unwrap();
        let first = batch(items);
        tree.commit(&first, 1).unwrap();
        // overwrite some, delete some, then compact one partition
        let second: Vec<_> = first
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 == 0)
            .map(|(i, (p, _))| {
                let r = if i % 8 == 0 {
                    tombstone(2)
                } else {
                    live(2, format!("second version of {p}"))
                };
                (p.clone(), r)
            })
            .collect();
        tree.commit(&second, 2).unwrap();
        if part == 1 {
            tree.compact().unwrap();
        }
        model.extend(first);
        model.extend(second);
    }
    model
}

fn listing(model: &BTreeMap<FilePath, Record>) -> String {
    model
        .iter()
        .filter(|(_, r)| !r.is_deleted())
        .map(|(p, r)| format!("{p}\t{}\t{}\n", r.meta.rev, r.meta.size))
        .collect()
}

#[test]
fn python_reader_lists_and_reads_what_rust_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let model = write_data_dir(tmp.path());
    assert!(partition_dir(tmp.path(), 1).join(file_name(2)).exists(), "partition 1 was compacted");

    let out = python(&[tmp.path()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), listing(&model));

    // a single partition directory works too, and lists only that partition
    let p0 = partition_dir(tmp.path(), 0);
    let snapshot = TreeReader::open(Arc::new(FsDir::new(&p0)) as Arc<dyn StorageDir>)
        .unwrap()
        .snapshot()
        .unwrap();
    let only_p0: BTreeMap<_, _> = model
        .iter()
        .filter(|(p, _)| partition_of(p, 2, PARTITIONS) == 0)
        .map(|(p, r)| (p.clone(), r.clone()))
        .collect();
    assert_eq!(
        snapshot.header().live_entries,
        only_p0.values().filter(|r| !r.is_deleted()).count() as u64
    );
    let out = python(&[&p0]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), listing(&only_p0));

    for (p, r) in model.iter().step_by(23) {
        let out = python(&[tmp.path(), Path::new(p.as_str())]);
        match &r.content {
            Some(content) => {
                assert!(out.status.success(), "{p}: {}", String::from_utf8_lossy(&out.stderr));
                assert_eq!(out.stdout, content.as_ref(), "{p}");
            }
            None => assert_eq!(out.status.code(), Some(1), "{p} is deleted"),
        }
    }
    let big = model.iter().find(|(_, r)| r.meta.size > 20_000).unwrap();
    let out = python(&[tmp.path(), Path::new(big.0.as_str())]);
    assert_eq!(out.stdout, big.1.content.as_ref().unwrap().as_ref());
    let out = python(&[tmp.path(), Path::new("/no/such/file")]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn python_reader_reports_a_damaged_page() {
    let tmp = tempfile::tempdir().unwrap();
    write_data_dir(tmp.path());
    let dir = partition_dir(tmp.path(), 1);
    let reader = TreeReader::open(Arc::new(FsDir::new(&dir)) as Arc<dyn StorageDir>).unwrap();
    let root = reader.snapshot().unwrap().header().root_page as usize;
    let file = dir.join(file_name(2));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[root * PAGE_SIZE + 40] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let out = python(&[tmp.path()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt") && err.contains("tree-00000002.ferry"), "{err}");
}

#[test]
fn python_reader_reads_the_golden_file() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/p000");
    let snapshot = TreeReader::open(Arc::new(FsDir::new(&golden)) as Arc<dyn StorageDir>)
        .unwrap()
        .snapshot()
        .unwrap();
    let expected: String = snapshot
        .scan("", None)
        .map(|e| e.unwrap())
        .filter(|(_, _, deleted)| !deleted)
        .map(|(p, m, _)| format!("{p}\t{}\t{}\n", m.rev, m.size))
        .collect();
    let out = python(&[&golden]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    let out = python(&[&golden, Path::new("/big.bin")]);
    let record = snapshot.get(&path("/big.bin")).unwrap().unwrap();
    assert_eq!(out.stdout, record.content.unwrap().as_ref());
}
