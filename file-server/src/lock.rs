//! The write lock of one partition directory.
//!
//! A partition has one writer at a time. The writer holds `flock(LOCK_EX)` on the file `LOCK`
//! in the partition directory and writes its pid there so that a refused writer can say who
//! holds it. The kernel drops the lock when the holder exits, however it exits, so a stale pid
//! in the file after a crash means nothing. Readers never open `LOCK`: they need only read
//! permission on the directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// The name of the lock file in a partition directory.
pub const LOCK_FILE: &str = "LOCK";

/// Proof that this process is the one writer of a partition directory; the lock is released on
/// drop.
#[derive(Debug)]
pub struct WriterLock {
    dir: PathBuf,
    // Held for its open file description: the flock lives as long as it does.
    _file: File,
}

impl WriterLock {
    /// Takes the write lock of `dir` without waiting. A lock held elsewhere, by another process
    /// or by another `WriterLock` of this process, is [`StoreError::Locked`] with the holder's pid.
    pub fn acquire(dir: &Path) -> Result<WriterLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("open lock file", &path, e))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                // The holder writes its pid right after locking; an empty or partial file
                // means it has not done so yet.
                let _ = file.read_to_string(&mut text);
                return Err(match text.trim().parse::<u32>() {
                    Ok(pid) => StoreError::Locked { dir: dir.to_owned(), pid },
                    Err(_) => StoreError::LockedUnknown { dir: dir.to_owned() },
                });
            }
            return Err(StoreError::io("lock", &path, err));
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()))
            .map_err(|e| StoreError::io("write pid to lock file", &path, e))?;
        Ok(WriterLock { dir: dir.to_owned(), _file: file })
    }

    /// The directory this lock guards.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_refused_with_the_pid_until_the_first_drops() {
        let tmp = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(tmp.path()).unwrap();
        match WriterLock::acquire(tmp.path()) {
            Err(StoreError::Locked { dir, pid }) => {
                assert_eq!(dir, tmp.path());
                assert_eq!(pid, std::process::id());
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        let msg = WriterLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(msg.contains(&format!("is locked by pid {}", std::process::id())), "{msg}");
        drop(first);
        let again = WriterLock::acquire(tmp.path()).unwrap();
        assert_eq!(again.dir(), tmp.path());
    }

    #[test]
    fn missing_directory_is_an_io_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let err = WriterLock::acquire(&tmp.path().join("absent")).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("LOCK"), "{err}");
    }
}
