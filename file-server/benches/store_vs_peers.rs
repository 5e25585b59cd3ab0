//! Ferry's store side by side with LMDB (`heed`), redb and SQLite (`rusqlite`, bundled), all
//! durable at commit, on the same data in the same run. Prints a Markdown table.
//!
//! Run: `cargo bench -p ferry-file-server --bench store_vs_peers -- [--full] [options]`
//! (`-- --help` lists the workloads, engines and sizes). Results go in
//! `docs/benchmarks/store.md`.

mod store_bench;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ferry_file_server::BatchRoute;
use hdrhistogram::Histogram;

use store_bench::data::{self, Batch};
use store_bench::engine::{dir_bytes, KvEngine};
use store_bench::table::{self, Baseline, Better, Goal, Row};
use store_bench::timing::{micros, micros_histogram, p50_p99};
use store_bench::{ferry, lmdb, redb_peer, sqlite};

/// The allocator and options of the `ferry` binary (see its `main.rs`), for every engine here.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: &[u8; 11] = b"thp:always\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Batch write of `--files` files of `--small-size` bytes.
    Write,
    /// Random point reads of the files `write` wrote.
    Read,
    /// Prefix scans (one user directory, everything) of the files `write` wrote.
    Scan,
    /// Batch write of `--large-files` files of `--large-size` bytes.
    Large,
    /// Space after `--overwrites` overwrites of `--overwrite-files` files, before and after
    /// compaction.
    Space,
    /// WAL group commit through Ferry's store with the `always` policy, and the disk's fsync
    /// rate for reference.
    Wal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EngineKind {
    Lmdb,
    Redb,
    Sqlite,
    /// Ferry's B+tree alone: `TreeFile::commit`, snapshot reads (no cache).
    FerryTree,
    /// Ferry's full write path: each batch a `Store::write_batch` through the WAL (`always`),
    /// write-behind flush, moka-cached reads.
    FerryStore,
    /// Ferry's `Store` writing each batch with `Store::write_batch` straight into the trees
    /// (write workloads only: its reads are `ferry-store`'s).
    FerryStoreBatch,
}

impl EngineKind {
    fn name(self) -> &'static str {
        match self {
            EngineKind::Lmdb => lmdb::NAME,
            EngineKind::Redb => redb_peer::NAME,
            EngineKind::Sqlite => sqlite::NAME,
            EngineKind::FerryTree => ferry::TREE_NAME,
            EngineKind::FerryStore => ferry::STORE_NAME,
            EngineKind::FerryStoreBatch => ferry::STORE_BATCH_NAME,
        }
    }

    fn is_peer(self) -> bool {
        matches!(self, EngineKind::Lmdb | EngineKind::Redb | EngineKind::Sqlite)
    }

    fn open(self, dir: &Path, args: &Args) -> anyhow::Result<Box<dyn KvEngine>> {
        Ok(match self {
            EngineKind::Lmdb => Box::new(lmdb::Lmdb::create(dir, args.lmdb_map_mib << 20)?),
            EngineKind::Redb => Box::new(redb_peer::Redb::create(dir)?),
            EngineKind::Sqlite => Box::new(sqlite::Sqlite::create(dir)?),
            EngineKind::FerryTree => Box::new(ferry::FerryTree::create(dir)?),
            EngineKind::FerryStore => {
                Box::new(ferry::FerryStore::create(dir, args.cache_mib << 20, BatchRoute::Logs)?)
            }
            EngineKind::FerryStoreBatch => {
                Box::new(ferry::FerryStore::create(dir, args.cache_mib << 20, BatchRoute::Trees)?)
            }
        })
    }
}

/// Ferry's store benchmark against LMDB, redb and SQLite.
#[derive(Debug, Parser)]
struct Args {
    /// Workloads to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "write,read,scan,large,space,wal"
    )]
    workloads: Vec<Workload>,
    /// Engines to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "lmdb,redb,sqlite,ferry-tree,ferry-store,ferry-store-batch"
    )]
    engines: Vec<EngineKind>,
    /// Times each engine runs each workload (alternating the engine order); the best counts.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The full sizes: 100k large files and 1M overwrites (overrides those two options).
    #[arg(long)]
    full: bool,
    /// Files written by `write` (and read by `read` and `scan`).
    #[arg(long, default_value_t = 100_000)]
    files: u64,
    /// Content bytes of each `write` file.
    #[arg(long, default_value_t = 500)]
    small_size: usize,
    /// Files written by `large` (the full size is 100,000).
    #[arg(long, default_value_t = 25_000)]
    large_files: u64,
    /// Content bytes of each `large` file.
    #[arg(long, default_value_t = 16 << 10)]
    large_size: usize,
    /// Files per commit (transaction).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Random point reads per pass (three passes, the best counts).
    #[arg(long, default_value_t = 300_000)]
    reads: usize,
    /// Point reads per read transaction (snapshot).
    #[arg(long, default_value_t = 1_000)]
    reads_per_txn: usize,
    /// Files overwritten by `space`.
    #[arg(long, default_value_t = 10_000)]
    overwrite_files: u64,
    /// Overwrites done by `space` (the full size is 1,000,000).
    #[arg(long, default_value_t = 200_000)]
    overwrites: u64,
    /// Concurrent writer threads in `wal`.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Changes acknowledged in each `wal` run.
    #[arg(long, default_value_t = 200_000)]
    wal_changes: u64,
    /// Changes in flight for the pipelined `wal` submitter.
    #[arg(long, default_value_t = 1_024)]
    wal_window: usize,
    /// Ferry store cache size, MiB.
    #[arg(long, default_value_t = 512)]
    cache_mib: u64,
    /// LMDB map size, MiB (address space; a smaller one lets valgrind run LMDB).
    #[arg(long, default_value_t = 64 << 10)]
    lmdb_map_mib: usize,
    /// Where the stores are created (a fresh directory inside it, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn wants(&self, workload: Workload) -> bool {
        self.workloads.contains(&workload)
    }

    /// The engines in the order they run: `--rounds` times, every other round reversed, so
    /// that a change in the machine's load during a run does not favour one engine.
    fn runs(&self) -> Vec<EngineKind> {
        (0..self.rounds)
            .flat_map(|round| {
                let mut order = self.engines.clone();
                if round % 2 == 1 {
                    order.reverse();
                }
                order
            })
            .collect()
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.full {
        args.large_files = 100_000;
        args.overwrites = 1_000_000;
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let base = tempfile::Builder::new()
        .prefix("ferry-store-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("create a work directory in {}", parent.display()))?;
    println!("# store_vs_peers");
    println!("load average at start: {}", load_average());
    println!("work directory: {}", base.path().display());
    println!("{args:?}\n");

    let mut rows = Vec::new();
    if args.wants(Workload::Write) || args.wants(Workload::Read) || args.wants(Workload::Scan) {
        small_files(&args, base.path(), &mut rows)?;
    }
    if args.wants(Workload::Large) {
        large_files(&args, base.path(), &mut rows)?;
    }
    if args.wants(Workload::Space) {
        space(&args, base.path(), &mut rows)?;
    }
    if args.wants(Workload::Wal) {
        for _ in 0..args.rounds {
            wal(&args, base.path(), &mut rows)?;
        }
    }
    let rows = table::best_per_engine(rows);
    println!("\n{}", table::markdown(&rows));
    println!("Goals:\n{}", table::goals(&rows));
    println!("load average at end: {}", load_average());
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Writes back every dirty page of earlier runs so that they do not slow the next one.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// A fresh, empty directory for one engine's store.
fn fresh_dir(base: &Path, label: &str, kind: EngineKind) -> anyhow::Result<PathBuf> {
    let dir = base.join(format!("{label}-{kind:?}").to_lowercase());
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Commits every batch; returns the elapsed time (with `finish_writes`) and commit latencies.
fn load(
    engine: &mut dyn KvEngine,
    batches: &[Batch],
) -> anyhow::Result<(Duration, Histogram<u64>)> {
    let mut latencies = micros_histogram();
    let start = Instant::now();
    for batch in batches {
        let commit = Instant::now();
        engine.commit_batch(batch)?;
        latencies.record(micros(commit.elapsed()))?;
    }
    engine.finish_writes()?;
    Ok((start.elapsed(), latencies))
}

/// A batch-write row. The goal (at least the fastest peer) is checked on the tree alone and on
/// the Store's route a caller takes for files of this size, `store_route`: the other route is
/// shown beside it, and is slower for this size by design (see `BatchRoute`).
fn write_row(
    label: String,
    kind: EngineKind,
    store_route: BatchRoute,
    files: u64,
    elapsed: Duration,
    latencies: &Histogram<u64>,
) -> Row {
    Row {
        workload: label,
        engine: kind.name(),
        is_peer: kind.is_peer(),
        value: files as f64 / elapsed.as_secs_f64(),
        unit: "files/s",
        better: Better::Higher,
        baseline: Baseline::BestPeer,
        note: match kind {
            EngineKind::FerryStore => format!(
                "{}; final Store::flush timed; batch {}",
                ferry::describe(BatchRoute::Logs),
                p50_p99(latencies)
            ),
            EngineKind::FerryStoreBatch => {
                format!("{}; batch {}", ferry::describe(BatchRoute::Trees), p50_p99(latencies))
            }
            _ => format!("commit {}", p50_p99(latencies)),
        },
        goal: match (kind, store_route) {
            (EngineKind::FerryTree, _)
            | (EngineKind::FerryStore, BatchRoute::Logs)
            | (EngineKind::FerryStoreBatch, BatchRoute::Trees) => Some(Goal::RatioAtLeast(1.0)),
            _ => None,
        },
    }
}

/// Runs `pass` `passes` times and returns the shortest time with what it returned.
fn best_of<T>(
    passes: usize,
    mut pass: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Duration, T)> {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..passes {
        let start = Instant::now();
        let out = pass()?;
        let elapsed = start.elapsed();
        if best.as_ref().is_none_or(|(b, _)| elapsed < *b) {
            best = Some((elapsed, out));
        }
    }
    best.ok_or_else(|| anyhow::anyhow!("no passes"))
}

/// Workloads 1 (500-byte files), 2 and 3: each engine writes the same files, then reads and
/// scans them.
fn small_files(args: &Args, base: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let batches = data::insert_batches(args.files, args.small_size, args.batch, 1);
    let keys = data::random_keys(args.files, args.reads, 2);
    let write_label =
        format!("write {}k x {} B, {}/commit", args.files / 1000, args.small_size, args.batch);
    let read_label = format!("random point reads, {} B files, 1 thread", args.small_size);
    let dir_prefix = "/home/user7/";
    let dir_rows = (0..args.files).filter(|n| n % 100 == 7).count() as u64;
    for kind in args.runs() {
        settle();
        let dir = fresh_dir(base, "small", kind)?;
        let mut engine = kind.open(&dir, args)?;
        let (elapsed, latencies) = load(engine.as_mut(), &batches)?;
        println!("{}: wrote {} files in {elapsed:.2?}", kind.name(), args.files);
        if args.wants(Workload::Write) {
            // Small files go through the logs: into the trees each rewrites a 4 KiB leaf.
            let row = write_row(
                write_label.clone(),
                kind,
                BatchRoute::Logs,
                args.files,
                elapsed,
                &latencies,
            );
            rows.push(row);
        }
        if args.wants(Workload::Read) && kind != EngineKind::FerryStoreBatch {
            if kind == EngineKind::FerryStore {
                // Warm the cache: every file once.
                for batch in &batches {
                    let paths: Vec<_> = batch.iter().map(|(p, _)| p.clone()).collect();
                    engine.read_each(&paths)?;
                }
            }
            let (elapsed, found) = best_of(3, || {
                let mut found = 0;
                for chunk in keys.chunks(args.reads_per_txn) {
                    found += engine.read_each(chunk)?;
                }
                Ok(found)
            })?;
            anyhow::ensure!(
                found == keys.len() as u64,
                "{}: found {found} of {} keys",
                kind.name(),
                keys.len()
            );
            let cached = kind == EngineKind::FerryStore;
            rows.push(Row {
                workload: format!("{read_label}, cache {}", if cached { "on" } else { "off" }),
                engine: kind.name(),
                is_peer: kind.is_peer(),
                value: keys.len() as f64 / elapsed.as_secs_f64(),
                unit: "reads/s",
                better: Better::Higher,
                baseline: if cached { Baseline::None } else { Baseline::Lmdb },
                note: if cached {
                    "Store::get, moka cache warm (every file read once first)".into()
                } else {
                    format!(
                        "{} reads per read txn/snapshot, value copied to a Vec",
                        args.reads_per_txn
                    )
                },
                goal: match kind {
                    // Uncached reads within 1.25x of LMDB; cached reads at least 5M/s.
                    EngineKind::FerryTree => Some(Goal::RatioAtLeast(1.0 / 1.25)),
                    EngineKind::FerryStore => Some(Goal::ValueAtLeast(5e6)),
                    _ => None,
                },
            });
        }
        if args.wants(Workload::Scan) && kind != EngineKind::FerryStoreBatch {
            for (label, prefix, expected, passes) in [
                (format!("prefix scan {dir_prefix} ({dir_rows} rows)"), dir_prefix, dir_rows, 20),
                (format!("full scan ({} rows)", args.files), "/", args.files, 3),
            ] {
                let (elapsed, scanned) = best_of(passes, || engine.scan_prefix(prefix))?;
                anyhow::ensure!(
                    scanned == expected,
                    "{}: scan of {prefix} gave {scanned} rows, expected {expected}",
                    kind.name()
                );
                rows.push(Row {
                    workload: label,
                    engine: kind.name(),
                    is_peer: kind.is_peer(),
                    value: scanned as f64 / elapsed.as_secs_f64(),
                    unit: "rows/s",
                    better: Better::Higher,
                    baseline: Baseline::BestPeer,
                    note: format!("best of {passes}; path and metadata copied"),
                    goal: None,
                });
            }
        }
        drop(engine);
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Workload 1 with large files.
fn large_files(args: &Args, base: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let batches = data::insert_batches(args.large_files, args.large_size, args.batch, 3);
    let label = format!(
        "write {}k x {} KiB, {}/commit",
        args.large_files / 1000,
        args.large_size >> 10,
        args.batch
    );
    for kind in args.runs() {
        settle();
        let dir = fresh_dir(base, "large", kind)?;
        let mut engine = kind.open(&dir, args)?;
        let (elapsed, latencies) = load(engine.as_mut(), &batches)?;
        println!("{}: wrote {} large files in {elapsed:.2?}", kind.name(), args.large_files);
        // Large files go into the trees: through the logs every byte is written twice.
        let mut row = write_row(
            label.clone(),
            kind,
            BatchRoute::Trees,
            args.large_files,
            elapsed,
            &latencies,
        );
        row.note
            .push_str(&format!(", {:.0} MiB on disk", dir_bytes(&dir)? as f64 / (1 << 20) as f64));
        rows.push(row);
        drop(engine);
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Workload 4: file size after many overwrites of a few files, before and after compaction.
fn space(args: &Args, base: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let initial = data::insert_batches(args.overwrite_files, args.small_size, args.batch, 4);
    let overwrites = data::overwrite_batches(
        args.overwrite_files,
        args.overwrites,
        args.small_size,
        args.batch,
        5,
    );
    let what =
        format!("{}k overwrites of {}k files", args.overwrites / 1000, args.overwrite_files / 1000);
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    for kind in args.runs() {
        settle();
        let dir = fresh_dir(base, "space", kind)?;
        let mut engine = kind.open(&dir, args)?;
        load(engine.as_mut(), &initial)?;
        let (elapsed, latencies) = load(engine.as_mut(), &overwrites)?;
        let mut overwrite_row = write_row(
            format!("overwrite: {what}"),
            kind,
            BatchRoute::Logs,
            args.overwrites,
            elapsed,
            &latencies,
        );
        overwrite_row.unit = "writes/s";
        overwrite_row.goal = None;
        rows.push(overwrite_row);
        let after = dir_bytes(&dir)?;
        let breakdown = engine.space_breakdown();
        let compacted = engine.compact(&dir)?;
        let after_compaction = match compacted.bytes {
            Some(bytes) => bytes,
            None => dir_bytes(&dir)?,
        };
        let with_breakdown = |note: String, breakdown: Option<String>| match breakdown {
            Some(b) => format!("{note}: {b}"),
            None => note,
        };
        println!(
            "{}: {what}: {:.1} MiB, compacted {:.1} MiB",
            kind.name(),
            mib(after),
            mib(after_compaction)
        );
        for (label, bytes, note) in [
            (
                format!("space after {what}"),
                after,
                with_breakdown(
                    "the blocks of every file in the store's directory".into(),
                    breakdown,
                ),
            ),
            (
                format!("space after {what}, compacted"),
                after_compaction,
                with_breakdown(compacted.how.into(), engine.space_breakdown()),
            ),
        ] {
            rows.push(Row {
                workload: label,
                engine: kind.name(),
                is_peer: kind.is_peer(),
                value: mib(bytes),
                unit: "MiB",
                better: Better::Lower,
                baseline: Baseline::BestPeer,
                note,
                goal: None,
            });
        }
        drop(engine);
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Workload 5: acknowledged changes/s through Ferry's store with the `always` WAL policy, and
/// the fsync rate of this disk for reference.
fn wal(args: &Args, base: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    settle();
    let dir = base.join("fsync");
    std::fs::create_dir_all(&dir)?;
    let (count, elapsed) = fsync_rate(&dir.join("append"), Duration::from_secs(3))?;
    rows.push(Row {
        workload: "disk: 4 KiB append + fdatasync, 1 thread".into(),
        engine: "(reference)",
        is_peer: false,
        value: count as f64 / elapsed.as_secs_f64(),
        unit: "fsyncs/s",
        better: Better::Higher,
        baseline: Baseline::None,
        note: format!("{count} appends in {elapsed:.2?}"),
        goal: None,
    });
    std::fs::remove_dir_all(&dir)?;
    if !args.engines.contains(&EngineKind::FerryStore) {
        return Ok(());
    }
    for mode in [ferry::AckMode::Threads(args.writers), ferry::AckMode::Pipelined(args.wal_window)]
    {
        settle();
        let dir = fresh_dir(base, "wal", EngineKind::FerryStore)?;
        let run = ferry::acknowledged_changes(
            &dir,
            args.cache_mib << 20,
            mode,
            args.wal_changes,
            args.small_size,
        )?;
        println!("{}: {mode:?}: {} acks in {:.2?}", ferry::STORE_NAME, run.acks, run.elapsed);
        rows.push(Row {
            workload: format!("WAL always: acknowledged {} B changes, {mode}", args.small_size),
            engine: ferry::STORE_NAME,
            is_peer: false,
            value: run.acks as f64 / run.elapsed.as_secs_f64(),
            unit: "acks/s",
            better: Better::Higher,
            baseline: Baseline::None,
            note: run.note,
            goal: Some(Goal::ValueAtLeast(50_000.0)),
        });
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Appends 4 KiB and syncs, again and again for `duration`; returns the count and the time.
fn fsync_rate(path: &Path, duration: Duration) -> anyhow::Result<(u64, Duration)> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path)?;
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        file.write_all_at(&block, count * block.len() as u64)?;
        file.sync_data()?;
        count += 1;
    }
    Ok((count, start.elapsed()))
}
