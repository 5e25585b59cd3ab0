//! Counters shared by the hot path, the writer and the housekeeping thread, and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// The two streams the writer serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StreamKind {
    Diagnostics,
    Instructions,
}

#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    pub(crate) written: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_disk_error: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) rotations: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) diagnostics: StreamCounters,
    pub(crate) instructions: StreamCounters,
    pub(crate) gzipped: AtomicU64,
    pub(crate) housekeeping_errors: AtomicU64,
}

/// One stream's counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Records handed to the file system (not counting drop notices).
    pub written: u64,
    /// Records dropped because the queue was full (`drop` policy); each is also reported in the
    /// log itself by a notice giving the count.
    pub dropped_queue_full: u64,
    /// Records dropped because the disk kept failing past `error_buffer_bytes`; reported in the
    /// log once writing resumes.
    pub dropped_disk_error: u64,
    /// Failed opens, writes, renames and fsyncs (each also reported on stderr).
    pub write_errors: u64,
    /// Files rotated away.
    pub rotations: u64,
    pub bytes_written: u64,
}

/// Counters of both streams and of the housekeeping thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub diagnostics: StreamStats,
    pub instructions: StreamStats,
    /// Rotated files compressed.
    pub gzipped: u64,
    /// Failed compressions and retention deletions (each also reported on stderr).
    pub housekeeping_errors: u64,
}

impl StreamCounters {
    fn snapshot(&self) -> StreamStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StreamStats {
            written: get(&self.written),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_disk_error: get(&self.dropped_disk_error),
            write_errors: get(&self.write_errors),
            rotations: get(&self.rotations),
            bytes_written: get(&self.bytes_written),
        }
    }
}

impl Counters {
    pub(crate) fn stream(&self, kind: StreamKind) -> &StreamCounters {
        match kind {
            StreamKind::Diagnostics => &self.diagnostics,
            StreamKind::Instructions => &self.instructions,
        }
    }

    pub(crate) fn snapshot(&self) -> LogStats {
        LogStats {
            diagnostics: self.diagnostics.snapshot(),
            instructions: self.instructions.snapshot(),
            gzipped: self.gzipped.load(Ordering::Relaxed),
            housekeeping_errors: self.housekeeping_errors.load(Ordering::Relaxed),
        }
    }
}
