//! The `[store]` section: the file store's directory, layout, cache and durability.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{check_range, Invalid};

/// When the write-ahead log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalSyncPolicy {
    /// Before a change is acknowledged; concurrent changes share one fsync (group commit).
    Always,
    /// Every `wal_sync_interval_ms`, like Redis `appendfsync everysec`.
    Interval,
    /// Never explicitly: the operating system writes back when it likes.
    Os,
}

/// How a batch over several partitions makes their write-ahead logs durable under `always`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalGroupSyncPolicy {
    /// Write every log, then one sync of their file system (Linux `syncfs`, 5.8 or later;
    /// elsewhere `sequential`): one device flush for all of them.
    Filesystem,
    /// One fsync per log, one after another, on the worker thread.
    Sequential,
    /// One fsync per log, all at once, each on its log's own thread.
    Parallel,
}

/// Settings of the file store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The data directory. Default `./ferry-data`.
    pub data_dir: PathBuf,
    /// Partitions created by `ferry init`; fixed afterwards. Default 16.
    pub partitions: u32,
    /// How many leading path segments choose a file's partition. Default 2.
    pub partition_depth: u32,
    /// Largest file content in bytes. Default 16 MiB.
    pub max_file_size: u64,
    /// Bytes of memory for the cache of clean files (content, path and author plus about 550
    /// bytes of bookkeeping per file). Default 256 MiB.
    pub cache_bytes: u64,
    /// Write-behind: flush dirty files into the B+tree this often. Default 100 ms.
    pub flush_interval_ms: u64,
    /// Write-behind: flush as soon as this many files are dirty. Default 10,000.
    pub flush_max_dirty: usize,
    /// When the WAL is fsynced. Default `always`.
    pub wal_sync: WalSyncPolicy,
    /// With `wal_sync = "interval"`: the fsync period. Default 1,000 ms.
    pub wal_sync_interval_ms: u64,
    /// With `wal_sync = "always"`: how a batch over several partitions makes their logs
    /// durable. Default `filesystem`: one `syncfs` for all of them.
    pub wal_group_sync: WalGroupSyncPolicy,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("./ferry-data"),
            partitions: 16,
            partition_depth: 2,
            max_file_size: 16 * 1024 * 1024,
            cache_bytes: 256 * 1024 * 1024,
            flush_interval_ms: 100,
            flush_max_dirty: 10_000,
            wal_sync: WalSyncPolicy::Always,
            wal_sync_interval_ms: 1_000,
            wal_group_sync: WalGroupSyncPolicy::Filesystem,
        }
    }
}

impl StoreConfig {
    pub(crate) fn check(&self, out: &mut Vec<Invalid>) {
        let mut range = |key: &str, value: u64, lo: u64, hi: u64| {
            check_range(out, format!("store.{key}"), value, lo, hi)
        };
        range("partitions", self.partitions.into(), 1, 4096);
        range("partition_depth", self.partition_depth.into(), 1, 64);
        range("max_file_size", self.max_file_size, 1, 1 << 30);
        range("cache_bytes", self.cache_bytes, 0, 1 << 40);
        range("flush_interval_ms", self.flush_interval_ms, 1, 3_600_000);
        range("flush_max_dirty", self.flush_max_dirty as u64, 1, 10_000_000);
        range("wal_sync_interval_ms", self.wal_sync_interval_ms, 1, 3_600_000);
        if self.data_dir.as_os_str().is_empty() {
            out.push(Invalid::new("store.data_dir", "\"\"", "a non-empty directory path"));
        }
    }
}
