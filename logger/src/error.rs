//! The logger's errors.

use std::io;
use std::path::PathBuf;

use crate::record::InstructionRecord;

/// Why the logger could not start or carry out a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggerError {
    #[error("invalid logger configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid logger.diagnostics.filter {filter:?}: {message}")]
    InvalidFilter { filter: String, message: String },
    #[error("cannot create log directory {}: {source}", .path.display())]
    Directory { path: PathBuf, source: io::Error },
    #[error("cannot start thread {name}: {source}")]
    Spawn { name: &'static str, source: io::Error },
    #[error("cannot {action} log file {}: {source}", .path.display())]
    File { action: &'static str, path: PathBuf, source: io::Error },
    #[error("the log writer thread has stopped")]
    WriterStopped,
    #[error("a global tracing subscriber is already installed")]
    SubscriberAlreadySet,
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(io::Error),
}

/// The instruction log was shut down; the record was not accepted and is handed back.
#[derive(Debug, thiserror::Error)]
#[error("the instruction log is shut down")]
pub struct LogClosed(pub Box<InstructionRecord>);
