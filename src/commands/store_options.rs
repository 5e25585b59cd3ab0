//! From the `[store]` configuration section to the store's own option types.

use ferry_config::{StoreConfig, WalGroupSyncPolicy, WalSyncPolicy};
use ferry_file_server::{InitOptions, StoreOptions, WalGroupSync, WalSync};

pub fn init_options(c: &StoreConfig) -> InitOptions {
    InitOptions { partitions: c.partitions, partition_depth: c.partition_depth }
}

pub fn store_options(c: &StoreConfig) -> StoreOptions {
    StoreOptions {
        max_file_size: c.max_file_size,
        cache_bytes: c.cache_bytes,
        flush_interval_ms: c.flush_interval_ms,
        flush_max_dirty: c.flush_max_dirty,
        wal_sync: match c.wal_sync {
            WalSyncPolicy::Always => WalSync::Always,
            WalSyncPolicy::Interval => WalSync::Interval(c.wal_sync_interval_ms),
            WalSyncPolicy::Os => WalSync::Os,
        },
        wal_group_sync: match c.wal_group_sync {
            WalGroupSyncPolicy::Filesystem => WalGroupSync::Filesystem,
            WalGroupSyncPolicy::Sequential => WalGroupSync::Sequential,
            WalGroupSyncPolicy::Parallel => WalGroupSync::Parallel,
        },
        ..StoreOptions::default()
    }
}
