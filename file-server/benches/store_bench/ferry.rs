//! Ferry's rows: the B+tree alone (`TreeFile`), and the `Store` (batches written with
//! `Store::write_batch` through the WAL with the `always` policy and write-behind, or straight
//! into its trees; moka cache).

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_file_server::backend::{FsDir, StorageDir};
use ferry_file_server::tree::TreeFile;
use ferry_file_server::{
    BatchRoute, Change, FilePath, InitOptions, PendingWrite, Store, StoreOptions, WalSync,
};
use hdrhistogram::Histogram;

use super::data::{self, Batch};
use super::engine::{Compacted, KvEngine};
use super::timing::{micros, micros_histogram, p50_p99};

/// The tree row's name in the result table.
pub const TREE_NAME: &str = "Ferry TreeFile";
/// The store row's name in the result table.
pub const STORE_NAME: &str = "Ferry Store (WAL always)";
/// The name of the store row whose batches go into the trees, past the WAL.
pub const STORE_BATCH_NAME: &str = "Ferry Store (into the trees)";

/// One partition's B+tree, written with `TreeFile::commit` and read through snapshots.
pub struct FerryTree {
    tree: TreeFile,
    lsn: u64,
}

impl FerryTree {
    pub fn create(dir: &Path) -> anyhow::Result<FerryTree> {
        let dir: Arc<dyn StorageDir> = Arc::new(FsDir::new(dir));
        Ok(FerryTree { tree: TreeFile::open(dir, 0, 1)?, lsn: 0 })
    }
}

impl KvEngine for FerryTree {
    fn commit_batch(&mut self, batch: &Batch) -> anyhow::Result<()> {
        self.lsn += batch.len() as u64;
        self.tree.commit(batch, self.lsn)?;
        Ok(())
    }

    fn read_each(&self, keys: &[FilePath]) -> anyhow::Result<u64> {
        let snapshot = self.tree.snapshot();
        let mut found = 0;
        for key in keys {
            // Borrowed and copied into a Vec, as the LMDB engine reads. (`Snapshot::get` also
            // builds an owned `Record`: a shared author and a `Bytes` of the content.)
            if let Some(content) = snapshot.content_of(key)? {
                std::hint::black_box(content.to_vec());
                found += 1;
            }
        }
        Ok(found)
    }

    fn scan_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        let snapshot = self.tree.snapshot();
        let mut scanned = 0;
        for entry in snapshot.scan(prefix, None) {
            std::hint::black_box(entry?);
            scanned += 1;
        }
        Ok(scanned)
    }

    fn compact(&mut self, _dir: &Path) -> anyhow::Result<Compacted> {
        self.tree.compact()?;
        Ok(Compacted { bytes: None, how: "TreeFile::compact" })
    }
}

/// Files listed per `Store::list` call when scanning.
const LIST_PAGE: usize = 1_000;

/// What a row's notes say of a batch written by `route`.
pub fn describe(route: BatchRoute) -> &'static str {
    match route {
        BatchRoute::Logs => "batch = 1 Store::write_batch through the WAL (1 group per partition)",
        BatchRoute::Trees => "batch = 1 Store::write_batch into the trees (past the WAL)",
    }
}

/// A store with the default layout (16 partitions, depth 2) and the `always` WAL policy,
/// writing each batch with `Store::write_batch` by `route`.
pub struct FerryStore {
    store: Store,
    author: Arc<str>,
    route: BatchRoute,
}

fn open_store(dir: &Path, cache_bytes: u64) -> anyhow::Result<Store> {
    Store::init(dir, InitOptions::default())?;
    let options =
        StoreOptions { cache_bytes, wal_sync: WalSync::Always, ..StoreOptions::default() };
    Ok(Store::open(dir, options)?)
}

impl FerryStore {
    pub fn create(dir: &Path, cache_bytes: u64, route: BatchRoute) -> anyhow::Result<FerryStore> {
        Ok(FerryStore { store: open_store(dir, cache_bytes)?, author: data::author(), route })
    }
}

impl KvEngine for FerryStore {
    fn commit_batch(&mut self, batch: &Batch) -> anyhow::Result<()> {
        let changes: Vec<Change> = batch
            .iter()
            .map(|(path, record)| {
                let content = record.content.clone().unwrap_or_default();
                Change::put(path.clone(), content, &self.author)
            })
            .collect();
        self.store.write_batch(&changes, self.route)?;
        Ok(())
    }

    fn finish_writes(&mut self) -> anyhow::Result<()> {
        self.store.flush()?;
        Ok(())
    }

    fn read_each(&self, keys: &[FilePath]) -> anyhow::Result<u64> {
        let mut found = 0;
        for key in keys {
            if let Some(record) = self.store.get(key)? {
                std::hint::black_box(record);
                found += 1;
            }
        }
        Ok(found)
    }

    fn scan_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        let mut scanned = 0;
        let mut after: Option<FilePath> = None;
        loop {
            let page = self.store.list(prefix, after.as_ref().map(FilePath::as_str), LIST_PAGE)?;
            scanned += page.len() as u64;
            match page.last() {
                Some((last, _)) if page.len() == LIST_PAGE => after = Some(last.clone()),
                _ => return Ok(scanned),
            }
        }
    }

    fn space_breakdown(&self) -> Option<String> {
        let stats = self.store.stats();
        let sum = |f: fn(&ferry_file_server::partition_store::PartitionStats) -> u64| {
            stats.iter().map(f).sum::<u64>() as f64 / (1 << 20) as f64
        };
        Some(format!(
            "trees {:.1} MiB ({:.1} MiB garbage), WAL {:.1} MiB",
            sum(|s| s.tree_bytes),
            sum(|s| s.garbage_bytes),
            sum(|s| s.wal_bytes)
        ))
    }

    fn compact(&mut self, _dir: &Path) -> anyhow::Result<Compacted> {
        self.store.compact()?;
        Ok(Compacted { bytes: None, how: "Store::compact (flush, then compact every partition)" })
    }
}

/// How the acknowledged-changes workload keeps changes in flight.
#[derive(Debug, Clone, Copy)]
pub enum AckMode {
    /// This many threads, each applying one change at a time (`Store::apply`).
    Threads(usize),
    /// One thread keeping up to this many submitted changes in flight.
    Pipelined(usize),
}

impl fmt::Display for AckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AckMode::Threads(n) => write!(f, "{n} threads calling apply"),
            AckMode::Pipelined(window) => {
                write!(f, "1 thread, submit/wait with {window} in flight")
            }
        }
    }
}

/// What [`acknowledged_changes`] measured.
pub struct AckRun {
    pub acks: u64,
    pub elapsed: Duration,
    pub note: String,
}

/// Each writer overwrites its own few files, so that revisions climb as under a real load.
fn change_path(writer: usize, i: u64) -> FilePath {
    FilePath::parse(&format!("/home/user{}/writer{writer}-{}.txt", writer % 100, i % 64))
        .expect("generated paths are valid")
}

fn content(size: usize, seed: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bytes = vec![0u8; size];
    rng.fill(&mut bytes);
    Bytes::from(bytes)
}

/// Applies `changes` puts of `size` bytes through a fresh store in `dir` with the `always`
/// WAL policy and counts acknowledgements per second; the write-behind flusher runs meanwhile.
pub fn acknowledged_changes(
    dir: &Path,
    cache_bytes: u64,
    mode: AckMode,
    changes: u64,
    size: usize,
) -> anyhow::Result<AckRun> {
    let store = open_store(dir, cache_bytes)?;
    let author = data::author();
    let mut latencies = micros_histogram();
    let start = Instant::now();
    let acks = match mode {
        AckMode::Threads(threads) => {
            let per_thread = changes / threads as u64;
            let results: Vec<anyhow::Result<Histogram<u64>>> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|writer| {
                        let (store, author) = (&store, &author);
                        scope.spawn(move || -> anyhow::Result<Histogram<u64>> {
                            let body = content(size, writer as u64);
                            let mut mine = micros_histogram();
                            for i in 0..per_thread {
                                let change =
                                    Change::put(change_path(writer, i), body.clone(), author);
                                let t = Instant::now();
                                store.apply(change)?;
                                mine.record(micros(t.elapsed()))?;
                            }
                            Ok(mine)
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().expect("writer thread panicked")).collect()
            });
            for result in results {
                latencies.add(result?)?;
            }
            per_thread * threads as u64
        }
        AckMode::Pipelined(window) => {
            let body = content(size, 0);
            let mut in_flight: VecDeque<(Instant, PendingWrite)> = VecDeque::with_capacity(window);
            for i in 0..changes {
                if in_flight.len() == window {
                    let (t, pending) = in_flight.pop_front().expect("window is full");
                    pending.wait()?;
                    latencies.record(micros(t.elapsed()))?;
                }
                let change =
                    Change::put(change_path((i % 64) as usize, i / 64), body.clone(), &author);
                in_flight.push_back((Instant::now(), store.submit(change)?));
            }
            for (t, pending) in in_flight {
                pending.wait()?;
                latencies.record(micros(t.elapsed()))?;
            }
            changes
        }
    };
    let elapsed = start.elapsed();
    store.close()?;
    Ok(AckRun { acks, elapsed, note: format!("ack latency {}", p50_p99(&latencies)) })
}
