//! Opening and writing the active log files, behind a small trait so that disk faults (full,
//! permissions, vanished directory) can be simulated in tests.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

/// Opens active log files for appending. The writer thread is its only caller.
pub trait LogStorage: Send + Sync + 'static {
    /// Opens `path` for appending, creating it (and its directory) if missing.
    fn open_append(&self, path: &Path) -> io::Result<OpenedLog>;
}

/// An active log file just opened, with what the writer needs to know about it.
pub struct OpenedLog {
    pub file: Box<dyn LogFile>,
    /// Bytes already in the file.
    pub len: u64,
    /// Last modification, used to place a reopened file in its rotation period.
    pub modified: Option<SystemTime>,
}

/// One open, append-only log file.
pub trait LogFile: Send {
    /// Writes some of `buf`, like [`std::io::Write::write`].
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Makes everything written so far durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
    /// Whether `path` still names this open file: `false` once it was renamed away (logrotate)
    /// or its directory removed, and the writer then reopens the path.
    fn is_at(&self, path: &Path) -> io::Result<bool>;
    /// A second handle to the same open file, for fsyncing it on another thread.
    fn try_clone(&self) -> io::Result<Box<dyn LogFile>>;
}

/// Log files on the local file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsStorage;

impl LogStorage for FsStorage {
    fn open_append(&self, path: &Path) -> io::Result<OpenedLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok(OpenedLog { len: meta.len(), modified: meta.modified().ok(), file: Box::new(file) })
    }
}

impl LogFile for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn is_at(&self, path: &Path) -> io::Result<bool> {
        let open = self.metadata()?;
        match fs::metadata(path) {
            Ok(named) => Ok(open.dev() == named.dev() && open.ino() == named.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn try_clone(&self) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(File::try_clone(self)?))
    }
}
