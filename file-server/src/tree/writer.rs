//! The writer of one partition's tree: copy-on-write commits appended past the end.
//!
//! A commit merges a sorted batch into the tree, writing new copies of every leaf it changes
//! and of their ancestors past the current end of the file; committed pages are never written
//! again. Order: pages -> `sync_data` -> header slot `txn % 2` -> `sync_data`. The header is
//! what makes a commit visible, so a crash at any point leaves the previous commit intact.

use std::io;
use std::sync::Arc;

use super::format::{
    overflow_pages, PageHeader, TreeHeader, FIRST_DATA_PAGE, HEADER_LEN, INLINE_MAX, KIND_BRANCH,
    KIND_LEAF, PAGE_BYTES, PAGE_SIZE,
};
use super::generation::{self, file_name, tmp_name};
use super::node::{
    build_page, decode_leaf_cell, encode_branch_cell, encode_leaf_cell, even_fill, leaf_cell_len,
    pack, Content, LeafCell, NodeView,
};
use super::snapshot::{MappedTree, Snapshot};
use super::verified::VerifiedPages;
use crate::backend::{OpenMode, StorageDir, StorageFile};
use crate::error::{Result, StoreError};
use crate::path::FilePath;
use crate::record::{Record, MAX_AUTHOR_BYTES};

/// Files grow by at least this much at a time.
const MIN_GROWTH: u64 = 1 << 20;
/// New pages are written out in runs of about this size: small enough that the run is still
/// in the CPU cache when the kernel copies it (8 MiB runs made commits a third slower).
const WRITE_CHUNK: usize = 1 << 20;
/// Below this many used bytes compaction is not worth it.
const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// What one commit wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// The txn id of the new commit.
    pub txn_id: u64,
    /// Branch and leaf pages written.
    pub node_pages: u64,
    /// Pages written for overflow extents.
    pub overflow_pages: u64,
    /// Pages this commit made unreachable.
    pub garbage_pages: u64,
}

/// A commit whose pages are written and whose header is not: see [`TreeFile::stage`].
#[must_use = "a staged commit changes nothing until it is installed"]
pub struct StagedCommit {
    header: TreeHeader,
    stats: CommitStats,
}

impl StagedCommit {
    /// Bytes of the pages the commit wrote (its header not counted).
    pub fn page_bytes(&self) -> u64 {
        (self.stats.node_pages + self.stats.overflow_pages) * PAGE_BYTES
    }
}

/// The writer of one partition's B+tree file. The caller holds the partition's write lock;
/// any number of [`TreeReader`](super::TreeReader)s may read the same files meanwhile.
pub struct TreeFile {
    pub(super) dir: Arc<dyn StorageDir>,
    pub(super) file: Arc<dyn StorageFile>,
    pub(super) tree: Arc<MappedTree>,
    pub(super) header: TreeHeader,
    pub(super) file_len: u64,
    /// First page never written by this process: pages of a failed commit are not reused,
    /// since another process may have seen them through a header that did reach the disk.
    pub(super) next_page: u64,
    /// Set when a compaction renamed its new generation into place but this writer could
    /// not switch to it: committing to the old file would lose the commits.
    pub(super) failed: Option<String>,
}

impl TreeFile {
    /// Opens the partition's tree in `dir`, creating generation 1 when there is none.
    /// Removes what interrupted compactions left behind and generations already replaced.
    pub fn open(dir: Arc<dyn StorageDir>, partition: u32, partitions: u32) -> Result<TreeFile> {
        if partitions == 0 || partition >= partitions {
            return Err(StoreError::NoSuchPartition { partition, partitions });
        }
        let listing = generation::list(&*dir)?;
        for leftover in &listing.leftovers {
            dir.remove_file(leftover).map_err(|e| StoreError::io("remove", dir.path(), e))?;
        }
        let Some((&current, older)) = listing.generations.split_last() else {
            let header = TreeHeader::empty(1, partition, partitions);
            create_generation(&*dir, &header)?;
            return TreeFile::open_generation(dir, 1);
        };
        let tree = TreeFile::open_generation(dir.clone(), current)?;
        let h = tree.header;
        if h.partition != partition || h.partitions != partitions {
            return Err(StoreError::Foreign {
                file: tree.file.path().to_path_buf(),
                what: format!(
                    "it holds partition {} of {}, expected partition {partition} of {partitions}",
                    h.partition, h.partitions
                ),
            });
        }
        if h.is_retired() {
            return Err(StoreError::corrupt(
                tree.file.path(),
                0,
                format!(
                    "generation {current} was replaced by generation {}, which is missing",
                    h.next_generation
                ),
            ));
        }
        for &old in older {
            retire_and_remove(&*dir, old, current)?;
        }
        if !older.is_empty() || !listing.leftovers.is_empty() {
            dir.sync().map_err(|e| StoreError::io("sync", dir.path(), e))?;
        }
        Ok(tree)
    }

    fn open_generation(dir: Arc<dyn StorageDir>, gen: u64) -> Result<TreeFile> {
        let path = dir.path().join(file_name(gen));
        let file = generation::open(&*dir, gen, OpenMode::ReadWrite)
            .map_err(|e| StoreError::io("open", &path, e))?;
        let header = generation::read_header(&*file)?;
        let file_len = file.len().map_err(|e| StoreError::io("stat", &path, e))?;
        let tree = map(&file, Arc::default())?;
        Snapshot::new(header, tree.clone())?;
        Ok(TreeFile { dir, file, tree, header, file_len, next_page: header.end_page, failed: None })
    }

    /// A copy of the current commit header.
    pub fn header(&self) -> TreeHeader {
        self.header
    }

    /// The latest commit, for reading.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.header, self.tree.clone()).expect("the writer's map covers its commit")
    }

    /// True when more than two thirds of the used pages are garbage (the file holds over
    /// three times its live pages) and the file is big enough for compaction to pay. Each
    /// compaction rewrites the live pages, so the threshold trades space for writes: at half,
    /// batches of random inserts into 16 partitions (62 files per tree per commit) compacted
    /// a tree every few commits.
    pub fn needs_compaction(&self) -> bool {
        let used = self.header.end_page - FIRST_DATA_PAGE;
        used * PAGE_BYTES >= COMPACT_MIN_BYTES && self.header.garbage_pages * 3 > used * 2
    }

    /// Merges `batch` (sorted by path, each path once) into the tree and makes it durable,
    /// recording `checkpoint_lsn`. An empty batch only records the new `checkpoint_lsn`.
    pub fn commit(
        &mut self,
        batch: &[(FilePath, Record)],
        checkpoint_lsn: u64,
    ) -> Result<CommitStats> {
        let staged = self.stage(batch, checkpoint_lsn)?;
        self.write_header(&staged.header)?;
        self.install(staged)
    }

    /// The first half of [`TreeFile::commit`], for a caller that commits several trees with
    /// shared syncs: writes `batch`'s pages past the end of the file, not yet synced, and
    /// returns the header that will make them the tree. Then: the pages made durable
    /// ([`TreeFile::sync_pages`] or a sync of the whole file system), the header written
    /// ([`TreeFile::write_staged_header`]) and made durable the same way, and
    /// [`TreeFile::install`]. A staged commit that is dropped instead leaves the tree as it
    /// was; its pages are never handed out again.
    pub fn stage(
        &mut self,
        batch: &[(FilePath, Record)],
        checkpoint_lsn: u64,
    ) -> Result<StagedCommit> {
        self.check_usable()?;
        check_batch(batch)?;
        let old = self.header;
        let txn_id = old.txn_id + 1;
        let base = self.next_page;
        let mut ctx = Merge {
            tree: &self.tree,
            end_page: old.end_page,
            sink: PageSink::new(
                self.file.clone(),
                Some(self.tree.verified.clone()),
                base,
                self.file_len,
                txn_id,
            ),
            garbage: 0,
            live: old.live_entries as i128,
            tombstones: old.tombstones as i128,
        };
        let (mut root, mut depth) = (old.root_page, old.depth);
        if !batch.is_empty() {
            let mut pieces = if old.root_page == 0 {
                ctx.merge_leaf(None, batch)?
            } else {
                ctx.merge(old.root_page, old.depth - 1, batch)?
            };
            let mut level = old.depth.saturating_sub(1);
            while pieces.len() > 1 {
                level += 1;
                pieces = ctx.branch_pages(&pieces, level as u8)?;
            }
            root = pieces[0].1;
            depth = level + 1;
        }
        let Merge { garbage, live, tombstones, sink, .. } = ctx;
        let (live_entries, tombstones) = match (u64::try_from(live), u64::try_from(tombstones)) {
            (Ok(l), Ok(t)) => (l, t),
            _ => {
                return Err(StoreError::corrupt(
                    self.file.path(),
                    0,
                    "the header's entry counts disagree with the tree",
                ))
            }
        };
        let node_pages = sink.node_pages;
        let overflow = sink.overflow_pages;
        // From here on the pages are this process's: a failure must not hand them out again.
        self.next_page = sink.next_page();
        let (end_page, file_len) = sink.finish()?;
        self.file_len = file_len;
        let header = TreeHeader {
            txn_id,
            root_page: root,
            end_page,
            depth,
            live_entries,
            tombstones,
            checkpoint_lsn,
            garbage_pages: old.garbage_pages + garbage + (base - old.end_page),
            ..old
        };
        let stats =
            CommitStats { txn_id, node_pages, overflow_pages: overflow, garbage_pages: garbage };
        Ok(StagedCommit { header, stats })
    }

    /// Makes every page written so far durable (`fdatasync` of the tree file).
    pub fn sync_pages(&self) -> Result<()> {
        self.file.sync_data().map_err(io_err("sync", &*self.file))
    }

    /// Writes a staged commit's header into its slot, not yet synced. Call it only once the
    /// staged pages are durable: a header that reaches the disk before its pages could point
    /// at pages that did not.
    pub fn write_staged_header(&self, staged: &StagedCommit) -> Result<()> {
        let header = &staged.header;
        self.file
            .write_all_at(&header.encode(), header.slot() * PAGE_BYTES)
            .map_err(io_err("write header of", &*self.file))
    }

    /// Makes a staged commit the tree this writer and its snapshots see. Call it only once
    /// its header is durable.
    pub fn install(&mut self, staged: StagedCommit) -> Result<CommitStats> {
        let StagedCommit { header, stats } = staged;
        // A mapping shorter than the commit (the file was cut behind our back) is an error
        // here rather than a panic in `snapshot`.
        let tree = map_for(&self.file, &self.tree, &header)?;
        Snapshot::new(header, tree.clone())?;
        self.tree = tree;
        self.header = header;
        Ok(stats)
    }

    pub(super) fn check_usable(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(what) => Err(StoreError::TreeUnusable {
                dir: self.dir.path().to_path_buf(),
                what: what.clone(),
            }),
        }
    }

    /// Syncs the pages written so far, then writes and syncs `header` in its slot.
    pub(super) fn write_header(&self, header: &TreeHeader) -> Result<()> {
        write_header_to(&*self.file, header)
    }
}

fn io_err<'f>(
    op: &'static str,
    file: &'f dyn StorageFile,
) -> impl FnOnce(io::Error) -> StoreError + 'f {
    move |e| StoreError::io(op, file.path(), e)
}

/// Makes earlier writes durable, then writes `header` into its slot and makes it durable.
pub(super) fn write_header_to(file: &dyn StorageFile, header: &TreeHeader) -> Result<()> {
    file.sync_data().map_err(io_err("sync", file))?;
    file.write_all_at(&header.encode(), header.slot() * PAGE_BYTES)
        .map_err(io_err("write header of", file))?;
    file.sync_data().map_err(io_err("sync", file))
}

pub(super) fn map(
    file: &Arc<dyn StorageFile>,
    verified: Arc<VerifiedPages>,
) -> Result<Arc<MappedTree>> {
    let map = file.map().map_err(io_err("map", &**file))?;
    Ok(Arc::new(MappedTree { path: file.path().to_path_buf(), map, verified }))
}

/// The mapping to read commit `header` through: `current` when it covers the commit's pages
/// and already shows its header (a shared file mapping shows later writes, so remapping and
/// faulting every page in again is wasted work), otherwise a new mapping of the file.
pub(super) fn map_for(
    file: &Arc<dyn StorageFile>,
    current: &Arc<MappedTree>,
    header: &TreeHeader,
) -> Result<Arc<MappedTree>> {
    let bytes = current.map.bytes();
    let slot = header.slot() as usize * PAGE_SIZE;
    let covers = bytes.len() as u64 >= header.end_page.saturating_mul(PAGE_BYTES);
    if covers && bytes.get(slot..slot + HEADER_LEN) == Some(&header.encode()[..]) {
        return Ok(current.clone());
    }
    map(file, current.verified.clone())
}

/// Creates generation `header.generation` holding just `header`, under its temporary name
/// first so that a crash never leaves a named tree file without a valid header.
fn create_generation(dir: &dyn StorageDir, header: &TreeHeader) -> Result<()> {
    let tmp = tmp_name(header.generation);
    let file = dir
        .open_file(&tmp, OpenMode::Create)
        .map_err(|e| StoreError::io("create", dir.path().join(&tmp), e))?;
    file.set_len(MIN_GROWTH).map_err(io_err("grow", &*file))?;
    write_header_to(&*file, header)?;
    publish(dir, header.generation)
}

/// Renames a finished generation into place and makes the rename durable.
fn publish(dir: &dyn StorageDir, generation: u64) -> Result<()> {
    dir.rename(&tmp_name(generation), &file_name(generation))
        .map_err(|e| StoreError::io("rename", dir.path().join(tmp_name(generation)), e))?;
    dir.sync().map_err(|e| StoreError::io("sync", dir.path(), e))
}

/// Marks an older generation as replaced by `current` (so that readers still mapping it move
/// on) and removes it.
pub(super) fn retire_and_remove(dir: &dyn StorageDir, old: u64, current: u64) -> Result<()> {
    let path = dir.path().join(file_name(old));
    match generation::open(dir, old, OpenMode::ReadWrite) {
        Ok(file) => {
            if let Ok(h) = generation::read_header(&*file) {
                if !h.is_retired() {
                    let retired =
                        TreeHeader { txn_id: h.txn_id + 1, next_generation: current, ..h };
                    write_header_to(&*file, &retired)?;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("open", path, e)),
    }
    match dir.remove_file(&file_name(old)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", path, e)),
        _ => Ok(()),
    }
}

fn check_batch(batch: &[(FilePath, Record)]) -> Result<()> {
    for pair in batch.windows(2) {
        if pair[0].0 >= pair[1].0 {
            return Err(StoreError::InvalidBatch {
                what: format!(
                    "{} comes before {}: paths must be sorted and unique",
                    pair[0].0, pair[1].0
                ),
            });
        }
    }
    for (path, record) in batch {
        let author = record.meta.author.len();
        if author > MAX_AUTHOR_BYTES {
            return Err(StoreError::AuthorTooLong { len: author, max: MAX_AUTHOR_BYTES });
        }
        let size = record.content.as_ref().map_or(0, |c| c.len() as u64);
        if record.meta.size != size {
            return Err(StoreError::InvalidBatch {
                what: format!(
                    "{path}: metadata says {} bytes, content has {size}",
                    record.meta.size
                ),
            });
        }
    }
    Ok(())
}

/// New pages of one commit (or one compaction): allocated consecutively from `first_page`,
/// buffered, and written out in large runs, growing the file ahead of them.
pub(super) struct PageSink {
    file: Arc<dyn StorageFile>,
    /// Where the pages written are marked as checked: this process built them, so a read of
    /// them (the next lookup or merge, which mostly walk the pages the last commit wrote)
    /// need not checksum them again.
    verified: Option<Arc<VerifiedPages>>,
    /// The page `buf` starts at.
    buf_page: u64,
    buf: Vec<u8>,
    file_len: u64,
    txn_id: u64,
    pub(super) node_pages: u64,
    pub(super) overflow_pages: u64,
}

impl PageSink {
    /// A sink writing from `first_page` on, marking its pages in `verified`.
    pub(super) fn new(
        file: Arc<dyn StorageFile>,
        verified: Option<Arc<VerifiedPages>>,
        first_page: u64,
        file_len: u64,
        txn_id: u64,
    ) -> PageSink {
        PageSink {
            file,
            verified,
            buf_page: first_page,
            buf: Vec::new(),
            file_len,
            txn_id,
            node_pages: 0,
            overflow_pages: 0,
        }
    }

    pub(super) fn next_page(&self) -> u64 {
        self.buf_page + (self.buf.len() / PAGE_SIZE) as u64
    }

    /// The page new pages start at, once a full buffer is written out.
    fn make_room(&mut self) -> Result<u64> {
        if self.buf.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(self.next_page())
    }

    fn alloc(&mut self, pages: u64) -> Result<(u64, &mut [u8])> {
        let id = self.make_room()?;
        let start = self.buf.len();
        self.buf.resize(start + pages as usize * PAGE_SIZE, 0);
        Ok((id, &mut self.buf[start..]))
    }

    /// Writes `content` as an overflow extent; returns its first page.
    pub(super) fn overflow(&mut self, content: &[u8]) -> Result<u64> {
        let pages = overflow_pages(content.len() as u64);
        self.overflow_pages += pages;
        let id = self.make_room()?;
        let end = self.buf.len() + pages as usize * PAGE_SIZE;
        // Each byte written once: the content, then zeros for the rest of its last page.
        self.buf.extend_from_slice(content);
        self.buf.resize(end, 0);
        self.mark_verified(id);
        Ok(id)
    }

    /// Writes one page of `cells`; returns its page number.
    pub(super) fn node<'c>(
        &mut self,
        kind: u8,
        level: u8,
        cells: impl ExactSizeIterator<Item = &'c [u8]>,
    ) -> Result<u64> {
        self.node_pages += 1;
        let txn_id = self.txn_id;
        let (id, page) = self.alloc(1)?;
        let header = PageHeader { kind, level, cells: cells.len() as u16, page_id: id, txn_id };
        build_page(page, header, cells);
        self.mark_verified(id);
        Ok(id)
    }

    fn mark_verified(&self, page: u64) {
        if let Some(verified) = &self.verified {
            verified.mark(page);
        }
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let end = self.next_page() * PAGE_BYTES;
        if end > self.file_len {
            let grown = end.max(self.file_len + MIN_GROWTH.max(self.file_len / 8));
            let grown = grown.div_ceil(PAGE_BYTES) * PAGE_BYTES;
            self.file.set_len(grown).map_err(io_err("grow", &*self.file))?;
            self.file_len = grown;
        }
        self.file
            .write_all_at(&self.buf, self.buf_page * PAGE_BYTES)
            .map_err(io_err("write", &*self.file))?;
        self.file.start_writeback(self.buf_page * PAGE_BYTES, self.buf.len() as u64);
        self.buf_page = self.next_page();
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered; returns the end page and the file length. Not yet synced.
    pub(super) fn finish(mut self) -> Result<(u64, u64)> {
        self.flush()?;
        Ok((self.buf_page, self.file_len))
    }
}

/// Branch cells for `entries` (first key of each child, child page) at `level`, packed
/// with `fill` (see [`pack`]); returns the new pages with their first keys.
pub(super) fn branch_pages<'k>(
    sink: &mut PageSink,
    entries: &[(&'k [u8], u64)],
    level: u8,
    fill: Option<usize>,
) -> Result<Vec<(&'k [u8], u64)>> {
    let mut arena = Vec::new();
    let mut spans = Vec::with_capacity(entries.len());
    for &(key, child) in entries {
        let start = arena.len();
        encode_branch_cell(&mut arena, child, key);
        spans.push(start..arena.len());
    }
    let lens: Vec<usize> = spans.iter().map(|s| s.len()).collect();
    let fill = fill.unwrap_or_else(|| even_fill(&lens));
    let mut out = Vec::new();
    for range in pack(&lens, fill) {
        let first_key = entries[range.start].0;
        let cells = spans[range].iter().map(|s| &arena[s.clone()]);
        out.push((first_key, sink.node(KIND_BRANCH, level, cells)?));
    }
    Ok(out)
}

/// The state of one commit's recursive merge.
struct Merge<'a> {
    tree: &'a MappedTree,
    /// End page of the commit being replaced: every page it reaches lies below.
    end_page: u64,
    sink: PageSink,
    garbage: u64,
    live: i128,
    tombstones: i128,
}

impl<'a> Merge<'a> {
    fn node(&self, page: u64, level: u32) -> Result<NodeView<'a>> {
        self.tree.node_at(page, level, self.end_page)
    }

    fn fault(&self, page: u64, f: super::node::Fault) -> StoreError {
        self.tree.fault(page, f)
    }

    /// Merges `batch` (all inside this subtree's key range) into the subtree at `page`;
    /// returns the pages that replace it, with their first keys.
    fn merge(
        &mut self,
        page: u64,
        level: u32,
        batch: &'a [(FilePath, Record)],
    ) -> Result<Vec<(&'a [u8], u64)>> {
        let node = self.node(page, level)?;
        self.garbage += 1;
        if node.is_leaf() {
            return self.merge_leaf(Some((page, node)), batch);
        }
        let n = node.cell_count();
        let mut entries = Vec::with_capacity(n + 2);
        let mut rest = batch;
        for i in 0..n {
            let key = node.key(i).map_err(|f| self.fault(page, f))?;
            let child = node.child(i).map_err(|f| self.fault(page, f))?;
            let take = if i + 1 < n {
                let next = node.key(i + 1).map_err(|f| self.fault(page, f))?;
                rest.partition_point(|(p, _)| p.as_bytes() < next)
            } else {
                rest.len()
            };
            let (part, tail) = rest.split_at(take);
            rest = tail;
            if part.is_empty() {
                entries.push((key, child));
            } else {
                entries.extend(self.merge(child, level - 1, part)?);
            }
        }
        self.branch_pages(&entries, level as u8)
    }

    fn branch_pages(
        &mut self,
        entries: &[(&'a [u8], u64)],
        level: u8,
    ) -> Result<Vec<(&'a [u8], u64)>> {
        branch_pages(&mut self.sink, entries, level, None)
    }

    /// Merges `batch` into the leaf `old` (or into nothing, for an empty tree).
    fn merge_leaf(
        &mut self,
        old: Option<(u64, NodeView<'a>)>,
        batch: &'a [(FilePath, Record)],
    ) -> Result<Vec<(&'a [u8], u64)>> {
        let mut arena = Vec::new();
        let mut new_spans = Vec::with_capacity(batch.len());
        for (path, record) in batch {
            let start = arena.len();
            let content = match &record.content {
                None => Content::Deleted,
                Some(c) if c.len() <= INLINE_MAX => Content::Inline(c),
                Some(c) => Content::Overflow {
                    first_page: self.sink.overflow(c)?,
                    crc: crc32fast::hash(c),
                },
            };
            let cell = LeafCell {
                key: path.as_bytes(),
                rev: record.meta.rev,
                size: record.meta.size,
                mtime_ms: record.meta.mtime_ms,
                hash: &record.meta.hash,
                author: record.meta.author.as_bytes(),
                content,
            };
            encode_leaf_cell(&mut arena, &cell);
            new_spans.push(start..arena.len());
            match content {
                Content::Deleted => self.tombstones += 1,
                _ => self.live += 1,
            }
        }
        // (key, where the cell bytes are: Ok = old page bytes, Err = arena span)
        let old_len = old.map_or(0, |(_, n)| n.cell_count());
        let mut keys: Vec<&'a [u8]> = Vec::with_capacity(old_len + batch.len());
        let mut cells: Vec<Result<&'a [u8], usize>> = Vec::with_capacity(old_len + batch.len());
        let (mut i, mut j) = (0, 0);
        while i < old_len || j < batch.len() {
            let old_cell = match old {
                Some((page, node)) if i < old_len => {
                    let bytes = node.cell(i).map_err(|f| self.fault(page, f))?;
                    let cell = decode_leaf_cell(bytes).map_err(|what| {
                        self.tree.corrupt(page * PAGE_BYTES, format!("page {page}: {what}"))
                    })?;
                    Some((cell, &bytes[..leaf_cell_len(&cell)]))
                }
                _ => None,
            };
            let new_key = batch.get(j).map(|(p, _)| p.as_bytes());
            let order = match (&old_cell, new_key) {
                (Some((cell, _)), Some(k)) => cell.key.cmp(k),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            if order.is_le() {
                let (cell, bytes) = old_cell.expect("an old cell compares");
                i += 1;
                if order.is_eq() {
                    match cell.content {
                        Content::Deleted => self.tombstones -= 1,
                        Content::Overflow { .. } => {
                            self.live -= 1;
                            self.garbage += overflow_pages(cell.size);
                        }
                        Content::Inline(_) => self.live -= 1,
                    }
                    continue;
                }
                keys.push(cell.key);
                cells.push(Ok(bytes));
            } else {
                keys.push(batch[j].0.as_bytes());
                cells.push(Err(j));
                j += 1;
            }
        }
        let bytes_of = |c: &Result<&'a [u8], usize>| -> &[u8] {
            match c {
                Ok(b) => b,
                Err(j) => &arena[new_spans[*j].clone()],
            }
        };
        let lens: Vec<usize> = cells.iter().map(|c| bytes_of(c).len()).collect();
        let mut out = Vec::new();
        for range in pack(&lens, even_fill(&lens)) {
            let first_key = keys[range.start];
            let page = self.sink.node(KIND_LEAF, 0, cells[range].iter().map(bytes_of))?;
            out.push((first_key, page));
        }
        Ok(out)
    }
}
