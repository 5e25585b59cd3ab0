//! Helpers shared by the tree integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use ferry_file_server::backend::{FsDir, StorageDir};
use ferry_file_server::{FilePath, Record};

pub fn path(s: &str) -> FilePath {
    FilePath::parse(s).unwrap()
}

pub fn live(rev: u64, content: impl Into<Vec<u8>>) -> Record {
    Record::live(rev, 1_700_000_000_000 + rev, Arc::from("tester"), Bytes::from(content.into()))
}

pub fn tombstone(rev: u64) -> Record {
    Record::deleted(rev, 1_700_000_000_000 + rev, Arc::from("tester"))
}

pub fn fs_dir(tmp: &tempfile::TempDir) -> Arc<dyn StorageDir> {
    Arc::new(FsDir::new(tmp.path()))
}

/// Content of `len` bytes that differs per `seed`.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A sorted batch from unsorted pairs.
pub fn batch(mut items: Vec<(FilePath, Record)>) -> Vec<(FilePath, Record)> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.dedup_by(|a, b| a.0 == b.0);
    items
}
