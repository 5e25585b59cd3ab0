//! What every engine under test offers the workloads.

use std::path::Path;

use ferry_file_server::FilePath;

use super::data::Batch;

/// An engine holding one store in one directory.
pub trait KvEngine {
    /// Writes `batch` in one transaction that is durable when this returns (or, for Ferry's
    /// write-behind store, acknowledged: in the WAL with the `always` policy).
    fn commit_batch(&mut self, batch: &Batch) -> anyhow::Result<()>;

    /// Makes everything acknowledged so far reach its final home; part of the timed write.
    /// Only Ferry's write-behind store has anything to do here.
    fn finish_writes(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Looks up every key inside one read transaction (or snapshot), copying each found value
    /// into an owned buffer; returns how many were found.
    fn read_each(&self, keys: &[FilePath]) -> anyhow::Result<u64>;

    /// Lists every file whose path starts with `prefix` in path order, copying each path and
    /// its metadata (not the content: Ferry's scan, like `ls -l`, returns paths with
    /// metadata); returns how many were listed.
    fn scan_prefix(&self, prefix: &str) -> anyhow::Result<u64>;

    /// What the store's own figures say its directory holds, when it has any.
    fn space_breakdown(&self) -> Option<String> {
        None
    }

    /// Reclaims free space; returns a note saying how (shown in the table).
    fn compact(&mut self, dir: &Path) -> anyhow::Result<Compacted>;
}

/// The result of [`KvEngine::compact`].
pub struct Compacted {
    /// Bytes of the compacted store, when the engine measured them itself (LMDB's compacted
    /// copy); otherwise the directory is measured.
    pub bytes: Option<u64>,
    pub how: &'static str,
}

/// Bytes the files under `dir` take on disk: their allocated blocks, not their lengths. A
/// file grown ahead of its data with `set_len` (Ferry's trees grow by at least 1 MiB) is sparse
/// until written, and its length would count space no engine uses.
pub fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_bytes(&entry.path())? } else { disk_bytes(&meta) };
    }
    Ok(total)
}

/// Bytes one file takes on disk: its allocated blocks (see [`dir_bytes`]).
pub fn disk_bytes(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(meta) * 512
}
