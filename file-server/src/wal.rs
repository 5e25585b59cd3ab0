//! The write-ahead log of one partition: every change is here before it is acknowledged.
//!
//! The log is a series of segment files `wal-<first lsn, 20 digits>.log` in the partition
//! directory, written through [`StorageDir`]. A segment starts with a 24-byte header and holds
//! records with consecutive log sequence numbers (LSNs); the byte layout is in
//! `docs/FORMAT.md` ("Write-ahead log").
//!
//! Appending encodes the record into an in-memory buffer and hands out its LSN; waiting for it
//! is a separate call, so that one thread can pipeline many changes and many threads can share
//! one `fdatasync` (group commit). Whoever writes is the leader: it takes the whole buffer,
//! writes it with one call and syncs once; records appended meanwhile go to the next leader.
//! Under [`WalSync::Always`] a syncer thread of the log leads as soon as records are appended,
//! so that the sync starts at append, not at the first wait: a caller that appends to many
//! logs and then waits has every log syncing at once, and a lone pipelining appender keeps
//! preparing records while earlier ones are being synced. Under the other policies, and for a
//! waiter that finds records buffered and no write in progress, the waiter leads.
//!
//! An atomic group opened with [`GroupSync::Caller`] does not wake the syncer at all: its
//! records cannot be acknowledged before the group ends, and the caller, about to wait for
//! them, leads their sync itself. Handing that sync to the syncer thread and being woken back
//! costs two context switches per sync, which on two cores measured a sixth of the server's
//! CPU per write (`BENCHMARKS.md`). Nor does a record appended with
//! [`WriteAheadLog::append_synced_by`] and [`GroupSync::Caller`], by a caller that waits for
//! it at once (`PartitionStore::apply`): 64 threads applying that way made 1.07-1.23x the
//! acknowledgements/s of the hand-off.
//!
//! A caller that appends to several logs on one file system can instead hand each log's
//! records to the OS ([`WriteAheadLog::write_unsynced`]), make all of them durable with one
//! sync of the file system, and release their waiters ([`WriteAheadLog::mark_synced`]): one
//! device flush for all the logs (`crate::store::WalGroupSync::Filesystem`).
//!
//! Recovery ([`WriteAheadLog::open`]) replays every record after the B+tree's checkpoint. The
//! first record that is short, fails its CRC or breaks the LSN sequence ends the log: that is
//! where a crash tore the tail, and the tail is cut there before anything new is written.
//!
//! Atomic groups: between [`WriteAheadLog::begin_group`] and [`WriteAheadLog::end_group`] every
//! record is flagged "grouped", and the group is closed by the next unflagged record (a commit
//! record written by `end_group`). Recovery replays a group only once its closing record is
//! there; a log that ends inside a group ends where the group began. This is what makes a
//! write and the idempotency key that remembers it one unit: both or neither survive a crash.
//! A record is acknowledged ([`WriteAheadLog::wait`]) only once the log is durably closed after
//! it, so no one is ever told "done" about a record that recovery could still drop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::backend::{OpenMode, StorageDir, StorageFile};
use crate::error::{Result, StoreError};
use crate::record::MAX_AUTHOR_BYTES;

/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FERRYWAL";
/// The segment format this code writes and reads.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of a segment header: magic, version, a reserved zero `u32`, first LSN.
pub const SEGMENT_HEADER_LEN: usize = 24;
/// Bytes of a record header: body length `u32`, CRC-32 `u32`, LSN `u64`.
pub const RECORD_HEADER_LEN: usize = 16;
/// Bytes of the fixed part of a record body: op, author length, path length, mtime, rev.
pub const BODY_FIXED_LEN: usize = 20;
/// A segment is closed and a new one started once it holds this many bytes.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Segments grow by this many zero bytes ahead of the records. No more than
/// [`ROLL_COVERED_BYTES`]: a segment is often closed early at about that length, and zeros
/// written past it were written (and, under `Always`, synced) for nothing.
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 1 << 20;

/// A segment at least this long whose every record is at or below the checkpoint is closed at
/// the next append, so that the checkpoint after it can delete it. A roll costs the appending
/// thread two truncates, three syncs and a directory sync; at 1 MiB the peak preset (15,000
/// writes/s over 16 partitions) rolled about six times a second, and its p99.9 showed it.
pub const ROLL_COVERED_BYTES: u64 = 8 << 20;

/// The zeros every preallocation writes from, a chunk at a time: a fresh zeroed buffer per
/// preallocation cost a quarter of a worker thread's time in `memset`.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

const OP_PUT: u8 = 1;
const OP_APPEND: u8 = 2;
const OP_PATCH: u8 = 3;
const OP_DELETE: u8 = 4;
/// Closes an atomic group; changes nothing.
const OP_COMMIT: u8 = 5;
/// Set in the op byte of a record that belongs to an atomic group a later record closes.
const GROUPED: u8 = 0x80;

/// Who syncs an atomic group's records (see the module documentation). Either way they are
/// synced before anyone is told they are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSync {
    /// The log's syncer thread (under [`WalSync::Always`]), from the first record on: for a
    /// group whose caller will not be the first to wait for it, e.g. one of several logs it
    /// appends to and then waits for in turn.
    Syncer,
    /// Whoever waits first, once the group has ended: the caller is about to wait for this
    /// log, and leads its sync without a hand-off to the syncer thread.
    Caller,
}

/// How far a log had been handed to the OS ([`WriteAheadLog::write_unsynced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenPoint {
    lsn: u64,
    /// The last written record that leaves no group open: what its waiters may be told.
    closed_lsn: u64,
}

/// When the log is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalSync {
    /// A change is acknowledged only after an `fdatasync` covering it (group-committed).
    #[default]
    Always,
    /// A change is acknowledged once written to the OS; a background thread syncs every this
    /// many milliseconds (Redis `appendfsync everysec` is `Interval(1000)`). A power cut can
    /// lose up to that much; a process crash loses nothing.
    Interval(u64),
    /// A change is acknowledged once written to the OS, which syncs when it likes.
    Os,
}

/// How a log is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    pub sync: WalSync,
    /// Size at which a segment is closed and the next one started.
    pub segment_bytes: u64,
    /// Zero bytes written ahead of the records, so that most syncs overwrite allocated
    /// blocks instead of growing the file; growing needs a journal commit per sync, which on
    /// a typical disk makes a sync several times slower. 0 disables.
    pub preallocate_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            sync: WalSync::Always,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
        }
    }
}

/// What a change did to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalOp<'a> {
    /// The file's content is now these bytes.
    Put(&'a [u8]),
    /// These bytes were appended.
    Append(&'a [u8]),
    /// `delete` bytes at byte offset `at` were replaced by `insert`.
    Patch { at: u64, delete: u64, insert: &'a [u8] },
    /// The file was deleted.
    Delete,
}

/// One logged change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalEntry<'a> {
    pub path: &'a str,
    pub author: &'a str,
    pub mtime_ms: u64,
    /// The file's revision after the change.
    pub rev: u64,
    pub op: WalOp<'a>,
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalRecovery {
    /// Records after the checkpoint handed to the replay function.
    pub replayed: u64,
    /// Bytes cut from a torn tail, and the segment it was in.
    pub truncated: Option<(String, u64)>,
    /// Segments after a torn one, removed.
    pub removed_segments: Vec<String>,
    /// The LSN the next append gets.
    pub next_lsn: u64,
}

/// The file name of the segment whose first record has `first_lsn`.
pub fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.log")
}

/// The first LSN of a segment, from its file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

fn body_len(entry: &WalEntry<'_>) -> usize {
    let extra = match entry.op {
        WalOp::Put(bytes) | WalOp::Append(bytes) => bytes.len(),
        WalOp::Patch { insert, .. } => 16 + insert.len(),
        WalOp::Delete => 0,
    };
    BODY_FIXED_LEN + entry.path.len() + entry.author.len() + extra
}

/// Appends the framed record to `buf`, flagged as part of an open atomic group if `grouped`.
fn encode(buf: &mut Vec<u8>, lsn: u64, entry: &WalEntry<'_>, grouped: bool) -> Result<()> {
    if entry.author.len() > MAX_AUTHOR_BYTES {
        return Err(StoreError::AuthorTooLong { len: entry.author.len(), max: MAX_AUTHOR_BYTES });
    }
    let len = body_len(entry);
    let path_len = u16::try_from(entry.path.len());
    let (Ok(len32), Ok(path_len)) = (u32::try_from(len), path_len) else {
        return Err(StoreError::TooLarge {
            path: entry.path.to_owned(),
            size: len as u64,
            max: u64::from(u32::MAX),
        });
    };
    let start = buf.len();
    buf.reserve(RECORD_HEADER_LEN + len);
    buf.extend_from_slice(&len32.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&lsn.to_le_bytes());
    let (op, data): (u8, &[u8]) = match entry.op {
        WalOp::Put(bytes) => (OP_PUT, bytes),
        WalOp::Append(bytes) => (OP_APPEND, bytes),
        WalOp::Patch { insert, .. } => (OP_PATCH, insert),
        WalOp::Delete => (OP_DELETE, &[]),
    };
    buf.push(if grouped { op | GROUPED } else { op });
    buf.push(entry.author.len() as u8);
    buf.extend_from_slice(&path_len.to_le_bytes());
    buf.extend_from_slice(&entry.mtime_ms.to_le_bytes());
    buf.extend_from_slice(&entry.rev.to_le_bytes());
    buf.extend_from_slice(entry.path.as_bytes());
    buf.extend_from_slice(entry.author.as_bytes());
    if let WalOp::Patch { at, delete, .. } = entry.op {
        buf.extend_from_slice(&at.to_le_bytes());
        buf.extend_from_slice(&delete.to_le_bytes());
    }
    buf.extend_from_slice(data);
    seal(buf, start);
    Ok(())
}

/// Appends a commit record: the fixed body part, all zero but the op.
fn encode_commit(buf: &mut Vec<u8>, lsn: u64) {
    let start = buf.len();
    buf.extend_from_slice(&(BODY_FIXED_LEN as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.push(OP_COMMIT);
    buf.extend_from_slice(&[0; BODY_FIXED_LEN - 1]);
    seal(buf, start);
}

/// Fills in the CRC of the record that starts at `start` and runs to the end of `buf`.
fn seal(buf: &mut [u8], start: usize) {
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The result of reading one record.
enum Frame<'a> {
    Record {
        lsn: u64,
        /// `None` for a commit record.
        entry: Option<WalEntry<'a>>,
        grouped: bool,
        body: &'a [u8],
        next: usize,
    },
    /// No more records: nothing left, or a torn or garbled frame (why).
    End(Option<&'static str>),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the frame at `offset`. A frame that is short, fails its CRC or has an unexpected LSN
/// ends the log; a frame whose CRC holds but whose body does not parse is corruption.
fn read_frame<'a>(
    bytes: &'a [u8],
    offset: usize,
    expected_lsn: u64,
    file: &str,
) -> std::result::Result<Frame<'a>, String> {
    let rest = &bytes[offset..];
    if rest.is_empty() {
        return Ok(Frame::End(None));
    }
    if rest.len() >= RECORD_HEADER_LEN && rest[..RECORD_HEADER_LEN].iter().all(|&b| b == 0) {
        // Preallocated space; bytes after the zeros mean a batch landed only in part.
        return Ok(Frame::End(if rest.iter().all(|&b| b == 0) {
            None
        } else {
            Some("zeros before later bytes")
        }));
    }
    if rest.len() < RECORD_HEADER_LEN {
        return Ok(Frame::End(Some("record header cut short")));
    }
    let len = u32_at(rest, 0) as usize;
    if rest.len() - RECORD_HEADER_LEN < len {
        return Ok(Frame::End(Some("record body cut short")));
    }
    let crc = u32_at(rest, 4);
    let framed = &rest[8..RECORD_HEADER_LEN + len];
    if crc32fast::hash(framed) != crc {
        return Ok(Frame::End(Some("record checksum mismatch")));
    }
    let lsn = u64_at(rest, 8);
    if lsn != expected_lsn {
        return Ok(Frame::End(Some("record out of sequence")));
    }
    let body = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
    let (entry, grouped) =
        parse_body(body).map_err(|what| format!("{file}: record {lsn}: {what}"))?;
    Ok(Frame::Record { lsn, entry, grouped, body, next: offset + RECORD_HEADER_LEN + len })
}

/// The change a body describes (`None` for a commit record) and whether it is grouped.
fn parse_body(body: &[u8]) -> std::result::Result<(Option<WalEntry<'_>>, bool), &'static str> {
    if body.len() < BODY_FIXED_LEN {
        return Err("body shorter than its fixed part");
    }
    let grouped = body[0] & GROUPED != 0;
    let op = body[0] & !GROUPED;
    if op == OP_COMMIT {
        if grouped {
            return Err("commit record flagged as grouped");
        }
        if body.len() != BODY_FIXED_LEN || body[1..].iter().any(|&b| b != 0) {
            return Err("commit record carries data");
        }
        return Ok((None, false));
    }
    let author_len = usize::from(body[1]);
    let path_len = usize::from(u16::from_le_bytes([body[2], body[3]]));
    let mtime_ms = u64_at(body, 4);
    let rev = u64_at(body, 12);
    let mut at = BODY_FIXED_LEN;
    let mut take = |n: usize| -> std::result::Result<&[u8], &'static str> {
        let slice = body.get(at..at + n).ok_or("field runs past the body")?;
        at += n;
        Ok(slice)
    };
    let path = std::str::from_utf8(take(path_len)?).map_err(|_| "path is not UTF-8")?;
    let author = std::str::from_utf8(take(author_len)?).map_err(|_| "author is not UTF-8")?;
    let op = match op {
        OP_PUT => WalOp::Put(&body[at..]),
        OP_APPEND => WalOp::Append(&body[at..]),
        OP_PATCH => {
            let fixed = take(16)?;
            WalOp::Patch { at: u64_at(fixed, 0), delete: u64_at(fixed, 8), insert: &body[at..] }
        }
        OP_DELETE if at == body.len() => WalOp::Delete,
        OP_DELETE => return Err("delete record carries data"),
        _ => return Err("unknown operation"),
    };
    Ok((Some(WalEntry { path, author, mtime_ms, rev, op }), grouped))
}

fn segment_header(first_lsn: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    h
}

/// Whether a segment's header is intact; `Ok(false)` if it was torn while being created.
fn check_segment_header(bytes: &[u8], first_lsn: u64, file: &Path) -> Result<bool> {
    let expected = segment_header(first_lsn);
    if bytes.len() >= SEGMENT_HEADER_LEN && bytes[..SEGMENT_HEADER_LEN] == expected {
        return Ok(true);
    }
    let n = bytes.len().min(SEGMENT_HEADER_LEN);
    // A creation torn by a crash leaves a prefix of the header, or zeros.
    let torn = bytes.len() < SEGMENT_HEADER_LEN || bytes[..n].iter().all(|&b| b == 0);
    if torn && (bytes[..n] == expected[..n] || bytes[..n].iter().all(|&b| b == 0)) {
        return Ok(false);
    }
    if bytes[..n.min(8)] != SEGMENT_MAGIC[..n.min(8)] {
        return Err(StoreError::Foreign {
            file: file.to_owned(),
            what: "no FERRYWAL magic".into(),
        });
    }
    let version = u32_at(bytes, 8);
    if version != SEGMENT_VERSION {
        return Err(StoreError::Foreign {
            file: file.to_owned(),
            what: format!("segment format version {version}, this build reads {SEGMENT_VERSION}"),
        });
    }
    Err(StoreError::corrupt(
        file,
        16,
        format!("header names first LSN {}, the file name {first_lsn}", u64_at(bytes, 16)),
    ))
}

/// What reading every segment found.
struct LogScan {
    /// Segment files by first LSN, oldest first.
    names: Vec<(u64, String)>,
    /// The segments read up to where the log ends.
    segments: Vec<Segment>,
    /// Where the log ends before its files do: (index into `names`, valid length, why).
    torn: Option<(usize, u64, &'static str)>,
    /// The last segment's valid length, if preallocated zeros follow it.
    zero_tail: Option<u64>,
    last_lsn: u64,
    expected_next_in_last: u64,
}

/// Reads every segment in order, handing each change record to `visit`, up to the first torn
/// or invalid frame; a group's records once its closing record is read. Writes nothing.
fn scan_log(
    dir: &dyn StorageDir,
    visit: &mut dyn FnMut(u64, &WalEntry<'_>) -> Result<()>,
) -> Result<LogScan> {
    let dir_path = dir.path().to_owned();
    let mut names: Vec<(u64, String)> = dir
        .list()
        .map_err(|e| StoreError::io("list", &dir_path, e))?
        .into_iter()
        .filter_map(|name| parse_segment_name(&name).map(|lsn| (lsn, name)))
        .collect();
    names.sort();

    let mut segments: Vec<Segment> = Vec::new();
    let mut last_lsn = 0u64;
    let mut torn = None;
    let mut expected_next_in_last = 0u64;
    let mut zero_tail = None;
    let mut open_group: Option<OpenGroup> = None;
    for (i, (first_lsn, name)) in names.iter().enumerate() {
        let path = dir_path.join(name);
        let file = dir
            .open_file(name, OpenMode::ReadOnly)
            .map_err(|e| StoreError::io("open wal segment", &path, e))?;
        let map = file.map().map_err(|e| StoreError::io("map wal segment", &path, e))?;
        let bytes = map.bytes();
        if !check_segment_header(bytes, *first_lsn, &path)? {
            torn = Some((i, 0, "segment header torn"));
            break;
        }
        if *first_lsn <= last_lsn {
            return Err(StoreError::corrupt(
                path,
                0,
                format!("segment starts at LSN {first_lsn}, the previous ended at {last_lsn}"),
            ));
        }
        let mut offset = SEGMENT_HEADER_LEN;
        let mut expected = *first_lsn;
        loop {
            let frame = read_frame(bytes, offset, expected, name)
                .map_err(|what| StoreError::corrupt(path.clone(), offset as u64, what))?;
            match frame {
                Frame::Record { lsn, entry, grouped, body, next } => {
                    if grouped {
                        let group = open_group.get_or_insert_with(|| OpenGroup {
                            segment: i,
                            offset: offset as u64,
                            first_lsn: lsn,
                            records: Vec::new(),
                        });
                        group.records.push((lsn, body.to_vec()));
                    } else {
                        if let Some(group) = open_group.take() {
                            for (lsn, body) in &group.records {
                                if let (Some(entry), _) = parse_body(body).map_err(|what| {
                                    StoreError::corrupt(
                                        path.clone(),
                                        0,
                                        format!("record {lsn}: {what}"),
                                    )
                                })? {
                                    visit(*lsn, &entry)?;
                                }
                            }
                        }
                        if let Some(entry) = entry {
                            visit(lsn, &entry)?;
                        }
                    }
                    last_lsn = lsn;
                    expected = lsn + 1;
                    offset = next;
                }
                Frame::End(None) => {
                    zero_tail = (offset < bytes.len()).then_some(offset as u64);
                    break;
                }
                Frame::End(Some(why)) => {
                    torn = Some((i, offset as u64, why));
                    break;
                }
            }
        }
        segments.push(Segment {
            first_lsn: *first_lsn,
            name: name.clone(),
            bytes: offset as u64,
            allocated: offset as u64,
        });
        expected_next_in_last = expected;
        if torn.is_some() {
            break;
        }
    }
    if let Some(group) = open_group {
        // The group was never closed: the log ends where it began, as if torn there.
        segments.truncate(group.segment + 1);
        let seg = segments.last_mut().expect("the group's segment was read");
        seg.bytes = group.offset;
        seg.allocated = group.offset;
        torn = Some((group.segment, group.offset, "atomic group never closed"));
        zero_tail = None;
        last_lsn = group.first_lsn - 1;
        expected_next_in_last = group.first_lsn;
    }
    Ok(LogScan { names, segments, torn, zero_tail, last_lsn, expected_next_in_last })
}

/// The records of an atomic group read so far, held back until a record closes the group.
struct OpenGroup {
    /// Where the group's first record is: index into the segment names, byte offset.
    segment: usize,
    offset: u64,
    first_lsn: u64,
    /// (LSN, body) of each record.
    records: Vec<(u64, Vec<u8>)>,
}

/// Where a log ends before its files do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalTornTail {
    pub segment: PathBuf,
    pub offset: u64,
    pub why: &'static str,
    /// Segments after the torn one. Their records are unreachable: normal recovery never
    /// leaves any, so a non-zero count is damage.
    pub later_segments: usize,
}

/// What [`verify_wal`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalVerifyReport {
    pub segments: usize,
    /// Records whose checksum and framing hold.
    pub records: u64,
    pub first_lsn: Option<u64>,
    pub last_lsn: Option<u64>,
    /// A torn last record is what a crash leaves and the next writer cuts off.
    pub torn_tail: Option<WalTornTail>,
}

impl WalVerifyReport {
    /// Whether the log is sound: at most its last record torn.
    pub fn is_ok(&self) -> bool {
        self.torn_tail.as_ref().is_none_or(|t| t.later_segments == 0)
    }
}

/// Checks every record of the log in `dir` without changing anything; works beside a live
/// writer (it then sees the log as of some moment) and with read permission only.
pub fn verify_wal(dir: &dyn StorageDir) -> Result<WalVerifyReport> {
    let mut report = WalVerifyReport::default();
    let scan = scan_log(dir, &mut |lsn, _| {
        report.records += 1;
        report.first_lsn.get_or_insert(lsn);
        report.last_lsn = Some(lsn);
        Ok(())
    })?;
    report.segments = scan.names.len();
    report.torn_tail = scan.torn.map(|(i, offset, why)| WalTornTail {
        segment: dir.path().join(&scan.names[i].1),
        offset,
        why,
        later_segments: scan.names.len() - i - 1,
    });
    Ok(report)
}

struct Segment {
    first_lsn: u64,
    name: String,
    /// Bytes of header and records.
    bytes: u64,
    /// Length of the file, preallocated zeros included.
    allocated: u64,
}

/// What only the current leader (or a checkpoint) touches: the open segment and the list.
struct IoState {
    dir: Arc<dyn StorageDir>,
    file: Arc<dyn StorageFile>,
    /// Oldest first; the last one is being written.
    segments: Vec<Segment>,
    segment_bytes: u64,
    preallocate_bytes: u64,
    /// The last checkpoint: every record up to here is in the tree.
    checkpoint_lsn: u64,
}

struct State {
    /// Encoded records not yet handed to the OS.
    buf: Vec<u8>,
    /// A cleared buffer kept to swap in, so that steady state allocates nothing.
    spare: Vec<u8>,
    /// LSN of the first record in `buf`.
    buf_first_lsn: u64,
    next_lsn: u64,
    /// Every record up to here was written to the OS.
    written_lsn: u64,
    /// Every record up to here was synced.
    synced_lsn: u64,
    /// Atomic groups begun and not yet ended; while any is open, appends are flagged grouped.
    open_groups: u32,
    /// Of `open_groups`, those opened with [`GroupSync::Syncer`]: while there is one, every
    /// append wakes the syncer.
    syncer_groups: u32,
    /// Records were appended for the syncer to sync, and no leader has taken them yet. The
    /// syncer leads only then: records of a [`GroupSync::Caller`] group are its caller's.
    sync_asked: bool,
    /// The last appended record that leaves no group open (every LSN up to it is closed).
    closed_lsn: u64,
    /// `closed_lsn` as of the last write, and as of the last sync: what a waiter may be told.
    written_closed_lsn: u64,
    synced_closed_lsn: u64,
    /// A leader is writing; waiters sleep on the condvar.
    leader: bool,
    /// Tells the `Always` syncer thread to return.
    stop_syncer: bool,
    /// The first write or sync error; the log accepts nothing after it.
    failed: Option<(PathBuf, String)>,
    /// Sum of the segment files' sizes.
    total_bytes: u64,
    segment_count: usize,
    closed: bool,
}

struct Shared {
    sync: WalSync,
    state: Mutex<State>,
    /// Waiters sleep here until a leader is done.
    cond: Condvar,
    /// The `Always` syncer sleeps here until records are appended.
    appended: Condvar,
    io: Mutex<IoState>,
}

/// The background thread of a policy that has one.
enum Syncer {
    /// `Always`: leads a write and sync whenever records are buffered; stopped through
    /// [`State::stop_syncer`].
    Eager(JoinHandle<()>),
    /// `Interval`: syncs periodically; stopped by dropping the sender.
    Periodic(Sender<()>, JoinHandle<()>),
}

/// The write-ahead log of one partition. See the module documentation.
pub struct WriteAheadLog {
    shared: Arc<Shared>,
    syncer: Option<Syncer>,
}

impl WriteAheadLog {
    /// Opens the log in `dir` for writing, replaying every record with an LSN above
    /// `checkpoint_lsn` through `replay`, in LSN order. A torn tail is cut off and the log
    /// continues after the last good record (or after the checkpoint, if that is later).
    /// If `replay` fails, nothing on disk has been changed.
    pub fn open(
        dir: Arc<dyn StorageDir>,
        checkpoint_lsn: u64,
        options: WalOptions,
        replay: &mut dyn FnMut(u64, &WalEntry<'_>) -> Result<()>,
    ) -> Result<(WriteAheadLog, WalRecovery)> {
        let dir_path = dir.path().to_owned();
        let mut recovery = WalRecovery::default();
        let LogScan { names, mut segments, torn, zero_tail, last_lsn, expected_next_in_last } =
            scan_log(dir.as_ref(), &mut |lsn, entry| {
                if lsn > checkpoint_lsn {
                    replay(lsn, entry)?;
                    recovery.replayed += 1;
                }
                Ok(())
            })?;
        if let Some((i, offset, why)) = torn {
            tracing::warn!(
                segment = %dir_path.join(&names[i].1).display(), offset, reason = why,
                "write-ahead log ends in a torn record; cutting it off"
            );
        }

        // Replay succeeded: now repair the tail.
        let mut dir_changed = false;
        if let Some((i, valid, _)) = torn {
            let (_, name) = &names[i];
            let path = dir_path.join(name);
            if valid == 0 {
                dir.remove_file(name).map_err(|e| StoreError::io("remove", &path, e))?;
                recovery.removed_segments.push(name.clone());
                dir_changed = true;
            } else {
                let file = dir
                    .open_file(name, OpenMode::ReadWrite)
                    .map_err(|e| StoreError::io("open wal segment", &path, e))?;
                let len = file.len().map_err(|e| StoreError::io("stat", &path, e))?;
                file.set_len(valid)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| StoreError::io("truncate torn wal tail", &path, e))?;
                recovery.truncated = Some((name.clone(), len - valid));
            }
            for (_, later) in &names[i + 1..] {
                dir.remove_file(later)
                    .map_err(|e| StoreError::io("remove", dir_path.join(later), e))?;
                recovery.removed_segments.push(later.clone());
                dir_changed = true;
            }
        }

        if let (None, Some(valid), Some(seg)) = (torn, zero_tail, segments.last()) {
            let path = dir_path.join(&seg.name);
            let file = dir
                .open_file(&seg.name, OpenMode::ReadWrite)
                .map_err(|e| StoreError::io("open wal segment", &path, e))?;
            file.set_len(valid)
                .and_then(|()| file.sync_data())
                .map_err(|e| StoreError::io("cut preallocated wal tail", &path, e))?;
        }

        let next_lsn = last_lsn.max(checkpoint_lsn) + 1;
        recovery.next_lsn = next_lsn;
        let reuse_last = segments.last().is_some() && expected_next_in_last == next_lsn;
        let (file, current_bytes) = if reuse_last {
            let seg = segments.last().expect("checked");
            let path = dir_path.join(&seg.name);
            let file = dir
                .open_file(&seg.name, OpenMode::ReadWrite)
                .map_err(|e| StoreError::io("open wal segment", &path, e))?;
            (file, seg.bytes)
        } else {
            let (seg, file) = create_segment(dir.as_ref(), next_lsn)?;
            let bytes = seg.bytes;
            segments.push(seg);
            dir_changed = true;
            (file, bytes)
        };
        if dir_changed {
            dir.sync().map_err(|e| StoreError::io("sync directory", &dir_path, e))?;
        }
        debug_assert_eq!(segments.last().map(|s| s.bytes), Some(current_bytes));

        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let segment_count = segments.len();
        let shared = Arc::new(Shared {
            sync: options.sync,
            state: Mutex::new(State {
                buf: Vec::new(),
                spare: Vec::new(),
                buf_first_lsn: next_lsn,
                next_lsn,
                written_lsn: next_lsn - 1,
                synced_lsn: next_lsn - 1,
                open_groups: 0,
                syncer_groups: 0,
                sync_asked: false,
                closed_lsn: next_lsn - 1,
                written_closed_lsn: next_lsn - 1,
                synced_closed_lsn: next_lsn - 1,
                leader: false,
                stop_syncer: false,
                failed: None,
                total_bytes,
                segment_count,
                closed: false,
            }),
            cond: Condvar::new(),
            appended: Condvar::new(),
            io: Mutex::new(IoState {
                dir,
                file,
                segments,
                segment_bytes: options.segment_bytes.max(SEGMENT_HEADER_LEN as u64 + 1),
                preallocate_bytes: options.preallocate_bytes,
                checkpoint_lsn,
            }),
        });
        let syncer = match options.sync {
            WalSync::Always => Some(spawn_eager_syncer(shared.clone())?),
            WalSync::Interval(ms) => Some(spawn_periodic_syncer(shared.clone(), ms)?),
            WalSync::Os => None,
        };
        Ok((WriteAheadLog { shared, syncer }, recovery))
    }

    /// Adds a record and returns its LSN. Under `Always` the syncer starts writing and
    /// syncing it at once; call [`WriteAheadLog::wait`] before acknowledging the change.
    pub fn append(&self, entry: &WalEntry<'_>) -> Result<u64> {
        self.append_synced_by(entry, GroupSync::Syncer)
    }

    /// [`WriteAheadLog::append`] for a caller about to wait for the record: `sync` says who
    /// syncs it, as for a group. With [`GroupSync::Caller`] the syncer is not woken (unless an
    /// open group asks for it) and the first waiter leads the sync.
    pub fn append_synced_by(&self, entry: &WalEntry<'_>, sync: GroupSync) -> Result<u64> {
        let mut st = self.shared.state.lock();
        if let Some(err) = st.failure() {
            return Err(err);
        }
        if st.closed {
            return Err(StoreError::Closed);
        }
        let lsn = st.next_lsn;
        let grouped = st.open_groups > 0;
        encode(&mut st.buf, lsn, entry, grouped)?;
        st.next_lsn += 1;
        if !grouped {
            st.closed_lsn = lsn;
        }
        if (!grouped && sync == GroupSync::Syncer) || st.syncer_groups > 0 {
            self.shared.ask_syncer(st);
        }
        Ok(lsn)
    }

    /// Opens an atomic group: every record appended until the matching
    /// [`WriteAheadLog::end_group`] (by any thread) survives a crash only together with the
    /// others. Groups nest: the log is closed when the last open one ends.
    pub fn begin_group(&self, sync: GroupSync) {
        let mut st = self.shared.state.lock();
        st.open_groups += 1;
        if sync == GroupSync::Syncer {
            st.syncer_groups += 1;
        }
    }

    /// Ends a group opened by [`WriteAheadLog::begin_group`]. If it was the last open one and
    /// records were appended in it, a commit record closes them. Waiters for those records are
    /// released once the commit record is durable. `sync` is the one the group began with.
    pub fn end_group(&self, sync: GroupSync) {
        let mut st = self.shared.state.lock();
        debug_assert!(st.open_groups > 0, "end_group without begin_group");
        st.open_groups = st.open_groups.saturating_sub(1);
        if sync == GroupSync::Syncer {
            st.syncer_groups = st.syncer_groups.saturating_sub(1);
        }
        if st.open_groups > 0 || st.closed_lsn == st.next_lsn - 1 {
            return;
        }
        let lsn = st.next_lsn;
        encode_commit(&mut st.buf, lsn);
        st.next_lsn += 1;
        st.closed_lsn = lsn;
        if sync == GroupSync::Syncer {
            self.shared.ask_syncer(st);
        } else {
            drop(st);
        }
        // Waiters with nothing to write sleep on `cond` until the group is closed; the first
        // of them to find no write in progress leads it.
        self.shared.cond.notify_all();
    }

    /// Whether records of closed groups (or outside any) wait for a sync.
    pub fn has_unsynced(&self) -> bool {
        let st = self.shared.state.lock();
        st.closed_lsn > st.synced_closed_lsn
    }

    /// Whether an atomic group is open (a checkpoint must not split one).
    pub fn group_open(&self) -> bool {
        self.shared.state.lock().open_groups > 0
    }

    /// Returns once no atomic group is open (or the log has failed).
    pub fn wait_no_open_group(&self) {
        let mut st = self.shared.state.lock();
        while st.open_groups > 0 && st.failed.is_none() {
            self.shared.cond.wait(&mut st);
        }
    }

    /// Returns once the record `lsn` may be acknowledged under the sync policy: synced for
    /// `Always`, written to the OS otherwise.
    pub fn wait(&self, lsn: u64) -> Result<()> {
        self.shared.wait_for(lsn, self.shared.sync == WalSync::Always)
    }

    /// Writes and syncs every record appended so far, whatever the policy.
    pub fn sync(&self) -> Result<()> {
        self.shared.sync_all()
    }

    /// Hands every record of a closed group to the OS without syncing, for one sync of the
    /// whole file system to cover several logs ([`StorageDir::sync_filesystem`]). Once such a
    /// sync that began after this returned has succeeded, [`WriteAheadLog::mark_synced`]
    /// releases the waiters of what it covers; if none does, they sync the log themselves.
    pub fn write_unsynced(&self) -> Result<WrittenPoint> {
        let target = self.shared.state.lock().closed_lsn;
        self.shared.wait_for(target, false)?;
        let st = self.shared.state.lock();
        Ok(WrittenPoint { lsn: st.written_lsn, closed_lsn: st.written_closed_lsn })
    }

    /// Records that every record up to `point` is durable: a file-system-wide sync began
    /// after [`WriteAheadLog::write_unsynced`] returned `point`, and succeeded.
    pub fn mark_synced(&self, point: WrittenPoint) {
        let mut st = self.shared.state.lock();
        st.synced_lsn = st.synced_lsn.max(point.lsn);
        st.synced_closed_lsn = st.synced_closed_lsn.max(point.closed_lsn);
        drop(st);
        self.shared.cond.notify_all();
    }

    /// Closes the open segment when the tree holds every record in it (and it holds any), and
    /// removes it: for an explicit compaction, which should give back the log's space too
    /// (appends close such a segment only from [`ROLL_COVERED_BYTES`] on, and a quiet log
    /// keeps up to that much of dead records). Returns the segments removed.
    pub fn close_covered_segment(&self) -> Result<usize> {
        let mut st = self.shared.state.lock();
        while st.leader {
            self.shared.cond.wait(&mut st);
        }
        if let Some(err) = st.failure() {
            return Err(err);
        }
        if st.buf_first_lsn != st.next_lsn {
            // Records wait to be written: the segment is not covered.
            return Ok(0);
        }
        // Leading keeps every other write out of the segments meanwhile; records appended
        // meanwhile are buffered, from `first_lsn` on, for the next leader.
        st.leader = true;
        let first_lsn = st.next_lsn;
        let result = MutexGuard::unlocked(&mut st, || {
            let mut io = self.shared.io.lock();
            let current = io.segments.last().expect("the log always has a current segment");
            let covered =
                io.checkpoint_lsn + 1 >= first_lsn && current.bytes > SEGMENT_HEADER_LEN as u64;
            if covered {
                roll(&mut io, first_lsn).map(|growth| (growth, io.checkpoint_lsn))
            } else {
                Ok((Growth::default(), io.checkpoint_lsn))
            }
        });
        st.leader = false;
        let rolled = match result {
            Ok((growth, checkpoint_lsn)) => {
                st.total_bytes += growth.bytes;
                st.segment_count += growth.segments;
                (growth.segments > 0).then_some(checkpoint_lsn)
            }
            Err((file, what)) => {
                tracing::error!(file = %file.display(), error = %what, "write-ahead log failed");
                st.failed = Some((file, what));
                None
            }
        };
        let failure = st.failure();
        drop(st);
        self.shared.cond.notify_all();
        if let Some(err) = failure {
            return Err(err);
        }
        match rolled {
            Some(checkpoint_lsn) => self.checkpoint(checkpoint_lsn),
            None => Ok(0),
        }
    }

    /// The LSN of the last appended record (the checkpoint's LSN if none was appended yet).
    pub fn last_lsn(&self) -> u64 {
        self.shared.state.lock().next_lsn - 1
    }

    /// Every record up to this LSN is synced.
    pub fn synced_lsn(&self) -> u64 {
        self.shared.state.lock().synced_lsn
    }

    /// Bytes of all segment files, and how many there are.
    pub fn size(&self) -> (u64, usize) {
        let st = self.shared.state.lock();
        (st.total_bytes, st.segment_count)
    }

    /// Removes the segments whose records all have LSNs up to `lsn`, now that the B+tree holds
    /// them durably. Returns how many were removed. The segment being written stays.
    pub fn checkpoint(&self, lsn: u64) -> Result<usize> {
        let mut io = self.shared.io.lock();
        io.checkpoint_lsn = io.checkpoint_lsn.max(lsn);
        let mut removed_bytes = 0;
        let mut removable = 0;
        while removable + 1 < io.segments.len() && io.segments[removable + 1].first_lsn <= lsn + 1 {
            removable += 1;
        }
        let doomed: Vec<Segment> = io.segments.drain(..removable).collect();
        let mut count = io.segments.len();
        let dir = io.dir.clone();
        // Unlinked after the lock is released: the writer never touches these segments again,
        // and an unlink (a truncate, with a discard on some mounts) must not hold up appends.
        drop(io);
        let (mut removed, mut kept, mut error) = (0, Vec::new(), None);
        for seg in doomed {
            // If a removal is lost in a crash, the segment's records are all at or below the
            // checkpoint and recovery skips them.
            match dir.remove_file(&seg.name) {
                Ok(()) => {
                    removed_bytes += seg.bytes;
                    removed += 1;
                }
                Err(e) => {
                    error.get_or_insert_with(|| {
                        StoreError::io("remove", dir.path().join(&seg.name), e)
                    });
                    kept.push(seg);
                }
            }
        }
        if !kept.is_empty() {
            // Older than every segment still listed: back at the front, to be tried again.
            let mut io = self.shared.io.lock();
            io.segments.splice(0..0, kept);
            count = io.segments.len();
        }
        let mut st = self.shared.state.lock();
        st.total_bytes -= removed_bytes;
        st.segment_count = count;
        error.map_or(Ok(removed), Err)
    }

    /// Writes and syncs everything appended, then stops accepting appends.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        match self.syncer.take() {
            Some(Syncer::Eager(handle)) => {
                self.shared.state.lock().stop_syncer = true;
                self.shared.appended.notify_one();
                let _ = handle.join();
            }
            Some(Syncer::Periodic(stop, handle)) => {
                drop(stop);
                let _ = handle.join();
            }
            None => {}
        }
        let result = self.shared.sync_all();
        self.shared.state.lock().closed = true;
        result
    }
}

impl Drop for WriteAheadLog {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "closing the write-ahead log failed");
        }
    }
}

/// The `Always` syncer: leads a write and `fdatasync` of everything buffered as soon as it is
/// asked to (see [`GroupSync`]), so that syncing overlaps the appender's work and other logs'
/// syncs. It stops when told to or once the log has failed (nothing can be made durable any
/// more).
fn spawn_eager_syncer(shared: Arc<Shared>) -> Result<Syncer> {
    let handle = std::thread::Builder::new()
        .name("ferry-wal-sync".into())
        .spawn(move || {
            let mut st = shared.state.lock();
            while !st.stop_syncer && st.failed.is_none() {
                if !st.leader && st.sync_asked && st.next_lsn - 1 > st.written_lsn {
                    shared.lead(&mut st, true);
                } else {
                    shared.appended.wait(&mut st);
                }
            }
        })
        .map_err(|e| StoreError::io("spawn wal sync thread", PathBuf::new(), e))?;
    Ok(Syncer::Eager(handle))
}

fn spawn_periodic_syncer(shared: Arc<Shared>, ms: u64) -> Result<Syncer> {
    let (stop, stopped): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(0);
    let interval = Duration::from_millis(ms.max(1));
    let handle = std::thread::Builder::new()
        .name("ferry-wal-sync".into())
        .spawn(move || loop {
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = shared.sync_all() {
                        tracing::error!(error = %e, "periodic write-ahead log sync failed");
                        return;
                    }
                }
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        })
        .map_err(|e| StoreError::io("spawn wal sync thread", PathBuf::new(), e))?;
    Ok(Syncer::Periodic(stop, handle))
}

fn create_segment(dir: &dyn StorageDir, first_lsn: u64) -> Result<(Segment, Arc<dyn StorageFile>)> {
    let name = segment_name(first_lsn);
    let path = dir.path().join(&name);
    let file = dir
        .open_file(&name, OpenMode::Create)
        .map_err(|e| StoreError::io("create wal segment", &path, e))?;
    file.set_len(0)
        .and_then(|()| file.write_all_at(&segment_header(first_lsn), 0))
        .and_then(|()| file.sync_data())
        .map_err(|e| StoreError::io("write wal segment header", &path, e))?;
    let len = SEGMENT_HEADER_LEN as u64;
    Ok((Segment { first_lsn, name, bytes: len, allocated: len }, file))
}

impl State {
    fn failure(&self) -> Option<StoreError> {
        self.failed
            .as_ref()
            .map(|(file, what)| StoreError::WalFailed { file: file.to_owned(), what: what.clone() })
    }
}

impl Shared {
    /// Asks the `Always` syncer to sync what is buffered (and releases the state lock).
    fn ask_syncer(&self, mut st: MutexGuard<'_, State>) {
        if self.sync == WalSync::Always {
            st.sync_asked = true;
            drop(st);
            // Cheap when the syncer is busy: it takes these records in its next round anyway.
            self.appended.notify_one();
        }
    }

    fn sync_all(&self) -> Result<()> {
        let target = self.state.lock().next_lsn - 1;
        self.wait_for(target, true)
    }

    /// Returns once `lsn` is written (and synced if `need_sync`), leading the write if no one
    /// else is.
    fn wait_for(&self, lsn: u64, need_sync: bool) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            if let Some(err) = st.failure() {
                return Err(err);
            }
            let reached = if need_sync { st.synced_closed_lsn } else { st.written_closed_lsn };
            if reached >= lsn {
                return Ok(());
            }
            // With nothing buffered and its group still open, `lsn` waits for the commit record.
            let group_pending = st.closed_lsn < lsn && st.buf_first_lsn == st.next_lsn;
            if st.leader || group_pending {
                self.cond.wait(&mut st);
                continue;
            }
            self.lead(&mut st, need_sync);
        }
    }

    /// Writes (and syncs if `need_sync`) everything buffered, with the state lock released
    /// meanwhile.
    fn lead(&self, st: &mut MutexGuard<'_, State>, need_sync: bool) {
        st.leader = true;
        // Whoever leads takes the whole buffer, asked for or not.
        st.sync_asked = false;
        let spare = std::mem::take(&mut st.spare);
        let mut batch = std::mem::replace(&mut st.buf, spare);
        let first_lsn = st.buf_first_lsn;
        let last_lsn = st.next_lsn - 1;
        let closed_lsn = st.closed_lsn;
        st.buf_first_lsn = st.next_lsn;
        let result = MutexGuard::unlocked(st, || self.write_batch(&batch, first_lsn, need_sync));
        batch.clear();
        st.spare = batch;
        st.leader = false;
        match result {
            Ok(added) => {
                st.written_lsn = last_lsn;
                st.written_closed_lsn = closed_lsn;
                if need_sync {
                    st.synced_lsn = last_lsn;
                    st.synced_closed_lsn = closed_lsn;
                }
                st.total_bytes += added.bytes;
                st.segment_count += added.segments;
            }
            Err((file, what)) => {
                tracing::error!(file = %file.display(), error = %what, "write-ahead log failed");
                st.failed = Some((file, what));
            }
        }
        self.cond.notify_all();
        if st.sync_asked {
            // Records appended while another leader wrote were announced to a busy syncer.
            self.appended.notify_one();
        }
    }

    fn write_batch(
        &self,
        batch: &[u8],
        first_lsn: u64,
        sync: bool,
    ) -> std::result::Result<Growth, (PathBuf, String)> {
        let mut io = self.io.lock();
        let mut growth = Growth::default();
        let current = io.segments.last().expect("the log always has a current segment");
        // A segment whose records the tree already holds is closed early, so that the next
        // checkpoint can delete it: otherwise a quiet log would keep up to a full segment of
        // dead records (and its preallocation) forever.
        let covered = io.checkpoint_lsn + 1 >= first_lsn && current.bytes >= ROLL_COVERED_BYTES;
        if !batch.is_empty() && (current.bytes >= io.segment_bytes || covered) {
            growth = roll(&mut io, first_lsn)?;
        }
        let seg = io.segments.last().expect("current segment");
        let (offset, allocated) = (seg.bytes, seg.allocated);
        let path = io.dir.path().join(&seg.name);
        if !batch.is_empty() {
            let end = offset + batch.len() as u64;
            io.file
                .write_all_at(batch, offset)
                .map_err(|e| (path.clone(), format!("write: {e}")))?;
            let mut new_allocated = allocated.max(end);
            if end > allocated && io.preallocate_bytes > 0 {
                new_allocated = end + io.preallocate_bytes;
                let mut at = end;
                while at < new_allocated {
                    let chunk = (new_allocated - at).min(ZEROS.len() as u64) as usize;
                    io.file
                        .write_all_at(&ZEROS[..chunk], at)
                        .map_err(|e| (path.clone(), format!("preallocate: {e}")))?;
                    at += chunk as u64;
                }
            }
            let seg = io.segments.last_mut().expect("current segment");
            seg.bytes = end;
            seg.allocated = new_allocated;
            growth.bytes += batch.len() as u64;
        }
        if sync {
            io.file.sync_data().map_err(|e| (path, format!("sync: {e}")))?;
        }
        Ok(growth)
    }
}

/// Closes the open segment and starts the next at `first_lsn`, the LSN of the next record.
fn roll(io: &mut IoState, first_lsn: u64) -> std::result::Result<Growth, (PathBuf, String)> {
    let current = io.segments.last().expect("the log always has a current segment");
    let path = io.dir.path().join(&current.name);
    // Cut the preallocated zeros and sync the full segment first: a torn record in an older
    // segment would end the log there and drop every later segment.
    io.file
        .set_len(current.bytes)
        .and_then(|()| io.file.sync_data())
        .map_err(|e| (path, format!("close segment: {e}")))?;
    let (seg, file) = create_segment(io.dir.as_ref(), first_lsn)
        .map_err(|e| (io.dir.path().join(segment_name(first_lsn)), e.to_string()))?;
    io.dir.sync().map_err(|e| (io.dir.path().to_owned(), format!("sync directory: {e}")))?;
    let growth = Growth { bytes: seg.bytes, segments: 1 };
    io.segments.push(seg);
    io.file = file;
    Ok(growth)
}

#[derive(Default)]
struct Growth {
    bytes: u64,
    segments: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, rev: u64, op: WalOp<'static>) -> WalEntry<'static> {
        let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
        WalEntry { path, author: "alice", mtime_ms: 1_700_000_000_000 + rev, rev, op }
    }

    #[test]
    fn every_op_round_trips_through_the_frame() {
        let ops = [
            WalOp::Put(b"hello"),
            WalOp::Append(b" world"),
            WalOp::Patch { at: 3, delete: 2, insert: b"XY" },
            WalOp::Delete,
            WalOp::Put(b""),
        ];
        let mut buf = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            encode(&mut buf, 10 + i as u64, &entry("/a/b", i as u64 + 1, *op), false).unwrap();
        }
        let mut offset = 0;
        for (i, op) in ops.iter().enumerate() {
            match read_frame(&buf, offset, 10 + i as u64, "t").unwrap() {
                Frame::Record { lsn, entry: e, grouped, next, .. } => {
                    assert_eq!(lsn, 10 + i as u64);
                    assert_eq!(e, Some(entry("/a/b", i as u64 + 1, *op)));
                    assert!(!grouped);
                    offset = next;
                }
                Frame::End(why) => panic!("record {i} missing: {why:?}"),
            }
        }
        assert!(matches!(read_frame(&buf, offset, 15, "t").unwrap(), Frame::End(None)));
    }

    #[test]
    fn torn_flipped_and_out_of_sequence_frames_end_the_log() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, &entry("/a", 1, WalOp::Put(b"0123456789")), false).unwrap();
        for cut in 1..buf.len() {
            let frame = read_frame(&buf[..cut], 0, 1, "t").unwrap();
            assert!(matches!(frame, Frame::End(Some(_))), "cut at {cut}");
        }
        for flip in 0..buf.len() {
            let mut bad = buf.clone();
            bad[flip] ^= 0x40;
            match read_frame(&bad, 0, 1, "t") {
                Ok(Frame::End(Some(_))) => {}
                Ok(Frame::Record { .. }) | Ok(Frame::End(None)) | Err(_) => {
                    panic!("flipped byte {flip} not detected")
                }
            }
        }
        assert!(matches!(read_frame(&buf, 0, 2, "t").unwrap(), Frame::End(Some(_))));
        // Preallocated zeros are a clean end; zeros followed by bytes are a torn batch.
        let mut zeros = vec![0u8; 64];
        assert!(matches!(read_frame(&zeros, 0, 1, "t").unwrap(), Frame::End(None)));
        zeros[40] = 1;
        assert!(matches!(read_frame(&zeros, 0, 1, "t").unwrap(), Frame::End(Some(_))));
    }

    #[test]
    fn grouped_records_and_commit_records_round_trip() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, &entry("/a", 1, WalOp::Put(b"x")), true).unwrap();
        encode_commit(&mut buf, 2);
        let Frame::Record { entry: e, grouped, next, .. } = read_frame(&buf, 0, 1, "t").unwrap()
        else {
            panic!("grouped record missing")
        };
        assert_eq!((e, grouped), (Some(entry("/a", 1, WalOp::Put(b"x"))), true));
        let Frame::Record { lsn, entry: e, grouped, .. } = read_frame(&buf, next, 2, "t").unwrap()
        else {
            panic!("commit record missing")
        };
        assert_eq!((lsn, e, grouped), (2, None, false));
    }

    #[test]
    fn a_commit_record_with_data_or_the_group_flag_is_corruption() {
        for (at, value, what) in [(0, OP_COMMIT | GROUPED, "flagged"), (5, 1, "carries data")] {
            let mut buf = Vec::new();
            encode_commit(&mut buf, 1);
            buf[RECORD_HEADER_LEN + at] = value;
            seal(&mut buf, 0);
            let err = read_frame(&buf, 0, 1, "seg").err().expect("corrupt");
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn a_checksummed_but_malformed_body_is_corruption() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, &entry("/a", 1, WalOp::Delete), false).unwrap();
        buf[RECORD_HEADER_LEN] = 99;
        let crc = crc32fast::hash(&buf[8..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let err = read_frame(&buf, 0, 1, "seg").err().expect("corrupt");
        assert!(err.contains("unknown operation"), "{err}");
    }

    #[test]
    fn oversized_fields_are_refused() {
        let mut buf = Vec::new();
        let author = "x".repeat(MAX_AUTHOR_BYTES + 1);
        let e = WalEntry { path: "/a", author: &author, mtime_ms: 0, rev: 1, op: WalOp::Delete };
        assert!(matches!(encode(&mut buf, 1, &e, false), Err(StoreError::AuthorTooLong { .. })));
        assert!(buf.is_empty());
    }

    #[test]
    fn segment_names_round_trip_and_sort_by_lsn() {
        assert_eq!(segment_name(42), "wal-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("wal-42.log"), None);
        assert_eq!(parse_segment_name("tree-00000001.ferry"), None);
        assert!(segment_name(9) < segment_name(10));
    }
}
