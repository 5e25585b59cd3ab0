//! The error type at the store's boundary.

use std::io;
use std::path::PathBuf;

use crate::path::PathError;

/// What went wrong in the store, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("bad path: {0}")]
    BadPath(#[from] PathError),
    #[error("file {path} is {size} bytes, the limit is {max}")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("author is {len} bytes, the limit is {max}")]
    AuthorTooLong { len: usize, max: usize },
    #[error("store {} is locked by pid {pid}", dir.display())]
    Locked { dir: PathBuf, pid: u32 },
    #[error("store {} is locked by another process", dir.display())]
    LockedUnknown { dir: PathBuf },
    #[error("no store at {}: run `ferry init` first", dir.display())]
    NotInitialized { dir: PathBuf },
    #[error("{} is not a ferry store: {what}", file.display())]
    Foreign { file: PathBuf, what: String },
    #[error("{} is corrupt at offset {offset}: {what}", file.display())]
    Corrupt { file: PathBuf, offset: u64, what: String },
    #[error("{op} {}: {source}", file.display())]
    Io {
        op: &'static str,
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid commit batch: {what}")]
    InvalidBatch { what: String },
    #[error("partition {partition} does not exist in a store of {partitions} partitions")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("the tree writer of {} stopped after a failed compaction ({what}); reopen the store", dir.display())]
    TreeUnusable { dir: PathBuf, what: String },
    #[error("file {path} is at revision {actual}, the change expected {expected}")]
    Conflict { path: String, expected: u64, actual: u64 },
    #[error("file {path} does not exist")]
    NotFound { path: String },
    #[error("patch of {path} deletes {delete} bytes at offset {at}, the file is {size} bytes")]
    PatchOutOfRange { path: String, at: u64, delete: u64, size: u64 },
    #[error("patch of {path} cuts the UTF-8 character at byte offset {offset}")]
    PatchSplitsChar { path: String, offset: u64 },
    #[error("write-ahead log {} failed: {what}; later changes are refused, reopen the store", file.display())]
    WalFailed { file: PathBuf, what: String },
    #[error("flushing partition {partition} to its B+tree failed: {what}; the changes are kept in the write-ahead log")]
    FlushFailed { partition: u32, what: String },
    #[error("store {} has a different layout: {what}", dir.display())]
    LayoutMismatch { dir: PathBuf, what: String },
    #[error("partition {partition} is not open in this process")]
    PartitionNotOpen { partition: u32 },
    #[error("store is open read-only")]
    ReadOnly,
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// Wraps an I/O error with the operation and the file it concerned.
    pub fn io(op: &'static str, file: impl Into<PathBuf>, source: io::Error) -> StoreError {
        StoreError::Io { op, file: file.into(), source }
    }

    /// A failed integrity check: which file, where, and what did not hold.
    pub fn corrupt(file: impl Into<PathBuf>, offset: u64, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt { file: file.into(), offset, what: what.into() }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
