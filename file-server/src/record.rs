//! What the store keeps for one file: its metadata and, unless it was deleted, its content.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

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
        Record {
            meta: FileMeta {
                rev,
                size: content.len() as u64,
                mtime_ms,
                author,
                hash: content_hash(&content),
            },
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
}
