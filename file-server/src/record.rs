//! What the store keeps for one file: its metadata and, unless it was deleted, its content.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::path::FilePath;

/// Metadata of one file version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// +1 on every change of this path, deletes included; the first version is 1.
    pub rev: u64,
    /// Content length in bytes (0 for a deleted file).
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: u64,
    /// The client id that made the change.
    pub author: Arc<str>,
    /// SHA-256 of the content (all zero for a deleted file).
    pub hash: [u8; 32],
}

impl FileMeta {
    /// The SHA-256 in lowercase hex.
    pub fn hash_hex(&self) -> String {
        self.hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One version of a file as stored: live content, or a tombstone that keeps the revision
/// counting across a delete and a later re-create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub meta: FileMeta,
    /// `None` for a deleted file.
    pub content: Option<Bytes>,
}

/// The longest author (client id) the store keeps, in bytes.
pub const MAX_AUTHOR_BYTES: usize = 255;

/// SHA-256 of `content`.
pub fn content_hash(content: &[u8]) -> [u8; 32] {
    Sha256::digest(content).into()
}

impl Record {
    /// A live version with the given content; size and hash are derived from it.
    pub fn live(rev: u64, mtime_ms: u64, author: Arc<str>, content: Bytes) -> Record {
        let hash = content_hash(&content);
        Record::live_hashed(rev, mtime_ms, author, content, hash)
    }

    /// [`Record::live`] with the content's [`content_hash`] computed ahead.
    pub(crate) fn live_hashed(
        rev: u64,
        mtime_ms: u64,
        author: Arc<str>,
        content: Bytes,
        hash: [u8; 32],
    ) -> Record {
        debug_assert_eq!(hash, content_hash(&content));
        Record {
            meta: FileMeta { rev, size: content.len() as u64, mtime_ms, author, hash },
            content: Some(content),
        }
    }

    /// A tombstone at `rev`.
    pub fn deleted(rev: u64, mtime_ms: u64, author: Arc<str>) -> Record {
        Record { meta: FileMeta { rev, size: 0, mtime_ms, author, hash: [0; 32] }, content: None }
    }

    pub fn is_deleted(&self) -> bool {
        self.content.is_none()
    }
}

/// A file version as the store holds it and hands it out: an immutable [`Record`], shared,
/// cheap to clone, which dereferences to the record.
///
/// The allocation also holds the version's path and whether it is a tombstone, beside the
/// reference count: the store's cache table checks a hit against that path, so that a cached
/// `get` touches the table and this one line of memory (the count is incremented there too,
/// and a tombstone told apart). With the path in the table and the count in a separate record,
/// a cached read among 100,000 files waited on two trips to memory instead of one; with the
/// tombstone test on the record's `content`, two lines further on, it waited on a second.
#[derive(Clone)]
pub struct SharedRecord(Arc<PathedRecord>);

// In this order: after the two counts, the path and the flag end within the allocation's
// first 64 bytes (a test checks it).
#[repr(C)]
struct PathedRecord {
    path: HeldPath,
    deleted: bool,
    record: Record,
}

/// Paths up to this many bytes are held inline beside the record (40 bytes with their length
/// and the variant's tag); longer ones are shared with the caller's [`FilePath`].
pub const INLINE_PATH: usize = 38;

enum HeldPath {
    Inline { len: u8, bytes: [u8; INLINE_PATH] },
    Shared(FilePath),
}

impl HeldPath {
    fn new(path: &FilePath) -> HeldPath {
        let raw = path.as_str().as_bytes();
        match u8::try_from(raw.len()) {
            Ok(len) if raw.len() <= INLINE_PATH => {
                let mut bytes = [0; INLINE_PATH];
                bytes[..raw.len()].copy_from_slice(raw);
                HeldPath::Inline { len, bytes }
            }
            _ => HeldPath::Shared(path.clone()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            HeldPath::Inline { len, bytes } => &bytes[..usize::from(*len)],
            HeldPath::Shared(path) => path.as_str().as_bytes(),
        }
    }
}

impl SharedRecord {
    /// `record` as the version of `path`.
    pub fn new(path: &FilePath, record: Record) -> SharedRecord {
        let deleted = record.is_deleted();
        SharedRecord(Arc::new(PathedRecord { path: HeldPath::new(path), deleted, record }))
    }

    /// Whether this version is a tombstone, read beside the path (`Record::is_deleted` reads
    /// the content's field, in another line of memory).
    #[inline]
    pub fn is_deleted(&self) -> bool {
        self.0.deleted
    }

    /// The path this version belongs to, as bytes.
    #[inline]
    pub fn path_bytes(&self) -> &[u8] {
        self.0.path.bytes()
    }
}

impl std::ops::Deref for SharedRecord {
    type Target = Record;

    #[inline]
    fn deref(&self) -> &Record {
        &self.0.record
    }
}

impl std::fmt::Debug for SharedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRecord")
            .field("path", &String::from_utf8_lossy(self.path_bytes()))
            .field("record", &self.0.record)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_record_derives_size_and_hash() {
        let r = Record::live(1, 5, Arc::from("alice"), Bytes::from_static(b"abc"));
        assert_eq!(r.meta.size, 3);
        // SHA-256("abc"), FIPS 180-2 appendix B.1
        assert_eq!(r.meta.hash[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert!(!r.is_deleted());
        assert!(Record::deleted(2, 6, Arc::from("bob")).is_deleted());
    }

    #[test]
    fn what_a_cached_get_reads_is_in_the_allocations_first_64_bytes() {
        // Arc's strong and weak counts come first.
        let counts = 2 * std::mem::size_of::<usize>();
        let end = counts + std::mem::offset_of!(PathedRecord, deleted) + 1;
        assert!(end <= 64, "count, path and flag end at byte {end}");
    }

    #[test]
    fn a_shared_record_holds_short_and_long_paths() {
        let short = FilePath::parse("/home/a/x").unwrap();
        let edge = FilePath::parse(&format!("/{}", "e".repeat(INLINE_PATH - 1))).unwrap();
        let long = FilePath::parse(&format!("/{}", "l".repeat(INLINE_PATH))).unwrap();
        for path in [&short, &edge, &long] {
            let r = SharedRecord::new(path, Record::live(3, 5, Arc::from("a"), Bytes::from("c")));
            assert_eq!(r.path_bytes(), path.as_str().as_bytes());
            assert_eq!(r.meta.rev, 3);
            assert_eq!(r.content.as_deref(), Some(&b"c"[..]));
            assert!(!r.is_deleted());
        }
        assert!(SharedRecord::new(&short, Record::deleted(4, 5, Arc::from("a"))).is_deleted());
    }
}
