//! Compaction: rewriting the live tree densely into the next generation file.
//!
//! Every record, tombstones included (they keep revisions counting), is copied in key order
//! into full leaves, then full branch levels are built over them. The new file is built
//! under a temporary name, synced, renamed into place and the directory synced; only then is
//! the old file's header marked retired and the old file removed. A reader still mapping the
//! old file keeps reading it and moves to the new generation on its next refresh.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use super::format::{TreeHeader, FIRST_DATA_PAGE, KIND_LEAF};
use super::generation::{file_name, tmp_name};
use super::node::{cell_cost, encode_leaf_cell, leaf_cell_len, Content, LeafCell, PAGE_CAPACITY};
use super::snapshot::{LeafCursor, Snapshot};
use super::writer::{branch_pages, map, retire_and_remove, write_header_to, PageSink, TreeFile};
use crate::backend::{OpenMode, StorageFile};
use crate::error::{Result, StoreError};

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactStats {
    pub generation_before: u64,
    pub generation_after: u64,
    /// Length of the old file.
    pub bytes_before: u64,
    /// Length of the new file.
    pub bytes_after: u64,
    /// Pages in use (below the end page) before and after.
    pub pages_before: u64,
    pub pages_after: u64,
}

/// Fresh tree files start this long (sparse).
const INITIAL_LEN: u64 = 1 << 20;

impl TreeFile {
    /// Rewrites the tree into the next generation and removes the current file.
    pub fn compact(&mut self) -> Result<CompactStats> {
        self.check_usable()?;
        let old = self.header;
        let generation = old.generation + 1;
        let tmp = tmp_name(generation);
        let tmp_path = self.dir.path().join(&tmp);
        match self.dir.remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove", &tmp_path, e))
            }
            _ => {}
        }
        let file = self
            .dir
            .open_file(&tmp, OpenMode::Create)
            .map_err(|e| StoreError::io("create", &tmp_path, e))?;
        let built = build(&self.snapshot(), &file, generation).and_then(|header| {
            write_header_to(&*file, &header)?;
            self.dir
                .rename(&tmp, &file_name(generation))
                .map_err(|e| StoreError::io("rename", &tmp_path, e))?;
            Ok(header)
        });
        let header = match built {
            Ok(header) => header,
            Err(e) => {
                // Best effort: the next open removes leftovers anyway.
                let _ = self.dir.remove_file(&tmp);
                return Err(e);
            }
        };
        // From the rename on the new generation is the current one: a writer that cannot
        // switch to it must not commit to the old file any more.
        let bytes_before = self.file_len;
        let switched = self.dir.sync().map_err(|e| StoreError::io("sync", self.dir.path(), e));
        let switched = switched.and_then(|()| self.switch_to(generation, header));
        if let Err(e) = switched {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        retire_and_remove(&*self.dir, old.generation, generation)?;
        self.dir.sync().map_err(|e| StoreError::io("sync", self.dir.path(), e))?;
        Ok(CompactStats {
            generation_before: old.generation,
            generation_after: generation,
            bytes_before,
            bytes_after: self.file_len,
            pages_before: old.end_page,
            pages_after: header.end_page,
        })
    }
}

impl TreeFile {
    fn switch_to(&mut self, generation: u64, header: TreeHeader) -> Result<()> {
        let path = self.dir.path().join(file_name(generation));
        let file = self
            .dir
            .open_file(&file_name(generation), OpenMode::ReadWrite)
            .map_err(|e| StoreError::io("open", &path, e))?;
        let file_len = file.len().map_err(|e| StoreError::io("stat", &path, e))?;
        let tree = map(&file, Arc::default())?;
        Snapshot::new(header, tree.clone())?;
        self.file = file;
        self.file_len = file_len;
        self.tree = tree;
        self.header = header;
        self.next_page = header.end_page;
        Ok(())
    }
}

/// Writes the records of `snapshot` densely into `file` (a new, empty generation file);
/// returns its header, not yet written.
fn build(snapshot: &Snapshot, file: &Arc<dyn StorageFile>, generation: u64) -> Result<TreeHeader> {
    let old = *snapshot.header();
    let txn_id = old.txn_id + 1;
    file.set_len(INITIAL_LEN).map_err(|e| StoreError::io("grow", file.path(), e))?;
    let mut sink = PageSink::new(file.clone(), None, FIRST_DATA_PAGE, INITIAL_LEN, txn_id);
    let mut cursor = LeafCursor::new(snapshot);
    cursor.seek(b"", false)?;
    let mut leaves = DenseLeaves::default();
    let (mut live, mut tombstones) = (0u64, 0u64);
    while let Some((_, mut cell)) = cursor.next_cell()? {
        match cell.content {
            Content::Deleted => tombstones += 1,
            Content::Inline(_) => live += 1,
            Content::Overflow { crc, .. } => {
                live += 1;
                let content = snapshot.content(&cell)?.unwrap_or_default();
                cell.content = Content::Overflow { first_page: sink.overflow(content)?, crc };
            }
        }
        leaves.push(&mut sink, &cell)?;
    }
    leaves.flush(&mut sink)?;
    if live != old.live_entries || tombstones != old.tombstones {
        return Err(snapshot.tree().corrupt(
            0,
            format!(
                "the tree holds {live} files and {tombstones} tombstones, the header says {} and {}",
                old.live_entries, old.tombstones
            ),
        ));
    }
    let mut level = 0u32;
    let mut pieces = leaves.pages;
    while pieces.len() > 1 {
        level += 1;
        pieces = branch_pages(&mut sink, &pieces, level as u8, Some(PAGE_CAPACITY))?;
    }
    let root_page = pieces.first().map_or(0, |p| p.1);
    let (end_page, _) = sink.finish()?;
    Ok(TreeHeader {
        txn_id,
        root_page,
        end_page,
        depth: if root_page == 0 { 0 } else { level + 1 },
        garbage_pages: 0,
        generation,
        next_generation: 0,
        ..old
    })
}

/// Leaf cells packed into full pages as they arrive in key order.
#[derive(Default)]
struct DenseLeaves<'k> {
    arena: Vec<u8>,
    spans: Vec<Range<usize>>,
    used: usize,
    first_key: &'k [u8],
    /// The pages written, with their first keys.
    pages: Vec<(&'k [u8], u64)>,
}

impl<'k> DenseLeaves<'k> {
    fn push(&mut self, sink: &mut PageSink, cell: &LeafCell<'k>) -> Result<()> {
        let cost = cell_cost(leaf_cell_len(cell));
        if self.used + cost > PAGE_CAPACITY {
            self.flush(sink)?;
        }
        if self.spans.is_empty() {
            self.first_key = cell.key;
        }
        let start = self.arena.len();
        encode_leaf_cell(&mut self.arena, cell);
        self.spans.push(start..self.arena.len());
        self.used += cost;
        Ok(())
    }

    fn flush(&mut self, sink: &mut PageSink) -> Result<()> {
        if self.spans.is_empty() {
            return Ok(());
        }
        let page = sink.node(KIND_LEAF, 0, self.spans.iter().map(|s| &self.arena[s.clone()]))?;
        self.pages.push((self.first_key, page));
        self.arena.clear();
        self.spans.clear();
        self.used = 0;
        Ok(())
    }
}
