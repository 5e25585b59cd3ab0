//! Ferry's logging: diagnostics (through `tracing`) and the instruction log, written by one
//! dedicated background thread so that no hot path waits on a log file.
//!
//! [`start`] spawns the writer thread and returns the [`Logger`] guard. The hot path hands
//! [`InstructionRecord`]s to an [`InstructionLog`] (a bounded `crossbeam-channel` send; the
//! JSON is produced on the writer thread) and `tracing` events to the layer from
//! [`Logger::diagnostics_layer`]. The writer gathers up to `batch_records` records or
//! `batch_interval_ms` into per-stream 64 KiB buffers and writes them in one call; an fsync
//! thread syncs every `sync_interval_ms` (so the writer never waits on it); files rotate by size
//! and UTC day/hour (at the first write after the boundary, by the injectable [`Clock`]) and
//! rotated files go to a housekeeping thread for gzip and retention. A file renamed away or
//! whose directory was removed is noticed at the next batch and reopened by name; SIGHUP (see
//! [`reopen_on_sighup`]) or [`LoggerControl::reopen`] does the same at once.
//!
//! Rotated files are named `<file_name>.<UTC time, colons as dashes>.<seq>`, e.g.
//! `instructions.log.2026-11-22T01-00-00Z.000`, plus `.gz` once compressed.
//!
//! Durability: a graceful stop (dropping the [`Logger`] or [`Logger::shutdown`]) drains both
//! queues, writes and fsyncs before returning: nothing accepted before it is lost. A crash loses
//! what was still queued, plus what was written in the last `sync_interval_ms` if the machine
//! itself goes down (a process crash alone loses only the queue and the unwritten batch, at
//! most `batch_interval_ms` old).
//!
//! Disk errors never block the hot path or stop the process: they are printed on stderr and
//! counted ([`StreamStats::write_errors`]); records wait in memory (up to
//! `error_buffer_bytes` per stream, then they are dropped and counted) and writing resumes
//! when the file can be opened and written again, retried every `retry_interval_ms`.
//!
//! Overflow: with the `drop` policy a record finding its queue full is counted; the exact
//! count goes into the log itself (`"N records dropped"`) and into [`StreamStats`].

mod background_sync;
mod clock;
mod diagnostics;
mod error;
mod handle;
mod housekeeping;
mod record;
mod rotation;
mod sighup;
mod stats;
mod storage;
mod writer;

use std::sync::Arc;
use std::thread;

pub use clock::{Clock, ManualClock, SystemClock};
pub use diagnostics::DiagnosticsWriter;
pub use error::{LogClosed, LoggerError};
pub use ferry_config::logger::LoggerConfig;
pub use handle::{InstructionLog, Logger, LoggerControl};
pub use record::{InstructionRecord, Outcome};
pub use sighup::{reopen_on_sighup, SighupReopen};
pub use stats::{LogStats, StreamStats};
pub use storage::{FsStorage, LogFile, LogStorage, OpenedLog};
pub use writer::FlushReport;

use background_sync::BackgroundSync;
use housekeeping::Housekeeper;
use stats::Counters;
use writer::Writer;

/// Starts the logger for `node` with the system clock and the real file system.
pub fn start(config: &LoggerConfig, node: &str) -> Result<Logger, LoggerError> {
    LoggerBuilder::new(config, node).start()
}

/// [`start`] with a chosen clock or storage (tests inject time and disk faults this way).
pub struct LoggerBuilder {
    config: LoggerConfig,
    node: String,
    clock: Arc<dyn Clock>,
    storage: Arc<dyn LogStorage>,
}

impl LoggerBuilder {
    pub fn new(config: &LoggerConfig, node: &str) -> Self {
        LoggerBuilder {
            config: config.clone(),
            node: node.to_owned(),
            clock: Arc::new(SystemClock),
            storage: Arc::new(FsStorage),
        }
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn storage(mut self, storage: Arc<dyn LogStorage>) -> Self {
        self.storage = storage;
        self
    }

    /// Checks the configuration, creates the directory and spawns the writer and housekeeping
    /// threads.
    pub fn start(self) -> Result<Logger, LoggerError> {
        let config = self.config;
        let invalid = config.invalid_values();
        if !invalid.is_empty() {
            let text: Vec<String> = invalid.iter().map(ToString::to_string).collect();
            return Err(LoggerError::InvalidConfig(text.join("; ")));
        }
        diagnostics::parse_filter(&config.diagnostics.filter)?;
        std::fs::create_dir_all(&config.directory)
            .map_err(|source| LoggerError::Directory { path: config.directory.clone(), source })?;
        let counters = Arc::new(Counters::default());
        let housekeeper =
            Housekeeper::start(config.rotation.gzip, config.rotation.keep_files, counters.clone())
                .map_err(|source| LoggerError::Spawn { name: "ferry-log-housekeeping", source })?;
        let syncer = BackgroundSync::start(counters.clone())
            .map_err(|source| LoggerError::Spawn { name: "ferry-log-sync", source })?;
        let (instr_tx, instr_rx) = crossbeam_channel::bounded(config.instructions.queue_capacity);
        let (diag_tx, diag_rx) = crossbeam_channel::bounded(config.diagnostics.queue_capacity);
        let writer = Writer::new(
            &config,
            &self.node,
            self.clock,
            self.storage,
            counters.clone(),
            housekeeper,
            syncer,
        );
        let thread = thread::Builder::new()
            .name("ferry-log-writer".to_owned())
            .spawn(move || writer.run(instr_rx, diag_rx))
            .map_err(|source| LoggerError::Spawn { name: "ferry-log-writer", source })?;
        Ok(Logger {
            control: LoggerControl::new(instr_tx.clone(), counters.clone()),
            instructions: InstructionLog::new(
                instr_tx,
                config.instructions.overflow,
                counters.clone(),
            ),
            diagnostics: DiagnosticsWriter::new(diag_tx, config.diagnostics.overflow, counters),
            filter: config.diagnostics.filter.clone(),
            format: config.diagnostics.format,
            thread: Some(thread),
        })
    }
}
