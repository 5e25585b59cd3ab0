//! The benchmark's data, generated from fixed seeds so that every engine stores the same bytes.

use std::sync::Arc;

use bytes::Bytes;
use ferry_file_server::{FilePath, Record};

/// One durable transaction's worth of changes, sorted by path and without duplicates (what
/// Ferry's `TreeFile::commit` asks for; the peers get the same batches).
pub type Batch = Vec<(FilePath, Record)>;

/// Modification times start here so that they look like real ones.
const MTIME_BASE_MS: u64 = 1_790_000_000_000;

/// The `n`th file's path: 100 user directories, files spread across them.
pub fn path_of(n: u64) -> FilePath {
    FilePath::parse(&format!("/home/user{}/file{n}.txt", n % 100))
        .expect("generated paths are valid")
}

/// The author every record carries (a client id of a typical length).
pub fn author() -> Arc<str> {
    Arc::from("bench-client-0001")
}

fn record(n: u64, rev: u64, size: usize, author: &Arc<str>, rng: &mut fastrand::Rng) -> Record {
    let mut content = vec![0u8; size];
    rng.fill(&mut content);
    Record::live(rev, MTIME_BASE_MS + n + rev, Arc::clone(author), Bytes::from(content))
}

/// `files` new files of `size` bytes, inserted in random order, `per_batch` to a batch.
pub fn insert_batches(files: u64, size: usize, per_batch: usize, seed: u64) -> Vec<Batch> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut order: Vec<u64> = (0..files).collect();
    rng.shuffle(&mut order);
    let author = author();
    order
        .chunks(per_batch)
        .map(|chunk| {
            let mut batch: Batch = chunk
                .iter()
                .map(|&n| (path_of(n), record(n, 1, size, &author, &mut rng)))
                .collect();
            batch.sort_by(|a, b| a.0.cmp(&b.0));
            batch
        })
        .collect()
}

/// `overwrites` new versions of `files` existing files (revisions from 2 on): each round of
/// `files` changes touches every file once in a random order, `per_batch` to a batch.
pub fn overwrite_batches(
    files: u64,
    overwrites: u64,
    size: usize,
    per_batch: usize,
    seed: u64,
) -> Vec<Batch> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let author = author();
    let mut revs = vec![1u64; files as usize];
    let mut batches = Vec::new();
    let mut left = overwrites;
    while left > 0 {
        let mut order: Vec<u64> = (0..files).collect();
        rng.shuffle(&mut order);
        order.truncate(left.min(files) as usize);
        left -= order.len() as u64;
        for chunk in order.chunks(per_batch) {
            let mut batch: Batch = chunk
                .iter()
                .map(|&n| {
                    revs[n as usize] += 1;
                    (path_of(n), record(n, revs[n as usize], size, &author, &mut rng))
                })
                .collect();
            batch.sort_by(|a, b| a.0.cmp(&b.0));
            batches.push(batch);
        }
    }
    batches
}

/// `count` paths drawn uniformly (with repeats) from the first `files` files.
pub fn random_keys(files: u64, count: usize, seed: u64) -> Vec<FilePath> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count).map(|_| path_of(rng.u64(0..files))).collect()
}

/// What the peers store as a file's value: the same metadata Ferry keeps in its leaf cell
/// (revision, size, mtime, SHA-256, author) followed by the content, so that every engine
/// stores the same information.
pub fn encode_value(out: &mut Vec<u8>, record: &Record) {
    let meta = &record.meta;
    out.clear();
    out.extend_from_slice(&meta.rev.to_le_bytes());
    out.extend_from_slice(&meta.size.to_le_bytes());
    out.extend_from_slice(&meta.mtime_ms.to_le_bytes());
    out.extend_from_slice(&meta.hash);
    out.push(u8::try_from(meta.author.len()).expect("author <= 255 bytes"));
    out.extend_from_slice(meta.author.as_bytes());
    if let Some(content) = &record.content {
        out.extend_from_slice(content);
    }
}

/// The length of the metadata at the front of an [`encode_value`] value (what a listing reads).
pub fn metadata_len(value: &[u8]) -> usize {
    const FIXED: usize = 8 + 8 + 8 + 32;
    (FIXED + 1 + value.get(FIXED).copied().unwrap_or(0) as usize).min(value.len())
}

/// The smallest key greater than every key that starts with `prefix` (for engines whose range
/// scans take an upper bound), or `None` when there is none.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
