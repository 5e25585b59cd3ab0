//! An in-memory [`StorageDir`] that can crash: a test backend, not for production use.
//!
//! [`CrashSimDir`] keeps, per file, the durable bytes (as of the last `sync_data`) and the
//! operations issued since (writes and `set_len`). Reads and maps see every operation, as a page
//! cache would. [`CrashSimDir::crash`] returns the directory as a machine would find it after a
//! power cut: each file holds its durable bytes plus a random subset of its pending operations,
//! some writes torn (only a prefix of whole 512-byte sectors lands). Directory changes
//! (creations, removals, renames) are durable only after [`StorageDir::sync`]; a crash keeps a
//! random prefix of the ones made since, as a journaling file system would.
//!
//! Because the subset is arbitrary, any write may land while an earlier one does not, which is
//! the reordering a disk may do. Two overlapping writes that both land keep their order: a page
//! cache writes back the latest bytes of a sector, never an older version over a newer one.
//!
//! Faults can be injected ([`CrashSimDir::fail`]) to make writes, `set_len` calls or syncs of
//! chosen files return an I/O error, and syncs are counted ([`CrashSimDir::sync_count`]) so that
//! tests can check how many a component issued. The generator is a small seeded SplitMix64, so a
//! crash is reproducible from its seed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{Mapping, OpenMode, StorageDir, StorageFile};

/// The unit a torn write is cut at.
pub const SECTOR: u64 = 512;

/// An operation that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Write,
    SetLen,
    Sync,
}

/// An in-memory directory that loses unsynced data on [`CrashSimDir::crash`]. Clones share the
/// same directory.
#[derive(Clone)]
pub struct CrashSimDir {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    state: Mutex<DirState>,
}

type InodeRef = Arc<Mutex<Inode>>;

#[derive(Default)]
struct DirState {
    /// The names as seen now.
    names: BTreeMap<String, InodeRef>,
    /// The names as of the last directory sync.
    durable_names: BTreeMap<String, InodeRef>,
    /// Directory operations since the last directory sync, in order.
    pending: Vec<DirOp>,
    faults: Vec<Fault>,
    /// Completed `sync_data` calls per file name (the name the file was opened under).
    syncs: BTreeMap<String, u64>,
    /// Completed [`StorageDir::sync_filesystem`] calls.
    filesystem_syncs: u64,
}

enum DirOp {
    Create(String, InodeRef),
    Remove(String),
    Rename(String, String),
}

struct Fault {
    name_prefix: String,
    op: FaultOp,
    remaining: u32,
}

#[derive(Default)]
struct Inode {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    pending: Vec<FileOp>,
}

enum FileOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl CrashSimDir {
    /// An empty directory; `path` only names it in error messages.
    pub fn new(path: impl Into<PathBuf>) -> CrashSimDir {
        CrashSimDir {
            shared: Arc::new(Shared { path: path.into(), state: Mutex::new(DirState::default()) }),
        }
    }

    /// The directory as it would be found after a power cut now; `self` is left untouched.
    /// The same seed on the same state gives the same result.
    pub fn crash(&self, seed: u64) -> CrashSimDir {
        let mut rng = SplitMix64(seed);
        let state = self.shared.state.lock();
        let mut names = state.durable_names.clone();
        let kept_dir_ops = rng.below(state.pending.len() as u64 + 1) as usize;
        for op in &state.pending[..kept_dir_ops] {
            match op {
                DirOp::Create(name, inode) => {
                    names.insert(name.clone(), inode.clone());
                }
                DirOp::Remove(name) => {
                    names.remove(name);
                }
                DirOp::Rename(from, to) => {
                    if let Some(inode) = names.remove(from) {
                        names.insert(to.clone(), inode);
                    }
                }
            }
        }
        // Per crash, a chance that each pending operation lands, so that runs see everything
        // from "nothing landed" to "everything landed".
        let land_percent = [0, 25, 50, 75, 100][rng.below(5) as usize];
        // No hard links exist, so every inode is reachable under one name at most.
        let crashed: BTreeMap<String, InodeRef> = names
            .into_iter()
            .map(|(name, inode)| {
                let bytes = inode.lock().after_crash(&mut rng, land_percent);
                let inode = Inode { durable: bytes.clone(), volatile: bytes, pending: Vec::new() };
                (name, Arc::new(Mutex::new(inode)))
            })
            .collect();
        CrashSimDir {
            shared: Arc::new(Shared {
                path: self.shared.path.clone(),
                state: Mutex::new(DirState {
                    names: crashed.clone(),
                    durable_names: crashed,
                    ..DirState::default()
                }),
            }),
        }
    }

    /// Makes the next `times` operations `op` on files whose name starts with `name_prefix`
    /// fail with an I/O error (`u32::MAX`: until [`CrashSimDir::clear_faults`]). A failed
    /// operation changes nothing.
    pub fn fail(&self, name_prefix: &str, op: FaultOp, times: u32) {
        self.shared.state.lock().faults.push(Fault {
            name_prefix: name_prefix.to_owned(),
            op,
            remaining: times,
        });
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.shared.state.lock().faults.clear();
    }

    /// How many `sync_data` calls succeeded on files whose name starts with `name_prefix`.
    pub fn sync_count(&self, name_prefix: &str) -> u64 {
        let state = self.shared.state.lock();
        state.syncs.iter().filter(|(n, _)| n.starts_with(name_prefix)).map(|(_, c)| c).sum()
    }

    /// How many [`StorageDir::sync_filesystem`] calls succeeded.
    pub fn filesystem_sync_count(&self) -> u64 {
        self.shared.state.lock().filesystem_syncs
    }

    /// The current (volatile) bytes of a file, if it exists.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.shared.state.lock();
        state.names.get(name).map(|inode| inode.lock().volatile.clone())
    }

    /// Overwrites bytes of a file and makes them durable at once, bypassing faults: for tests
    /// that damage a file on purpose.
    pub fn corrupt(&self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let state = self.shared.state.lock();
        let inode = state.names.get(name).ok_or_else(|| not_found(name))?;
        let mut inode = inode.lock();
        inode.apply_write(offset, bytes);
        inode.sync();
        Ok(())
    }

    fn take_fault(&self, name: &str, op: FaultOp) -> io::Result<()> {
        let mut state = self.shared.state.lock();
        let hit = state
            .faults
            .iter_mut()
            .find(|f| f.op == op && f.remaining > 0 && name.starts_with(&f.name_prefix));
        match hit {
            Some(fault) => {
                if fault.remaining != u32::MAX {
                    fault.remaining -= 1;
                }
                Err(io::Error::other(format!("injected {op:?} fault on {name}")))
            }
            None => Ok(()),
        }
    }
}

impl Inode {
    fn apply_write(&mut self, offset: u64, bytes: &[u8]) {
        apply_write(&mut self.volatile, offset, bytes);
    }

    fn sync(&mut self) {
        self.durable.clone_from(&self.volatile);
        self.pending.clear();
    }

    fn after_crash(&self, rng: &mut SplitMix64, land_percent: u64) -> Vec<u8> {
        let mut bytes = self.durable.clone();
        for op in &self.pending {
            if rng.below(100) >= land_percent {
                continue;
            }
            match op {
                FileOp::SetLen(len) => bytes.resize(*len as usize, 0),
                FileOp::Write { offset, bytes: data } => {
                    let end = offset + data.len() as u64;
                    // Sector boundaries strictly inside the write are where it can tear.
                    let first_cut = (offset / SECTOR + 1) * SECTOR;
                    let cuts = if end > first_cut { (end - 1 - first_cut) / SECTOR + 1 } else { 0 };
                    let keep = if cuts > 0 && rng.below(4) == 0 {
                        (first_cut + rng.below(cuts) * SECTOR - offset) as usize
                    } else {
                        data.len()
                    };
                    apply_write(&mut bytes, *offset, &data[..keep]);
                }
            }
        }
        bytes
    }
}

fn apply_write(target: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if target.len() < end {
        target.resize(end, 0);
    }
    target[start..end].copy_from_slice(bytes);
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl StorageDir for CrashSimDir {
    fn path(&self) -> &Path {
        &self.shared.path
    }

    fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.shared.state.lock();
        let inode = match state.names.get(name) {
            Some(inode) => inode.clone(),
            None if mode == OpenMode::Create => {
                let inode = InodeRef::default();
                state.names.insert(name.to_owned(), inode.clone());
                state.pending.push(DirOp::Create(name.to_owned(), inode.clone()));
                inode
            }
            None => return Err(not_found(name)),
        };
        Ok(Arc::new(SimFile {
            dir: self.clone(),
            name: name.to_owned(),
            path: self.shared.path.join(name),
            writable: mode != OpenMode::ReadOnly,
            inode,
        }))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.shared.state.lock().names.keys().cloned().collect())
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        let mut state = self.shared.state.lock();
        state.names.remove(name).ok_or_else(|| not_found(name))?;
        state.pending.push(DirOp::Remove(name.to_owned()));
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.shared.state.lock();
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_owned(), inode);
        state.pending.push(DirOp::Rename(from.to_owned(), to.to_owned()));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.shared.state.lock();
        state.durable_names = state.names.clone();
        state.pending.clear();
        Ok(())
    }

    /// The simulated directory is a file system of its own, shared by its clones.
    fn filesystem(&self) -> Option<u64> {
        Some(Arc::as_ptr(&self.shared) as u64)
    }

    /// Syncs every file and the directory. A `Sync` fault injected with an empty name prefix
    /// fails it.
    fn sync_filesystem(&self) -> io::Result<()> {
        self.take_fault("", FaultOp::Sync)?;
        let mut state = self.shared.state.lock();
        for inode in state.names.values() {
            inode.lock().sync();
        }
        state.durable_names = state.names.clone();
        state.pending.clear();
        state.filesystem_syncs += 1;
        Ok(())
    }
}

struct SimFile {
    dir: CrashSimDir,
    name: String,
    path: PathBuf,
    writable: bool,
    inode: InodeRef,
}

struct SimMapping(Vec<u8>);

impl Mapping for SimMapping {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl SimFile {
    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is open read-only", self.name),
            ))
        }
    }
}

impl StorageFile for SimFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.inode.lock().volatile.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inode = self.inode.lock();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match inode.volatile.get(start..).and_then(|rest| rest.get(..buf.len())) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: read of {} bytes at {offset} past the end", self.name, buf.len()),
            )),
        }
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.dir.take_fault(&self.name, FaultOp::Write)?;
        let mut inode = self.inode.lock();
        inode.apply_write(offset, buf);
        inode.pending.push(FileOp::Write { offset, bytes: buf.to_vec() });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.dir.take_fault(&self.name, FaultOp::SetLen)?;
        let mut inode = self.inode.lock();
        inode.volatile.resize(len as usize, 0);
        inode.pending.push(FileOp::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.dir.take_fault(&self.name, FaultOp::Sync)?;
        self.inode.lock().sync();
        *self.dir.shared.state.lock().syncs.entry(self.name.clone()).or_default() += 1;
        Ok(())
    }

    fn map(&self) -> io::Result<Arc<dyn Mapping>> {
        Ok(Arc::new(SimMapping(self.inode.lock().volatile.clone())))
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough to pick crash outcomes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for `n > 0`; 0 for `n == 0`.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &CrashSimDir, name: &str, offset: u64, bytes: &[u8]) -> Arc<dyn StorageFile> {
        let f = dir.open_file(name, OpenMode::Create).unwrap();
        f.write_all_at(bytes, offset).unwrap();
        f
    }

    #[test]
    fn synced_bytes_survive_every_crash_and_unsynced_ones_may_not() {
        let dir = CrashSimDir::new("/sim");
        let f = write(&dir, "a", 0, b"durable");
        f.sync_data().unwrap();
        dir.sync().unwrap();
        f.write_all_at(b"VOLATILE", 7).unwrap();
        assert_eq!(dir.read_file("a").unwrap(), b"durableVOLATILE");
        let mut saw_lost = false;
        let mut saw_kept = false;
        for seed in 0..64 {
            let after = dir.crash(seed).read_file("a").unwrap();
            assert_eq!(&after[..7], b"durable");
            match after.len() {
                7 => saw_lost = true,
                15 => {
                    assert_eq!(&after[7..], b"VOLATILE");
                    saw_kept = true;
                }
                n => panic!("unexpected length {n}"),
            }
        }
        assert!(saw_lost && saw_kept);
        // The original is untouched by crashing a copy.
        assert_eq!(dir.read_file("a").unwrap(), b"durableVOLATILE");
    }

    #[test]
    fn same_seed_same_outcome() {
        let dir = CrashSimDir::new("/sim");
        for i in 0..20u64 {
            write(&dir, &format!("f{i}"), i * 100, &[i as u8; 3000]);
        }
        for seed in 0..10 {
            let a = dir.crash(seed);
            let b = dir.crash(seed);
            assert_eq!(a.list().unwrap(), b.list().unwrap());
            for name in a.list().unwrap() {
                assert_eq!(a.read_file(&name), b.read_file(&name));
            }
        }
    }

    #[test]
    fn torn_writes_keep_whole_sectors_only() {
        let dir = CrashSimDir::new("/sim");
        let f = write(&dir, "a", 0, &[]);
        f.sync_data().unwrap();
        dir.sync().unwrap();
        f.write_all_at(&[7u8; 4 * SECTOR as usize], 100).unwrap();
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..400 {
            let after = dir.crash(seed).read_file("a").unwrap();
            assert!(after.iter().skip(100).all(|&b| b == 7));
            lengths.insert(after.len());
        }
        // Nothing, cuts at 512, 1024, 1536, 2048, and the whole write.
        let expected: std::collections::BTreeSet<usize> =
            [0, 512, 1024, 1536, 2048, 2148].into_iter().collect();
        assert_eq!(lengths, expected);
    }

    #[test]
    fn directory_changes_need_a_directory_sync() {
        let dir = CrashSimDir::new("/sim");
        let f = write(&dir, "new", 0, b"x");
        f.sync_data().unwrap();
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..32 {
            outcomes.insert(dir.crash(seed).list().unwrap());
        }
        assert_eq!(outcomes.len(), 2, "the unsynced creation both survives and vanishes");
        dir.sync().unwrap();
        dir.rename("new", "renamed").unwrap();
        for seed in 0..32 {
            let names = dir.crash(seed).list().unwrap();
            assert!(names == ["new"] || names == ["renamed"], "{names:?}");
        }
        dir.sync().unwrap();
        assert_eq!(dir.crash(1).read_file("renamed").unwrap(), b"x");
    }

    #[test]
    fn injected_faults_fail_and_change_nothing() {
        let dir = CrashSimDir::new("/sim");
        let f = write(&dir, "wal-1", 0, b"abc");
        dir.fail("wal-", FaultOp::Sync, 1);
        dir.fail("wal-", FaultOp::Write, 1);
        assert!(f.sync_data().is_err());
        assert!(f.write_all_at(b"zzz", 0).is_err());
        assert_eq!(dir.read_file("wal-1").unwrap(), b"abc");
        assert_eq!(dir.sync_count("wal-"), 0);
        f.sync_data().unwrap();
        assert_eq!(dir.sync_count("wal-"), 1);
        dir.fail("wal-", FaultOp::SetLen, u32::MAX);
        assert!(f.set_len(0).is_err());
        assert!(f.set_len(0).is_err());
        dir.clear_faults();
        f.set_len(0).unwrap();
        assert_eq!(dir.read_file("wal-1").unwrap(), b"");
    }

    #[test]
    fn read_only_handles_refuse_writes_and_reads_past_the_end_fail() {
        let dir = CrashSimDir::new("/sim");
        write(&dir, "a", 0, b"abc");
        let ro = dir.open_file("a", OpenMode::ReadOnly).unwrap();
        assert_eq!(ro.write_all_at(b"x", 0).unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        let mut buf = [0u8; 4];
        assert_eq!(ro.read_exact_at(&mut buf, 0).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(dir.open_file("missing", OpenMode::ReadWrite).is_err());
        assert_eq!(ro.map().unwrap().bytes(), b"abc");
    }
}
