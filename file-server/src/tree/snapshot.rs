//! Reading one commit of a tree: point lookups and ordered prefix scans, straight from the map.
//!
//! A lookup is a descent through mapped pages: each page's checksum is checked the first time
//! this process touches it ([`VerifiedPages`]), then only its bounds. Nothing is allocated
//! but the returned record.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::authors;
use super::format::{overflow_pages, TreeHeader, FIRST_DATA_PAGE, PAGE_BYTES, PAGE_SIZE};
use super::node::{Content, Fault, LeafCell, NodeView};
use super::verified::VerifiedPages;
use crate::backend::Mapping;
use crate::error::{Result, StoreError};
use crate::path::FilePath;
use crate::record::{FileMeta, Record};

/// One mapping of a tree file, with the file's record of already checksummed pages (shared
/// by every mapping of the same file in this process).
pub(crate) struct MappedTree {
    pub(crate) path: PathBuf,
    pub(crate) map: Arc<dyn Mapping>,
    pub(crate) verified: Arc<VerifiedPages>,
}

impl MappedTree {
    pub(crate) fn corrupt(&self, offset: u64, what: impl Into<String>) -> StoreError {
        StoreError::corrupt(&self.path, offset, what)
    }

    pub(crate) fn fault(&self, page: u64, fault: Fault) -> StoreError {
        self.corrupt(page * PAGE_BYTES + fault.at as u64, format!("page {page}: {}", fault.what))
    }

    /// The bytes of page `page`, which the commit reaching it says lies below `end_page`.
    fn page_bytes(&self, page: u64, end_page: u64) -> Result<&[u8]> {
        if page < FIRST_DATA_PAGE || page >= end_page {
            return Err(self.corrupt(
                page.saturating_mul(PAGE_BYTES),
                format!("reference to page {page} outside the data pages 2..{end_page}"),
            ));
        }
        let start = page * PAGE_BYTES;
        let bytes = self.map.bytes();
        usize::try_from(start).ok().and_then(|s| bytes.get(s..s + PAGE_SIZE)).ok_or_else(|| {
            self.corrupt(start, format!("page {page} lies past the end of the file"))
        })
    }

    /// Page `page` as a node, checked once per process (see [`MappedTree::verify_node`]).
    #[inline]
    pub(crate) fn node(&self, page: u64, end_page: u64) -> Result<NodeView<'_>> {
        let bytes = self.page_bytes(page, end_page)?;
        if !self.verified.is_verified(page) {
            self.verify_node(bytes, page)?;
        }
        NodeView::new(bytes).map_err(|f| self.fault(page, f))
    }

    /// The first touch of a page in this process: its checksum, the places of its cells and,
    /// in a leaf, every cell (its content reference, its key a valid path, its author UTF-8),
    /// so that every later lookup and scan can take what it reads as checked.
    #[cold]
    #[inline(never)]
    fn verify_node(&self, bytes: &[u8], page: u64) -> Result<()> {
        super::format::check_page(bytes, page)
            .map_err(|what| self.corrupt(page * PAGE_BYTES, what))?;
        NodeView::new(bytes).and_then(|n| n.check_cells()).map_err(|f| self.fault(page, f))?;
        self.verified.mark(page);
        Ok(())
    }

    /// Page `page` as a node that must be at `level` (which also rules out cycles).
    pub(crate) fn node_at(&self, page: u64, level: u32, end_page: u64) -> Result<NodeView<'_>> {
        let node = self.node(page, end_page)?;
        if u32::from(node.level()) != level {
            return Err(self.corrupt(
                page * PAGE_BYTES,
                format!(
                    "page {page} is at level {} where level {level} was expected",
                    node.level()
                ),
            ));
        }
        Ok(node)
    }

    /// The content of an overflow extent, its checksum checked once per process.
    pub(crate) fn overflow(
        &self,
        first_page: u64,
        size: u64,
        crc: u32,
        end_page: u64,
    ) -> Result<&[u8]> {
        let pages = overflow_pages(size);
        let start = first_page.saturating_mul(PAGE_BYTES);
        if first_page < FIRST_DATA_PAGE || first_page.saturating_add(pages) > end_page {
            return Err(self.corrupt(
                start,
                format!(
                    "overflow extent of {pages} pages at page {first_page} outside the data \
                     pages 2..{end_page}"
                ),
            ));
        }
        let bytes = usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(s, n)| self.map.bytes().get(s..s.checked_add(n)?))
            .ok_or_else(|| {
                self.corrupt(
                    start,
                    format!("overflow extent at page {first_page} lies past the end of the file"),
                )
            })?;
        if !self.verified.is_verified(first_page) {
            let computed = crc32fast::hash(bytes);
            if computed != crc {
                return Err(self.corrupt(
                    start,
                    format!(
                        "overflow extent at page {first_page} crc mismatch (stored {crc:#010x}, \
                         computed {computed:#010x})"
                    ),
                ));
            }
            self.verified.mark(first_page);
        }
        Ok(bytes)
    }
}

/// One committed state of a partition's tree. Consistent forever: the pages it reaches are
/// never rewritten, and the mapping it holds stays valid even after compaction removed the
/// file.
#[derive(Clone)]
pub struct Snapshot {
    header: TreeHeader,
    tree: Arc<MappedTree>,
}

/// A leaf cell found by a lookup, with the page it is on (for error offsets).
struct Found<'s> {
    page: u64,
    cell: LeafCell<'s>,
}

impl Snapshot {
    /// A snapshot of the commit `header` through `tree`, which must map the pages it reaches.
    pub(crate) fn new(header: TreeHeader, tree: Arc<MappedTree>) -> Result<Snapshot> {
        let needed = header.end_page.saturating_mul(PAGE_BYTES);
        let len = tree.map.bytes().len() as u64;
        if len < needed {
            return Err(tree.corrupt(
                len,
                format!("file is {len} bytes but commit {} needs {needed}", header.txn_id),
            ));
        }
        Ok(Snapshot { header, tree })
    }

    pub fn header(&self) -> &TreeHeader {
        &self.header
    }

    pub(crate) fn tree(&self) -> &Arc<MappedTree> {
        &self.tree
    }

    fn node(&self, page: u64, level: u32) -> Result<NodeView<'_>> {
        self.tree.node_at(page, level, self.header.end_page)
    }

    fn cell_error(&self, page: u64, fault: Fault) -> StoreError {
        self.tree.fault(page, fault)
    }

    fn find(&self, key: &[u8]) -> Result<Option<Found<'_>>> {
        if self.header.root_page == 0 {
            return Ok(None);
        }
        let mut page = self.header.root_page;
        let mut level = self.header.depth - 1;
        loop {
            let node = self.node(page, level)?;
            if node.is_leaf() {
                return match node.search(key).map_err(|f| self.cell_error(page, f))? {
                    Ok(i) => {
                        node.prefetch_cell(i);
                        let cell = node.leaf_cell(i).map_err(|f| self.cell_error(page, f))?;
                        Ok(Some(Found { page, cell }))
                    }
                    Err(_) => Ok(None),
                };
            }
            page = node.child_for(key).map_err(|f| self.cell_error(page, f))?;
            level -= 1;
        }
    }

    /// The metadata of a leaf cell. Authors repeat over many files: they come from a small
    /// cache of shared strings rather than one allocation each.
    fn meta(&self, page: u64, cell: &LeafCell<'_>) -> Result<FileMeta> {
        let author = authors::shared(cell.author).ok_or_else(|| {
            self.tree.corrupt(page * PAGE_BYTES, format!("page {page}: author is not UTF-8"))
        })?;
        Ok(FileMeta {
            rev: cell.rev,
            size: cell.size,
            mtime_ms: cell.mtime_ms,
            author,
            hash: *cell.hash,
        })
    }

    /// The content bytes of a leaf cell (`None` for a tombstone), borrowed from the map.
    pub(crate) fn content<'s>(&'s self, cell: &LeafCell<'s>) -> Result<Option<&'s [u8]>> {
        Ok(match cell.content {
            Content::Deleted => None,
            Content::Inline(bytes) => Some(bytes),
            Content::Overflow { first_page, crc } => {
                Some(self.tree.overflow(first_page, cell.size, crc, self.header.end_page)?)
            }
        })
    }

    /// The stored version of `path`; a deleted file comes back as a tombstone (content
    /// `None`).
    pub fn get(&self, path: &FilePath) -> Result<Option<Record>> {
        let Some(found) = self.find(path.as_bytes())? else { return Ok(None) };
        let meta = self.meta(found.page, &found.cell)?;
        let content = self.content(&found.cell)?.map(Bytes::copy_from_slice);
        Ok(Some(Record { meta, content }))
    }

    /// The content of `path` borrowed from the map, `None` if absent or deleted: no copy and
    /// no allocation, for readers that pass the bytes on (an export, a reporting tool).
    pub fn content_of(&self, path: &FilePath) -> Result<Option<&[u8]>> {
        let Some(found) = self.find(path.as_bytes())? else { return Ok(None) };
        self.content(&found.cell)
    }

    /// The metadata of `path` and whether it is deleted, without reading its content.
    pub fn get_meta(&self, path: &FilePath) -> Result<Option<(FileMeta, bool)>> {
        let Some(found) = self.find(path.as_bytes())? else { return Ok(None) };
        let meta = self.meta(found.page, &found.cell)?;
        Ok(Some((meta, matches!(found.cell.content, Content::Deleted))))
    }

    /// Paths starting with `prefix` and greater than `after`, in bytewise order, with their
    /// metadata and whether they are deleted. Stops after the first error.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<(FilePath, FileMeta, bool)>> + '_ {
        let (start, exclusive) = match after {
            Some(a) if a >= prefix => (a.as_bytes().to_vec(), true),
            _ => (prefix.as_bytes().to_vec(), false),
        };
        let mut cursor = LeafCursor::new(self);
        let mut pending = Some((start, exclusive));
        let prefix = prefix.as_bytes().to_vec();
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let item = (|| {
                if let Some((start, exclusive)) = pending.take() {
                    cursor.seek(&start, exclusive)?;
                }
                let Some((page, cell)) = cursor.next_cell()? else { return Ok(None) };
                if !cell.key.starts_with(&prefix) {
                    return Ok(None);
                }
                // The page's first touch checked every key as a path (`verify_node`).
                let path =
                    std::str::from_utf8(cell.key).map(FilePath::from_stored).map_err(|_| {
                        self.tree.corrupt(
                            page * PAGE_BYTES,
                            format!("page {page}: key {:?} is not UTF-8", cell.key),
                        )
                    })?;
                let meta = self.meta(page, &cell)?;
                Ok(Some((path, meta, matches!(cell.content, Content::Deleted))))
            })();
            match item {
                Ok(Some(entry)) => Some(Ok(entry)),
                Ok(None) => {
                    done = true;
                    None
                }
                Err(e) => {
                    done = true;
                    Some(Err(e))
                }
            }
        })
    }
}

/// Walks the leaf cells of a snapshot in key order. Pages have no sibling links (a
/// copy-on-write tree cannot keep them), so the cursor keeps the path from the root.
pub(crate) struct LeafCursor<'s> {
    snapshot: &'s Snapshot,
    /// (page number, node, next cell index) from the root down to a leaf.
    stack: Vec<(u64, NodeView<'s>, usize)>,
}

impl<'s> LeafCursor<'s> {
    pub(crate) fn new(snapshot: &'s Snapshot) -> LeafCursor<'s> {
        LeafCursor { snapshot, stack: Vec::new() }
    }

    /// Positions the cursor before the first key `>= start` (`> start` when `exclusive`).
    pub(crate) fn seek(&mut self, start: &[u8], exclusive: bool) -> Result<()> {
        self.stack.clear();
        let s = self.snapshot;
        if s.header.root_page == 0 {
            return Ok(());
        }
        let mut page = s.header.root_page;
        let mut level = s.header.depth - 1;
        loop {
            let node = s.node(page, level)?;
            if node.is_leaf() {
                let i = match node.search(start).map_err(|f| s.cell_error(page, f))? {
                    Ok(i) if exclusive => i + 1,
                    Ok(i) | Err(i) => i,
                };
                self.stack.push((page, node, i));
                return Ok(());
            }
            let i = node.child_index(start).map_err(|f| s.cell_error(page, f))?;
            self.stack.push((page, node, i + 1));
            page = node.child(i).map_err(|f| s.cell_error(page, f))?;
            level -= 1;
        }
    }

    /// The next leaf cell and the page it is on, or `None` at the end of the tree.
    pub(crate) fn next_cell(&mut self) -> Result<Option<(u64, LeafCell<'s>)>> {
        let s = self.snapshot;
        loop {
            let Some((page, node, next)) = self.stack.last_mut() else { return Ok(None) };
            let (page, node) = (*page, *node);
            if *next >= node.cell_count() {
                self.stack.pop();
                continue;
            }
            let i = *next;
            *next += 1;
            if node.is_leaf() {
                let cell = node.leaf_cell(i).map_err(|f| s.cell_error(page, f))?;
                return Ok(Some((page, cell)));
            }
            let child = node.child(i).map_err(|f| s.cell_error(page, f))?;
            let child_node = s.node(child, u32::from(node.level()) - 1)?;
            self.stack.push((child, child_node, 0));
        }
    }
}
