//! Read-only access to a data directory, for reporting tools in other processes.
//!
//! Needs only read permission: it opens each partition's tree through a
//! [`TreeReader`] and never touches the lock file or the write-ahead log. It therefore sees
//! what the writer has flushed into the B+trees, not the changes still in the writer's WAL
//! (at most `flush_interval_ms` behind, 100 ms by default). Each call reads a fresh snapshot
//! of every partition involved; [`ReadOnlyStore::snapshot`] pins one set of snapshots for
//! several reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::FsDir;
use crate::error::Result;
use crate::partition::partition_of;
use crate::path::FilePath;
use crate::record::{FileMeta, Record};
use crate::store::{partition_dir, read_layout, InitOptions};
use crate::tree::{Snapshot, TreeHeader, TreeReader, PAGE_SIZE};

/// A data directory opened for reading only. See the module documentation.
pub struct ReadOnlyStore {
    dir: PathBuf,
    layout: InitOptions,
    readers: Vec<TreeReader>,
}

/// One snapshot per partition, taken together (each consistent on its own).
#[derive(Clone)]
pub struct StoreSnapshot {
    layout: InitOptions,
    snapshots: Vec<Snapshot>,
}

/// Counts and sizes of one partition's committed tree, as `ferry files stats` prints them.
/// `files` counts every live entry, Ferry's reserved files included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TreeStats {
    pub partition: u32,
    pub files: u64,
    pub tombstones: u64,
    /// Bytes of the tree file up to its end page, and how many of them are garbage.
    pub tree_bytes: u64,
    pub garbage_bytes: u64,
    pub generation: u64,
    /// The commit the numbers come from.
    pub txn: u64,
}

impl TreeStats {
    pub fn of(partition: u32, header: &TreeHeader) -> TreeStats {
        let page = PAGE_SIZE as u64;
        TreeStats {
            partition,
            files: header.live_entries,
            tombstones: header.tombstones,
            tree_bytes: header.end_page * page,
            garbage_bytes: header.garbage_pages * page,
            generation: header.generation,
            txn: header.txn_id,
        }
    }
}

/// Every partition's [`TreeStats`] and their sums.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub files: u64,
    pub tombstones: u64,
    pub tree_bytes: u64,
    pub garbage_bytes: u64,
    /// By partition.
    pub partitions: Vec<TreeStats>,
}

/// Opens `data_dir` for reading; see [`ReadOnlyStore`].
pub fn open_read_only(data_dir: &Path) -> Result<ReadOnlyStore> {
    ReadOnlyStore::open(data_dir)
}

impl ReadOnlyStore {
    pub fn open(data_dir: &Path) -> Result<ReadOnlyStore> {
        let layout = read_layout(data_dir)?;
        let readers = (0..layout.partitions)
            .map(|p| TreeReader::open(Arc::new(FsDir::new(partition_dir(data_dir, p)))))
            .collect::<Result<Vec<_>>>()?;
        Ok(ReadOnlyStore { dir: data_dir.to_owned(), layout, readers })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn layout(&self) -> InitOptions {
        self.layout
    }

    /// The latest commit of every partition.
    pub fn snapshot(&self) -> Result<StoreSnapshot> {
        let snapshots = self.readers.iter().map(TreeReader::snapshot).collect::<Result<_>>()?;
        Ok(StoreSnapshot { layout: self.layout, snapshots })
    }

    fn partition_snapshot(&self, path: &FilePath) -> Result<Snapshot> {
        let p = partition_of(path, self.layout.partition_depth, self.layout.partitions);
        self.readers[p as usize].snapshot()
    }

    /// The flushed version of `path`, `None` if absent or deleted.
    pub fn get(&self, path: &FilePath) -> Result<Option<Record>> {
        Ok(self.partition_snapshot(path)?.get(path)?.filter(|r| !r.is_deleted()))
    }

    pub fn stat(&self, path: &FilePath) -> Result<Option<FileMeta>> {
        let found = self.partition_snapshot(path)?.get_meta(path)?;
        Ok(found.filter(|(_, deleted)| !deleted).map(|(meta, _)| meta))
    }

    /// Up to `limit` files under `prefix` after `after`, in path order.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(FilePath, FileMeta)>> {
        self.snapshot()?.scan(prefix, after).take(limit).collect()
    }
}

impl StoreSnapshot {
    pub fn layout(&self) -> InitOptions {
        self.layout
    }

    /// The per-partition snapshots, by partition.
    pub fn partitions(&self) -> &[Snapshot] {
        &self.snapshots
    }

    pub fn stats(&self) -> StoreStats {
        let partitions: Vec<TreeStats> =
            (0..).zip(&self.snapshots).map(|(p, s)| TreeStats::of(p, s.header())).collect();
        let total = |field: fn(&TreeStats) -> u64| partitions.iter().map(field).sum();
        StoreStats {
            files: total(|s| s.files),
            tombstones: total(|s| s.tombstones),
            tree_bytes: total(|s| s.tree_bytes),
            garbage_bytes: total(|s| s.garbage_bytes),
            partitions,
        }
    }

    pub fn get(&self, path: &FilePath) -> Result<Option<Record>> {
        let p = partition_of(path, self.layout.partition_depth, self.layout.partitions);
        Ok(self.snapshots[p as usize].get(path)?.filter(|r| !r.is_deleted()))
    }

    /// The content of `path` borrowed from the snapshot, `None` if absent or deleted (see
    /// [`Snapshot::content_of`]).
    pub fn content_of(&self, path: &FilePath) -> Result<Option<&[u8]>> {
        let p = partition_of(path, self.layout.partition_depth, self.layout.partitions);
        self.snapshots[p as usize].content_of(path)
    }

    /// Every existing file under `prefix` after `after`, in path order across partitions.
    /// Stops after the first error.
    pub fn scan<'s>(
        &'s self,
        prefix: &'s str,
        after: Option<&'s str>,
    ) -> impl Iterator<Item = Result<(FilePath, FileMeta)>> + 's {
        let mut heads: Vec<_> = self
            .snapshots
            .iter()
            .map(|s| s.scan(prefix, after).filter(|item| !matches!(item, Ok((_, _, true)))))
            .map(Iterator::peekable)
            .collect();
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed {
                return None;
            }
            // Partitions are few (16 by default): a linear pick of the smallest head is
            // cheaper than a heap.
            let mut best: Option<(usize, Option<FilePath>)> = None;
            for (i, head) in heads.iter_mut().enumerate() {
                match head.peek() {
                    None => {}
                    Some(Err(_)) => {
                        best = Some((i, None));
                        break;
                    }
                    Some(Ok((path, _, _)))
                        if best
                            .as_ref()
                            .is_none_or(|(_, b)| b.as_ref().is_some_and(|b| path < b)) =>
                    {
                        best = Some((i, Some(path.clone())));
                    }
                    Some(Ok(_)) => {}
                }
            }
            let item = heads[best?.0].next()?;
            Some(match item {
                Ok((path, meta, _)) => Ok((path, meta)),
                Err(e) => {
                    failed = true;
                    Err(e)
                }
            })
        })
    }
}

impl std::fmt::Debug for ReadOnlyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}
