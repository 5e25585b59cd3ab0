//! Ferry's file store: the durable home of every file.
//!
//! A data directory holds a fixed number of partitions. Each partition is a store of its own
//! with its own write lock, write-ahead log and copy-on-write B+tree file read through
//! `memmap2`. Changes are acknowledged once they are in the WAL; they reach the B+tree later,
//! in batches (write-behind), while a moka cache holds clean files in front of it. Any number of
//! read-only processes can open the same directory and read consistent snapshots while the
//! writer commits. The on-disk format is documented in `docs/FORMAT.md`.
//!
//! The store knows nothing of queues, sockets or clients: it stores files. The one edge is
//! [`http`], a read-only HTTP service over a data directory for reporting tools.

pub mod backend;
pub mod crash_sim;
pub mod error;
pub mod filesystem_sync_gate;
pub mod http;
pub mod lock;
pub mod partition;
pub mod partition_store;
pub mod path;
pub mod read_only;
pub mod record;
pub mod store;
pub mod sync_rounds;
pub mod tree;
pub mod wal;

pub use error::{Result, StoreError};
pub use partition_store::{Applied, Change, Edit, PartitionStats, PartitionStore, PendingWrite};
pub use path::{FilePath, PathError};
pub use read_only::{open_read_only, ReadOnlyStore};
pub use record::{FileMeta, Record, SharedRecord};
pub use store::{
    BatchRoute, InitOptions, JointLogSync, Store, StoreOptions, WalGroupSync, WriteGroup,
};
pub use wal::{GroupSync, WalSync, WrittenPoint};
