//! Damaged tree files: flipped bytes in every page and in the headers, truncation, a foreign
//! file. Reads return typed errors (never a panic, never wrong data) and `verify_tree`
//! reports the damage.

mod tree_support;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ferry_file_server::tree::{file_name, verify_tree, Snapshot, TreeFile, TreeReader, PAGE_SIZE};
use ferry_file_server::{FilePath, Record, StoreError};
use tree_support::*;

const TREE: &str = "tree-00000002.ferry";

/// A compacted tree (every page reachable) of inline files, long-path files and overflow
/// files whose last page is at least 200 bytes full.
fn build(dir: &Path) -> (BTreeMap<FilePath, Record>, u64) {
    let mut tree = TreeFile::open(fs_dir_at(dir), 0, 1).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..3u64 {
        let items = (0..40u64)
            .map(|i| {
                let k = i * 3 + round;
                let p = path(&format!("/d{}/{}{k}", k % 3, "n".repeat((k as usize * 53) % 700)));
                let len = if k % 9 == 0 { 4096 + 300 + k as usize } else { 50 + k as usize * 7 };
                (p, live(1, content(k, len)))
            })
            .collect();
        let b = batch(items);
        tree.commit(&b, round).unwrap();
        model.extend(b);
    }
    tree.compact().unwrap();
    (model, tree.header().end_page)
}

fn fs_dir_at(dir: &Path) -> std::sync::Arc<dyn ferry_file_server::backend::StorageDir> {
    std::sync::Arc::new(ferry_file_server::backend::FsDir::new(dir))
}

fn flip(file: &Path, offset: u64) {
    let f = OpenOptions::new().read(true).write(true).open(file).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
}

/// Reads everything; returns the number of corruption errors. Any data that is returned must
/// be right.
fn read_all(snapshot: &Snapshot, model: &BTreeMap<FilePath, Record>) -> usize {
    let mut errors = 0;
    let mut scanned = 0;
    for entry in snapshot.scan("", None) {
        match entry {
            Ok((p, meta, _)) => {
                assert_eq!(Some(&meta), model.get(&p).map(|r| &r.meta));
                scanned += 1;
            }
            Err(StoreError::Corrupt { .. }) => errors += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    for (p, r) in model {
        match snapshot.get(p) {
            Ok(found) => assert_eq!(found.as_ref(), Some(r)),
            Err(StoreError::Corrupt { .. }) => errors += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(errors > 0 || scanned == model.len());
    errors
}

#[test]
fn a_flipped_byte_in_any_page_is_reported_by_reads_and_verify() {
    let clean = tempfile::tempdir().unwrap();
    let (model, end_page) = build(clean.path());
    assert!(end_page > 20, "{end_page}");
    for page in 2..end_page {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(clean.path().join(TREE), tmp.path().join(TREE)).unwrap();
        let offset = page * PAGE_SIZE as u64 + 100 + page % 50;
        flip(&tmp.path().join(TREE), offset);
        let reader = TreeReader::open(fs_dir(&tmp)).unwrap();
        let errors = read_all(&reader.snapshot().unwrap(), &model);
        assert!(errors > 0, "page {page}: damage went unnoticed by reads");
        let report = verify_tree(fs_dir(&tmp)).unwrap();
        let page_range = page * PAGE_SIZE as u64..(page + 1) * PAGE_SIZE as u64;
        // a damaged overflow page is reported at the start of its extent
        let near = |p: &&ferry_file_server::tree::TreeProblem| {
            page_range.contains(&p.offset)
                || (p.what.contains("overflow extent") && p.offset <= page_range.start)
        };
        assert!(report.problems.iter().any(|p| near(&p)), "page {page}: {:?}", report.problems);
    }
}

#[test]
fn a_damaged_header_slot_falls_back_and_two_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = build(tmp.path());
    let file = tmp.path().join(TREE);
    let current = TreeReader::open(fs_dir(&tmp)).unwrap().snapshot().unwrap().header().txn_id;
    // the compacted file has one header, in slot txn % 2
    flip(&file, (current % 2) * PAGE_SIZE as u64 + 20);
    let report = verify_tree(fs_dir(&tmp)).unwrap();
    assert!(report.problems.iter().any(|p| p.what.contains("header slot")), "{report:?}");
    match TreeReader::open(fs_dir(&tmp)) {
        Err(StoreError::Corrupt { offset: 0, what, .. }) => {
            assert!(what.contains("neither header slot"), "{what}")
        }
        other => panic!("expected a corrupt header error, got {:?}", other.err()),
    }
    assert!(matches!(TreeFile::open(fs_dir(&tmp), 0, 1), Err(StoreError::Corrupt { .. })));
    assert!(!model.is_empty());
}

#[test]
fn an_older_header_survives_damage_to_the_newer_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tree = TreeFile::open(fs_dir(&tmp), 0, 1).unwrap();
    tree.commit(&[(path("/a"), live(1, "one"))], 1).unwrap();
    tree.commit(&[(path("/a"), live(2, "two"))], 2).unwrap();
    drop(tree);
    flip(&tmp.path().join(file_name(1)), 0); // txn 2 lives in slot 0
    let snap = TreeReader::open(fs_dir(&tmp)).unwrap().snapshot().unwrap();
    assert_eq!(snap.header().txn_id, 1);
    assert_eq!(snap.get(&path("/a")).unwrap().unwrap(), live(1, "one"));
}

#[test]
fn truncation_and_foreign_files_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, end_page) = build(tmp.path());
    let file = tmp.path().join(TREE);
    let f = OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(end_page / 2 * PAGE_SIZE as u64).unwrap();
    assert!(matches!(TreeReader::open(fs_dir(&tmp)), Err(StoreError::Corrupt { .. })));
    assert!(matches!(TreeFile::open(fs_dir(&tmp), 0, 1), Err(StoreError::Corrupt { .. })));
    let report = verify_tree(fs_dir(&tmp)).unwrap();
    assert!(report.problems.iter().any(|p| p.what.contains("bytes but the header needs")));
    f.set_len(100).unwrap();
    assert!(matches!(TreeReader::open(fs_dir(&tmp)), Err(StoreError::Corrupt { .. })));
    assert!(!verify_tree(fs_dir(&tmp)).unwrap().is_ok());

    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join(file_name(1)), vec![b'#'; 3 * PAGE_SIZE]).unwrap();
    assert!(matches!(TreeReader::open(fs_dir(&foreign)), Err(StoreError::Foreign { .. })));
    assert!(matches!(TreeFile::open(fs_dir(&foreign), 0, 1), Err(StoreError::Foreign { .. })));
}

/// A leaf whose checksum is right but whose key is not a path (as a buggy or foreign writer
/// could leave it): the page's first touch refuses it, so reads and scans, which trust the
/// keys of checked pages, report corruption instead of handing out an invalid path.
#[test]
fn a_resealed_leaf_with_an_invalid_key_is_refused_on_first_touch() {
    let tmp = tempfile::tempdir().unwrap();
    let items = ["/x/a", "/x/b", "/x/c"].iter().map(|p| (path(p), live(1, *p))).collect();
    let root = {
        let mut tree = TreeFile::open(fs_dir(&tmp), 0, 1).unwrap();
        tree.commit(&batch(items), 1).unwrap();
        assert_eq!(tree.header().depth, 1, "the root is the only leaf");
        tree.header().root_page
    };
    let file = tmp.path().join(file_name(1));
    let f = OpenOptions::new().read(true).write(true).open(&file).unwrap();
    let mut page = vec![0u8; PAGE_SIZE];
    f.read_exact_at(&mut page, root * PAGE_SIZE as u64).unwrap();
    // "/x/c" becomes "/x/\xff": still in order, no longer UTF-8.
    let at = page.windows(4).position(|w| w == b"/x/c").unwrap() + 3;
    page[at] = 0xff;
    let crc = crc32fast::hash(&page[4..]);
    page[..4].copy_from_slice(&crc.to_le_bytes());
    f.write_all_at(&page, root * PAGE_SIZE as u64).unwrap();
    drop(f);

    let reader = TreeReader::open(fs_dir(&tmp)).unwrap();
    let snapshot = reader.snapshot().unwrap();
    let err = snapshot.get(&path("/x/a")).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not a valid path"), "{err}");
    let scanned: Vec<_> = snapshot.scan("/x/", None).collect();
    assert_eq!(scanned.len(), 1);
    assert!(matches!(scanned[0], Err(StoreError::Corrupt { .. })), "{scanned:?}");
}
