//! The diagnostic stream through `tracing`: format, filter, drop notices.

mod common;

use std::sync::Arc;

use common::*;
use ferry_config::logger::{LogFormat, OverflowPolicy};
use ferry_logger::LoggerBuilder;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn events_are_filtered_and_written_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.diagnostics.filter = "warn,diag_test=debug".to_owned();
    let logger = ferry_logger::start(&config, "n").unwrap();
    let subscriber = tracing_subscriber::registry().with(logger.diagnostics_layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::debug!(target: "diag_test", partition = 3, "kept debug");
        tracing::info!(target: "other", "filtered out");
        tracing::warn!(target: "other", "kept warning");
    });
    let report = logger.shutdown().unwrap();
    assert_eq!(report.stats.diagnostics.written, 2);
    let text = read_text(&dir.path().join("ferry.log"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("DEBUG diag_test: kept debug partition=3"), "{text}");
    assert!(lines[1].contains("WARN other: kept warning"), "{text}");
}

#[test]
fn json_format_writes_one_object_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.diagnostics.format = LogFormat::Json;
    let logger = ferry_logger::start(&config, "n").unwrap();
    let subscriber = tracing_subscriber::registry().with(logger.diagnostics_layer());
    tracing::subscriber::with_default(subscriber, || tracing::info!(path = "/a", "opened"));
    logger.shutdown().unwrap();
    let lines = lines_of(&dir.path().join("ferry.log"));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[0]["fields"]["message"], "opened");
    assert_eq!(lines[0]["fields"]["path"], "/a");
}

#[test]
fn dropped_diagnostics_are_counted_and_reported_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.diagnostics.queue_capacity = 4;
    config.diagnostics.overflow = OverflowPolicy::Drop;
    config.batch_interval_ms = 0;
    let faults = Arc::new(FaultyStorage::default());
    let logger = LoggerBuilder::new(&config, "n")
        .storage(Arc::new(SharedFaultyStorage(faults.clone())))
        .start()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(logger.diagnostics_layer());
    let (entered, release) = faults.arm_gate();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(n = 0, "event");
        entered.recv().unwrap();
        for n in 1..=50 {
            tracing::info!(n, "event");
        }
    });
    assert_eq!(logger.stats().diagnostics.dropped_queue_full, 46);
    drop(release);
    let report = logger.shutdown().unwrap();
    assert_eq!(report.stats.diagnostics.written, 5);
    let text = read_text(&dir.path().join("ferry.log"));
    let notices: Vec<&str> = text.lines().filter(|l| l.contains("records dropped")).collect();
    assert_eq!(notices.len(), 1, "{text}");
    assert!(notices[0].contains("WARN ferry_logger: 46 records dropped (queue_full)"), "{text}");
}
