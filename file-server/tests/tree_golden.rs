//! The checked-in golden tree file: this build must read it and write it byte for byte, so a
//! format change cannot slip in unnoticed. After a deliberate format change (and a new format
//! version), regenerate it with `FERRY_WRITE_GOLDEN=1 cargo test -p ferry-file-server --test
//! tree_golden` and update docs/FORMAT.md.

mod tree_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferry_file_server::record::content_hash;
use ferry_file_server::tree::{file_name, verify_tree, TreeFile, TreeReader, PAGE_SIZE};
use ferry_file_server::{FilePath, Record};
use tree_support::*;

/// The golden partition directory, first rewritten when `FERRY_WRITE_GOLDEN` is set.
fn golden_dir() -> PathBuf {
    static REGENERATE: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/p000");
    REGENERATE.call_once(|| {
        if std::env::var_os("FERRY_WRITE_GOLDEN").is_some() {
            let tmp = tempfile::tempdir().unwrap();
            let end = write_tree(tmp.path());
            let bytes = std::fs::read(tmp.path().join(file_name(1))).unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file_name(1)), &bytes[..end as usize * PAGE_SIZE]).unwrap();
        }
    });
    dir
}

fn record(rev: u64, author: &str, content: Option<Vec<u8>>) -> Record {
    match content {
        Some(c) => Record::live(rev, 1_700_000_000_000 + rev, Arc::from(author), Bytes::from(c)),
        None => Record::deleted(rev, 1_700_000_000_000 + rev, Arc::from(author)),
    }
}

fn long_name(i: usize) -> String {
    format!("/deep/{}{i:02}", "segment-".repeat(40))
}

/// The commits the golden file holds.
fn commits() -> Vec<Vec<(FilePath, Record)>> {
    let mut first = vec![
        (path("/hello.txt"), record(1, "alice", Some(b"hello, world\n".to_vec()))),
        (path("/big.bin"), record(1, "bob", Some(content(1, 10_000)))),
        (path("/gone.txt"), record(1, "alice", Some(b"short-lived".to_vec()))),
        (path("/ünïcode/ファイル"), record(1, "carol", Some("日本語".as_bytes().to_vec()))),
    ];
    first
        .extend((0..12).map(|i| {
            (path(&long_name(i)), record(1, "dave", Some(vec![b'a' + i as u8; 100 * i])))
        }));
    let second = vec![
        (path("/gone.txt"), record(2, "alice", None)),
        (path("/hello.txt"), record(2, "bob", Some(b"hello again\n".to_vec()))),
    ];
    vec![batch(first), batch(second), vec![]]
}

fn write_tree(dir: &Path) -> u64 {
    let mut tree =
        TreeFile::open(Arc::new(ferry_file_server::backend::FsDir::new(dir)), 0, 1).unwrap();
    for (lsn, b) in commits().into_iter().enumerate() {
        tree.commit(&b, 100 + lsn as u64).unwrap();
    }
    tree.header().end_page
}

#[test]
fn golden_file_reads_with_known_contents() {
    let dir: Arc<dyn ferry_file_server::backend::StorageDir> =
        Arc::new(ferry_file_server::backend::FsDir::new(golden_dir()));
    let snap = TreeReader::open(dir.clone()).unwrap().snapshot().unwrap();
    let h = *snap.header();
    assert_eq!((h.txn_id, h.generation, h.partition, h.partitions), (3, 1, 0, 1));
    assert_eq!((h.live_entries, h.tombstones, h.checkpoint_lsn, h.depth), (15, 1, 102, 2));
    let hello = snap.get(&path("/hello.txt")).unwrap().unwrap();
    assert_eq!(hello.content.as_deref(), Some(&b"hello again\n"[..]));
    assert_eq!(
        (hello.meta.rev, &*hello.meta.author, hello.meta.mtime_ms),
        (2, "bob", 1_700_000_000_002)
    );
    let big = snap.get(&path("/big.bin")).unwrap().unwrap();
    assert_eq!(big.meta.size, 10_000);
    assert_eq!(big.meta.hash, content_hash(&content(1, 10_000)));
    assert_eq!(big.meta.hash[..4], [143, 6, 117, 67], "content generator changed");
    let gone = snap.get(&path("/gone.txt")).unwrap().unwrap();
    assert!(gone.is_deleted() && gone.meta.rev == 2);
    let uni = snap.get(&path("/ünïcode/ファイル")).unwrap().unwrap();
    assert_eq!(uni.content.as_deref(), Some("日本語".as_bytes()));
    assert_eq!(snap.get(&path(&long_name(7))).unwrap().unwrap().content.unwrap(), vec![b'h'; 700]);
    assert_eq!(snap.scan("/deep/", None).count(), 12);
    let report = verify_tree(dir).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn this_build_writes_the_golden_file_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let end = write_tree(tmp.path());
    let written = std::fs::read(tmp.path().join(file_name(1))).unwrap();
    let golden = std::fs::read(golden_dir().join(file_name(1))).unwrap();
    assert_eq!(golden.len(), end as usize * PAGE_SIZE);
    let differs = written[..golden.len()].iter().zip(&golden).position(|(a, b)| a != b);
    assert_eq!(differs, None, "first differing byte (page {:?})", differs.map(|d| d / PAGE_SIZE));
}
