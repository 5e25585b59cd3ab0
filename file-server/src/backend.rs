//! The store's only door to the disk: a directory of files behind two small traits.
//!
//! Everything durable (B+tree files, WAL segments) is read and written through [`StorageDir`]
//! and [`StorageFile`], so that a simulated backend can drop, reorder or tear every write not
//! yet synced and crash tests become ordinary tests. [`FsDir`] is the real one: positional
//! I/O for writes and `memmap2` for reads.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A read-only view of a whole file, as long as the file was when it was mapped.
pub trait Mapping: Send + Sync {
    fn bytes(&self) -> &[u8];
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Existing file, reads only.
    ReadOnly,
    /// Existing file, reads and writes.
    ReadWrite,
    /// Create the file if it is absent, reads and writes.
    Create,
}

/// One file of a store.
pub trait StorageFile: Send + Sync {
    /// The file's path, for error messages.
    fn path(&self) -> &Path;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Not durable until [`StorageFile::sync_data`] returns.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Not durable until [`StorageFile::sync_data`] returns.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every earlier write and `set_len` of this file durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Starts writing `len` bytes from `offset` to the device without waiting: a hint that
    /// makes a later sync shorter, never a substitute for one. The default does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// Maps the file as it is now. Later writes inside the mapped length may or may not show
    /// through; growth beyond it needs a new mapping.
    fn map(&self) -> io::Result<Arc<dyn Mapping>>;
}

/// A directory of store files.
pub trait StorageDir: Send + Sync {
    /// The directory's path, for error messages.
    fn path(&self) -> &Path;
    fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// File names in the directory (not recursive), in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    fn remove_file(&self, name: &str) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, removals and renames in the directory durable.
    fn sync(&self) -> io::Result<()>;
    /// Which file system the directory is on, where one [`StorageDir::sync_filesystem`] can
    /// stand for syncing every file written on it: directories that answer the same value
    /// share those syncs. `None` (the default) where that is unknown or unsound.
    fn filesystem(&self) -> Option<u64> {
        None
    }
    /// Makes every write made so far to any file of the directory's file system durable, as
    /// an `fdatasync` of each would, with one device flush for all of them.
    fn sync_filesystem(&self) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "no file-system-wide sync here"))
    }
}

/// The real file system.
#[derive(Debug, Clone)]
pub struct FsDir {
    path: PathBuf,
    /// The directory opened once for [`StorageDir::sync_filesystem`], which a worker calls
    /// hundreds of times a second.
    handle: Arc<OnceLock<File>>,
}

impl FsDir {
    /// A directory that must exist.
    pub fn new(path: impl Into<PathBuf>) -> FsDir {
        FsDir { path: path.into(), handle: Arc::default() }
    }
}

impl StorageDir for FsDir {
    fn path(&self) -> &Path {
        &self.path
    }

    fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let path = self.path.join(name);
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::ReadOnly => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::Create => options.read(true).write(true).create(true),
        };
        let file = options.open(&path)?;
        Ok(Arc::new(FsFile { path, file }))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path.join(from), self.path.join(to))
    }

    fn sync(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }

    /// The directory's device number, on Linux 5.8 or later only: `syncfs` waits for every
    /// dirty page of the file system and flushes the device (syncfs(2): "the same guarantees
    /// as fsync() called on every file"), but reports writeback errors only since 5.8.
    fn filesystem(&self) -> Option<u64> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            if syncfs_reports_errors() {
                return fs::metadata(&self.path).ok().map(|m| m.dev());
            }
        }
        None
    }

    fn sync_filesystem(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let dir = match self.handle.get() {
                Some(dir) => dir,
                None => {
                    let opened = File::open(&self.path)?;
                    self.handle.get_or_init(|| opened)
                }
            };
            // SAFETY: `dir` is an open descriptor for the whole call.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
                return Ok(());
            }
            Err(io::Error::last_os_error())
        }
        #[cfg(not(target_os = "linux"))]
        Err(io::Error::new(io::ErrorKind::Unsupported, "syncfs is Linux's"))
    }
}

/// Whether the running kernel is Linux 5.8 or later, where `syncfs` returns the writeback
/// errors of the file system's files instead of dropping them.
#[cfg(target_os = "linux")]
fn syncfs_reports_errors() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        kernel_at_least(&release, (5, 8))
    })
}

/// Bytes of the machine's page cache that are dirty or being written back (`/proc/meminfo`),
/// where the system tells.
pub fn dirty_page_bytes() -> Option<u64> {
    parse_dirty_bytes(&fs::read_to_string("/proc/meminfo").ok()?)
}

/// `Dirty:` plus `Writeback:` of a `/proc/meminfo` text, in bytes.
fn parse_dirty_bytes(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib = line[name.len()..].trim().trim_end_matches("kB").trim();
        kib.parse::<u64>().ok().map(|k| k * 1024)
    };
    Some(field("Dirty:")? + field("Writeback:")?)
}

/// Whether a kernel release string (`6.1.0-18-amd64`) is at least `major.minor`.
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut numbers =
        release.trim().split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

struct FsFile {
    path: PathBuf,
    file: File,
}

struct FsMapping(memmap2::Mmap);

impl Mapping for FsMapping {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl StorageFile for FsFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
        // SAFETY: a plain system call on a descriptor this file owns; no memory is passed.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    fn map(&self) -> io::Result<Arc<dyn Mapping>> {
        // SAFETY: store files are never truncated or rewritten in place while mapped (see
        // docs/FORMAT.md): pages are append-only and a compacted file is replaced by a new
        // generation, so the mapped bytes a reader can reach do not change under it. Headers
        // are rewritten in place but carry a checksum and are read into a copy first.
        let map = unsafe { memmap2::Mmap::map(&self.file)? };
        Ok(Arc::new(FsMapping(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_dir_round_trips_bytes_through_writes_and_maps() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = FsDir::new(tmp.path());
        let f = dir.open_file("a", OpenMode::Create).unwrap();
        f.set_len(8192).unwrap();
        f.write_all_at(b"hello", 4096).unwrap();
        f.sync_data().unwrap();
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(&f.map().unwrap().bytes()[4096..4101], b"hello");
        dir.rename("a", "b").unwrap();
        dir.sync().unwrap();
        assert_eq!(dir.list().unwrap(), vec!["b".to_string()]);
        let ro = dir.open_file("b", OpenMode::ReadOnly).unwrap();
        assert!(ro.write_all_at(b"x", 0).is_err());
        dir.remove_file("b").unwrap();
        assert!(dir.list().unwrap().is_empty());
    }

    #[test]
    fn dirty_bytes_are_read_off_meminfo() {
        let text = "MemTotal:       24598212 kB\nDirty:              1024 kB\n\
                    Writeback:            8 kB\nWritebackTmp:         0 kB\n";
        assert_eq!(parse_dirty_bytes(text), Some((1024 + 8) * 1024));
        assert_eq!(parse_dirty_bytes("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_dirty_bytes("Dirty: lots kB\nWriteback: 0 kB\n"), None);
        #[cfg(target_os = "linux")]
        assert!(dirty_page_bytes().is_some());
    }

    #[test]
    fn kernel_releases_compare_by_major_then_minor() {
        assert!(kernel_at_least("5.8.0", (5, 8)));
        assert!(kernel_at_least("6.1.0-18-amd64", (5, 8)));
        assert!(kernel_at_least("5.10.0", (5, 8)));
        assert!(!kernel_at_least("5.4.0-150-generic", (5, 8)));
        assert!(!kernel_at_least("4.19.0", (5, 8)));
        assert!(!kernel_at_least("", (5, 8)));
        assert!(!kernel_at_least("garbage", (5, 8)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_filesystem_sync_is_offered_on_this_kernel_and_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let a = FsDir::new(tmp.path());
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        let b = FsDir::new(tmp.path().join("sub"));
        assert_eq!(a.filesystem().is_some(), syncfs_reports_errors());
        assert_eq!(a.filesystem(), b.filesystem());
        a.open_file("x", OpenMode::Create).unwrap().write_all_at(b"x", 0).unwrap();
        a.sync_filesystem().unwrap();
    }
}
