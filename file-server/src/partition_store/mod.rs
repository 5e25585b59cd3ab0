//! One partition opened for writing: write lock, B+tree, write-ahead log, dirty set, cache
//! and the flusher thread that moves changes from the log into the tree.
//!
//! A change is checked and applied under a short per-partition lock: the current version is
//! read (dirty set, then cache, then the tree), the new version computed, the change appended
//! to the WAL and the new version put in the dirty set. The lock is released before waiting
//! for the WAL to make the change durable, so changes of many callers share one sync.
//!
//! Write-behind: the flusher commits the dirty set into the tree every `flush_interval_ms`, or
//! sooner once `flush_max_dirty` files are dirty, with the tree's checkpoint set to the highest
//! LSN it contains. It works on a copy of the dirty set (reference-counted records), so
//! changes keep being applied while the tree commits. Afterwards the flushed versions that
//! were not changed meanwhile leave the dirty set for the cache, and WAL segments the tree
//! now covers are removed. Dirty versions are never evicted: they are not in the cache.

mod change;
mod clean_cache;
mod direct_batch;
mod hit_table;
mod shared_cache;

pub use change::{apply_change, Change, Edit};
pub(crate) use clean_cache::sampled as hit_is_sampled;
pub use direct_batch::DirectBatch;
pub(crate) use shared_cache::{Lookup, SharedCache};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use crate::backend::StorageDir;
use crate::error::{Result, StoreError};
use crate::lock::WriterLock;
use crate::path::FilePath;
use crate::record::{FileMeta, Record, SharedRecord};
use crate::store::StoreOptions;
use crate::tree::{Snapshot, TreeFile};
use crate::wal::{GroupSync, WalOptions, WalRecovery, WriteAheadLog, WrittenPoint};
use change::replay_entry;
pub(crate) use change::visible;
use clean_cache::CleanCache;
use shared_cache::DirtyCount;

/// What an applied change produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub path: FilePath,
    /// The new version's metadata (a deleted file: size 0, zero hash).
    pub meta: FileMeta,
    pub deleted: bool,
    /// The change's position in its partition's write-ahead log (for a change written past
    /// the log, [`DirectBatch`], the position of the last record before it).
    pub lsn: u64,
}

/// A change that is applied (readers see it) but not yet acknowledged: [`PendingWrite::wait`]
/// returns once the write-ahead log has made it durable under the sync policy.
#[must_use = "a change is acknowledged only once `wait` returns Ok"]
pub struct PendingWrite {
    inner: Arc<Inner>,
    applied: Applied,
}

impl PendingWrite {
    pub fn lsn(&self) -> u64 {
        self.applied.lsn
    }

    /// Waits until the change may be acknowledged.
    pub fn wait(self) -> Result<Applied> {
        self.inner.wal.wait(self.applied.lsn)?;
        Ok(self.applied)
    }
}

/// What one flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Files written to the tree.
    pub files: usize,
    /// The tree's checkpoint LSN after the flush.
    pub checkpoint_lsn: u64,
    /// WAL segments removed.
    pub segments_removed: usize,
    /// Whether the tree was compacted afterwards.
    pub compacted: bool,
}

/// Figures of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    pub partition: u32,
    /// Live files and tombstones in the tree (not counting the dirty set).
    pub entries: u64,
    pub tombstones: u64,
    /// Bytes of the tree file up to its end page, and how many of them are garbage.
    pub tree_bytes: u64,
    pub garbage_bytes: u64,
    pub tree_generation: u64,
    pub checkpoint_lsn: u64,
    pub wal_bytes: u64,
    pub wal_segments: usize,
    /// Files changed since the last flush.
    pub dirty: usize,
    /// Weighted size of the cache.
    pub cache_bytes: u64,
    /// The error of the last flush, if it failed.
    pub flush_error: Option<String>,
}

struct Dirty {
    path: FilePath,
    record: SharedRecord,
    lsn: u64,
}

struct State {
    /// Versions in the WAL and not yet in the tree, by path.
    dirty: BTreeMap<Box<str>, Dirty>,
    /// The tree's latest commit.
    snapshot: Snapshot,
    /// +1 whenever flushed versions leave the dirty set; a reader that read the tree may fill
    /// the cache only if no flush moved versions meanwhile.
    generation: u64,
    flush_error: Option<String>,
    closed: bool,
}

struct Inner {
    partition: u32,
    max_file_size: u64,
    flush_max_dirty: usize,
    state: RwLock<State>,
    /// The dirty set's length, stored under the state's write lock each time it changes. A
    /// cached read that finds it zero skips the state's lock: an atomic read-modify-write on
    /// a line every reader shares.
    dirty_files: DirtyCount,
    wal: WriteAheadLog,
    /// Held for a whole flush, so that flushes do not overlap.
    tree: Mutex<TreeFile>,
    cache: CleanCache,
    kick: Sender<()>,
    /// Prefixes whose files leave the cache after the next flush ([`PartitionStore::release`]).
    released: Mutex<Vec<String>>,
}

/// One partition opened for writing. See the module documentation.
pub struct PartitionStore {
    inner: Arc<Inner>,
    dir: Arc<dyn StorageDir>,
    /// [`StorageDir::filesystem`] of `dir`, asked once.
    filesystem: Option<u64>,
    flusher: Option<(Sender<()>, JoinHandle<()>)>,
    recovery: WalRecovery,
    _lock: Option<WriterLock>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl PartitionStore {
    /// Opens partition `partition` (of `partitions`) in `dir` and replays its WAL. `lock` is
    /// the directory's [`WriterLock`], held as long as the store is open; `None` is for
    /// backends that are not a real directory (the crash simulator).
    pub fn open(
        dir: Arc<dyn StorageDir>,
        lock: Option<WriterLock>,
        partition: u32,
        partitions: u32,
        options: &StoreOptions,
    ) -> Result<PartitionStore> {
        PartitionStore::open_sharing(dir, lock, partition, partitions, options, SharedCache::new(1))
    }

    /// [`PartitionStore::open`], with the cached reads `shared` with the store's other
    /// partitions.
    pub(crate) fn open_sharing(
        dir: Arc<dyn StorageDir>,
        lock: Option<WriterLock>,
        partition: u32,
        partitions: u32,
        options: &StoreOptions,
        shared: Arc<SharedCache>,
    ) -> Result<PartitionStore> {
        let tree = TreeFile::open(dir.clone(), partition, partitions)?;
        let snapshot = tree.snapshot();
        let mut dirty: BTreeMap<Box<str>, Dirty> = BTreeMap::new();
        let wal_options = WalOptions {
            sync: options.wal_sync,
            segment_bytes: options.wal_segment_bytes,
            preallocate_bytes: options.wal_preallocate_bytes,
        };
        let (wal, recovery) = WriteAheadLog::open(
            dir.clone(),
            tree.header().checkpoint_lsn,
            wal_options,
            &mut |lsn, entry| {
                let path = FilePath::parse(entry.path).map_err(|e| {
                    StoreError::corrupt(dir.path(), 0, format!("WAL record {lsn}: {e}"))
                })?;
                let current = match dirty.get(entry.path) {
                    Some(d) => Some(d.record.clone()),
                    None => snapshot.get(&path)?.map(|r| SharedRecord::new(&path, r)),
                };
                let record = replay_entry(current.as_deref(), &path, entry).map_err(|e| {
                    StoreError::corrupt(dir.path(), 0, format!("WAL record {lsn}: {e}"))
                })?;
                let record = SharedRecord::new(&path, record);
                dirty.insert(Box::from(entry.path), Dirty { path, record, lsn });
                Ok(())
            },
        )?;
        if recovery.replayed > 0 {
            tracing::info!(
                partition,
                replayed = recovery.replayed,
                "replayed the write-ahead log tail"
            );
        }
        let (kick, kicked) = crossbeam_channel::bounded(1);
        let dirty_files = DirtyCount::new(dirty.len(), shared.clone());
        let inner = Arc::new(Inner {
            partition,
            max_file_size: options.max_file_size,
            flush_max_dirty: options.flush_max_dirty.max(1),
            state: RwLock::new(State {
                dirty,
                snapshot,
                generation: 0,
                flush_error: None,
                closed: false,
            }),
            dirty_files,
            wal,
            tree: Mutex::new(tree),
            cache: CleanCache::new(options.cache_bytes, shared.hits().clone()),
            kick,
            released: Mutex::new(Vec::new()),
        });
        let interval = Duration::from_millis(options.flush_interval_ms.max(1));
        let flusher = spawn_flusher(inner.clone(), kicked, interval)?;
        let filesystem = dir.filesystem();
        Ok(PartitionStore { inner, dir, filesystem, flusher: Some(flusher), recovery, _lock: lock })
    }

    pub fn partition(&self) -> u32 {
        self.inner.partition
    }

    /// What recovery found when the partition was opened.
    pub fn recovery(&self) -> &WalRecovery {
        &self.recovery
    }

    /// Applies `change` and waits until it is durable under the WAL sync policy.
    pub fn apply(&self, change: Change) -> Result<Applied> {
        self.submit_synced_by(change, GroupSync::Caller)?.wait()
    }

    /// Applies `change` (readers see it at once) without waiting for durability, so that one
    /// thread can have many changes in flight; acknowledge each only after its
    /// [`PendingWrite::wait`].
    pub fn submit(&self, change: Change) -> Result<PendingWrite> {
        self.submit_synced_by(change, GroupSync::Syncer)
    }

    /// [`PartitionStore::submit`] with `sync` saying who syncs the change: with
    /// [`GroupSync::Caller`] the log's syncer thread is not woken, for a caller about to wait
    /// (or to sync the log some other way) itself.
    pub fn submit_synced_by(&self, change: Change, sync: GroupSync) -> Result<PendingWrite> {
        let inner = &self.inner;
        let mut st = inner.state.write();
        if st.closed {
            return Err(StoreError::Closed);
        }
        let current = inner.current(&st, &change.path)?;
        let mtime_ms = now_ms();
        let record =
            apply_change(current.as_deref(), &change, mtime_ms, inner.max_file_size, None)?;
        let record = SharedRecord::new(&change.path, record);
        let applied = inner.log_change(&mut st, change, mtime_ms, record, sync)?;
        inner.dirty_count_changed(st.dirty.len());
        drop(st);
        Ok(PendingWrite { inner: inner.clone(), applied })
    }

    /// Opens an atomic group in this partition's log: the changes submitted until the
    /// matching [`PartitionStore::end_group`] survive a crash together or not at all, and none
    /// of them is acknowledged before the group ends. Prefer [`crate::store::WriteGroup`].
    /// `sync` says who syncs the group's changes (see [`GroupSync`]).
    pub fn begin_group(&self, sync: GroupSync) {
        self.inner.wal.begin_group(sync);
    }

    /// Ends a group opened by [`PartitionStore::begin_group`] with the same `sync`.
    pub fn end_group(&self, sync: GroupSync) {
        self.inner.wal.end_group(sync);
    }

    /// Which file system the partition's files are on ([`StorageDir::filesystem`]).
    pub fn filesystem(&self) -> Option<u64> {
        self.filesystem
    }

    /// See [`WriteAheadLog::write_unsynced`].
    pub fn write_log_unsynced(&self) -> Result<WrittenPoint> {
        self.inner.wal.write_unsynced()
    }

    /// See [`WriteAheadLog::has_unsynced`].
    pub fn log_has_unsynced(&self) -> bool {
        self.inner.wal.has_unsynced()
    }

    /// See [`WriteAheadLog::mark_synced`].
    pub fn mark_log_synced(&self, point: WrittenPoint) {
        self.inner.wal.mark_synced(point);
    }

    /// Every record of the log up to this LSN is durable.
    #[cfg(test)]
    pub(crate) fn log_synced_lsn(&self) -> u64 {
        self.inner.wal.synced_lsn()
    }

    /// Makes every write to the partition's file system durable
    /// ([`StorageDir::sync_filesystem`]).
    pub fn sync_filesystem(&self) -> Result<()> {
        self.dir
            .sync_filesystem()
            .map_err(|e| StoreError::io("sync file system", self.dir.path(), e))
    }

    /// Lets the files under `prefix` go (a client's working set when it left): the flusher
    /// runs now instead of at its interval, and after that flush their clean versions leave
    /// the cache. Returns at once.
    pub fn release(&self, prefix: &str) {
        self.inner.released.lock().push(prefix.to_owned());
        // A full channel means a flush is already asked for.
        let _ = self.inner.kick.try_send(());
    }

    /// The file's current version, `None` if it does not exist or was deleted.
    pub fn get(&self, path: &FilePath) -> Result<Option<SharedRecord>> {
        Ok(self.read(path)?.filter(|r| !r.is_deleted()))
    }

    /// The current version of `path`, tombstones included.
    pub(crate) fn read(&self, path: &FilePath) -> Result<Option<SharedRecord>> {
        self.inner.read(path)
    }

    /// [`PartitionStore::read`] for a caller that has just missed `path` in the
    /// [`SharedCache`] while nothing was dirty ([`Lookup::NotCached`]): the cache is not
    /// asked again unless the partition has become dirty since.
    pub(crate) fn read_past_cache(&self, path: &FilePath) -> Result<Option<SharedRecord>> {
        self.inner.read_past_cache(path)
    }

    /// Tells the cache's policy of a hit on `path` answered by the [`SharedCache`] (for the
    /// sampled hits, [`hit_is_sampled`]).
    pub(crate) fn show_hit(&self, path: &FilePath) {
        self.inner.cache.show_hit(path);
    }

    /// The file's metadata, `None` if it does not exist or was deleted.
    pub fn stat(&self, path: &FilePath) -> Result<Option<FileMeta>> {
        Ok(self.read(path)?.and_then(|r| visible(&r)))
    }

    /// Up to `limit` existing files whose path starts with `prefix` and sorts after `after`,
    /// in path order, with their metadata.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(FilePath, FileMeta)>> {
        let (dirty, snapshot) = {
            let st = self.inner.state.read();
            let lower = match after {
                Some(a) if a >= prefix => std::ops::Bound::Excluded(a),
                _ => std::ops::Bound::Included(prefix),
            };
            let dirty: Vec<(FilePath, SharedRecord)> = st
                .dirty
                .range::<str, _>((lower, std::ops::Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, d)| (d.path.clone(), d.record.clone()))
                .collect();
            (dirty, st.snapshot.clone())
        };
        let mut out = Vec::new();
        let mut dirty = dirty.into_iter().peekable();
        let mut tree = snapshot.scan(prefix, after).peekable();
        while out.len() < limit {
            let (take_dirty, same_path) = match (dirty.peek(), tree.peek()) {
                (None, None) => break,
                (Some(_), None) => (true, false),
                (None, Some(_)) | (Some(_), Some(Err(_))) => (false, false),
                (Some((dp, _)), Some(Ok((tp, _, _)))) => (dp <= tp, dp == tp),
            };
            if same_path {
                // The dirty version is newer than the tree's.
                tree.next();
            }
            if take_dirty {
                let (path, record) = dirty.next().expect("peeked");
                if let Some(meta) = visible(&record) {
                    out.push((path, meta));
                }
            } else {
                let (path, meta, deleted) = tree.next().expect("peeked")?;
                if !deleted {
                    out.push((path, meta));
                }
            }
        }
        Ok(out)
    }

    /// Commits every dirty file to the tree now; returns once that is durable.
    pub fn flush(&self) -> Result<FlushStats> {
        self.inner.flush()
    }

    /// Rewrites the tree into a new generation, reclaiming the space of old versions, and
    /// removes the log's open segment if the tree holds all of it (after a flush, it does).
    pub fn compact(&self) -> Result<crate::tree::CompactStats> {
        let mut tree = self.inner.tree.lock();
        let stats = tree.compact()?;
        self.inner.state.write().snapshot = tree.snapshot();
        drop(tree);
        self.inner.wal.close_covered_segment()?;
        Ok(stats)
    }

    pub fn stats(&self) -> PartitionStats {
        let (dirty, flush_error, header) = {
            let st = self.inner.state.read();
            (st.dirty.len(), st.flush_error.clone(), *st.snapshot.header())
        };
        let (wal_bytes, wal_segments) = self.inner.wal.size();
        let page = crate::tree::PAGE_SIZE as u64;
        PartitionStats {
            partition: self.inner.partition,
            entries: header.live_entries,
            tombstones: header.tombstones,
            tree_bytes: header.end_page * page,
            garbage_bytes: header.garbage_pages * page,
            tree_generation: header.generation,
            checkpoint_lsn: header.checkpoint_lsn,
            wal_bytes,
            wal_segments,
            dirty,
            cache_bytes: self.inner.cache.weighted_size(),
            flush_error,
        }
    }

    /// Stops the flusher, flushes everything and syncs the WAL. Changes submitted afterwards
    /// are refused with [`StoreError::Closed`].
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some((stop, handle)) = self.flusher.take() else { return Ok(()) };
        drop(stop);
        let _ = handle.join();
        self.inner.state.write().closed = true;
        let flushed = self.inner.flush();
        let synced = self.inner.wal.sync();
        flushed.and(synced)
    }
}

impl Drop for PartitionStore {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(partition = self.inner.partition, error = %e, "closing failed");
        }
    }
}

fn spawn_flusher(
    inner: Arc<Inner>,
    kicked: Receiver<()>,
    interval: Duration,
) -> Result<(Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let name = format!("ferry-flush-{}", inner.partition);
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || loop {
            crossbeam_channel::select! {
                recv(stopped) -> _ => return,
                recv(kicked) -> _ => {},
                default(interval) => {},
            }
            // The error is kept in the state (stats, next flush) and the data stays in the
            // dirty set and the WAL; the next round retries.
            if let Err(e) = inner.flush() {
                tracing::error!(partition = inner.partition, error = %e, "flush failed");
            }
        })
        .map_err(|e| StoreError::io("spawn flusher thread", std::path::PathBuf::new(), e))?;
    Ok((stop, handle))
}

impl Inner {
    /// Logs `change`, already applied (`record` is its new version, made at `mtime_ms`), and
    /// holds that version in the dirty set until a flush. The caller holds the state's write
    /// lock and then calls [`Inner::dirty_count_changed`].
    fn log_change(
        &self,
        st: &mut State,
        change: Change,
        mtime_ms: u64,
        record: SharedRecord,
        sync: GroupSync,
    ) -> Result<Applied> {
        let lsn = self.wal.append_synced_by(&change.wal_entry(record.meta.rev, mtime_ms), sync)?;
        let applied = Applied {
            path: change.path.clone(),
            meta: record.meta.clone(),
            deleted: record.is_deleted(),
            lsn,
        };
        st.dirty.insert(Box::from(change.path.as_str()), Dirty { record, path: change.path, lsn });
        Ok(applied)
    }

    /// Stores the dirty set's new length (under the state's write lock) for the readers that
    /// skip the lock, and asks for a flush once it reaches `flush_max_dirty`.
    fn dirty_count_changed(&self, dirty: usize) {
        self.dirty_files.set(dirty);
        if dirty >= self.flush_max_dirty {
            // A full channel means a flush is already asked for.
            let _ = self.kick.try_send(());
        }
    }

    /// The current version of `path` (tombstones included) for a writer holding the lock.
    fn current(&self, st: &State, path: &FilePath) -> Result<Option<SharedRecord>> {
        if let Some(d) = st.dirty.get(path.as_str()) {
            return Ok(Some(d.record.clone()));
        }
        if let Some(r) = self.cache.get(path) {
            return Ok(Some(r));
        }
        let found = st.snapshot.get(path)?.map(|r| SharedRecord::new(path, r));
        if let Some(r) = &found {
            // Safe under the writer's lock: no flush can move a newer version meanwhile.
            self.cache.insert(path.clone(), r.clone());
        }
        Ok(found)
    }

    /// The current version of `path` (tombstones included) for a reader.
    #[inline]
    fn read(&self, path: &FilePath) -> Result<Option<SharedRecord>> {
        // Not dirty, so the cache holds the current version if it holds any (flushes fill it
        // before versions leave the dirty set). The hit is the hot path: it takes no lock but
        // the hit table's shard.
        if self.dirty_files.is_zero() {
            if let Some(r) = self.cache.get(path) {
                return Ok(Some(r));
            }
        }
        self.read_past_cache(path)
    }

    /// The rest of [`Inner::read`], kept out of line so that the cached read stays short: the
    /// dirty set while there is one, then the cache, then the tree.
    #[inline(never)]
    fn read_past_cache(&self, path: &FilePath) -> Result<Option<SharedRecord>> {
        if !self.dirty_files.is_zero() {
            if let Some(d) = self.state.read().dirty.get(path.as_str()) {
                return Ok(Some(d.record.clone()));
            }
            if let Some(r) = self.cache.get(path) {
                return Ok(Some(r));
            }
        }
        let (snapshot, generation) = {
            let st = self.state.read();
            if let Some(d) = st.dirty.get(path.as_str()) {
                return Ok(Some(d.record.clone()));
            }
            (st.snapshot.clone(), st.generation)
        };
        let found = snapshot.get(path)?.map(|r| SharedRecord::new(path, r));
        if let Some(r) = &found {
            let st = self.state.read();
            if st.generation == generation && !st.dirty.contains_key(path.as_str()) {
                self.cache.insert(path.clone(), r.clone());
            }
        }
        Ok(found)
    }

    fn flush(&self) -> Result<FlushStats> {
        let mut tree = self.tree.lock();
        // Taken before the dirty set: the released files dirty now are flushed below, and
        // so clean (and evictable) by the end.
        let released = std::mem::take(&mut *self.released.lock());
        let evict = || {
            for prefix in &released {
                self.cache.evict_prefix(prefix);
            }
        };
        let (batch, checkpoint_lsn) = loop {
            let st = self.state.read();
            // A checkpoint inside an atomic group would make the tree hold part of a group
            // that recovery may drop from the log.
            if self.wal.group_open() {
                drop(st);
                self.wal.wait_no_open_group();
                continue;
            }
            let batch: Vec<(FilePath, SharedRecord, u64)> =
                st.dirty.values().map(|d| (d.path.clone(), d.record.clone(), d.lsn)).collect();
            // Appends happen under the write lock, so every LSN so far is in `batch`.
            break (batch, self.wal.last_lsn());
        };
        if batch.is_empty() {
            evict();
            // A batch written past the log leaves its compaction to this flush.
            let compacted = self.compact_if_needed(&mut tree)?;
            return Ok(FlushStats {
                checkpoint_lsn: tree.header().checkpoint_lsn,
                compacted,
                ..FlushStats::default()
            });
        }
        let records: Vec<(FilePath, Record)> =
            batch.iter().map(|(p, r, _)| (p.clone(), (**r).clone())).collect();
        if let Err(e) = tree.commit(&records, checkpoint_lsn) {
            let what = e.to_string();
            self.state.write().flush_error = Some(what.clone());
            return Err(StoreError::FlushFailed { partition: self.partition, what });
        }
        drop(records);
        // Into the cache before leaving the dirty set, outside the lock: a dirty version
        // shadows the cache, and a newer one overwrites it when flushed in turn.
        for (path, record, _) in &batch {
            self.cache.insert(path.clone(), record.clone());
        }
        {
            let mut st = self.state.write();
            st.snapshot = tree.snapshot();
            for (path, _, lsn) in &batch {
                if st.dirty.get(path.as_str()).is_some_and(|d| d.lsn == *lsn) {
                    st.dirty.remove(path.as_str());
                }
            }
            self.dirty_files.set(st.dirty.len());
            st.generation += 1;
            st.flush_error = None;
        }
        evict();
        let segments_removed = self.wal.checkpoint(checkpoint_lsn)?;
        let compacted = self.compact_if_needed(&mut tree)?;
        Ok(FlushStats { files: batch.len(), checkpoint_lsn, segments_removed, compacted })
    }

    /// Compacts the tree if it needs it; returns whether it did. The caller holds the tree,
    /// not the state.
    fn compact_if_needed(&self, tree: &mut TreeFile) -> Result<bool> {
        if !tree.needs_compaction() {
            return Ok(false);
        }
        tree.compact()?;
        self.state.write().snapshot = tree.snapshot();
        Ok(true)
    }
}
