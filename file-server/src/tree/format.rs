//! The byte layout of a tree file: constants, the commit header and the page header.
//!
//! Pure encoding and decoding; every offset here is written down in `docs/FORMAT.md`.
//! All integers are little-endian. Checksums are CRC-32 (the zlib polynomial, as computed by
//! `crc32fast` and by Python's `zlib.crc32`).

/// Bytes per page; the file is an array of pages.
pub const PAGE_SIZE: usize = 4096;
/// `PAGE_SIZE` as a file offset multiplier.
pub const PAGE_BYTES: u64 = PAGE_SIZE as u64;
/// The first eight bytes of both header slots.
pub const MAGIC: [u8; 8] = *b"FERRYTRE";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Pages 0 and 1 hold the two header slots; tree pages start here.
pub const FIRST_DATA_PAGE: u64 = 2;
/// Bytes of a header slot (the rest of its page is zero).
pub const HEADER_LEN: usize = 128;
const HEADER_CRC_AT: usize = HEADER_LEN - 4;

/// Bytes of the header every tree page starts with.
pub const PAGE_HEADER_LEN: usize = 24;
/// Page kind byte of a branch page.
pub const KIND_BRANCH: u8 = 1;
/// Page kind byte of a leaf page.
pub const KIND_LEAF: u8 = 2;

/// Content up to this many bytes is stored inside the leaf cell; longer content goes to an
/// overflow extent. With the longest key and author a leaf cell then still fits a page.
pub const INLINE_MAX: usize = 1024;

mod at {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const PAGE_SIZE: usize = 12;
    pub const TXN: usize = 16;
    pub const ROOT: usize = 24;
    pub const END: usize = 32;
    pub const DEPTH: usize = 40;
    pub const PARTITION: usize = 44;
    pub const LIVE: usize = 48;
    pub const TOMBSTONES: usize = 56;
    pub const CHECKPOINT_LSN: usize = 64;
    pub const GARBAGE: usize = 72;
    pub const GENERATION: usize = 80;
    pub const NEXT_GENERATION: usize = 88;
    pub const PARTITIONS: usize = 96;
    pub const FLAGS: usize = 100;
}

/// Header flag: this file was replaced by generation `next_generation` (compaction).
const FLAG_RETIRED: u32 = 1;

/// One commit of a tree file, as stored in a header slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHeader {
    /// +1 per commit; the slot with the highest valid txn id is the current header.
    pub txn_id: u64,
    /// Page number of the root, 0 for an empty tree.
    pub root_page: u64,
    /// First unallocated page: every page this commit can reach is below it.
    pub end_page: u64,
    /// Levels of the tree: 0 empty, 1 a single leaf, 2 a branch over leaves, ...
    pub depth: u32,
    /// Files present and not deleted.
    pub live_entries: u64,
    /// Deleted files kept as tombstones (so that their revision keeps counting).
    pub tombstones: u64,
    /// The write-ahead-log position this commit contains, as given by the caller.
    pub checkpoint_lsn: u64,
    /// Pages below `end_page` that no longer belong to the tree (replaced by later commits).
    pub garbage_pages: u64,
    /// The file's generation number (`tree-<generation>.ferry`).
    pub generation: u64,
    /// When non-zero, compaction replaced this file by `tree-<next_generation>.ferry`.
    pub next_generation: u64,
    /// This partition's index, in `0..partitions`.
    pub partition: u32,
    /// The data directory's partition count.
    pub partitions: u32,
}

/// Why a header slot does not hold a usable header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderFault {
    /// All zero: never written.
    Blank,
    /// The magic is wrong: not a Ferry tree file.
    Foreign,
    /// The checksum does not match: torn or damaged.
    Checksum { stored: u32, computed: u32 },
    /// Checksum fine but the content is not usable by this code.
    Unsupported(String),
    /// Checksum fine but the fields contradict each other.
    Invalid(String),
}

impl std::fmt::Display for HeaderFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderFault::Blank => f.write_str("header slot is blank"),
            HeaderFault::Foreign => f.write_str("header magic is not FERRYTRE"),
            HeaderFault::Checksum { stored, computed } => {
                write!(f, "header crc mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            HeaderFault::Unsupported(what) | HeaderFault::Invalid(what) => f.write_str(what),
        }
    }
}

impl TreeHeader {
    /// The header of a new, empty tree file.
    pub fn empty(generation: u64, partition: u32, partitions: u32) -> TreeHeader {
        TreeHeader {
            txn_id: 0,
            root_page: 0,
            end_page: FIRST_DATA_PAGE,
            depth: 0,
            live_entries: 0,
            tombstones: 0,
            checkpoint_lsn: 0,
            garbage_pages: 0,
            generation,
            next_generation: 0,
            partition,
            partitions,
        }
    }

    /// True once compaction replaced this file by a newer generation.
    pub fn is_retired(&self) -> bool {
        self.next_generation != 0
    }

    /// The header slot (page number) this header is written to.
    pub fn slot(&self) -> u64 {
        self.txn_id % 2
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[at::MAGIC..at::MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(&mut b, at::VERSION, FORMAT_VERSION);
        put_u32(&mut b, at::PAGE_SIZE, PAGE_SIZE as u32);
        put_u64(&mut b, at::TXN, self.txn_id);
        put_u64(&mut b, at::ROOT, self.root_page);
        put_u64(&mut b, at::END, self.end_page);
        put_u32(&mut b, at::DEPTH, self.depth);
        put_u32(&mut b, at::PARTITION, self.partition);
        put_u64(&mut b, at::LIVE, self.live_entries);
        put_u64(&mut b, at::TOMBSTONES, self.tombstones);
        put_u64(&mut b, at::CHECKPOINT_LSN, self.checkpoint_lsn);
        put_u64(&mut b, at::GARBAGE, self.garbage_pages);
        put_u64(&mut b, at::GENERATION, self.generation);
        put_u64(&mut b, at::NEXT_GENERATION, self.next_generation);
        put_u32(&mut b, at::PARTITIONS, self.partitions);
        put_u32(&mut b, at::FLAGS, if self.is_retired() { FLAG_RETIRED } else { 0 });
        let crc = crc32fast::hash(&b[..HEADER_CRC_AT]);
        put_u32(&mut b, HEADER_CRC_AT, crc);
        b
    }

    /// Decodes a header slot; `bytes` must be a copy (the slot may change under a mapping).
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<TreeHeader, HeaderFault> {
        if bytes.iter().all(|&b| b == 0) {
            return Err(HeaderFault::Blank);
        }
        if bytes[..8] != MAGIC {
            return Err(HeaderFault::Foreign);
        }
        let stored = get_u32(bytes, HEADER_CRC_AT);
        let computed = crc32fast::hash(&bytes[..HEADER_CRC_AT]);
        if stored != computed {
            return Err(HeaderFault::Checksum { stored, computed });
        }
        let version = get_u32(bytes, at::VERSION);
        if version != FORMAT_VERSION {
            return Err(HeaderFault::Unsupported(format!(
                "format version {version} (this build reads version {FORMAT_VERSION})"
            )));
        }
        let page_size = get_u32(bytes, at::PAGE_SIZE);
        if page_size as usize != PAGE_SIZE {
            return Err(HeaderFault::Unsupported(format!(
                "page size {page_size} (this build reads {PAGE_SIZE})"
            )));
        }
        let h = TreeHeader {
            txn_id: get_u64(bytes, at::TXN),
            root_page: get_u64(bytes, at::ROOT),
            end_page: get_u64(bytes, at::END),
            depth: get_u32(bytes, at::DEPTH),
            live_entries: get_u64(bytes, at::LIVE),
            tombstones: get_u64(bytes, at::TOMBSTONES),
            checkpoint_lsn: get_u64(bytes, at::CHECKPOINT_LSN),
            garbage_pages: get_u64(bytes, at::GARBAGE),
            generation: get_u64(bytes, at::GENERATION),
            next_generation: get_u64(bytes, at::NEXT_GENERATION),
            partition: get_u32(bytes, at::PARTITION),
            partitions: get_u32(bytes, at::PARTITIONS),
        };
        let flags = get_u32(bytes, at::FLAGS);
        h.check(flags).map_err(HeaderFault::Invalid)?;
        Ok(h)
    }

    fn check(&self, flags: u32) -> Result<(), String> {
        if self.end_page < FIRST_DATA_PAGE {
            return Err(format!("end page {} is below the first data page", self.end_page));
        }
        if (self.root_page == 0) != (self.depth == 0) {
            return Err(format!("root page {} with depth {}", self.root_page, self.depth));
        }
        if self.root_page != 0
            && (self.root_page < FIRST_DATA_PAGE || self.root_page >= self.end_page)
        {
            return Err(format!(
                "root page {} outside the data pages 2..{}",
                self.root_page, self.end_page
            ));
        }
        if self.depth > 64 {
            return Err(format!("depth {} is implausible", self.depth));
        }
        if self.root_page == 0 && (self.live_entries != 0 || self.tombstones != 0) {
            return Err("an empty tree with a non-zero entry count".into());
        }
        if self.partitions == 0 || self.partition >= self.partitions {
            return Err(format!("partition {} of {}", self.partition, self.partitions));
        }
        if (flags & FLAG_RETIRED != 0) != self.is_retired() || flags & !FLAG_RETIRED != 0 {
            return Err(format!(
                "flags {flags:#x} disagree with next generation {}",
                self.next_generation
            ));
        }
        if self.is_retired() && self.next_generation <= self.generation {
            return Err(format!(
                "generation {} retired in favour of older generation {}",
                self.generation, self.next_generation
            ));
        }
        Ok(())
    }
}

/// Picks the current header from the two slots: the valid one with the highest txn id.
/// Returns the faults of both slots when neither is valid.
pub fn choose_header(
    slot0: &[u8; HEADER_LEN],
    slot1: &[u8; HEADER_LEN],
) -> Result<TreeHeader, [HeaderFault; 2]> {
    match (TreeHeader::decode(slot0), TreeHeader::decode(slot1)) {
        (Ok(a), Ok(b)) => Ok(if b.txn_id > a.txn_id { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(a), Err(b)) => Err([a, b]),
    }
}

/// The fixed fields at the start of every tree page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub kind: u8,
    /// 0 for leaves, the height above the leaves for branches.
    pub level: u8,
    pub cells: u16,
    pub page_id: u64,
    pub txn_id: u64,
}

mod pat {
    pub const CRC: usize = 0;
    pub const KIND: usize = 4;
    pub const LEVEL: usize = 5;
    pub const CELLS: usize = 6;
    pub const PAGE_ID: usize = 8;
    pub const TXN: usize = 16;
}

impl PageHeader {
    pub fn write(&self, page: &mut [u8]) {
        page[pat::KIND] = self.kind;
        page[pat::LEVEL] = self.level;
        put_u16(page, pat::CELLS, self.cells);
        put_u64(page, pat::PAGE_ID, self.page_id);
        put_u64(page, pat::TXN, self.txn_id);
    }

    pub fn read(page: &[u8]) -> PageHeader {
        PageHeader {
            kind: page[pat::KIND],
            level: page[pat::LEVEL],
            cells: get_u16(page, pat::CELLS),
            page_id: get_u64(page, pat::PAGE_ID),
            txn_id: get_u64(page, pat::TXN),
        }
    }
}

/// The checksum of a tree page: CRC-32 of every byte after the checksum field. The page id
/// is inside the covered bytes, so a page written to the wrong place fails its check.
pub fn page_crc(page: &[u8]) -> u32 {
    crc32fast::hash(&page[pat::CRC + 4..PAGE_SIZE])
}

/// Stores the page checksum; call after the page is complete.
pub fn seal_page(page: &mut [u8]) {
    let crc = page_crc(page);
    put_u32(page, pat::CRC, crc);
}

/// Checks a page's checksum and that it is the page it claims to be.
pub fn check_page(page: &[u8], page_id: u64) -> Result<PageHeader, String> {
    debug_assert_eq!(page.len(), PAGE_SIZE);
    let stored = get_u32(page, pat::CRC);
    let computed = page_crc(page);
    if stored != computed {
        return Err(format!(
            "page {page_id} crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let header = PageHeader::read(page);
    if header.page_id != page_id {
        return Err(format!("page {page_id} claims to be page {}", header.page_id));
    }
    Ok(header)
}

pub fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Pages needed for `len` bytes of overflow content.
pub fn overflow_pages(len: u64) -> u64 {
    len.div_ceil(PAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TreeHeader {
        TreeHeader {
            txn_id: 7,
            root_page: 9,
            end_page: 12,
            depth: 2,
            live_entries: 100,
            tombstones: 3,
            checkpoint_lsn: 4242,
            garbage_pages: 5,
            generation: 3,
            next_generation: 0,
            partition: 2,
            partitions: 16,
        }
    }

    #[test]
    fn header_round_trips_and_has_documented_offsets() {
        let h = sample();
        let b = h.encode();
        assert_eq!(&b[0..8], b"FERRYTRE");
        assert_eq!(get_u64(&b, 16), 7);
        assert_eq!(get_u64(&b, 64), 4242);
        assert_eq!(get_u32(&b, 124), crc32fast::hash(&b[..124]));
        assert_eq!(TreeHeader::decode(&b).unwrap(), h);
    }

    #[test]
    fn every_flipped_header_bit_is_rejected() {
        let b = sample().encode();
        for byte in 0..HEADER_LEN {
            for bit in 0..8 {
                let mut c = b;
                c[byte] ^= 1 << bit;
                assert!(TreeHeader::decode(&c).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn the_valid_slot_with_the_highest_txn_wins() {
        let older = sample();
        let newer = TreeHeader { txn_id: 8, root_page: 11, ..older };
        let (a, b) = (older.encode(), newer.encode());
        assert_eq!(choose_header(&a, &b).unwrap(), newer);
        assert_eq!(choose_header(&b, &a).unwrap(), newer);
        let mut torn = b;
        torn[40] ^= 0xff;
        assert_eq!(choose_header(&a, &torn).unwrap(), older);
        let blank = [0u8; HEADER_LEN];
        assert_eq!(
            choose_header(&blank, &[0; HEADER_LEN]).unwrap_err(),
            [HeaderFault::Blank, HeaderFault::Blank]
        );
    }

    #[test]
    fn contradictory_headers_are_invalid_even_with_a_good_crc() {
        let bad = TreeHeader { root_page: 40, ..sample() };
        assert!(matches!(TreeHeader::decode(&bad.encode()), Err(HeaderFault::Invalid(_))));
        let bad = TreeHeader { next_generation: 2, ..sample() };
        assert!(matches!(TreeHeader::decode(&bad.encode()), Err(HeaderFault::Invalid(_))));
        let retired = TreeHeader { next_generation: 4, ..sample() };
        assert!(TreeHeader::decode(&retired.encode()).unwrap().is_retired());
    }

    #[test]
    fn page_checksum_covers_the_page_id() {
        let mut page = vec![0u8; PAGE_SIZE];
        PageHeader { kind: KIND_LEAF, level: 0, cells: 1, page_id: 5, txn_id: 1 }.write(&mut page);
        page[100] = 42;
        seal_page(&mut page);
        assert_eq!(check_page(&page, 5).unwrap().cells, 1);
        assert!(check_page(&page, 6).unwrap_err().contains("claims to be page 5"));
        page[4000] ^= 1;
        assert!(check_page(&page, 5).unwrap_err().contains("crc mismatch"));
    }
}
