//! The thread that runs the periodic fsyncs, so that the writer never waits on the disk for
//! them (an fsync of a busy log can take hundreds of milliseconds). Flush, rotation and shutdown
//! still fsync on the writer thread, because their callers wait for durability.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};

use crate::stats::{Counters, StreamKind};
use crate::storage::LogFile;

pub(crate) struct SyncJob {
    pub(crate) kind: StreamKind,
    pub(crate) path: PathBuf,
    pub(crate) file: Box<dyn LogFile>,
}

pub(crate) struct BackgroundSync {
    jobs: Sender<SyncJob>,
    thread: JoinHandle<()>,
}

impl BackgroundSync {
    pub(crate) fn start(counters: Arc<Counters>) -> io::Result<Self> {
        // One job per stream at most waits: while an fsync runs, the next tick's is skipped.
        let (jobs, rx) = crossbeam_channel::bounded(2);
        let thread = thread::Builder::new()
            .name("ferry-log-sync".to_owned())
            .spawn(move || run(&rx, &counters))?;
        Ok(BackgroundSync { jobs, thread })
    }

    /// Queues an fsync; `false` if the thread is still busy with earlier ones.
    pub(crate) fn submit(&self, job: SyncJob) -> bool {
        self.jobs.try_send(job).is_ok()
    }

    pub(crate) fn stop(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            eprintln!("ferry-logger: the fsync thread panicked");
        }
    }
}

fn run(jobs: &Receiver<SyncJob>, counters: &Counters) {
    for mut job in jobs {
        if let Err(e) = job.file.sync() {
            counters.stream(job.kind).write_errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("ferry-logger: cannot fsync log file {}: {e}", job.path.display());
        }
    }
}
