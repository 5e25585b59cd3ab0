//! LMDB through `heed`, default flags: every commit is synced before it returns.

use std::path::Path;

use anyhow::Context;
use ferry_file_server::FilePath;
use heed::types::Bytes;
use heed::{CommitOrAbort, CompactionOption, Database, Env, EnvOpenOptions};

use super::data::{encode_value, metadata_len, Batch};
use super::engine::{disk_bytes, Compacted, KvEngine};

/// The engine's name in the result table.
pub const NAME: &str = "LMDB (heed)";

pub struct Lmdb {
    env: Env,
    db: Database<'static, Bytes, Bytes>,
    value: Vec<u8>,
}

impl Lmdb {
    /// `map_size` is address space reserved for the map; the file grows only as pages are used.
    pub fn create(dir: &Path, map_size: usize) -> anyhow::Result<Lmdb> {
        // SAFETY: the benchmark opens each environment once, in this process only.
        let env = unsafe { EnvOpenOptions::new().map_size(map_size).open(dir) }
            .with_context(|| format!("open LMDB in {}", dir.display()))?;
        let wtxn = env.write_txn()?;
        let db = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                opener
                    .create_database::<Bytes, Bytes>(wtxn, None)
                    .map(CommitOrAbort::<_, ()>::Commit)
            })?
            .unwrap_commit();
        Ok(Lmdb { env, db, value: Vec::new() })
    }
}

impl KvEngine for Lmdb {
    fn commit_batch(&mut self, batch: &Batch) -> anyhow::Result<()> {
        let mut wtxn = self.env.write_txn()?;
        for (path, record) in batch {
            encode_value(&mut self.value, record);
            self.db.put(&mut wtxn, path.as_bytes(), &self.value)?;
        }
        wtxn.commit()?;
        Ok(())
    }

    fn read_each(&self, keys: &[FilePath]) -> anyhow::Result<u64> {
        let rtxn = self.env.read_txn()?;
        let mut found = 0;
        for key in keys {
            if let Some(value) = self.db.get(&rtxn, key.as_bytes())? {
                let owned = value.to_vec();
                std::hint::black_box(owned);
                found += 1;
            }
        }
        Ok(found)
    }

    fn scan_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        let rtxn = self.env.read_txn()?;
        let mut scanned = 0;
        for row in self.db.prefix_iter(&rtxn, prefix.as_bytes())? {
            let (key, value) = row?;
            std::hint::black_box((key.to_vec(), value[..metadata_len(value)].to_vec()));
            scanned += 1;
        }
        Ok(scanned)
    }

    fn compact(&mut self, dir: &Path) -> anyhow::Result<Compacted> {
        // LMDB has no in-place compaction; its compacting copy is what operators use.
        let copy = dir.join("compacted.mdb");
        let file = self.env.copy_to_path(&copy, CompactionOption::Enabled)?;
        let bytes = disk_bytes(&file.metadata()?);
        drop(file);
        std::fs::remove_file(&copy)?;
        Ok(Compacted {
            bytes: Some(bytes),
            how: "size of a compacting copy (mdb_env_copy2 CP_COMPACT)",
        })
    }
}
