//! What a node's `GET /metrics` shows besides the ingress's own figures: the store's partitions
//! (how far the write-behind lags: dirty files, log bytes) and the logger's counters (records
//! written and dropped), read at each scrape. The ingress serves the registry.

use std::fmt;
use std::sync::{Arc, Weak};

use ferry_file_server::Store;
use ferry_ingress::Ingress;
use ferry_logger::{LoggerControl, StreamStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Hands `ingress` a registry (names prefixed `ferry_`) with the store's figures, when the node
/// has a store, and the logger's.
pub fn expose(ingress: &Ingress, store: Option<&Arc<Store>>, logger: LoggerControl) {
    let mut registry = Registry::with_prefix("ferry");
    if let Some(store) = store {
        registry.register_collector(Box::new(StoreFigures(Arc::downgrade(store))));
    }
    registry.register_collector(Box::new(LogFigures(logger)));
    ingress.expose_metrics(registry);
}

type Labels = Vec<(&'static str, String)>;

/// One metric family, a sample per row; nothing when there are no rows.
fn encode_rows<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, M)>,
) -> fmt::Result {
    let Some((_, first)) = rows.first() else { return Ok(()) };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in &rows {
        metric.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// The store's partitions, read at each scrape; nothing once the store is gone.
struct StoreFigures(Weak<Store>);

impl fmt::Debug for StoreFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreFigures")
    }
}

impl Collector for StoreFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(store) = self.0.upgrade() else { return Ok(()) };
        let stats = store.stats();
        type Read = fn(&ferry_file_server::PartitionStats) -> u64;
        let gauges: [(&str, &str, Read); 10] = [
            ("store_files", "Live files in the partition's tree", |p| p.entries),
            ("store_tombstones", "Deleted files still marked in the tree", |p| p.tombstones),
            (
                "store_dirty_files",
                "Files changed since the last flush into the tree (in the log, not yet in the tree)",
                |p| p.dirty as u64,
            ),
            ("store_wal_bytes", "Bytes of the write-ahead log", |p| p.wal_bytes),
            ("store_wal_segments", "Segments of the write-ahead log", |p| p.wal_segments as u64),
            ("store_tree_bytes", "Bytes of the tree file up to its end", |p| p.tree_bytes),
            ("store_tree_garbage_bytes", "Bytes of the tree file no longer used", |p| {
                p.garbage_bytes
            }),
            ("store_cache_bytes", "Weighted size of the partition's cache", |p| p.cache_bytes),
            (
                "store_checkpoint_lsn",
                "Log sequence number up to which the tree holds every change",
                |p| p.checkpoint_lsn,
            ),
            ("store_flush_failing", "1 while the partition's last flush failed", |p| {
                u64::from(p.flush_error.is_some())
            }),
        ];
        for (name, help, read) in gauges {
            let rows = stats
                .iter()
                .map(|p| {
                    let labels = vec![("partition", p.partition.to_string())];
                    (labels, ConstGauge::new(i64::try_from(read(p)).unwrap_or(i64::MAX)))
                })
                .collect();
            encode_rows(&mut encoder, name, help, rows)?;
        }
        Ok(())
    }
}

/// The logger's counters.
struct LogFigures(LoggerControl);

impl fmt::Debug for LogFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogFigures")
    }
}

impl Collector for LogFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.0.stats();
        let streams = [("diagnostics", stats.diagnostics), ("instructions", stats.instructions)];
        type Read = fn(&StreamStats) -> u64;
        let per_stream: [(&str, &str, Read); 4] = [
            ("log_records_written", "Records handed to the file system", |s| s.written),
            ("log_write_errors", "Failed opens, writes, renames and fsyncs", |s| s.write_errors),
            ("log_rotations", "Files rotated away", |s| s.rotations),
            ("log_bytes_written", "Bytes written", |s| s.bytes_written),
        ];
        for (name, help, read) in per_stream {
            let rows = streams
                .iter()
                .map(|(stream, s)| {
                    (vec![("stream", stream.to_string())], ConstCounter::new(read(s)))
                })
                .collect();
            encode_rows(&mut encoder, name, help, rows)?;
        }
        let dropped = streams
            .iter()
            .flat_map(|(stream, s)| {
                [("queue_full", s.dropped_queue_full), ("disk_error", s.dropped_disk_error)].map(
                    |(reason, n)| {
                        let labels =
                            vec![("stream", stream.to_string()), ("reason", reason.into())];
                        (labels, ConstCounter::new(n))
                    },
                )
            })
            .collect();
        encode_rows(
            &mut encoder,
            "log_records_dropped",
            "Records dropped: the queue was full (drop policy) or the disk kept failing",
            dropped,
        )?;
        let housekeeping = [
            ("log_files_gzipped", "Rotated files compressed", stats.gzipped),
            (
                "log_housekeeping_errors",
                "Failed compressions and retention deletions",
                stats.housekeeping_errors,
            ),
        ];
        for (name, help, n) in housekeeping {
            let counter = ConstCounter::new(n);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
