//! The background thread that gzips rotated files and enforces retention, so that neither ever
//! delays the writer.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::stats::Counters;

/// Rotations queued beyond this are left uncompressed (and retention waits for the next one)
/// rather than making the writer wait.
const QUEUE: usize = 256;

pub(crate) enum Job {
    /// `rotated` was just renamed away from `dir/file_name`.
    Rotated { dir: PathBuf, file_name: String, rotated: PathBuf },
    /// Runs once every earlier job is done (a flush waits for housekeeping this way).
    After(Box<dyn FnOnce() + Send>),
}

pub(crate) struct Housekeeper {
    jobs: Sender<Job>,
    thread: JoinHandle<()>,
}

impl Housekeeper {
    pub(crate) fn start(gzip: bool, keep: usize, counters: Arc<Counters>) -> io::Result<Self> {
        let (jobs, rx) = crossbeam_channel::bounded(QUEUE);
        let thread = thread::Builder::new()
            .name("ferry-log-housekeeping".to_owned())
            .spawn(move || run(&rx, gzip, keep, &counters))?;
        Ok(Housekeeper { jobs, thread })
    }

    /// Queues `job` without waiting; gives it back if the queue is full.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }

    /// Finishes the queued jobs and stops.
    pub(crate) fn stop(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            eprintln!("ferry-logger: the housekeeping thread panicked");
        }
    }
}

fn run(jobs: &Receiver<Job>, gzip: bool, keep: usize, counters: &Counters) {
    for job in jobs {
        match job {
            Job::Rotated { dir, file_name, rotated } => {
                if gzip {
                    match compress(&rotated) {
                        Ok(()) => {
                            counters.gzipped.fetch_add(1, Ordering::Relaxed);
                        }
                        // Retention after an earlier job already removed it: nothing to keep.
                        Err(e) if e.kind() == io::ErrorKind::NotFound && !rotated.exists() => {}
                        Err(e) => {
                            counters.housekeeping_errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("ferry-logger: cannot gzip {}: {e}", rotated.display());
                        }
                    }
                }
                if let Err(e) = enforce_retention(&dir, &file_name, keep) {
                    counters.housekeeping_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "ferry-logger: cannot apply retention to {}: {e}",
                        dir.join(&file_name).display()
                    );
                }
            }
            Job::After(then) => then(),
        }
    }
}

/// Writes `path.gz` through a temporary name, then removes `path`: a crash leaves either the
/// plain file or a complete `.gz`, never a truncated one under the final name.
fn compress(path: &Path) -> io::Result<()> {
    let mut gz_name = path.as_os_str().to_owned();
    gz_name.push(".gz");
    let gz_path = PathBuf::from(gz_name);
    let mut tmp_name = gz_path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp_path = PathBuf::from(tmp_name);
    let result = (|| {
        let mut input = BufReader::new(File::open(path)?);
        let mut encoder =
            GzEncoder::new(BufWriter::new(File::create(&tmp_path)?), Compression::fast());
        io::copy(&mut input, &mut encoder)?;
        let mut out = encoder.finish()?;
        out.flush()?;
        out.get_ref().sync_data()?;
        fs::rename(&tmp_path, &gz_path)?;
        fs::remove_file(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

fn enforce_retention(dir: &Path, file_name: &str, keep: usize) -> io::Result<()> {
    let names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    for name in crate::rotation::expired(file_name, &names, keep) {
        match fs::remove_file(dir.join(&name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
