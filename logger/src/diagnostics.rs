//! The diagnostic stream: a `tracing-subscriber` fmt layer whose writer queues each formatted
//! event for the writer thread.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use ferry_config::logger::{LogFormat, OverflowPolicy};
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::error::LoggerError;
use crate::handle::Logger;
use crate::stats::Counters;

/// `MakeWriter` (and, by reference, `io::Write`) that queues each formatted event as one line
/// for the writer thread, applying the stream's overflow policy.
#[derive(Clone)]
pub struct DiagnosticsWriter {
    tx: Sender<Vec<u8>>,
    policy: OverflowPolicy,
    counters: Arc<Counters>,
}

impl DiagnosticsWriter {
    pub(crate) fn new(
        tx: Sender<Vec<u8>>,
        policy: OverflowPolicy,
        counters: Arc<Counters>,
    ) -> Self {
        DiagnosticsWriter { tx, policy, counters }
    }
}

/// Writing through a shared reference: the fmt layer borrows the writer for each event instead
/// of cloning it (a clone would touch the channel's shared sender count twice per event).
impl io::Write for &DiagnosticsWriter {
    /// Takes the whole of `buf` as one record (the fmt layer writes each event with one call).
    /// Events after the logger shut down are discarded without an error: the fmt layer would
    /// print one on stderr per event.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = buf.to_vec();
        match self.policy {
            OverflowPolicy::Block => {
                let _ = self.tx.send(line);
            }
            OverflowPolicy::Drop => {
                if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
                    self.counters.diagnostics.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for DiagnosticsWriter {
    type Writer = &'a DiagnosticsWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

pub(crate) fn parse_filter(filter: &str) -> Result<EnvFilter, LoggerError> {
    EnvFilter::builder().parse(filter).map_err(|e| LoggerError::InvalidFilter {
        filter: filter.to_owned(),
        message: e.to_string(),
    })
}

impl Logger {
    /// The `MakeWriter` of the diagnostic stream, to build a custom layer.
    pub fn diagnostics_writer(&self) -> DiagnosticsWriter {
        self.diagnostics.clone()
    }

    /// A fmt layer (text or JSON per `logger.diagnostics.format`, filtered by
    /// `logger.diagnostics.filter`) that writes into the diagnostic stream.
    pub fn diagnostics_layer<S>(&self) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        // Parsed once already in `start`, so this cannot fail here.
        let filter = parse_filter(&self.filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let writer = self.diagnostics.clone();
        match self.format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .with_filter(filter)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(writer)
                .with_filter(filter)
                .boxed(),
        }
    }

    /// Installs the diagnostic layer as the process's global `tracing` subscriber.
    pub fn install_diagnostics(&self) -> Result<(), LoggerError> {
        tracing_subscriber::registry()
            .with(self.diagnostics_layer())
            .try_init()
            .map_err(|_| LoggerError::SubscriberAlreadySet)
    }
}
