//! A data directory of partitions, opened for writing.
//!
//! `ferry-store.json` records the layout fixed at init (partition count and depth); the
//! partitions live in `p000/`, `p001/`, ... Each path is routed to its partition by
//! [`partition_of`]. A process may open every partition ([`Store::open`]) or a subset
//! ([`Store::open_partitions`]), so that partitions can be spread over worker processes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::{dirty_page_bytes, FsDir, StorageDir};
use crate::error::{Result, StoreError};
use crate::filesystem_sync_gate::FilesystemSyncGate;
use crate::lock::WriterLock;
use crate::partition::{partition_of, partition_of_prefix};
use crate::partition_store::{
    hit_is_sampled, visible, Applied, Change, DirectBatch, Edit, FlushStats, Lookup,
    PartitionStats, PartitionStore, PendingWrite, SharedCache,
};
use crate::path::FilePath;
use crate::record::{content_hash, FileMeta, SharedRecord};
use crate::sync_rounds::SyncRounds;
use crate::tree::{CompactStats, TreeFile};
use crate::wal::{GroupSync, WalSync, DEFAULT_PREALLOCATE_BYTES, DEFAULT_SEGMENT_BYTES};

/// The manifest's file name in the data directory.
pub const MANIFEST_FILE: &str = "ferry-store.json";
/// The manifest format this code writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// The layout of a data directory, fixed when it is initialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitOptions {
    /// Number of partitions (default 16).
    pub partitions: u32,
    /// Leading path segments that choose a path's partition (default 2).
    pub partition_depth: u32,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        InitOptions { partitions: 16, partition_depth: 2 }
    }
}

/// How a store is run; none of it is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Largest content a file may have, in bytes (default 16 MiB).
    pub max_file_size: u64,
    /// Bytes of clean files cached in memory, split evenly over the open partitions
    /// (default 256 MiB; 0 turns the cache off). A file that grew or shrank in the cache by
    /// less than a quarter keeps its earlier weight, so the cache may exceed this by up to a
    /// third.
    pub cache_bytes: u64,
    /// The flusher commits dirty files to the B+tree this often (default 100 ms).
    pub flush_interval_ms: u64,
    /// ... or as soon as this many files of a partition are dirty (default 10,000).
    pub flush_max_dirty: usize,
    /// When a change is acknowledged (default [`WalSync::Always`]).
    pub wal_sync: WalSync,
    /// WAL segment size (default 64 MiB).
    pub wal_segment_bytes: u64,
    /// Zeros written ahead in a WAL segment to keep syncs cheap (default 1 MiB).
    pub wal_preallocate_bytes: u64,
    /// How a [`WriteGroup`] over several partitions makes their logs durable under
    /// [`WalSync::Always`] (default [`WalGroupSync::Filesystem`]).
    pub wal_group_sync: WalGroupSync,
}

/// Where [`Store::write_batch`] writes a batch. Both are durable at return and atomic per
/// partition; they differ in what they write.
///
/// Measured with `store_vs_peers` (batches of 1,000 files, 16 partitions): files of 16 KiB
/// in random order are written 1.5-2x faster into the trees; files of 500 bytes in random
/// order about 2x faster through the logs, where each file costs its bytes in the log, while
/// in a tree it costs the rewrite of its whole 4 KiB leaf; and 500-byte files in path order
/// (`ferry files import` walks a directory tree in order, so a batch fills few leaves) were
/// imported 1.2-1.5x faster into the trees, with half the memory and half the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchRoute {
    /// Straight into the partitions' trees, past their write-ahead logs, which would write
    /// every byte twice: the trees' pages are made durable, then their headers, each step
    /// with one sync per file system that two or more of the trees share (with
    /// [`WalGroupSync::Filesystem`], behind the same gate as for logs) and an `fdatasync` of
    /// each other tree. Visible once durable; nothing waits in memory for a flush.
    Trees,
    /// Through the write-ahead logs, one atomic group per partition, the logs made durable
    /// together as a [`WriteGroup`] does; the flushers move the files into the trees later.
    /// Visible at once, as any logged change.
    Logs,
}

/// How a [`WriteGroup`] over several partitions makes their logs durable under
/// [`WalSync::Always`]. Every mode syncs every log before any of its changes is acknowledged;
/// they differ in how many device flushes that takes and on which threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalGroupSync {
    /// The logs are written, then one sync of their file system covers them all (Linux
    /// `syncfs`, 5.8 or later): one device flush instead of one per log. Measured on this
    /// project's machine with 8 logs: 0.21 ms a round against 1.0 ms for 8 `fdatasync`s. It
    /// also waits for whatever else is dirty on that file system, so while the machine holds
    /// much dirty data, and for a while after a slow one, the logs are synced as in
    /// `Sequential` ([`crate::filesystem_sync_gate`]). Where the backend offers no such sync
    /// ([`StorageDir::filesystem`]), this is `Sequential`.
    #[default]
    Filesystem,
    /// One `fdatasync` per log, one after another, on the caller's thread.
    Sequential,
    /// The first log's `fdatasync` on the caller's thread and every other on its log's syncer
    /// thread, all at once: pays where one fsync takes milliseconds; where it takes under one
    /// the thread hand-offs cost more CPU than they save.
    Parallel,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_file_size: 16 << 20,
            cache_bytes: 256 << 20,
            flush_interval_ms: 100,
            flush_max_dirty: 10_000,
            wal_sync: WalSync::Always,
            wal_segment_bytes: DEFAULT_SEGMENT_BYTES,
            wal_preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
            wal_group_sync: WalGroupSync::Filesystem,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    partitions: u32,
    partition_depth: u32,
}

const MANIFEST_FORMAT: &str = "ferry-store";

/// The directory of partition `partition` inside `data_dir`.
pub fn partition_dir(data_dir: &Path, partition: u32) -> PathBuf {
    data_dir.join(format!("p{partition:03}"))
}

/// Reads the layout recorded in `data_dir`.
pub fn read_layout(data_dir: &Path) -> Result<InitOptions> {
    let path = data_dir.join(MANIFEST_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotInitialized { dir: data_dir.to_owned() })
        }
        Err(e) => return Err(StoreError::io("read", &path, e)),
    };
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| StoreError::Foreign { file: path.clone(), what: e.to_string() })?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(StoreError::Foreign {
            file: path,
            what: format!("format is {:?}, expected {MANIFEST_FORMAT:?}", manifest.format),
        });
    }
    if manifest.version != MANIFEST_VERSION {
        return Err(StoreError::Foreign {
            file: path,
            what: format!(
                "manifest version {}, this build reads {MANIFEST_VERSION}",
                manifest.version
            ),
        });
    }
    if manifest.partitions == 0 || manifest.partition_depth == 0 {
        return Err(StoreError::corrupt(path, 0, "partitions and partition_depth must be > 0"));
    }
    Ok(InitOptions { partitions: manifest.partitions, partition_depth: manifest.partition_depth })
}

/// A data directory opened for writing. See the module documentation.
pub struct Store {
    dir: PathBuf,
    layout: InitOptions,
    /// Indexed by partition; `None` where this process did not open it.
    partitions: Vec<Option<PartitionStore>>,
    /// The open partitions' cached reads.
    cache: Arc<SharedCache>,
    /// See [`StoreOptions::wal_group_sync`].
    group_sync: WalGroupSync,
    filesystem_sync_gate: FilesystemSyncGate,
    /// The shared syncs of [`Store::apply`]'s callers, and how many callers are in it.
    sync_rounds: SyncRounds,
    applying: AtomicUsize,
    wal_sync: WalSync,
}

impl Store {
    /// Creates a store in `dir` (created if missing): the manifest, the partition
    /// directories and an empty tree in each. Initializing again with the same layout is a
    /// no-op; with a different one it is refused.
    pub fn init(dir: &Path, options: InitOptions) -> Result<()> {
        if options.partitions == 0 || options.partitions > 1000 || options.partition_depth == 0 {
            return Err(StoreError::LayoutMismatch {
                dir: dir.to_owned(),
                what: format!(
                    "{} partitions at depth {} (allowed: 1 to 1000 partitions, depth 1 or more)",
                    options.partitions, options.partition_depth
                ),
            });
        }
        match read_layout(dir) {
            Ok(existing) if existing == options => {}
            Ok(existing) => {
                return Err(StoreError::LayoutMismatch {
                    dir: dir.to_owned(),
                    what: format!(
                        "it has {} partitions at depth {}, asked for {} at depth {}",
                        existing.partitions,
                        existing.partition_depth,
                        options.partitions,
                        options.partition_depth
                    ),
                })
            }
            Err(StoreError::NotInitialized { .. }) => {
                fs::create_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
                for p in 0..options.partitions {
                    let pdir = partition_dir(dir, p);
                    fs::create_dir_all(&pdir).map_err(|e| StoreError::io("create", &pdir, e))?;
                }
                sync_dir(dir)?;
                // The partitions first, the manifest last: a directory with a manifest is
                // complete.
                for p in 0..options.partitions {
                    let pdir = partition_dir(dir, p);
                    let _lock = WriterLock::acquire(&pdir)?;
                    TreeFile::open(Arc::new(FsDir::new(&pdir)), p, options.partitions)?;
                }
                write_manifest(dir, options)?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Opens every partition for writing, recovering each WAL.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store> {
        let layout = read_layout(dir)?;
        let all: Vec<u32> = (0..layout.partitions).collect();
        Store::open_layout(dir, layout, &all, options)
    }

    /// Opens only the given partitions for writing; paths of the others are refused with
    /// [`StoreError::PartitionNotOpen`].
    pub fn open_partitions(dir: &Path, partitions: &[u32], options: StoreOptions) -> Result<Store> {
        let layout = read_layout(dir)?;
        Store::open_layout(dir, layout, partitions, options)
    }

    fn open_layout(
        dir: &Path,
        layout: InitOptions,
        wanted: &[u32],
        mut options: StoreOptions,
    ) -> Result<Store> {
        let mut partitions: Vec<Option<PartitionStore>> =
            (0..layout.partitions).map(|_| None).collect();
        if !wanted.is_empty() {
            options.cache_bytes /= wanted.len() as u64;
        }
        let cache = SharedCache::new(wanted.len());
        for &p in wanted {
            let slot = partitions
                .get_mut(p as usize)
                .ok_or(StoreError::PartitionNotOpen { partition: p })?;
            if slot.is_some() {
                continue;
            }
            let pdir = partition_dir(dir, p);
            if !pdir.is_dir() {
                return Err(StoreError::corrupt(&pdir, 0, "partition directory is missing"));
            }
            let lock = WriterLock::acquire(&pdir)?;
            let storage: Arc<dyn StorageDir> = Arc::new(FsDir::new(&pdir));
            *slot = Some(PartitionStore::open_sharing(
                storage,
                Some(lock),
                p,
                layout.partitions,
                &options,
                cache.clone(),
            )?);
        }
        Ok(Store {
            dir: dir.to_owned(),
            layout,
            partitions,
            cache,
            group_sync: options.wal_group_sync,
            filesystem_sync_gate: FilesystemSyncGate::new(Box::new(dirty_page_bytes)),
            sync_rounds: SyncRounds::default(),
            applying: AtomicUsize::new(0),
            wal_sync: options.wal_sync,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn layout(&self) -> InitOptions {
        self.layout
    }

    /// The partition that holds `path`.
    pub fn partition_of(&self, path: &FilePath) -> u32 {
        partition_of(path, self.layout.partition_depth, self.layout.partitions)
    }

    /// The open partitions, in partition order.
    pub fn partitions(&self) -> impl Iterator<Item = &PartitionStore> {
        self.partitions.iter().flatten()
    }

    fn route(&self, path: &FilePath) -> Result<&PartitionStore> {
        let p = self.partition_of(path);
        self.partitions[p as usize].as_ref().ok_or(StoreError::PartitionNotOpen { partition: p })
    }

    /// Reads the files under `prefix` (at most `limit`) into the cache: a client's working set,
    /// when it connects. Returns how many files were read.
    pub fn load_prefix(&self, prefix: &str, limit: usize) -> Result<usize> {
        let found = self.list(prefix, None, limit)?;
        for (path, _) in &found {
            self.get(path)?;
        }
        Ok(found.len())
    }

    /// Flushes soon the partitions that can hold files under `prefix` and lets those files
    /// leave the cache afterwards (see [`PartitionStore::release`]). Returns at once.
    pub fn release_prefix(&self, prefix: &str) {
        let (depth, count) = (self.layout.partition_depth, self.layout.partitions);
        match partition_of_prefix(prefix, depth, count) {
            Some(p) => {
                if let Some(part) = &self.partitions[p as usize] {
                    part.release(prefix);
                }
            }
            None => self.partitions().for_each(|part| part.release(prefix)),
        }
    }

    /// Starts a set of changes that survive a crash together or not at all, in each partition
    /// it joins (a partition has its own log, so there is no atomicity across partitions).
    pub fn group(&self) -> WriteGroup<'_> {
        WriteGroup { store: self, joined: Vec::new() }
    }

    /// Whether several logs' changes may be made durable by one sync of their file system:
    /// under [`WalSync::Always`] with [`WalGroupSync::Filesystem`].
    fn syncs_logs_together(&self) -> bool {
        self.wal_sync == WalSync::Always && self.group_sync == WalGroupSync::Filesystem
    }

    /// Makes the logs of `partitions` durable with one sync of each file system they share
    /// ([`WalGroupSync::Filesystem`]). Best effort: a log it does not cover (alone on its file
    /// system, or the sync failed) is synced by whoever waits for it, as in `Sequential`.
    fn sync_logs_together(&self, partitions: &[u32]) {
        let parts = partitions.iter().filter_map(|&p| self.partitions[p as usize].as_ref());
        sync_logs_by_filesystem(&self.dir, &self.filesystem_sync_gate, parts);
    }

    /// Applies a change and waits until it is durable (see [`PartitionStore::apply`]).
    ///
    /// Under [`WalSync::Always`] with [`WalGroupSync::Filesystem`], while more than
    /// [`ROUND_CALLERS_PER_LOG`] callers per open partition are in here, they share their
    /// syncs across partitions: each logs its change, then joins the next round of one
    /// file-system sync of every log with records waiting ([`SyncRounds`]), led by the first
    /// caller that finds none running. A log the round does not cover (alone in it, or the
    /// sync failed or was not tried) is synced by its waiter, as with fewer callers.
    pub fn apply(&self, change: Change) -> Result<Applied> {
        let part = self.route(&change.path)?;
        let callers = CallerCount::enter(&self.applying);
        let shared = self.syncs_logs_together()
            && callers.count > ROUND_CALLERS_PER_LOG * self.partitions().count();
        if !shared {
            return part.apply(change);
        }
        let pending = part.submit_synced_by(change, GroupSync::Caller)?;
        self.sync_rounds.join(|| {
            let waiting = self.partitions().filter(|part| part.log_has_unsynced());
            sync_logs_by_filesystem(&self.dir, &self.filesystem_sync_gate, waiting)
        });
        pending.wait()
    }

    /// Applies a change without waiting (see [`PartitionStore::submit`]).
    pub fn submit(&self, change: Change) -> Result<PendingWrite> {
        self.route(&change.path)?.submit(change)
    }

    /// Writes a batch of changes and returns once they are durable, with what each change
    /// produced in the order given: for bulk loads. `route` says where the batch goes
    /// ([`BatchRoute`]).
    ///
    /// The changes apply in order, on top of everything applied before. One that cannot apply
    /// (a conflict, a file over the size limit, a bad patch) fails the whole batch before
    /// anything is committed (into the trees, the partitions before it may have staged pages
    /// past their trees' ends, which nothing refers to and the next commit writes over). Each
    /// partition's share becomes visible at once, and a crash leaves each partition with all of
    /// its share or none of it; there is no atomicity across partitions. While the batch is
    /// written, the partitions it writes apply no other change and flush nothing (see
    /// [`DirectBatch`]): keep batches to a few thousand files.
    pub fn write_batch(&self, changes: &[Change], route: BatchRoute) -> Result<Vec<Applied>> {
        let mut shares: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, change) in changes.iter().enumerate() {
            let partition = self.route(&change.path)?.partition();
            shares.entry(partition).or_default().push(i);
        }
        let partitions: Vec<u32> = shares.keys().copied().collect();
        let shares: Vec<Vec<usize>> = shares.into_values().collect();
        let mut batches = self.begin_direct_batches(&partitions)?;
        // Each change's index in `changes`, in the order the batches apply them.
        let order: Vec<usize> = shares.iter().flatten().copied().collect();
        let into_trees = route == BatchRoute::Trees;
        let applied = apply_shares(changes, &shares, &mut batches, into_trees)?;
        let applied = match route {
            BatchRoute::Logs => self.log_batches(batches, &partitions)?,
            BatchRoute::Trees => {
                self.commit_batches(batches)?;
                applied
            }
        };
        let mut given: Vec<(usize, Applied)> = order.into_iter().zip(applied).collect();
        given.sort_unstable_by_key(|&(i, _)| i);
        Ok(given.into_iter().map(|(_, a)| a).collect())
    }

    /// [`Store::write_batch`] into the trees, once every batch is staged: one sync, headers,
    /// one sync, finish.
    fn commit_batches(&self, batches: Vec<DirectBatch<'_>>) -> Result<()> {
        let own_bytes = batches.iter().map(DirectBatch::staged_bytes).sum();
        self.sync_trees(&batches, own_bytes)?;
        for batch in &batches {
            batch.write_header()?;
        }
        self.sync_trees(&batches, 0)?;
        // Every header is durable now: each partition must take its new tree, or its next
        // commit would write over it.
        let mut finished = Ok(());
        for batch in batches {
            let result = batch.finish();
            if finished.is_ok() {
                finished = result;
            }
        }
        finished
    }

    /// [`Store::write_batch`] through the logs: each batch's changes appended as one atomic
    /// group, the logs made durable together, every change waited for. Returns what each
    /// change produced, in the batches' order.
    fn log_batches(
        &self,
        batches: Vec<DirectBatch<'_>>,
        partitions: &[u32],
    ) -> Result<Vec<Applied>> {
        let mut pending = Vec::new();
        for batch in batches {
            pending.extend(batch.log()?);
        }
        if partitions.len() > 1 && self.syncs_logs_together() {
            self.sync_logs_together(partitions);
        }
        pending.into_iter().map(PendingWrite::wait).collect()
    }

    /// A [`DirectBatch`] on each of `partitions` (open ones, in order). Holds none while it
    /// waits for a busy tree or an open atomic group: the group's writer may need any of them,
    /// and a flusher holding its tree waits for that group.
    fn begin_direct_batches(&self, partitions: &[u32]) -> Result<Vec<DirectBatch<'_>>> {
        'retry: loop {
            let mut batches = Vec::with_capacity(partitions.len());
            for &p in partitions {
                let part = self.partitions[p as usize]
                    .as_ref()
                    .ok_or(StoreError::PartitionNotOpen { partition: p })?;
                match part.try_begin_direct_batch()? {
                    Some(batch) => batches.push(batch),
                    None => {
                        drop(batches);
                        part.wait_for_direct_batch();
                        continue 'retry;
                    }
                }
            }
            return Ok(batches);
        }
    }

    /// Makes what the batches' tree files were written durable. `own_bytes` they wrote, which
    /// a sync of their file system must write anyway: they do not close the gate.
    fn sync_trees(&self, batches: &[DirectBatch<'_>], own_bytes: u64) -> Result<()> {
        let mut synced = vec![false; batches.len()];
        if self.group_sync == WalGroupSync::Filesystem
            && self.filesystem_sync_gate.is_open_beside(Instant::now(), own_bytes)
        {
            let trees = batches.iter().enumerate().map(|(i, b)| (b.partition().filesystem(), i));
            for same in sharing_a_filesystem(trees) {
                let part = batches[same[0]].partition();
                let gate = &self.filesystem_sync_gate;
                if sync_filesystem_gated(&self.dir, gate, part, "trees", own_bytes) {
                    for i in same {
                        synced[i] = true;
                    }
                }
            }
        }
        for (batch, synced) in batches.iter().zip(synced) {
            if !synced {
                batch.sync_tree()?;
            }
        }
        Ok(())
    }

    /// The file's current version, `None` if it does not exist or was deleted.
    pub fn get(&self, path: &FilePath) -> Result<Option<SharedRecord>> {
        Ok(self.read(path)?.filter(|r| !r.is_deleted()))
    }

    /// The file's metadata, `None` if it does not exist or was deleted.
    pub fn stat(&self, path: &FilePath) -> Result<Option<FileMeta>> {
        Ok(self.read(path)?.and_then(|r| visible(&r)))
    }

    /// The current version of `path`, tombstones included. A hit in the shared cache while
    /// no open partition has a dirty file (the hot path) needs neither the path's partition
    /// nor its lock; a miss then goes past the cache, which it does not ask twice.
    #[inline]
    fn read(&self, path: &FilePath) -> Result<Option<SharedRecord>> {
        match self.cache.lookup(path) {
            Lookup::Hit(record) => {
                if hit_is_sampled() {
                    // A cached path's partition is open here.
                    if let Ok(partition) = self.route(path) {
                        partition.show_hit(path);
                    }
                }
                Ok(Some(record))
            }
            Lookup::NotCached => self.route(path)?.read_past_cache(path),
            Lookup::Dirty => self.route(path)?.read(path),
        }
    }

    /// Up to `limit` existing files under `prefix` after `after`, in path order, across the
    /// open partitions.
    ///
    /// A prefix that spells out a path's partition key (`/home/alice/` at depth 2) is asked of
    /// that partition alone. Any other prefix is a k-way merge of the partitions' ordered
    /// listings, each read in chunks as the merge consumes it, so that a page reads about
    /// `limit` entries instead of `limit` from every partition. Each chunk sees its
    /// partition's state at the time it is read.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(FilePath, FileMeta)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (depth, count) = (self.layout.partition_depth, self.layout.partitions);
        if let Some(p) = partition_of_prefix(prefix, depth, count) {
            return match &self.partitions[p as usize] {
                Some(part) => part.list(prefix, after, limit),
                // Only the routed partition can hold such paths, and it is not open here.
                None => Ok(Vec::new()),
            };
        }
        let mut cursors: Vec<ListCursor<'_>> = self.partitions().map(ListCursor::new).collect();
        // Paths are grouped by directory and a directory by partition, so a page usually
        // comes from a few partitions: start small and double a chunk each time a
        // partition's is used up.
        let first_chunk = (limit.div_ceil(cursors.len().max(1)) / 4).max(16).min(limit);
        let mut heads = BinaryHeap::with_capacity(cursors.len());
        for (i, cursor) in cursors.iter_mut().enumerate() {
            cursor.fill(prefix, after, first_chunk)?;
            if let Some((path, _)) = cursor.buffered.front() {
                heads.push(Reverse((path.clone(), i)));
            }
        }
        let mut out = Vec::with_capacity(limit);
        while out.len() < limit {
            let Some(Reverse((_, i))) = heads.pop() else { break };
            let cursor = &mut cursors[i];
            out.push(cursor.buffered.pop_front().expect("a head is buffered"));
            if cursor.buffered.is_empty() {
                let wanted = (cursor.chunk * 2).min(limit - out.len());
                let last = out.last().map(|(path, _)| path.as_str());
                cursor.fill(prefix, last, wanted)?;
            }
            if let Some((path, _)) = cursor.buffered.front() {
                heads.push(Reverse((path.clone(), i)));
            }
        }
        Ok(out)
    }

    /// Flushes every open partition; returns once all are durable in their trees.
    pub fn flush(&self) -> Result<Vec<FlushStats>> {
        // Each partition commits its own tree with its own syncs: side by side, their syncs
        // overlap (the device serves them in parallel) instead of queueing one after another.
        let partitions: Vec<&PartitionStore> = self.partitions().collect();
        std::thread::scope(|scope| {
            let flushing: Vec<_> =
                partitions.iter().map(|part| scope.spawn(|| part.flush())).collect();
            flushing
                .into_iter()
                .map(|flush| flush.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    }

    /// Flushes and compacts every open partition.
    pub fn compact(&self) -> Result<Vec<CompactStats>> {
        self.partitions()
            .map(|p| {
                p.flush()?;
                p.compact()
            })
            .collect()
    }

    pub fn stats(&self) -> Vec<PartitionStats> {
        self.partitions().map(PartitionStore::stats).collect()
    }

    /// Flushes and closes every partition; reports the first failure after trying all.
    pub fn close(self) -> Result<()> {
        let mut first = Ok(());
        for part in self.partitions.into_iter().flatten() {
            let result = part.close();
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

/// One partition's listing in a [`Store::list`] merge: the entries read but not yet merged.
struct ListCursor<'a> {
    part: &'a PartitionStore,
    buffered: VecDeque<(FilePath, FileMeta)>,
    /// Size of the last chunk asked for.
    chunk: usize,
    /// The partition returned a short chunk: it has nothing more.
    done: bool,
}

impl<'a> ListCursor<'a> {
    fn new(part: &'a PartitionStore) -> ListCursor<'a> {
        ListCursor { part, buffered: VecDeque::new(), chunk: 0, done: false }
    }

    /// Reads up to `chunk` more entries after `after`, unless the partition has no more.
    fn fill(&mut self, prefix: &str, after: Option<&str>, chunk: usize) -> Result<()> {
        if self.done || chunk == 0 {
            return Ok(());
        }
        let entries = self.part.list(prefix, after, chunk)?;
        self.done = entries.len() < chunk;
        self.chunk = chunk;
        self.buffered.extend(entries);
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| StoreError::io("sync", dir, e))
}

fn write_manifest(dir: &Path, layout: InitOptions) -> Result<()> {
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        partitions: layout.partitions,
        partition_depth: layout.partition_depth,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let mut file = fs::File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
    file.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("write", &tmp, e))?;
    let path = dir.join(MANIFEST_FILE);
    fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename", &path, e))?;
    sync_dir(dir)
}

/// Bytes of put content in one [`Store::write_batch`] from which their hashes are computed on
/// other threads, ahead of the applying. SHA-256 runs at about 1.7 GB/s on this project's
/// machine: 1,000 files of 16 KiB spent about 10 ms of a 35 ms batch in it.
pub const PARALLEL_HASH_BYTES: usize = 1 << 20;

/// Threads that hash a batch's puts, at most.
const HASH_THREADS: usize = 4;

/// Applies each partition's share of `changes` (`shares[k]`, indices into `changes`) to
/// `batches[k]`, share after share, and with `stage` stages each share's batch as soon as it
/// is applied. Returns what each change produced, in the shares' order.
///
/// When the puts hold [`PARALLEL_HASH_BYTES`] or more, up to [`HASH_THREADS`] threads hash
/// them ahead, share by share in the same order, so that applying and staging one share
/// overlaps hashing the next (below that, each put is hashed as it is applied).
fn apply_shares(
    changes: &[Change],
    shares: &[Vec<usize>],
    batches: &mut [DirectBatch<'_>],
    stage: bool,
) -> Result<Vec<Applied>> {
    let put_bytes = |change: &Change| match &change.edit {
        Edit::Put(bytes) => bytes.len(),
        _ => 0,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(HASH_THREADS);
    let ahead = threads >= 2 && changes.iter().map(put_bytes).sum::<usize>() >= PARALLEL_HASH_BYTES;
    // No hashers at all when hashing ahead does not pay: every share then finds the channel
    // closed and is hashed as it is applied.
    let hashers = if ahead { threads } else { 0 };
    let mut applied = Vec::with_capacity(changes.len());
    let next_share = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (hashed_tx, hashed) = crossbeam_channel::unbounded::<(usize, Vec<Option<[u8; 32]>>)>();
    std::thread::scope(|scope| {
        for _ in 0..hashers {
            let hashed_tx = hashed_tx.clone();
            let (next_share, stop) = (&next_share, &stop);
            scope.spawn(move || loop {
                let k = next_share.fetch_add(1, Ordering::Relaxed);
                if k >= shares.len() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let hashes = shares[k]
                    .iter()
                    .map(|&i| match &changes[i].edit {
                        Edit::Put(bytes) => Some(content_hash(bytes)),
                        _ => None,
                    })
                    .collect();
                if hashed_tx.send((k, hashes)).is_err() {
                    return;
                }
            });
        }
        drop(hashed_tx);
        let mut early: HashMap<usize, Vec<Option<[u8; 32]>>> = HashMap::new();
        let result = (|| -> Result<()> {
            for (k, (batch, share)) in batches.iter_mut().zip(shares).enumerate() {
                // Shares arrive about in order; with no hasher left (none started, or one
                // panicked) the share is hashed as it is applied.
                let hashes = loop {
                    if let Some(hashes) = early.remove(&k) {
                        break hashes;
                    }
                    match hashed.recv() {
                        Ok((j, hashes)) => early.insert(j, hashes),
                        Err(_) => break vec![None; share.len()],
                    };
                };
                for (&i, hash) in share.iter().zip(hashes) {
                    applied.push(batch.apply(&changes[i], hash)?);
                }
                if stage {
                    batch.stage()?;
                }
            }
            Ok(())
        })();
        // A failed share ends the batch: the hashers stop after the share they are on.
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    Ok(applied)
}

/// Callers of [`Store::apply`] per open partition above which they share sync rounds. Below
/// it each log's own `fdatasync`s, which the device runs in parallel, were quicker: over 16
/// partitions, rounds for every caller made 0.72-0.94x the acknowledgements/s of those from
/// 4-32 threads, and 1.06-1.24x from 48-64 (`BENCHMARKS.md`, 2026-12-07, eleventh session).
pub const ROUND_CALLERS_PER_LOG: usize = 2;

/// Counts a caller in while it lives.
struct CallerCount<'a> {
    callers: &'a AtomicUsize,
    /// Callers in, this one included, when it came in.
    count: usize,
}

impl<'a> CallerCount<'a> {
    fn enter(callers: &'a AtomicUsize) -> CallerCount<'a> {
        let count = callers.fetch_add(1, Ordering::Relaxed) + 1;
        CallerCount { callers, count }
    }
}

impl Drop for CallerCount<'_> {
    fn drop(&mut self) {
        self.callers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes the logs of `parts` durable with one sync of each file system that two or more of
/// them share, while `gate` allows it; see [`WalGroupSync::Filesystem`].
fn sync_logs_by_filesystem<'a>(
    dir: &Path,
    gate: &FilesystemSyncGate,
    parts: impl Iterator<Item = &'a PartitionStore>,
) {
    if !gate.is_open(Instant::now()) {
        return;
    }
    for same in sharing_a_filesystem(parts.map(|part| (part.filesystem(), part))) {
        // A log whose write failed has failed as a whole: its waiters get that error.
        let written: Vec<_> =
            same.iter().filter_map(|&part| Some((part, part.write_log_unsynced().ok()?))).collect();
        if sync_filesystem_gated(dir, gate, same[0], "write-ahead logs", 0) {
            for (part, point) in written {
                part.mark_log_synced(point);
            }
        }
    }
}

/// The items on a file system ([`StorageDir::filesystem`]) shared with at least one other, in
/// groups by file system; items on none known, or alone on theirs, are left out.
fn sharing_a_filesystem<T: Copy>(items: impl Iterator<Item = (Option<u64>, T)>) -> Vec<Vec<T>> {
    let mut known: Vec<(u64, T)> =
        items.filter_map(|(filesystem, item)| Some((filesystem?, item))).collect();
    known.sort_by_key(|&(filesystem, _)| filesystem);
    known
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|same| same.len() > 1)
        .map(|same| same.iter().map(|&(_, item)| item).collect())
        .collect()
}

/// Syncs the file system `part` is on, timing the sync for `gate` unless it had `own_bytes`
/// of the caller's to write (see [`FilesystemSyncGate::synced_own`]); reports whether it
/// succeeded. `what` names what the sync was for, in the warnings: on failure, the caller
/// syncs each of its files on its own instead.
fn sync_filesystem_gated(
    dir: &Path,
    gate: &FilesystemSyncGate,
    part: &PartitionStore,
    what: &str,
    own_bytes: u64,
) -> bool {
    let started = Instant::now();
    let synced = part.sync_filesystem();
    let now = Instant::now();
    if own_bytes > 0 {
        gate.synced_own();
    } else if let Some(closed_for) = gate.record(now - started, now) {
        tracing::warn!(
            dir = %dir.display(), took_ms = (now - started).as_millis() as u64,
            closed_for_s = closed_for.as_secs(),
            "a file-system sync of the {what} was slow (other writers' data on the same file \
             system?); syncing each file on its own for a while"
        );
    }
    match synced {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(), error = %e,
                "file-system sync of the {what} failed; syncing each file instead"
            );
            false
        }
    }
}

/// One sync of the file system for the logs of several stores, as a [`WriteGroup`] over
/// several partitions of one store does it ([`WalGroupSync::Filesystem`]): for a process that
/// holds each partition in a store of its own (a cluster worker, whose partitions come and
/// go) and applies to several of them in one round. Call [`JointLogSync::sync`] after
/// submitting the round's changes and before waiting for them: the waits then find their
/// changes durable. Best effort in the same way: a log it does not cover is synced by whoever
/// waits for it. Only stores that sync under [`WalSync::Always`] with
/// [`WalGroupSync::Filesystem`] take part.
pub struct JointLogSync {
    gate: FilesystemSyncGate,
}

impl Default for JointLogSync {
    fn default() -> JointLogSync {
        JointLogSync { gate: FilesystemSyncGate::new(Box::new(dirty_page_bytes)) }
    }
}

impl JointLogSync {
    /// Makes every change submitted so far to the open partitions of `stores` durable, with
    /// one sync per file system that two or more of their logs share.
    pub fn sync(&self, stores: &[&Store]) {
        let Some(first) = stores.first() else { return };
        let parts = stores.iter().filter(|s| s.syncs_logs_together()).flat_map(|s| s.partitions());
        sync_logs_by_filesystem(&first.dir, &self.gate, parts);
    }
}

/// Changes bound into one atomic group per partition (see [`Store::group`]): every change
/// submitted to a joined partition, by any caller, until the group is dropped. None of them is
/// acknowledged ([`PendingWrite::wait`]) before the group is dropped, so drop it before
/// waiting.
///
/// The caller is expected to wait for its changes in the order it made them, and leads their
/// logs' syncs itself instead of waiting for a syncer thread to wake, sync and wake it
/// ([`GroupSync::Caller`]), or all of them at once when the group ends
/// ([`WalGroupSync::Filesystem`]). With [`WalGroupSync::Parallel`] only the first partition's:
/// the others are synced by their logs' syncer threads, at the same time.
#[must_use = "the group ends when dropped"]
pub struct WriteGroup<'a> {
    store: &'a Store,
    joined: Vec<u32>,
}

impl WriteGroup<'_> {
    /// Binds the changes to `path`'s partition from now on into the group.
    pub fn join(&mut self, path: &FilePath) {
        let partition = self.store.partition_of(path);
        if self.joined.contains(&partition) {
            return;
        }
        if let Some(p) = self.store.partitions[partition as usize].as_ref() {
            p.begin_group(self.sync_of(self.joined.len()));
            self.joined.push(partition);
        }
    }

    fn sync_of(&self, joined_before: usize) -> GroupSync {
        if joined_before > 0 && self.store.group_sync == WalGroupSync::Parallel {
            GroupSync::Syncer
        } else {
            GroupSync::Caller
        }
    }
}

impl Drop for WriteGroup<'_> {
    fn drop(&mut self) {
        for (i, &partition) in self.joined.iter().enumerate() {
            if let Some(p) = self.store.partitions[partition as usize].as_ref() {
                p.end_group(self.sync_of(i));
            }
        }
        let store = self.store;
        if self.joined.len() > 1 && store.syncs_logs_together() {
            store.sync_logs_together(&self.joined);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joint_log_sync_makes_the_grouped_changes_of_several_stores_durable_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        Store::init(tmp.path(), InitOptions { partitions: 2, partition_depth: 2 }).unwrap();
        let options = StoreOptions { wal_preallocate_bytes: 64 << 10, ..StoreOptions::default() };
        let stores: Vec<Store> =
            (0..2).map(|p| Store::open_partitions(tmp.path(), &[p], options).unwrap()).collect();
        let mut pending = Vec::new();
        for (p, store) in stores.iter().enumerate() {
            let path = (0..)
                .map(|i| FilePath::parse(&format!("/j{i}/f")).unwrap())
                .find(|path| store.partition_of(path) == p as u32)
                .unwrap();
            // In a group, nothing but its caller syncs the log (no syncer thread is woken).
            let mut group = store.group();
            group.join(&path);
            pending.push(store.submit(Change::put(path, "joint", "w")).unwrap());
            drop(group);
        }
        let part = |p: usize| stores[p].partitions().next().unwrap();
        for (p, w) in pending.iter().enumerate() {
            assert!(part(p).log_synced_lsn() < w.lsn(), "partition {p} was synced already");
        }
        // A gate that never sees other writers' dirty data: this test is about the sync.
        let joint = JointLogSync { gate: FilesystemSyncGate::new(Box::new(|| Some(0))) };
        joint.sync(&stores.iter().collect::<Vec<_>>());
        if part(0).filesystem().is_some() {
            for (p, w) in pending.iter().enumerate() {
                assert!(part(p).log_synced_lsn() >= w.lsn(), "partition {p} is not durable");
            }
        }
        for w in pending {
            w.wait().unwrap();
        }
        stores.into_iter().for_each(|s| s.close().unwrap());
    }
}
