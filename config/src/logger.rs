//! The `[logger]` section: where logs go, how the background writer batches, syncs and rotates
//! them, and what each stream does when its queue is full.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{check_range, Invalid};

/// `[logger]`: settings of the background log writer and its two streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggerConfig {
    /// Directory holding the active and rotated log files; created if missing. A relative
    /// directory is inside `store.data_dir`. Default: `logs`.
    pub directory: PathBuf,
    /// Most records (of both streams together) gathered into one write (N). Default: `1024`.
    pub batch_records: usize,
    /// Longest a record waits in the writer for its batch to fill before the batch is written
    /// (T), in milliseconds; `0` writes as soon as the queue runs empty. Default: `5`.
    pub batch_interval_ms: u64,
    /// Size of each stream's write buffer in bytes: a batch is written once it reaches this size.
    /// Default: `65536` (64 KiB).
    pub buffer_bytes: usize,
    /// How often written data is fsynced (on a helper thread, so the writer never waits on the
    /// disk), in milliseconds; `0` fsyncs after every batch, on the writer. A graceful stop
    /// always drains, writes and fsyncs. A process crash loses the records still queued or in
    /// the unwritten batch (at most `batch_interval_ms` old while the writer keeps up); a crash of
    /// the machine also loses what was written in the last `sync_interval_ms`. Default: `1000`.
    pub sync_interval_ms: u64,
    /// After a disk error (full, permissions, directory removed), how long the writer waits
    /// before trying the file again, in milliseconds. Default: `500`.
    pub retry_interval_ms: u64,
    /// Bytes per stream held in memory while the disk fails; past this, further records of that
    /// stream are dropped and counted (the count is written once the disk recovers), so that a
    /// broken disk neither blocks the hot path nor grows memory without bound.
    /// Default: `16777216` (16 MiB).
    pub error_buffer_bytes: usize,
    /// Rotation and retention of both streams' files.
    pub rotation: RotationConfig,
    /// `[logger.diagnostics]`: the `tracing` stream.
    pub diagnostics: DiagnosticsConfig,
    /// `[logger.instructions]`: the instruction log (audit trail).
    pub instructions: InstructionLogConfig,
}

impl Default for LoggerConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("logs"),
            batch_records: 1024,
            batch_interval_ms: 5,
            buffer_bytes: 64 * 1024,
            sync_interval_ms: 1000,
            retry_interval_ms: 500,
            error_buffer_bytes: 16 * 1024 * 1024,
            rotation: RotationConfig::default(),
            diagnostics: DiagnosticsConfig::default(),
            instructions: InstructionLogConfig::default(),
        }
    }
}

/// `[logger.rotation]`: when active files are rotated and how many rotated files are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Rotate a file before a write would take it past this many bytes; `0` disables rotation by
    /// size. Default: `268435456` (256 MiB).
    pub max_bytes: u64,
    /// Rotate when the UTC day or hour changes: `daily`, `hourly` or `never`. Default: `daily`.
    pub every: RotationPeriod,
    /// Rotated files kept per stream (gzipped or not); older ones are deleted. Default: `10`.
    pub keep_files: usize,
    /// Gzip rotated files on a background thread (never the writer). Default: `true`.
    pub gzip: bool,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            every: RotationPeriod::Daily,
            keep_files: 10,
            gzip: true,
        }
    }
}

/// Time-based rotation period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationPeriod {
    /// A new file at each UTC midnight.
    Daily,
    /// A new file at each UTC hour.
    Hourly,
    /// Rotation by size (and on request) only.
    Never,
}

/// What a stream does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverflowPolicy {
    /// The caller waits for room (backpressure); nothing is lost.
    Block,
    /// The record is dropped and counted; the exact count is written into the log itself.
    Drop,
}

/// Format of diagnostic log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logger.diagnostics]`: the stream fed by `tracing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Active file name inside `directory`. Default: `ferry.log`.
    pub file_name: String,
    /// `RUST_LOG`-style filter directives, e.g. `info,ferry_ingress=debug`. Default: `info`.
    pub filter: String,
    /// `text` or `json`. Default: `text`.
    pub format: LogFormat,
    /// Lines the queue holds before the overflow policy applies. Default: `16384`.
    pub queue_capacity: usize,
    /// `block` or `drop`. Default: `drop` (diagnostics never slow the hot path).
    pub overflow: OverflowPolicy,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        Self {
            file_name: "ferry.log".to_owned(),
            filter: "info".to_owned(),
            format: LogFormat::Text,
            queue_capacity: 16 * 1024,
            overflow: OverflowPolicy::Drop,
        }
    }
}

/// `[logger.instructions]`: the instruction log, one JSON line per instruction handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstructionLogConfig {
    /// Active file name inside `directory`. Default: `instructions.log`.
    pub file_name: String,
    /// Records the queue holds before the overflow policy applies. Default: `65536`.
    pub queue_capacity: usize,
    /// `block` or `drop`. Default: `block` (an audit trail never loses records silently).
    pub overflow: OverflowPolicy,
}

impl Default for InstructionLogConfig {
    fn default() -> Self {
        Self {
            file_name: "instructions.log".to_owned(),
            queue_capacity: 64 * 1024,
            overflow: OverflowPolicy::Block,
        }
    }
}

impl LoggerConfig {
    /// Values that parsed but are outside what the logger accepts, each naming its key
    /// (`logger.<key>`). Filter directives are parsed by `ferry-logger` when it starts.
    pub fn invalid_values(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        let mut range = |key: &str, value: u64, lo: u64, hi: u64| {
            check_range(&mut out, format!("logger.{key}"), value, lo, hi)
        };
        range("batch_records", self.batch_records as u64, 1, 1 << 20);
        range("batch_interval_ms", self.batch_interval_ms, 0, 60_000);
        range("buffer_bytes", self.buffer_bytes as u64, 4096, 64 << 20);
        range("sync_interval_ms", self.sync_interval_ms, 0, 3_600_000);
        range("retry_interval_ms", self.retry_interval_ms, 1, 3_600_000);
        range(
            "error_buffer_bytes",
            self.error_buffer_bytes as u64,
            self.buffer_bytes as u64,
            1 << 32,
        );
        range("rotation.keep_files", self.rotation.keep_files as u64, 1, 100_000);
        range("diagnostics.queue_capacity", self.diagnostics.queue_capacity as u64, 1, 1 << 24);
        range("instructions.queue_capacity", self.instructions.queue_capacity as u64, 1, 1 << 24);
        if self.directory.as_os_str().is_empty() {
            out.push(Invalid::new("logger.directory", "\"\"", "a non-empty directory path"));
        }
        for (key, name) in [
            ("logger.diagnostics.file_name", &self.diagnostics.file_name),
            ("logger.instructions.file_name", &self.instructions.file_name),
        ] {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
                out.push(Invalid::new(key, format!("{name:?}"), "a plain file name"));
            }
        }
        if self.diagnostics.file_name == self.instructions.file_name {
            out.push(Invalid::new(
                "logger.instructions.file_name",
                format!("{:?}", self.instructions.file_name),
                "a name other than logger.diagnostics.file_name",
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_keep_per_stream_policies() {
        let config = LoggerConfig::default();
        assert_eq!(config.invalid_values(), Vec::new());
        assert_eq!(config.instructions.overflow, OverflowPolicy::Block);
        assert_eq!(config.diagnostics.overflow, OverflowPolicy::Drop);
    }

    #[test]
    fn partial_toml_keeps_defaults_of_missing_keys() {
        let config: LoggerConfig = toml::from_str(
            "batch_records = 10\n[rotation]\nevery = \"hourly\"\n[instructions]\nqueue_capacity = 7\n",
        )
        .unwrap();
        assert_eq!(config.batch_records, 10);
        assert_eq!(config.rotation.every, RotationPeriod::Hourly);
        assert_eq!(config.rotation.keep_files, 10);
        assert_eq!(config.instructions.queue_capacity, 7);
        assert_eq!(config.instructions.overflow, OverflowPolicy::Block);
        assert_eq!(config.instructions.file_name, "instructions.log");
    }

    #[test]
    fn unknown_keys_and_values_are_rejected() {
        let err = toml::from_str::<LoggerConfig>("batch_record = 1\n").unwrap_err();
        assert!(err.to_string().contains("batch_record"), "{err}");
        let err =
            toml::from_str::<LoggerConfig>("[diagnostics]\noverflow = \"wait\"\n").unwrap_err();
        assert!(err.to_string().contains("wait"), "{err}");
    }

    #[test]
    fn invalid_values_name_every_bad_key() {
        let mut config = LoggerConfig { batch_records: 0, ..LoggerConfig::default() };
        config.rotation.keep_files = 0;
        config.diagnostics.file_name = "../x".to_owned();
        config.instructions.file_name = "../x".to_owned();
        let keys: Vec<String> = config.invalid_values().into_iter().map(|i| i.key).collect();
        assert_eq!(
            keys,
            [
                "logger.batch_records",
                "logger.rotation.keep_files",
                "logger.diagnostics.file_name",
                "logger.instructions.file_name",
                "logger.instructions.file_name",
            ]
        );
    }
}
