//! `ferry files ...`: the store without a server. Reading commands open the data directory
//! read-only (they work beside a running writer and show what is flushed to the B+tree);
//! writing commands take the partitions' write locks and return once the change is durable.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Subcommand, ValueEnum};
use ferry_config::FerryConfig;
use ferry_file_server::backend::FsDir;
use ferry_file_server::read_only::StoreSnapshot;
use ferry_file_server::store::{partition_dir, read_layout};
use ferry_file_server::tree::verify_tree;
use ferry_file_server::wal::verify_wal;
use ferry_file_server::{BatchRoute, Change, FileMeta, FilePath, ReadOnlyStore, Store};

use super::store_options::store_options;

#[derive(Subcommand, Debug)]
pub enum FilesCommand {
    /// List files under a prefix, in path order.
    Ls {
        /// Only paths starting with this (default `/`).
        #[arg(default_value = "/")]
        prefix: String,
        /// Also print revision, size, modification time and author.
        #[arg(long, short)]
        long: bool,
    },
    /// Write a file's content to stdout.
    Get { path: String },
    /// Print a file's metadata.
    Stat { path: String },
    /// Write one file from FILE, or from stdin with `-` (the default).
    Put {
        path: String,
        #[arg(default_value = "-")]
        source: String,
        /// The author recorded with the change.
        #[arg(long, default_value = "admin")]
        author: String,
    },
    /// Import a directory tree: DIR/a/b.txt becomes /a/b.txt.
    Import {
        dir: PathBuf,
        #[arg(long, default_value = "admin")]
        author: String,
    },
    /// Export every file's metadata (and, as jsonl, its content).
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
    /// Check every checksum and B+tree invariant of every partition.
    Verify,
    /// Per-partition counts and sizes.
    Stats,
    /// Rewrite every partition's tree without garbage (needs the write locks; readers keep
    /// reading).
    Compact,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

pub fn run(config: &FerryConfig, cmd: &FilesCommand) -> anyhow::Result<ExitCode> {
    let dir = config.store.data_dir.as_path();
    match cmd {
        FilesCommand::Ls { prefix, long } => ls(dir, prefix, *long),
        FilesCommand::Get { path } => get(dir, path),
        FilesCommand::Stat { path } => stat(dir, path),
        FilesCommand::Put { path, source, author } => put(config, path, source, author),
        FilesCommand::Import { dir: source, author } => import(config, source, author),
        FilesCommand::Export { format } => export(dir, *format),
        FilesCommand::Verify => verify(dir),
        FilesCommand::Stats => stats(dir),
        FilesCommand::Compact => compact(config),
    }
}

fn snapshot(dir: &Path) -> anyhow::Result<StoreSnapshot> {
    Ok(ReadOnlyStore::open(dir)?.snapshot()?)
}

fn parse_path(raw: &str) -> anyhow::Result<FilePath> {
    FilePath::parse(raw).with_context(|| format!("bad path {raw:?}"))
}

fn rfc3339(mtime_ms: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(mtime_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

fn ls(dir: &Path, prefix: &str, long: bool) -> anyhow::Result<ExitCode> {
    let snap = snapshot(dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for item in snap.scan(prefix, None) {
        let (path, meta) = item?;
        if long {
            writeln!(
                out,
                "{:>6} {:>10} {} {:<12} {path}",
                meta.rev,
                meta.size,
                rfc3339(meta.mtime_ms),
                meta.author
            )?;
        } else {
            writeln!(out, "{path}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn get(dir: &Path, raw: &str) -> anyhow::Result<ExitCode> {
    let path = parse_path(raw)?;
    let Some(record) = ReadOnlyStore::open(dir)?.get(&path)? else { bail!("no file {path}") };
    let content = record.content.unwrap_or_default();
    let mut out = std::io::stdout().lock();
    out.write_all(&content)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn stat(dir: &Path, raw: &str) -> anyhow::Result<ExitCode> {
    let path = parse_path(raw)?;
    // Metadata only: a stat must not copy the content out of the tree.
    let Some(m) = ReadOnlyStore::open(dir)?.stat(&path)? else { bail!("no file {path}") };
    println!("path: {path}");
    println!("rev: {}", m.rev);
    println!("size: {}", m.size);
    println!("mtime: {} ({} ms)", rfc3339(m.mtime_ms), m.mtime_ms);
    println!("author: {}", m.author);
    println!("sha256: {}", m.hash_hex());
    Ok(ExitCode::SUCCESS)
}

fn open_writer(config: &FerryConfig) -> anyhow::Result<Store> {
    let dir = &config.store.data_dir;
    Store::open(dir, store_options(&config.store))
        .with_context(|| format!("cannot open {} for writing", dir.display()))
}

fn put(config: &FerryConfig, raw: &str, source: &str, author: &str) -> anyhow::Result<ExitCode> {
    let path = parse_path(raw)?;
    let mut content = Vec::new();
    if source == "-" {
        std::io::stdin().read_to_end(&mut content).context("read stdin")?;
    } else {
        content = std::fs::read(source).with_context(|| format!("read {source}"))?;
    }
    let store = open_writer(config)?;
    let applied = store.apply(Change::put(path.clone(), content, author))?;
    store.close()?;
    println!("{path} rev {} ({} bytes)", applied.meta.rev, applied.meta.size);
    Ok(ExitCode::SUCCESS)
}

/// Every regular file below `root` with its Ferry path, in path order.
fn files_below(root: &Path) -> anyhow::Result<Vec<(FilePath, PathBuf)>> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let local = entry.path();
                let relative = local.strip_prefix(root).expect("walked below root");
                let mut ferry = String::new();
                for part in relative.components() {
                    let part = part
                        .as_os_str()
                        .to_str()
                        .with_context(|| format!("{} is not valid UTF-8", local.display()))?;
                    ferry.push('/');
                    ferry.push_str(part);
                }
                let path = FilePath::parse(&ferry)
                    .with_context(|| format!("{} cannot be a Ferry path", local.display()))?;
                out.push((path, local));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// An import commits this many files at a time, or fewer once their content reaches
/// [`IMPORT_BATCH_BYTES`].
const IMPORT_BATCH_FILES: usize = 1_000;
const IMPORT_BATCH_BYTES: usize = 64 << 20;

/// Writes the files in batches straight into the trees (`BatchRoute::Trees`: the walk is in
/// path order, so a batch fills few leaves): through the logs every byte would be written
/// twice, and every file held in memory until its flush.
fn import(config: &FerryConfig, source: &Path, author: &str) -> anyhow::Result<ExitCode> {
    let files = files_below(source)?;
    let store = open_writer(config)?;
    let mut batch = Vec::with_capacity(IMPORT_BATCH_FILES);
    let (mut batch_bytes, mut bytes) = (0usize, 0u64);
    for (i, (path, local)) in files.iter().enumerate() {
        let content = std::fs::read(local).with_context(|| format!("read {}", local.display()))?;
        batch_bytes += content.len();
        bytes += content.len() as u64;
        batch.push(Change::put(path.clone(), content, author));
        let last = i + 1 == files.len();
        if last || batch.len() >= IMPORT_BATCH_FILES || batch_bytes >= IMPORT_BATCH_BYTES {
            store.write_batch(&batch, BatchRoute::Trees)?;
            batch.clear();
            batch_bytes = 0;
        }
    }
    store.close()?;
    println!("imported {} files ({bytes} bytes) from {}", files.len(), source.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct ExportRow<'a> {
    path: &'a str,
    rev: u64,
    size: u64,
    mtime_ms: u64,
    author: &'a str,
    sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_b64: Option<String>,
}

fn row<'a>(path: &'a FilePath, meta: &'a FileMeta) -> ExportRow<'a> {
    ExportRow {
        path: path.as_str(),
        rev: meta.rev,
        size: meta.size,
        mtime_ms: meta.mtime_ms,
        author: &meta.author,
        sha256: meta.hash_hex(),
        content: None,
        content_b64: None,
    }
}

fn export(dir: &Path, format: ExportFormat) -> anyhow::Result<ExitCode> {
    let snap = snapshot(dir)?;
    let stdout = std::io::stdout().lock();
    match format {
        ExportFormat::Jsonl => {
            let mut out = std::io::BufWriter::new(stdout);
            for item in snap.scan("/", None) {
                let (path, meta) = item?;
                let content =
                    snap.content_of(&path)?.with_context(|| format!("{path} vanished"))?;
                let mut r = row(&path, &meta);
                match std::str::from_utf8(content) {
                    Ok(text) => r.content = Some(text.to_owned()),
                    Err(_) => {
                        r.content_b64 =
                            Some(base64::engine::general_purpose::STANDARD.encode(content))
                    }
                }
                serde_json::to_writer(&mut out, &r)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        ExportFormat::Csv => {
            let mut out = csv::Writer::from_writer(stdout);
            for item in snap.scan("/", None) {
                let (path, meta) = item?;
                out.serialize(row(&path, &meta))?;
            }
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    let layout = read_layout(dir)?;
    let mut problems = 0usize;
    let (mut files, mut pages, mut records) = (0u64, 0u64, 0u64);
    for p in 0..layout.partitions {
        let partition = FsDir::new(partition_dir(dir, p));
        let tree = verify_tree(Arc::new(partition.clone()))?;
        files += tree.live_entries;
        pages += tree.node_pages + tree.overflow_pages;
        for problem in &tree.problems {
            println!("partition {p}: {problem}");
        }
        problems += tree.problems.len();
        let wal = verify_wal(&partition)?;
        records += wal.records;
        if let Some(tail) = &wal.torn_tail {
            let what = if wal.is_ok() { "torn last record (cut at next open)" } else { "damage" };
            println!(
                "partition {p}: write-ahead log {what}: {} at offset {}: {}, {} later segments",
                tail.segment.display(),
                tail.offset,
                tail.why,
                tail.later_segments
            );
        }
        problems += usize::from(!wal.is_ok());
    }
    if problems == 0 {
        println!(
            "ok: {} partitions, {files} files, {pages} tree pages and {records} WAL records checked",
            layout.partitions
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{problems} problems found");
        Ok(ExitCode::FAILURE)
    }
}

fn stats(dir: &Path) -> anyhow::Result<ExitCode> {
    let stats = snapshot(dir)?.stats();
    println!("partition  files  tombstones  tree_bytes  garbage_bytes  generation  txn");
    for s in &stats.partitions {
        println!(
            "{:>9}  {:>5}  {:>10}  {:>10}  {:>13}  {:>10}  {}",
            s.partition, s.files, s.tombstones, s.tree_bytes, s.garbage_bytes, s.generation, s.txn
        );
    }
    println!(
        "files: {}\ntombstones: {}\ntree bytes: {}\ngarbage bytes: {}",
        stats.files, stats.tombstones, stats.tree_bytes, stats.garbage_bytes
    );
    Ok(ExitCode::SUCCESS)
}

fn compact(config: &FerryConfig) -> anyhow::Result<ExitCode> {
    let store = open_writer(config)?;
    let results = store.compact()?;
    store.close()?;
    let before: u64 = results.iter().map(|r| r.bytes_before).sum();
    let after: u64 = results.iter().map(|r| r.bytes_after).sum();
    println!("compacted {} partitions: {before} -> {after} bytes", results.len());
    Ok(ExitCode::SUCCESS)
}
