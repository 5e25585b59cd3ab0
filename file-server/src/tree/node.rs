//! Tree pages as cells: reading them in place (no allocation) and building new ones. Pure.
//!
//! A page is a [`PageHeader`], an array of `u16` cell offsets, then the cells. Every length
//! and offset read from a page is bounds-checked: a damaged page yields a [`Fault`] naming
//! the byte within the page, never a panic.

use std::cmp::Ordering;
use std::ops::Range;

use super::format::{
    get_u16, get_u32, get_u64, put_u16, seal_page, PageHeader, INLINE_MAX, KIND_BRANCH, KIND_LEAF,
    PAGE_HEADER_LEN, PAGE_SIZE,
};

/// A check that did not hold inside one page: the byte offset within the page and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub at: usize,
    pub what: String,
}

impl Fault {
    fn new(at: usize, what: impl Into<String>) -> Fault {
        Fault { at, what: what.into() }
    }
}

pub type NodeResult<T> = Result<T, Fault>;

/// Bytes a cell costs in a page: the cell plus its offset slot.
pub fn cell_cost(cell_len: usize) -> usize {
    cell_len + 2
}

/// Cell bytes a page can hold (cells plus their offset slots).
pub const PAGE_CAPACITY: usize = PAGE_SIZE - PAGE_HEADER_LEN;

/// Leaf cell layout. The key comes right after a 4-byte prefix so that a binary-search probe
/// reads one cache line; the metadata follows the key.
pub mod leaf_at {
    pub const KEY_LEN: usize = 0;
    pub const FLAGS: usize = 2;
    pub const AUTHOR_LEN: usize = 3;
    pub const KEY: usize = 4;
    /// Offsets within the metadata block that follows the key.
    pub const REV: usize = 0;
    pub const SIZE: usize = 8;
    pub const MTIME: usize = 16;
    pub const HASH: usize = 24;
    pub const META_LEN: usize = 56;
    /// Bytes of a leaf cell besides key, author and value.
    pub const FIXED: usize = KEY + META_LEN;
    /// An overflow reference: first page (u64) and content CRC-32 (u32).
    pub const OVERFLOW_REF: usize = 12;
}

/// Leaf cell flag: the file is deleted (a tombstone; no content).
pub const FLAG_DELETED: u8 = 1;
/// Leaf cell flag: the content is in an overflow extent, not inline.
pub const FLAG_OVERFLOW: u8 = 2;

/// Branch cell layout: child page (u64), key length (u16), key.
const BRANCH_FIXED: usize = 10;

/// Where a leaf cell's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content<'a> {
    /// A tombstone.
    Deleted,
    Inline(&'a [u8]),
    /// `size` bytes in the contiguous pages starting at `first_page`.
    Overflow {
        first_page: u64,
        crc: u32,
    },
}

/// One decoded leaf cell, borrowing from the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafCell<'a> {
    pub key: &'a [u8],
    pub rev: u64,
    pub size: u64,
    pub mtime_ms: u64,
    pub hash: &'a [u8; 32],
    pub author: &'a [u8],
    pub content: Content<'a>,
}

/// A read-only view of a tree page, already checksum-verified or not: every access checks
/// bounds.
#[derive(Clone, Copy)]
pub struct NodeView<'a> {
    page: &'a [u8],
    kind: u8,
    level: u8,
    cells: u16,
}

impl std::fmt::Debug for NodeView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeView")
            .field("kind", &self.kind)
            .field("level", &self.level)
            .field("cells", &self.cells)
            .finish_non_exhaustive()
    }
}

impl<'a> NodeView<'a> {
    /// Checks the structure that every access relies on: kind, level and the offset array.
    pub fn new(page: &'a [u8]) -> NodeResult<NodeView<'a>> {
        if page.len() != PAGE_SIZE {
            return Err(Fault::new(0, format!("page is {} bytes", page.len())));
        }
        let PageHeader { kind, level, cells, .. } = PageHeader::read(page);
        match (kind, level) {
            (KIND_LEAF, 0) => {}
            (KIND_BRANCH, l) if l > 0 => {}
            (KIND_LEAF | KIND_BRANCH, l) => {
                return Err(Fault::new(5, format!("page kind {kind} at level {l}")))
            }
            (k, _) => return Err(Fault::new(4, format!("unknown page kind {k}"))),
        }
        let n = cells as usize;
        if n == 0 {
            return Err(Fault::new(6, "page has no cells"));
        }
        if PAGE_HEADER_LEN + 2 * n > PAGE_SIZE {
            return Err(Fault::new(6, format!("{n} cells do not fit a page")));
        }
        Ok(NodeView { page, kind, level, cells })
    }

    pub fn is_leaf(&self) -> bool {
        self.kind == KIND_LEAF
    }

    pub fn level(&self) -> u8 {
        self.level
    }

    pub fn cell_count(&self) -> usize {
        self.cells as usize
    }

    /// The bytes of cell `i`: from its offset to the next cell's offset (or the page end).
    pub fn cell(&self, i: usize) -> NodeResult<&'a [u8]> {
        let n = self.cell_count();
        let slot = PAGE_HEADER_LEN + 2 * i;
        let start = get_u16(self.page, slot) as usize;
        let end = if i + 1 < n { get_u16(self.page, slot + 2) as usize } else { PAGE_SIZE };
        if start < PAGE_HEADER_LEN + 2 * n || start > end || end > PAGE_SIZE {
            return Err(Fault::new(slot, format!("cell {i} spans {start}..{end}")));
        }
        Ok(&self.page[start..end])
    }

    #[inline]
    fn cell_start(&self, i: usize) -> usize {
        get_u16(self.page, PAGE_HEADER_LEN + 2 * i) as usize
    }

    /// The key of cell `i` (leaf or branch).
    pub fn key(&self, i: usize) -> NodeResult<&'a [u8]> {
        let cell = self.cell(i)?;
        let (len_at, fixed) =
            if self.is_leaf() { (leaf_at::KEY_LEN, leaf_at::KEY) } else { (8, BRANCH_FIXED) };
        if cell.len() < fixed {
            return Err(Fault::new(self.cell_start(i), format!("cell {i} is truncated")));
        }
        let len = get_u16(cell, len_at) as usize;
        cell.get(fixed..fixed + len)
            .ok_or_else(|| Fault::new(self.cell_start(i), format!("cell {i} key overruns")))
    }

    /// Checks every cell once (done with the checksum, on a page's first touch): offsets
    /// strictly increasing after the offset array and each key inside its cell, so that a
    /// later damaged-but-checksummed page still cannot mislead a search; in a leaf also that
    /// each cell decodes, its key is a valid path and its author UTF-8, so that reads need
    /// not check those again.
    pub fn check_cells(&self) -> NodeResult<()> {
        let n = self.cell_count();
        let mut previous = PAGE_HEADER_LEN + 2 * n - 1;
        let mut previous_key: Option<&[u8]> = None;
        for i in 0..n {
            let start = self.cell_start(i);
            if start <= previous {
                return Err(Fault::new(
                    PAGE_HEADER_LEN + 2 * i,
                    format!("cell {i} offset {start} out of order"),
                ));
            }
            previous = start;
            let key = self.key(i)?;
            if previous_key.is_some_and(|p| p >= key) {
                return Err(Fault::new(start, format!("cell {i} key is not above the previous")));
            }
            previous_key = Some(key);
            if self.is_leaf() {
                let cell = self.leaf_cell(i)?;
                let key_ok = std::str::from_utf8(cell.key)
                    .is_ok_and(|k| crate::path::FilePath::check(k).is_ok());
                if !key_ok {
                    return Err(Fault::new(start, format!("cell {i} key is not a valid path")));
                }
                if std::str::from_utf8(cell.author).is_err() {
                    return Err(Fault::new(start, format!("cell {i} author is not UTF-8")));
                }
            }
        }
        Ok(())
    }

    /// Binary search for `key`: `Ok(i)` when cell `i` holds it, `Err(i)` where it would go.
    /// The hot path of every lookup: one offset read and one key slice per probe.
    #[inline]
    pub fn search(&self, key: &[u8]) -> NodeResult<Result<usize, usize>> {
        let (len_at, key_at) =
            if self.is_leaf() { (leaf_at::KEY_LEN, leaf_at::KEY) } else { (8, BRANCH_FIXED) };
        let (mut lo, mut hi) = (0usize, self.cell_count());
        if self.is_leaf() && hi <= PREFETCH_CELLS {
            // A leaf of a few large cells spreads its keys over as many cache lines, and a
            // random read finds the page out of the CPU caches: asking for every key's line
            // at once lets those misses overlap, where the search would wait for one after
            // another.
            for i in 0..hi {
                prefetch(&self.page[self.cell_start(i).min(PAGE_SIZE - 1)..]);
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let start = self.cell_start(mid);
            let probe = self
                .page
                .get(start + len_at..start + len_at + 2)
                .and_then(|l| {
                    let len = u16::from_le_bytes([l[0], l[1]]) as usize;
                    self.page.get(start + key_at..start + key_at + len)
                })
                .ok_or_else(|| Fault::new(start, format!("cell {mid} key overruns the page")))?;
            match compare_keys(probe, key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(Ok(mid)),
            }
        }
        Ok(Err(lo))
    }

    /// Asks for the cache lines of cell `i` (its first [`PREFETCH_CELL_BYTES`]) at once, so
    /// that decoding it and copying its content do not wait for one line after another.
    #[inline]
    pub fn prefetch_cell(&self, i: usize) {
        let start = self.cell_start(i).min(PAGE_SIZE - 1);
        let end = (start + PREFETCH_CELL_BYTES).min(PAGE_SIZE);
        for line in (start..end).step_by(64) {
            prefetch(&self.page[line..]);
        }
    }

    /// In a branch: the index of the child whose range holds `key` (the last separator
    /// `<= key`, or the first child when `key` precedes them all).
    pub fn child_index(&self, key: &[u8]) -> NodeResult<usize> {
        Ok(match self.search(key)? {
            Ok(i) => i,
            Err(0) => 0,
            Err(i) => i - 1,
        })
    }

    /// In a branch: the child page of cell `i`.
    pub fn child(&self, i: usize) -> NodeResult<u64> {
        let cell = self.cell(i)?;
        if cell.len() < BRANCH_FIXED {
            return Err(Fault::new(self.cell_start(i), format!("cell {i} is truncated")));
        }
        Ok(get_u64(cell, 0))
    }

    /// In a branch: the child whose range holds `key` (see [`NodeView::child_index`]), read
    /// straight from the cell: lookups call this only on pages whose cells were checked.
    #[inline]
    pub fn child_for(&self, key: &[u8]) -> NodeResult<u64> {
        let i = self.child_index(key)?;
        let start = self.cell_start(i);
        self.page
            .get(start..start + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| Fault::new(start, format!("cell {i} is truncated")))
    }

    /// In a leaf: cell `i` decoded.
    pub fn leaf_cell(&self, i: usize) -> NodeResult<LeafCell<'a>> {
        let cell = self.cell(i)?;
        decode_leaf_cell(cell).map_err(|what| Fault::new(self.cell_start(i), what))
    }
}

/// Leaves of at most this many cells have every key's cache line prefetched before a search.
const PREFETCH_CELLS: usize = 16;

/// How much of a found leaf cell [`NodeView::prefetch_cell`] asks for: a 500-byte file's
/// cell and the start of the next (asking for exactly the cell measured no better).
const PREFETCH_CELL_BYTES: usize = 1024;

/// Asks the CPU to bring the cache line at the start of `bytes` in, without waiting for it.
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing into the program and cannot fault, and
    // the address is that of a live slice.
    unsafe {
        std::arch::x86_64::_mm_prefetch(
            bytes.as_ptr().cast::<i8>(),
            std::arch::x86_64::_MM_HINT_T0,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Orders two keys bytewise, as `<[u8]>::cmp` does, eight bytes at a time. Keys share long
/// prefixes (`/home/user7/...`), and on this hot path (every probe of every lookup) the call
/// into `memcmp` costs more than the comparison itself.
#[inline]
pub fn compare_keys(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    let (a_head, b_head) = (&a[..n], &b[..n]);
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_be_bytes(a_head[i..i + 8].try_into().expect("8 bytes"));
        let y = u64::from_be_bytes(b_head[i..i + 8].try_into().expect("8 bytes"));
        if x != y {
            return x.cmp(&y);
        }
        i += 8;
    }
    while i < n {
        if a_head[i] != b_head[i] {
            return a_head[i].cmp(&b_head[i]);
        }
        i += 1;
    }
    a.len().cmp(&b.len())
}

/// Decodes a leaf cell from its bytes (trailing bytes after the cell are allowed).
pub fn decode_leaf_cell(cell: &[u8]) -> Result<LeafCell<'_>, String> {
    if cell.len() < leaf_at::FIXED {
        return Err("leaf cell is truncated".into());
    }
    let key_len = get_u16(cell, leaf_at::KEY_LEN) as usize;
    let flags = cell[leaf_at::FLAGS];
    let author_len = cell[leaf_at::AUTHOR_LEN] as usize;
    let key_end = leaf_at::KEY + key_len;
    let author_end = key_end + leaf_at::META_LEN + author_len;
    if author_end > cell.len() {
        return Err("leaf cell key, metadata or author overruns the cell".into());
    }
    let meta = &cell[key_end..key_end + leaf_at::META_LEN];
    let size = get_u64(meta, leaf_at::SIZE);
    let content = match flags {
        0 => {
            if size > INLINE_MAX as u64 {
                return Err(format!("inline content of {size} bytes exceeds {INLINE_MAX}"));
            }
            let bytes = cell
                .get(author_end..author_end + size as usize)
                .ok_or("inline content overruns the cell")?;
            Content::Inline(bytes)
        }
        FLAG_DELETED => {
            if size != 0 {
                return Err(format!("a tombstone with size {size}"));
            }
            Content::Deleted
        }
        FLAG_OVERFLOW => {
            if size <= INLINE_MAX as u64 {
                return Err(format!("overflow content of only {size} bytes"));
            }
            let r = cell
                .get(author_end..author_end + leaf_at::OVERFLOW_REF)
                .ok_or("overflow reference overruns the cell")?;
            Content::Overflow { first_page: get_u64(r, 0), crc: get_u32(r, 8) }
        }
        f => return Err(format!("unknown leaf cell flags {f:#x}")),
    };
    Ok(LeafCell {
        key: &cell[leaf_at::KEY..key_end],
        rev: get_u64(meta, leaf_at::REV),
        size,
        mtime_ms: get_u64(meta, leaf_at::MTIME),
        hash: meta[leaf_at::HASH..leaf_at::HASH + 32].try_into().expect("32 bytes"),
        author: &cell[author_end - author_len..author_end],
        content,
    })
}

/// The exact length of an encoded leaf cell.
pub fn leaf_cell_len(cell: &LeafCell<'_>) -> usize {
    leaf_at::FIXED
        + cell.key.len()
        + cell.author.len()
        + match cell.content {
            Content::Deleted => 0,
            Content::Inline(b) => b.len(),
            Content::Overflow { .. } => leaf_at::OVERFLOW_REF,
        }
}

/// Appends an encoded leaf cell to `out`. The caller has checked key (<= 1024 B) and author
/// (<= 255 B) lengths and chose inline content only up to [`INLINE_MAX`].
pub fn encode_leaf_cell(out: &mut Vec<u8>, cell: &LeafCell<'_>) {
    debug_assert!(cell.key.len() <= crate::path::MAX_PATH_BYTES);
    out.extend_from_slice(&(cell.key.len() as u16).to_le_bytes());
    out.push(match cell.content {
        Content::Deleted => FLAG_DELETED,
        Content::Inline(_) => 0,
        Content::Overflow { .. } => FLAG_OVERFLOW,
    });
    out.push(u8::try_from(cell.author.len()).expect("author <= 255 bytes"));
    out.extend_from_slice(cell.key);
    out.extend_from_slice(&cell.rev.to_le_bytes());
    out.extend_from_slice(&cell.size.to_le_bytes());
    out.extend_from_slice(&cell.mtime_ms.to_le_bytes());
    out.extend_from_slice(cell.hash);
    out.extend_from_slice(cell.author);
    match cell.content {
        Content::Deleted => {}
        Content::Inline(b) => out.extend_from_slice(b),
        Content::Overflow { first_page, crc } => {
            out.extend_from_slice(&first_page.to_le_bytes());
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }
}

/// Appends an encoded branch cell to `out`.
pub fn encode_branch_cell(out: &mut Vec<u8>, child: u64, key: &[u8]) {
    out.extend_from_slice(&child.to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
}

/// Fills `page` (zeroed, [`PAGE_SIZE`] bytes) with the given cells and seals it.
/// The cells must fit ([`pack`] decides that).
pub fn build_page<'c>(
    page: &mut [u8],
    header: PageHeader,
    cells: impl ExactSizeIterator<Item = &'c [u8]>,
) {
    let n = cells.len();
    debug_assert_eq!(n, header.cells as usize);
    header.write(page);
    let mut at = PAGE_HEADER_LEN + 2 * n;
    for (i, cell) in cells.enumerate() {
        put_u16(page, PAGE_HEADER_LEN + 2 * i, at as u16);
        page[at..at + cell.len()].copy_from_slice(cell);
        at += cell.len();
    }
    seal_page(page);
}

/// Splits a run of cells (given by their lengths) into pages: consecutive ranges, each
/// fitting [`PAGE_CAPACITY`]. With `fill = PAGE_CAPACITY` pages are packed densely
/// (compaction); with a smaller fill, page `p` ends where the running total crosses
/// `(p + 1) * fill`, which spreads a split evenly over its pages (a commit).
pub fn pack(cell_lens: &[usize], fill: usize) -> Vec<Range<usize>> {
    let mut pages = Vec::new();
    let (mut start, mut used, mut before) = (0usize, 0usize, 0usize);
    for (i, &len) in cell_lens.iter().enumerate() {
        let cost = cell_cost(len);
        debug_assert!(cost <= PAGE_CAPACITY, "a cell of {len} bytes cannot fit a page");
        let crosses = fill < PAGE_CAPACITY && before + cost / 2 > (pages.len() + 1) * fill;
        if i > start && (used + cost > PAGE_CAPACITY || crosses) {
            pages.push(start..i);
            start = i;
            used = 0;
        }
        used += cost;
        before += cost;
    }
    if start < cell_lens.len() {
        pages.push(start..cell_lens.len());
    }
    pages
}

/// The fill that spreads `cell_lens` evenly over as few pages as a dense packing needs.
pub fn even_fill(cell_lens: &[usize]) -> usize {
    let total: usize = cell_lens.iter().map(|&l| cell_cost(l)).sum();
    let pages = pack(cell_lens, PAGE_CAPACITY).len().max(1);
    total.div_ceil(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::format::{put_u64, KIND_LEAF};

    fn leaf<'a>(key: &'a [u8], author: &'a [u8], content: Content<'a>) -> LeafCell<'a> {
        static HASH: [u8; 32] = [7; 32];
        let size = match content {
            Content::Inline(b) => b.len() as u64,
            Content::Overflow { .. } => 5000,
            Content::Deleted => 0,
        };
        LeafCell { key, rev: 3, size, mtime_ms: 99, hash: &HASH, author, content }
    }

    #[test]
    fn key_comparison_agrees_with_slice_order() {
        let keys: Vec<Vec<u8>> = [
            &b""[..],
            b"/",
            b"/home/user7/file1.txt",
            b"/home/user7/file1.txt2",
            b"/home/user7/file10.txt",
            b"/home/user70/file1.txt",
            b"/home/user7/file1.tx",
            b"/home/usez",
            b"/home/user7/\xff",
            b"/home/user7/\x00",
            b"12345678",
            b"123456789",
            b"12345679",
        ]
        .iter()
        .map(|k| k.to_vec())
        .collect();
        for a in &keys {
            for b in &keys {
                assert_eq!(compare_keys(a, b), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn leaf_cells_round_trip_in_every_content_form() {
        for content in [
            Content::Inline(b"hello"),
            Content::Inline(b""),
            Content::Deleted,
            Content::Overflow { first_page: 77, crc: 0xdead_beef },
        ] {
            let c = leaf(b"/a/b", b"alice", content);
            let mut out = Vec::new();
            encode_leaf_cell(&mut out, &c);
            assert_eq!(out.len(), leaf_cell_len(&c));
            assert_eq!(decode_leaf_cell(&out).unwrap(), c);
        }
    }

    #[test]
    fn truncated_or_lying_cells_are_faults_not_panics() {
        let mut out = Vec::new();
        encode_leaf_cell(&mut out, &leaf(b"/k", b"a", Content::Inline(b"0123456789")));
        for cut in 0..out.len() {
            assert!(decode_leaf_cell(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = out.clone();
        put_u64(&mut lying, leaf_at::KEY + 2 + leaf_at::SIZE, 1 << 40);
        assert!(decode_leaf_cell(&lying).is_err());
        let mut bad_flags = out;
        bad_flags[leaf_at::FLAGS] = 9;
        assert!(decode_leaf_cell(&bad_flags).unwrap_err().contains("flags"));
    }

    #[test]
    fn built_leaf_page_searches_by_key() {
        let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("/f{i:03}").into_bytes()).collect();
        let cells: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut out = Vec::new();
                encode_leaf_cell(&mut out, &leaf(k, b"x", Content::Inline(b"v")));
                out
            })
            .collect();
        let mut page = vec![0u8; PAGE_SIZE];
        let header = PageHeader { kind: KIND_LEAF, level: 0, cells: 20, page_id: 4, txn_id: 1 };
        build_page(&mut page, header, cells.iter().map(|c| c.as_slice()));
        crate::tree::format::check_page(&page, 4).unwrap();
        let node = NodeView::new(&page).unwrap();
        assert_eq!(node.search(b"/f007").unwrap(), Ok(7));
        assert_eq!(node.search(b"/f0075").unwrap(), Err(8));
        assert_eq!(node.search(b"/a").unwrap(), Err(0));
        // Keys around the prefix every key of the page shares ("/f0").
        assert_eq!(node.search(b"/f").unwrap(), Err(0));
        assert_eq!(node.search(b"/f0").unwrap(), Err(0));
        assert_eq!(node.search(b"/f01").unwrap(), Err(10));
        assert_eq!(node.search(b"/f019").unwrap(), Ok(19));
        assert_eq!(node.search(b"/f1").unwrap(), Err(20));
        assert_eq!(node.search(b"/g").unwrap(), Err(20));
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(node.search(k).unwrap(), Ok(i));
        }
        node.check_cells().unwrap();
        assert_eq!(node.leaf_cell(19).unwrap().key, b"/f019");
        // Cells whose keys are out of order fail the first-touch check.
        let mut swapped = cells.clone();
        swapped.swap(3, 4);
        let mut page = vec![0u8; PAGE_SIZE];
        build_page(&mut page, header, swapped.iter().map(|c| c.as_slice()));
        let fault = NodeView::new(&page).unwrap().check_cells().unwrap_err();
        assert!(fault.what.contains("cell 4 key is not above"), "{fault:?}");
    }

    #[test]
    fn branch_child_index_picks_the_last_separator_not_above_the_key() {
        let mut cells = Vec::new();
        for (child, key) in [(10u64, &b"/a"[..]), (11, b"/m"), (12, b"/t")] {
            let mut c = Vec::new();
            encode_branch_cell(&mut c, child, key);
            cells.push(c);
        }
        let mut page = vec![0u8; PAGE_SIZE];
        let header = PageHeader { kind: KIND_BRANCH, level: 1, cells: 3, page_id: 2, txn_id: 1 };
        build_page(&mut page, header, cells.iter().map(|c| c.as_slice()));
        let node = NodeView::new(&page).unwrap();
        assert_eq!(node.child_index(b"/").unwrap(), 0);
        assert_eq!(node.child_index(b"/m").unwrap(), 1);
        assert_eq!(node.child_index(b"/s").unwrap(), 1);
        assert_eq!(node.child_index(b"/z").unwrap(), 2);
        assert_eq!(node.child(2).unwrap(), 12);
    }

    #[test]
    fn garbage_pages_are_rejected_by_structure_checks() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert!(NodeView::new(&page).unwrap_err().what.contains("kind"));
        PageHeader { kind: KIND_LEAF, level: 0, cells: 3, page_id: 2, txn_id: 1 }.write(&mut page);
        put_u16(&mut page, PAGE_HEADER_LEN, 9000);
        let node = NodeView::new(&page).unwrap();
        assert!(node.cell(0).is_err());
        assert!(node.key(1).is_err());
        PageHeader { kind: KIND_BRANCH, level: 0, cells: 3, page_id: 2, txn_id: 1 }
            .write(&mut page);
        assert!(NodeView::new(&page).is_err());
    }

    #[test]
    fn packing_fits_pages_and_evens_out_splits() {
        let lens = vec![600usize; 13];
        let dense = pack(&lens, PAGE_CAPACITY);
        assert_eq!(dense.iter().map(|r| r.len()).collect::<Vec<_>>(), [6, 6, 1]);
        let even = pack(&lens, even_fill(&lens));
        assert_eq!(even.iter().map(|r| r.len()).collect::<Vec<_>>(), [4, 5, 4]);
        let max = vec![2363usize; 3];
        assert_eq!(pack(&max, PAGE_CAPACITY).len(), 3);
        let branch = vec![1034usize; 3];
        assert_eq!(pack(&branch, PAGE_CAPACITY).len(), 1, "a branch page holds three max keys");
        assert!(pack(&[], PAGE_CAPACITY).is_empty());
    }
}
