//! A batch of changes written straight into a partition's tree, past the write-ahead log: for
//! bulk loads (`ferry files import`, a batch writer), which through the log would write every
//! byte twice, once to the log and once to the tree.
//!
//! An open [`DirectBatch`] holds the partition's tree and its state's write lock: no change is
//! applied, no flush runs and readers that need the state wait until it is finished or
//! dropped. Its changes are computed on top of the dirty set, and its commit carries the dirty
//! set too, with the log's last LSN as the tree's checkpoint: the tree then holds everything
//! the log holds, and recovery replays only what is logged after the batch. Nothing of the
//! batch is visible before [`DirectBatch::finish`]; a batch dropped before that leaves the
//! partition as it was.
//!
//! The steps are apart so that [`crate::Store::write_batch`] can commit several partitions
//! with one file-system sync per step: apply and stage each partition's changes, make every
//! staged page durable, write the headers, make them durable, finish. Or, once every change
//! has applied, the batch goes to the log after all ([`DirectBatch::log`],
//! [`crate::BatchRoute::Logs`]): for small files scattered over the tree, its leaf rewrites
//! cost more than logging; applying first still lets a change that cannot apply fail the
//! whole batch before anything is written.

use std::collections::BTreeMap;

use parking_lot::{MutexGuard, RwLockWriteGuard};

use super::{apply_change, now_ms, Applied, Change, PartitionStore, PendingWrite, State};
use crate::error::{Result, StoreError};
use crate::path::FilePath;
use crate::record::{Record, SharedRecord};
use crate::tree::{StagedCommit, TreeFile};
use crate::wal::GroupSync;

/// See the module documentation.
#[must_use = "a batch changes nothing until it is finished"]
pub struct DirectBatch<'a> {
    part: &'a PartitionStore,
    tree: MutexGuard<'a, TreeFile>,
    state: RwLockWriteGuard<'a, State>,
    /// The batch's new versions; a path changed twice keeps its last.
    written: BTreeMap<FilePath, SharedRecord>,
    /// Every change applied, with its time and new version, in order: what
    /// [`DirectBatch::log`] appends.
    changes: Vec<(Change, u64, SharedRecord)>,
    /// The log's last LSN when the batch was opened: the new tree holds every change up to it.
    checkpoint_lsn: u64,
    staged: Option<StagedCommit>,
}

impl PartitionStore {
    /// Opens a [`DirectBatch`], or returns `None` while the tree is busy (a flush or a
    /// compaction) or an atomic group is open in the log (a checkpoint inside a group would
    /// make the tree hold part of a group that recovery may drop). Then call
    /// [`PartitionStore::wait_for_direct_batch`], holding no other partition's batch: a
    /// flusher may be waiting for a group whose writer needs that partition.
    pub fn try_begin_direct_batch(&self) -> Result<Option<DirectBatch<'_>>> {
        let inner = &*self.inner;
        let Some(tree) = inner.tree.try_lock() else { return Ok(None) };
        let state = inner.state.write();
        if state.closed {
            return Err(StoreError::Closed);
        }
        // Appends happen under the state's write lock, so no group opens while it is held.
        if inner.wal.group_open() {
            return Ok(None);
        }
        Ok(Some(DirectBatch {
            part: self,
            tree,
            state,
            written: BTreeMap::new(),
            changes: Vec::new(),
            checkpoint_lsn: inner.wal.last_lsn(),
            staged: None,
        }))
    }

    /// Returns once the tree was free and no atomic group was open, for a
    /// [`PartitionStore::try_begin_direct_batch`] that returned `None` to be tried again.
    pub fn wait_for_direct_batch(&self) {
        drop(self.inner.tree.lock());
        self.inner.wal.wait_no_open_group();
    }
}

impl DirectBatch<'_> {
    /// The partition the batch writes to.
    pub fn partition(&self) -> &PartitionStore {
        self.part
    }

    /// Applies `change` on top of the batch's earlier changes; `put_hash` as for
    /// [`apply_change`]. What it returns carries the log's last LSN before the batch, the
    /// position after which the change is ordered.
    pub fn apply(&mut self, change: &Change, put_hash: Option<[u8; 32]>) -> Result<Applied> {
        if self.staged.is_some() {
            return Err(StoreError::Closed);
        }
        let inner = &*self.part.inner;
        let current = match self.written.get(&change.path) {
            Some(record) => Some(record.clone()),
            None => inner.current(&self.state, &change.path)?,
        };
        let mtime_ms = now_ms();
        let record =
            apply_change(current.as_deref(), change, mtime_ms, inner.max_file_size, put_hash)?;
        let applied = Applied {
            path: change.path.clone(),
            meta: record.meta.clone(),
            deleted: record.is_deleted(),
            lsn: self.checkpoint_lsn,
        };
        let record = SharedRecord::new(&change.path, record);
        self.written.insert(change.path.clone(), record.clone());
        self.changes.push((change.clone(), mtime_ms, record));
        Ok(applied)
    }

    /// Instead of staging: appends the batch's changes to the log as one atomic group and
    /// puts their versions in the dirty set, as [`PartitionStore::submit`] would, and lets go
    /// of the partition. For small files scattered over the tree, each of which would cost the
    /// rewrite of a whole leaf there. Readers see the changes at once; acknowledge each only
    /// after its [`PendingWrite::wait`].
    pub fn log(self) -> Result<Vec<PendingWrite>> {
        if self.staged.is_some() {
            return Err(StoreError::Closed);
        }
        let DirectBatch { part, tree, mut state, changes, .. } = self;
        // The flusher may take the tree; it waits for the group below to close.
        drop(tree);
        let inner = &*part.inner;
        inner.wal.begin_group(GroupSync::Caller);
        let mut pending = Vec::with_capacity(changes.len());
        let mut appended = Ok(());
        for (change, mtime_ms, record) in changes {
            match inner.log_change(&mut state, change, mtime_ms, record, GroupSync::Syncer) {
                Ok(applied) => pending.push(PendingWrite { inner: part.inner.clone(), applied }),
                Err(e) => {
                    appended = Err(e);
                    break;
                }
            }
        }
        // A group cut short by a failed append is never closed durably: recovery drops it.
        inner.wal.end_group(GroupSync::Caller);
        inner.dirty_count_changed(state.dirty.len());
        drop(state);
        appended.map(|()| pending)
    }

    /// Writes the pages of the dirty set and of the batch past the tree's end, not yet synced.
    pub fn stage(&mut self) -> Result<()> {
        let mut commit: BTreeMap<&FilePath, &SharedRecord> =
            self.state.dirty.values().map(|d| (&d.path, &d.record)).collect();
        commit.extend(self.written.iter());
        let records: Vec<(FilePath, Record)> =
            commit.into_iter().map(|(p, r)| (p.clone(), (**r).clone())).collect();
        self.staged = Some(self.tree.stage(&records, self.checkpoint_lsn)?);
        Ok(())
    }

    /// Bytes of the pages [`DirectBatch::stage`] wrote (none before it).
    pub fn staged_bytes(&self) -> u64 {
        self.staged.as_ref().map_or(0, StagedCommit::page_bytes)
    }

    /// Makes what the tree file was written so far durable (`fdatasync`), for a batch whose
    /// file system is not synced as a whole.
    pub fn sync_tree(&self) -> Result<()> {
        self.tree.sync_pages()
    }

    /// Writes the staged commit's header, not yet synced. Call it once the staged pages are
    /// durable.
    pub fn write_header(&self) -> Result<()> {
        let staged = self.staged.as_ref().ok_or(StoreError::Closed)?;
        self.tree.write_staged_header(staged)
    }

    /// Makes the batch visible, once its header is durable: the new tree, the dirty set (now in
    /// the tree) emptied into the cache, the log's covered segments removed. The batch's own
    /// versions replace cached ones but do not enter the cache otherwise: a bulk load should
    /// not push out the files that are read.
    pub fn finish(self) -> Result<()> {
        let DirectBatch { part, mut tree, mut state, written, checkpoint_lsn, staged, .. } = self;
        let inner = &*part.inner;
        tree.install(staged.ok_or(StoreError::Closed)?)?;
        for dirty in std::mem::take(&mut state.dirty).into_values() {
            inner.cache.insert(dirty.path, dirty.record);
        }
        for (path, record) in written {
            inner.cache.refresh(path, record);
        }
        state.snapshot = tree.snapshot();
        inner.dirty_files.set(0);
        state.generation += 1;
        state.flush_error = None;
        drop(state);
        inner.wal.checkpoint(checkpoint_lsn)?;
        if tree.needs_compaction() {
            // The flusher compacts, on its own thread, rather than the batch's caller.
            let _ = inner.kick.try_send(());
        }
        Ok(())
    }
}
