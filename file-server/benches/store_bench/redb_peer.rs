//! redb with `Durability::Immediate`: every commit is synced before it returns.

use std::path::Path;

use ferry_file_server::FilePath;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::data::{encode_value, metadata_len, Batch};
use super::engine::{Compacted, KvEngine};

const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");

/// The engine's name in the result table.
pub const NAME: &str = "redb";

pub struct Redb {
    db: Database,
    value: Vec<u8>,
}

impl Redb {
    pub fn create(dir: &Path) -> anyhow::Result<Redb> {
        let db = Database::create(dir.join("files.redb"))?;
        Ok(Redb { db, value: Vec::new() })
    }
}

impl KvEngine for Redb {
    fn commit_batch(&mut self, batch: &Batch) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(FILES)?;
            for (path, record) in batch {
                encode_value(&mut self.value, record);
                table.insert(path.as_bytes(), self.value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn read_each(&self, keys: &[FilePath]) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FILES)?;
        let mut found = 0;
        for key in keys {
            if let Some(guard) = table.get(key.as_bytes())? {
                let owned = guard.value().to_vec();
                std::hint::black_box(owned);
                found += 1;
            }
        }
        Ok(found)
    }

    fn scan_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FILES)?;
        let mut scanned = 0;
        for row in table.range::<&[u8]>(prefix.as_bytes()..)? {
            let (key, value) = row?;
            if !key.value().starts_with(prefix.as_bytes()) {
                break;
            }
            std::hint::black_box((
                key.value().to_vec(),
                value.value()[..metadata_len(value.value())].to_vec(),
            ));
            scanned += 1;
        }
        Ok(scanned)
    }

    fn compact(&mut self, _dir: &Path) -> anyhow::Result<Compacted> {
        while self.db.compact()? {}
        Ok(Compacted { bytes: None, how: "Database::compact until it reports nothing left" })
    }
}
