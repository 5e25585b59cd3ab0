//! The on-disk copy-on-write B+tree of one partition.
//!
//! Keys are file paths (bytewise order), values are [`Record`](crate::Record)s: metadata plus
//! inline content or an overflow extent. Pages are append-only: a commit writes new copies of
//! the pages it changes past the end of the file, then a checksummed header in one of two
//! slots, so every committed root stays readable while the file exists and readers never
//! register anywhere. Deletes are tombstones, so keys are never removed and no rebalancing is
//! needed; compaction rewrites the live tree into a new generation file. The format is in
//! `docs/FORMAT.md`.
//!
//! [`TreeFile`] is the writer (the caller holds the partition's write lock), [`TreeReader`]
//! follows the latest commit from any process with read permission only, and [`Snapshot`]
//! reads one commit.

mod authors;
mod compact;
pub mod format;
mod generation;
mod node;
mod snapshot;
mod verified;
mod verify;
mod writer;

use std::sync::Arc;

use parking_lot::Mutex;

pub use compact::CompactStats;
pub use format::{TreeHeader, PAGE_SIZE};
pub use generation::file_name;
pub use snapshot::Snapshot;
pub use verify::{verify_tree, TreeProblem, TreeVerifyReport};
pub use writer::{CommitStats, StagedCommit, TreeFile};

use crate::backend::{OpenMode, StorageDir, StorageFile};
use crate::error::{Result, StoreError};
use verified::VerifiedPages;

/// Reads the latest commit of a partition's tree, from any process, with read permission
/// only. Follows compaction to the next generation.
pub struct TreeReader {
    dir: Arc<dyn StorageDir>,
    current: Mutex<ReaderState>,
}

struct ReaderState {
    file: Arc<dyn StorageFile>,
    snapshot: Snapshot,
}

impl ReaderState {
    fn open(file: Arc<dyn StorageFile>, header: TreeHeader) -> Result<ReaderState> {
        let tree = writer::map(&file, Arc::new(VerifiedPages::default()))?;
        let snapshot = Snapshot::new(header, tree)?;
        Ok(ReaderState { file, snapshot })
    }
}

impl TreeReader {
    /// Opens the newest generation in `dir`.
    pub fn open(dir: Arc<dyn StorageDir>) -> Result<TreeReader> {
        let (file, header) = generation::open_latest(&*dir)?;
        let state = ReaderState::open(file, header)?;
        Ok(TreeReader { dir, current: Mutex::new(state) })
    }

    /// The latest committed snapshot. Re-reads the header slots; maps the file again only
    /// when a new commit appeared, and moves to the next generation when compaction retired
    /// the current one.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut state = self.current.lock();
        // Each round either returns or moves to a newer generation; a bounded number of
        // compactions can overtake a reader between two rounds.
        for _ in 0..16 {
            let header = generation::read_header(&*state.file)?;
            if header.is_retired() {
                *state = self.next_generation(header.next_generation)?;
                continue;
            }
            if header != *state.snapshot.header() {
                let tree = writer::map_for(&state.file, state.snapshot.tree(), &header)?;
                state.snapshot = Snapshot::new(header, tree)?;
            }
            return Ok(state.snapshot.clone());
        }
        Err(StoreError::io(
            "follow compaction in",
            self.dir.path(),
            std::io::Error::other("compactions kept replacing the tree file"),
        ))
    }

    fn next_generation(&self, next: u64) -> Result<ReaderState> {
        match generation::open(&*self.dir, next, OpenMode::ReadOnly) {
            Ok(file) => {
                let header = generation::read_header(&*file)?;
                ReaderState::open(file, header)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (file, header) = generation::open_latest(&*self.dir)?;
                ReaderState::open(file, header)
            }
            Err(e) => Err(StoreError::io("open", self.dir.path().join(file_name(next)), e)),
        }
    }
}
