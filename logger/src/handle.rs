//! What the rest of Ferry holds: the [`Logger`] guard, its cloneable [`LoggerControl`], and the
//! hot path's [`InstructionLog`] sender.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use ferry_config::logger::OverflowPolicy;

use crate::diagnostics::DiagnosticsWriter;
use crate::error::{LogClosed, LoggerError};
use crate::record::InstructionRecord;
use crate::stats::{Counters, LogStats};
use crate::writer::{Control, FlushReport, InstructionMsg};

/// Hands instruction records to the writer thread. Cheap to clone; `send` never touches a file.
#[derive(Clone)]
pub struct InstructionLog {
    tx: Sender<InstructionMsg>,
    policy: OverflowPolicy,
    counters: Arc<Counters>,
}

impl InstructionLog {
    /// Queues `record`. With the `block` policy a full queue makes this wait; with `drop` the
    /// record is counted as dropped (and the count written into the log) and `Ok` returned.
    /// Fails only once the logger has shut down.
    pub fn send(&self, record: InstructionRecord) -> Result<(), LogClosed> {
        let msg = InstructionMsg::Record(record);
        match self.policy {
            OverflowPolicy::Block => self.tx.send(msg).map_err(|e| closed(e.0)),
            OverflowPolicy::Drop => match self.tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    self.counters
                        .instructions
                        .dropped_queue_full
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
                Err(TrySendError::Disconnected(msg)) => Err(closed(msg)),
            },
        }
    }
}

fn closed(msg: InstructionMsg) -> LogClosed {
    match msg {
        InstructionMsg::Record(record) => LogClosed(Box::new(record)),
        InstructionMsg::Control(_) => unreachable!("only records are sent through send"),
    }
}

/// Runtime control of the writer, cloneable (e.g. into a SIGHUP thread). Each request queues
/// behind the instruction records sent before it and waits for the writer's answer.
#[derive(Clone)]
pub struct LoggerControl {
    tx: Sender<InstructionMsg>,
    counters: Arc<Counters>,
}

impl LoggerControl {
    /// Rotates both streams' active files now (empty ones are left alone).
    pub fn rotate(&self) -> Result<(), LoggerError> {
        self.request(Control::Rotate)?
    }

    /// Closes and reopens both active files by name: after logrotate renamed them away, writing
    /// goes on in new files. An error means writing is paused and retried.
    pub fn reopen(&self) -> Result<(), LoggerError> {
        self.request(Control::Reopen)?
    }

    /// Moves both streams to `dir` (created if missing); rotated files stay where they were.
    pub fn set_directory(&self, dir: impl Into<PathBuf>) -> Result<(), LoggerError> {
        let dir = dir.into();
        self.request(|reply| Control::SetDirectory(dir, reply))?
    }

    /// Writes and fsyncs everything accepted so far on both streams, waits for pending gzip and
    /// retention work, and reports.
    pub fn flush(&self) -> Result<FlushReport, LoggerError> {
        self.request(Control::Flush)
    }

    /// Counters of both streams, read without asking the writer.
    pub fn stats(&self) -> LogStats {
        self.counters.snapshot()
    }

    fn request<T>(&self, make: impl FnOnce(Sender<T>) -> Control) -> Result<T, LoggerError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.tx
            .send(InstructionMsg::Control(make(reply)))
            .map_err(|_| LoggerError::WriterStopped)?;
        answer.recv().map_err(|_| LoggerError::WriterStopped)
    }
}

/// The running logger. Dropping it is a graceful stop: both queues are drained, written and
/// fsynced before the drop returns. Call [`Logger::shutdown`] to see the final report.
pub struct Logger {
    pub(crate) control: LoggerControl,
    pub(crate) instructions: InstructionLog,
    pub(crate) diagnostics: DiagnosticsWriter,
    pub(crate) filter: String,
    pub(crate) format: ferry_config::logger::LogFormat,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl Logger {
    /// The hot path's sender for instruction records.
    pub fn instruction_log(&self) -> InstructionLog {
        self.instructions.clone()
    }

    /// A cloneable handle for rotate, reopen, directory change, flush and stats.
    pub fn control(&self) -> LoggerControl {
        self.control.clone()
    }

    pub fn stats(&self) -> LogStats {
        self.control.stats()
    }

    pub fn rotate(&self) -> Result<(), LoggerError> {
        self.control.rotate()
    }

    pub fn reopen(&self) -> Result<(), LoggerError> {
        self.control.reopen()
    }

    pub fn set_directory(&self, dir: impl Into<PathBuf>) -> Result<(), LoggerError> {
        self.control.set_directory(dir)
    }

    pub fn flush(&self) -> Result<FlushReport, LoggerError> {
        self.control.flush()
    }

    /// Stops gracefully: everything accepted before this call is written and fsynced, and
    /// rotated files are compressed, before it returns.
    pub fn shutdown(mut self) -> Result<FlushReport, LoggerError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<FlushReport, LoggerError> {
        let Some(thread) = self.thread.take() else { return Err(LoggerError::WriterStopped) };
        let report = self.control.request(Control::Shutdown);
        if thread.join().is_err() {
            eprintln!("ferry-logger: the writer thread panicked");
            return Err(LoggerError::WriterStopped);
        }
        report
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(e) = self.stop() {
                eprintln!("ferry-logger: stopping the writer: {e}");
            }
        }
    }
}

impl LoggerControl {
    pub(crate) fn new(tx: Sender<InstructionMsg>, counters: Arc<Counters>) -> Self {
        LoggerControl { tx, counters }
    }
}

impl InstructionLog {
    pub(crate) fn new(
        tx: Sender<InstructionMsg>,
        policy: OverflowPolicy,
        counters: Arc<Counters>,
    ) -> Self {
        InstructionLog { tx, policy, counters }
    }
}
