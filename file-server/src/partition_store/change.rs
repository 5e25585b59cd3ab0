//! Changes to files and what they make of a file's current version: pure logic, no I/O.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::error::{Result, StoreError};
use crate::path::FilePath;
use crate::record::{FileMeta, Record, MAX_AUTHOR_BYTES};
use crate::wal::{WalEntry, WalOp};

/// What a change does to a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Replace the content (creating the file if needed).
    Put(Bytes),
    /// Add bytes at the end (creating the file if needed).
    Append(Bytes),
    /// Replace `delete` bytes at byte offset `at` by `insert`. If the file is valid UTF-8,
    /// neither end of the replaced range may fall inside a character.
    Patch { at: u64, delete: u64, insert: Bytes },
    /// Delete the file. The revision keeps counting: a later re-create continues from it.
    Delete,
}

/// One change to one file, as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: FilePath,
    pub edit: Edit,
    /// The client id making the change, at most [`MAX_AUTHOR_BYTES`] bytes.
    pub author: Arc<str>,
    /// Optimistic concurrency: `Some(0)` means the file must not exist (or be deleted),
    /// `Some(n)` that its revision must be `n`; `None` applies unconditionally.
    pub expected_rev: Option<u64>,
}

impl Change {
    pub fn put(path: FilePath, content: impl Into<Bytes>, author: &str) -> Change {
        Change::new(path, Edit::Put(content.into()), author)
    }

    pub fn append(path: FilePath, bytes: impl Into<Bytes>, author: &str) -> Change {
        Change::new(path, Edit::Append(bytes.into()), author)
    }

    pub fn patch(
        path: FilePath,
        at: u64,
        delete: u64,
        insert: impl Into<Bytes>,
        author: &str,
    ) -> Change {
        Change::new(path, Edit::Patch { at, delete, insert: insert.into() }, author)
    }

    pub fn delete(path: FilePath, author: &str) -> Change {
        Change::new(path, Edit::Delete, author)
    }

    /// The same change, applied only if the file is at revision `rev` (0: absent).
    pub fn expecting(mut self, rev: u64) -> Change {
        self.expected_rev = Some(rev);
        self
    }

    fn new(path: FilePath, edit: Edit, author: &str) -> Change {
        Change { path, edit, author: Arc::from(author), expected_rev: None }
    }

    /// How this change is logged, once its revision and time are known.
    pub(crate) fn wal_entry(&self, rev: u64, mtime_ms: u64) -> WalEntry<'_> {
        let op = match &self.edit {
            Edit::Put(b) => WalOp::Put(b),
            Edit::Append(b) => WalOp::Append(b),
            Edit::Patch { at, delete, insert } => WalOp::Patch { at: *at, delete: *delete, insert },
            Edit::Delete => WalOp::Delete,
        };
        WalEntry { path: self.path.as_str(), author: &self.author, mtime_ms, rev, op }
    }
}

/// The revision a file is at for `expected_rev` purposes: 0 when absent or deleted.
fn visible_rev(current: Option<&Record>) -> u64 {
    current.filter(|r| !r.is_deleted()).map_or(0, |r| r.meta.rev)
}

/// Checks a change against the file's current version and computes the new version.
/// `max_size` bounds the resulting content. A put's new version shares the change's bytes;
/// `put_hash` is their [`crate::record::content_hash`] when the caller computed it ahead
/// (ignored for other edits).
pub fn apply_change(
    current: Option<&Record>,
    change: &Change,
    mtime_ms: u64,
    max_size: u64,
    put_hash: Option<[u8; 32]>,
) -> Result<Record> {
    if change.author.len() > MAX_AUTHOR_BYTES {
        return Err(StoreError::AuthorTooLong { len: change.author.len(), max: MAX_AUTHOR_BYTES });
    }
    if let Some(expected) = change.expected_rev {
        let actual = visible_rev(current);
        if expected != actual {
            return Err(StoreError::Conflict { path: change.path.to_string(), expected, actual });
        }
    }
    let op = change.wal_entry(0, mtime_ms).op;
    let put = match &change.edit {
        Edit::Put(bytes) => Some(KnownPut { bytes, hash: put_hash }),
        _ => None,
    };
    next_version(current, &change.path, op, &change.author, mtime_ms, Some(max_size), put)
}

/// What the applier knows of a put beyond its `WalOp`: the change's own bytes, to share
/// rather than copy, and their hash if it was computed ahead.
struct KnownPut<'a> {
    bytes: &'a Bytes,
    hash: Option<[u8; 32]>,
}

/// Replays a logged change onto the file's version before it, checking that the revision
/// follows on. Used by recovery; the size limit of the time of writing was already enforced.
pub fn replay_entry(
    current: Option<&Record>,
    path: &FilePath,
    entry: &WalEntry<'_>,
) -> Result<Record> {
    let record = next_version(current, path, entry.op, entry.author, entry.mtime_ms, None, None)?;
    if record.meta.rev != entry.rev {
        return Err(StoreError::Corrupt {
            file: path.as_str().into(),
            offset: 0,
            what: format!(
                "the write-ahead log sets revision {} on a file at revision {}",
                entry.rev,
                record.meta.rev - 1
            ),
        });
    }
    Ok(record)
}

fn next_version(
    current: Option<&Record>,
    path: &FilePath,
    op: WalOp<'_>,
    author: &str,
    mtime_ms: u64,
    max_size: Option<u64>,
    put: Option<KnownPut<'_>>,
) -> Result<Record> {
    let rev = current.map_or(0, |r| r.meta.rev) + 1;
    let old: &[u8] = current.and_then(|r| r.content.as_deref()).unwrap_or(&[]);
    let exists = current.is_some_and(|r| !r.is_deleted());
    let author: Arc<str> = Arc::from(author);
    let check_size = |size: u64| match max_size {
        Some(max) if size > max => Err(StoreError::TooLarge { path: path.to_string(), size, max }),
        _ => Ok(()),
    };
    let mut known_hash = None;
    let content = match op {
        WalOp::Put(bytes) => {
            check_size(bytes.len() as u64)?;
            match put {
                Some(put) => {
                    known_hash = put.hash;
                    put.bytes.clone()
                }
                None => Bytes::copy_from_slice(bytes),
            }
        }
        WalOp::Append(bytes) => {
            check_size(old.len() as u64 + bytes.len() as u64)?;
            let mut out = BytesMut::with_capacity(old.len() + bytes.len());
            out.extend_from_slice(old);
            out.extend_from_slice(bytes);
            out.freeze()
        }
        WalOp::Patch { at, delete, insert } => {
            if !exists {
                return Err(StoreError::NotFound { path: path.to_string() });
            }
            let size = old.len() as u64;
            let end = at.checked_add(delete).filter(|&end| end <= size).ok_or_else(|| {
                StoreError::PatchOutOfRange { path: path.to_string(), at, delete, size }
            })?;
            let (at, end) = (at as usize, end as usize);
            if let Ok(text) = std::str::from_utf8(old) {
                for offset in [at, end] {
                    if !text.is_char_boundary(offset) {
                        return Err(StoreError::PatchSplitsChar {
                            path: path.to_string(),
                            offset: offset as u64,
                        });
                    }
                }
            }
            check_size(size - (end - at) as u64 + insert.len() as u64)?;
            let mut out = BytesMut::with_capacity(old.len() - (end - at) + insert.len());
            out.extend_from_slice(&old[..at]);
            out.extend_from_slice(insert);
            out.extend_from_slice(&old[end..]);
            out.freeze()
        }
        WalOp::Delete => {
            if !exists {
                return Err(StoreError::NotFound { path: path.to_string() });
            }
            return Ok(Record::deleted(rev, mtime_ms, author));
        }
    };
    Ok(match known_hash {
        Some(hash) => Record::live_hashed(rev, mtime_ms, author, content, hash),
        None => Record::live(rev, mtime_ms, author, content),
    })
}

/// The metadata a caller sees for a version, `None` for a tombstone.
pub(crate) fn visible(record: &Record) -> Option<FileMeta> {
    (!record.is_deleted()).then(|| record.meta.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> FilePath {
        FilePath::parse(s).unwrap()
    }

    fn apply(current: Option<&Record>, change: Change) -> Result<Record> {
        apply_change(current, &change, 7, 100, None)
    }

    #[test]
    fn put_append_patch_delete_and_recreate_count_revisions() {
        let a = p("/a");
        let v1 = apply(None, Change::put(a.clone(), "hello", "u")).unwrap();
        assert_eq!((v1.meta.rev, v1.content.as_deref()), (1, Some(&b"hello"[..])));
        let v2 = apply(Some(&v1), Change::append(a.clone(), " world", "u")).unwrap();
        assert_eq!(v2.content.as_deref(), Some(&b"hello world"[..]));
        let v3 = apply(Some(&v2), Change::patch(a.clone(), 0, 5, "HELLO!", "u")).unwrap();
        assert_eq!(v3.content.as_deref(), Some(&b"HELLO! world"[..]));
        assert_eq!(v3.meta.size, 12);
        let v4 = apply(Some(&v3), Change::delete(a.clone(), "u")).unwrap();
        assert!(v4.is_deleted());
        assert_eq!(v4.meta.rev, 4);
        let v5 = apply(Some(&v4), Change::append(a.clone(), "new", "u").expecting(0)).unwrap();
        assert_eq!((v5.meta.rev, v5.content.as_deref()), (5, Some(&b"new"[..])));
    }

    #[test]
    fn expected_revision_is_checked() {
        let a = p("/a");
        let v1 = apply(None, Change::put(a.clone(), "x", "u")).unwrap();
        let err = apply(Some(&v1), Change::put(a.clone(), "y", "u").expecting(0)).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { expected: 0, actual: 1, .. }), "{err:?}");
        let err = apply(None, Change::put(a.clone(), "y", "u").expecting(3)).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { expected: 3, actual: 0, .. }), "{err:?}");
        assert_eq!(apply(Some(&v1), Change::put(a, "y", "u").expecting(1)).unwrap().meta.rev, 2);
    }

    #[test]
    fn bad_patches_deletes_and_sizes_are_typed_errors() {
        let a = p("/a");
        let v1 = apply(None, Change::put(a.clone(), "añb", "u")).unwrap();
        let err = apply(Some(&v1), Change::patch(a.clone(), 2, 0, "x", "u")).unwrap_err();
        assert!(matches!(err, StoreError::PatchSplitsChar { offset: 2, .. }), "{err:?}");
        let err = apply(Some(&v1), Change::patch(a.clone(), 0, 2, "x", "u")).unwrap_err();
        assert!(matches!(err, StoreError::PatchSplitsChar { offset: 2, .. }), "{err:?}");
        let err = apply(Some(&v1), Change::patch(a.clone(), 3, 2, "x", "u")).unwrap_err();
        assert!(matches!(err, StoreError::PatchOutOfRange { at: 3, delete: 2, size: 4, .. }));
        let err = apply(Some(&v1), Change::patch(a.clone(), u64::MAX, 2, "", "u")).unwrap_err();
        assert!(matches!(err, StoreError::PatchOutOfRange { .. }), "{err:?}");
        assert!(matches!(
            apply(None, Change::delete(a.clone(), "u")),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            apply(None, Change::patch(a.clone(), 0, 0, "x", "u")),
            Err(StoreError::NotFound { .. })
        ));
        let big = vec![b'x'; 101];
        assert!(matches!(
            apply(None, Change::put(a.clone(), big, "u")),
            Err(StoreError::TooLarge { size: 101, max: 100, .. })
        ));
        let v2 = apply(None, Change::put(a.clone(), vec![b'x'; 99], "u")).unwrap();
        assert!(matches!(
            apply(Some(&v2), Change::append(a.clone(), "yy", "u")),
            Err(StoreError::TooLarge { size: 101, .. })
        ));
        let long = "x".repeat(MAX_AUTHOR_BYTES + 1);
        assert!(matches!(
            apply(None, Change::put(a, "x", &long)),
            Err(StoreError::AuthorTooLong { .. })
        ));
        // Binary content may be patched anywhere.
        let bin = apply(None, Change::put(p("/b"), vec![0xff, 0xfe, 0xfd], "u")).unwrap();
        let patched = apply(Some(&bin), Change::patch(p("/b"), 1, 1, "", "u")).unwrap();
        assert_eq!(patched.content.as_deref(), Some(&[0xff, 0xfd][..]));
    }

    #[test]
    fn replay_checks_that_revisions_follow_on() {
        let a = p("/a");
        let v1 = apply(None, Change::put(a.clone(), "x", "u")).unwrap();
        let change = Change::append(a.clone(), "y", "u");
        let ok = replay_entry(Some(&v1), &a, &change.wal_entry(2, 9)).unwrap();
        assert_eq!(ok.content.as_deref(), Some(&b"xy"[..]));
        assert_eq!(ok.meta.mtime_ms, 9);
        let err = replay_entry(Some(&v1), &a, &change.wal_entry(5, 9)).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }
}
