//! A full check of a partition's current tree file, reporting every problem it finds.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::format::{
    check_page, overflow_pages, TreeHeader, FIRST_DATA_PAGE, PAGE_BYTES, PAGE_SIZE,
};
use super::generation::{self, file_name, read_slots};
use super::node::{Content, NodeView};
use crate::backend::{OpenMode, StorageDir};
use crate::error::{Result, StoreError};
use crate::path::FilePath;

/// At most this many problems are listed; a badly damaged file would repeat itself.
const MAX_PROBLEMS: usize = 1000;

/// One check that failed: the file, the byte offset, and what did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeProblem {
    pub file: PathBuf,
    pub offset: u64,
    pub what: String,
}

impl std::fmt::Display for TreeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {}: {}", self.file.display(), self.offset, self.what)
    }
}

/// What [`verify_tree`] checked and found.
#[derive(Debug, Clone, Default)]
pub struct TreeVerifyReport {
    /// The file checked (the newest generation).
    pub file: PathBuf,
    /// Its current header, when one slot is valid.
    pub header: Option<TreeHeader>,
    /// Branch and leaf pages whose checksum was checked.
    pub node_pages: u64,
    /// Overflow pages whose content checksum was checked.
    pub overflow_pages: u64,
    pub live_entries: u64,
    pub tombstones: u64,
    pub problems: Vec<TreeProblem>,
}

impl TreeVerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, offset: u64, what: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(TreeProblem { file: self.file.clone(), offset, what: what.into() });
        }
    }
}

/// Checks the newest tree file in `dir`: both header slots, every reachable page's checksum
/// and structure, key order, separator keys against their children, uniform depth, overflow
/// extents (checksum, SHA-256 against the stored hash, no overlaps), entry counts against the
/// header, and that reachable plus garbage pages account for every allocated page.
/// Damage is reported in the list; `Err` only when there is no tree to check or it cannot be
/// read at all.
pub fn verify_tree(dir: Arc<dyn StorageDir>) -> Result<TreeVerifyReport> {
    let listing = generation::list(&*dir)?;
    let Some(&newest) = listing.generations.last() else {
        return Err(StoreError::NotInitialized { dir: dir.path().to_path_buf() });
    };
    let path = dir.path().join(file_name(newest));
    let file = generation::open(&*dir, newest, OpenMode::ReadOnly)
        .map_err(|e| StoreError::io("open", &path, e))?;
    let mut report = TreeVerifyReport { file: path.clone(), ..Default::default() };
    let slots = read_slots(&*file)?;
    let mut header: Option<TreeHeader> = None;
    for (i, slot) in slots.iter().enumerate() {
        match TreeHeader::decode(slot) {
            Ok(h) => {
                if header.is_none_or(|best| h.txn_id > best.txn_id) {
                    header = Some(h);
                }
            }
            Err(super::format::HeaderFault::Blank) => {}
            Err(fault) => {
                report.problem(i as u64 * PAGE_BYTES, format!("header slot {i}: {fault}"))
            }
        }
    }
    let Some(header) = header else {
        report.problem(0, "no valid header slot");
        return Ok(report);
    };
    report.header = Some(header);
    if header.generation != newest {
        report.problem(
            0,
            format!("header says generation {}, file name says {newest}", header.generation),
        );
    }
    let map = file.map().map_err(|e| StoreError::io("map", &path, e))?;
    let bytes = map.bytes();
    let mapped_pages = bytes.len() as u64 / PAGE_BYTES;
    if mapped_pages < header.end_page {
        report.problem(
            bytes.len() as u64,
            format!(
                "file is {} bytes but the header needs {}",
                bytes.len(),
                header.end_page * PAGE_BYTES
            ),
        );
    }
    let mut walk = Walk {
        bytes,
        header,
        end_page: header.end_page.min(mapped_pages),
        seen: vec![0u64; (header.end_page.min(mapped_pages) as usize).div_ceil(64)],
        reachable: 0,
        report,
    };
    if header.root_page != 0 {
        walk.node(header.root_page, header.depth - 1, None, None);
    }
    let Walk { mut report, reachable, .. } = walk;
    if report.live_entries != header.live_entries || report.tombstones != header.tombstones {
        report.problem(
            0,
            format!(
                "the tree holds {} files and {} tombstones, the header says {} and {}",
                report.live_entries, report.tombstones, header.live_entries, header.tombstones
            ),
        );
    }
    let allocated = header.end_page - FIRST_DATA_PAGE;
    if report.is_ok() && reachable + header.garbage_pages != allocated {
        report.problem(
            0,
            format!(
                "{reachable} reachable and {} garbage pages do not add up to the {allocated} allocated",
                header.garbage_pages
            ),
        );
    }
    Ok(report)
}

struct Walk<'m> {
    bytes: &'m [u8],
    header: TreeHeader,
    /// Pages that may be referenced: below the header's end page and inside the file.
    end_page: u64,
    seen: Vec<u64>,
    reachable: u64,
    report: TreeVerifyReport,
}

impl<'m> Walk<'m> {
    /// Claims pages `first..first + count` as reachable; false (and a problem) when they are
    /// out of range or already claimed.
    fn claim(&mut self, first: u64, count: u64, at: u64, what: &str) -> bool {
        if first < FIRST_DATA_PAGE || first.saturating_add(count) > self.end_page {
            self.report.problem(
                at,
                format!(
                    "{what} at page {first} (+{count}) is outside the data pages 2..{}",
                    self.end_page
                ),
            );
            return false;
        }
        for p in first..first + count {
            let (word, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            if self.seen[word] & bit != 0 {
                self.report.problem(at, format!("{what}: page {p} is reachable twice"));
                return false;
            }
            self.seen[word] |= bit;
        }
        self.reachable += count;
        true
    }

    /// Checks the subtree at `page`, whose keys must lie in `[low, high)`; a non-root node's
    /// first key must equal its separator `low`.
    fn node(&mut self, page: u64, level: u32, low: Option<&[u8]>, high: Option<&[u8]>) {
        let at = page.saturating_mul(PAGE_BYTES);
        if !self.claim(page, 1, at, "tree page") {
            return;
        }
        let bytes = &self.bytes[page as usize * PAGE_SIZE..(page as usize + 1) * PAGE_SIZE];
        self.report.node_pages += 1;
        let header = match check_page(bytes, page) {
            Ok(h) => h,
            Err(what) => return self.report.problem(at, what),
        };
        if header.txn_id > self.header.txn_id {
            self.report.problem(
                at,
                format!(
                    "page {page} was written by txn {} after the current txn {}",
                    header.txn_id, self.header.txn_id
                ),
            );
        }
        let node = match NodeView::new(bytes) {
            Ok(n) => n,
            Err(f) => {
                return self.report.problem(at + f.at as u64, format!("page {page}: {}", f.what))
            }
        };
        if u32::from(node.level()) != level {
            return self.report.problem(
                at,
                format!(
                    "page {page} is at level {} where level {level} was expected",
                    node.level()
                ),
            );
        }
        let mut keys = Vec::with_capacity(node.cell_count());
        for i in 0..node.cell_count() {
            match node.key(i) {
                Ok(k) => keys.push(k),
                Err(f) => {
                    return self
                        .report
                        .problem(at + f.at as u64, format!("page {page}: {}", f.what))
                }
            }
        }
        for (i, pair) in keys.windows(2).enumerate() {
            if pair[0] >= pair[1] {
                self.report
                    .problem(at, format!("page {page}: keys {i} and {} are out of order", i + 1));
            }
        }
        if let Some(low) = low {
            if keys[0] != low {
                self.report.problem(
                    at,
                    format!(
                        "page {page}: first key {:?} differs from its separator {:?}",
                        String::from_utf8_lossy(keys[0]),
                        String::from_utf8_lossy(low)
                    ),
                );
            }
        }
        if let Some(high) = high {
            if keys.last().is_some_and(|k| *k >= high) {
                self.report
                    .problem(at, format!("page {page}: a key lies at or above the next separator"));
            }
        }
        if node.is_leaf() {
            for i in 0..node.cell_count() {
                self.leaf_cell(page, &node, i);
            }
            return;
        }
        for i in 0..node.cell_count() {
            let child = match node.child(i) {
                Ok(c) => c,
                Err(f) => {
                    return self
                        .report
                        .problem(at + f.at as u64, format!("page {page}: {}", f.what))
                }
            };
            let child_high = keys.get(i + 1).copied().or(high);
            self.node(child, level - 1, Some(keys[i]), child_high);
        }
    }

    fn leaf_cell(&mut self, page: u64, node: &NodeView<'m>, i: usize) {
        let at = page * PAGE_BYTES;
        let cell = match node.leaf_cell(i) {
            Ok(c) => c,
            Err(f) => {
                return self.report.problem(at + f.at as u64, format!("page {page}: {}", f.what))
            }
        };
        let valid_path =
            std::str::from_utf8(cell.key).ok().is_some_and(|k| FilePath::parse(k).is_ok());
        if !valid_path {
            self.report.problem(
                at,
                format!(
                    "page {page}: key {:?} is not a valid path",
                    String::from_utf8_lossy(cell.key)
                ),
            );
        }
        if std::str::from_utf8(cell.author).is_err() {
            self.report.problem(at, format!("page {page}: author of cell {i} is not UTF-8"));
        }
        let content = match cell.content {
            Content::Deleted => {
                self.report.tombstones += 1;
                return;
            }
            Content::Inline(bytes) => bytes,
            Content::Overflow { first_page, crc } => {
                let pages = overflow_pages(cell.size);
                if !self.claim(first_page, pages, at, "overflow extent") {
                    self.report.live_entries += 1;
                    return;
                }
                self.report.overflow_pages += pages;
                let start = first_page as usize * PAGE_SIZE;
                let bytes = &self.bytes[start..start + cell.size as usize];
                let computed = crc32fast::hash(bytes);
                if computed != crc {
                    self.report.problem(first_page * PAGE_BYTES, format!("overflow extent at page {first_page} crc mismatch (stored {crc:#010x}, computed {computed:#010x})"));
                }
                bytes
            }
        };
        self.report.live_entries += 1;
        let hash: [u8; 32] = Sha256::digest(content).into();
        if hash != *cell.hash {
            self.report.problem(
                at,
                format!(
                    "page {page}: content of {:?} does not match its SHA-256",
                    String::from_utf8_lossy(cell.key)
                ),
            );
        }
    }
}
