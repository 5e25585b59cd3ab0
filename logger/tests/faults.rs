//! Overflow and disk faults, with a storage that can hold the writer or fail like a full disk.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use ferry_config::logger::OverflowPolicy;
use ferry_logger::{Logger, LoggerBuilder, LoggerConfig};

fn start_faulty(config: &LoggerConfig) -> (Logger, Arc<FaultyStorage>) {
    let faults = Arc::new(FaultyStorage::default());
    let logger = LoggerBuilder::new(config, "n")
        .storage(Arc::new(SharedFaultyStorage(faults.clone())))
        .start()
        .unwrap();
    (logger, faults)
}

#[test]
fn drop_policy_counts_and_logs_exactly_what_was_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.instructions.overflow = OverflowPolicy::Drop;
    config.instructions.queue_capacity = 8;
    config.batch_interval_ms = 0;
    let (logger, faults) = start_faulty(&config);
    let log = logger.instruction_log();

    // Hold the writer inside its first write: the queue then fills and nothing drains it.
    let (entered, release) = faults.arm_gate();
    log.send(record(0, 0)).unwrap();
    entered.recv().unwrap();
    for seq in 1..=100 {
        log.send(record(0, seq)).unwrap();
    }
    assert_eq!(logger.stats().instructions.dropped_queue_full, 92);
    drop(release);

    let report = logger.shutdown().unwrap();
    assert_eq!(report.stats.instructions.dropped_queue_full, 92);
    assert_eq!(report.stats.instructions.written, 9);
    let lines = instruction_lines(dir.path(), "instructions.log");
    assert_eq!(noted_drops(&lines, "queue_full"), 92);
    let seqs: Vec<u64> = ids(&lines).into_iter().map(|i| i.1).collect();
    assert_eq!(seqs, (0..=8).collect::<Vec<_>>());
}

#[test]
fn a_full_disk_neither_blocks_nor_loses_and_writing_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (logger, faults) = start_faulty(&config(dir.path()));
    let log = logger.instruction_log();
    for seq in 0..10 {
        log.send(record(0, seq)).unwrap();
    }
    assert!(logger.flush().unwrap().errors.is_empty());

    faults.failing.store(true, Ordering::SeqCst);
    for seq in 10..20 {
        log.send(record(0, seq)).unwrap();
    }
    let report = logger.flush().unwrap();
    assert!(report.unwritten_bytes > 0);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].contains("No space left on device"), "{report:?}");
    assert!(report.stats.instructions.write_errors >= 1);
    assert_eq!(report.stats.instructions.written, 10);

    faults.failing.store(false, Ordering::SeqCst);
    let report = logger.flush().unwrap();
    assert_eq!(report.unwritten_bytes, 0);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.stats.instructions.written, 20);
    logger.shutdown().unwrap();
    let seqs: Vec<u64> =
        ids(&instruction_lines(dir.path(), "instructions.log")).into_iter().map(|i| i.1).collect();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
}

#[test]
fn memory_is_bounded_while_the_disk_fails_and_the_loss_is_written_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.buffer_bytes = 4096;
    config.error_buffer_bytes = 4096;
    let (logger, faults) = start_faulty(&config);
    let log = logger.instruction_log();
    faults.failing.store(true, Ordering::SeqCst);
    for seq in 0..100 {
        log.send(record(0, seq)).unwrap();
    }
    let report = logger.flush().unwrap();
    let dropped = report.stats.instructions.dropped_disk_error;
    assert!(dropped > 50 && dropped < 100, "{report:?}");
    assert!(report.unwritten_bytes < 4096 + 512, "{report:?}");

    faults.failing.store(false, Ordering::SeqCst);
    let report = logger.shutdown().unwrap();
    assert_eq!(report.stats.instructions.written + dropped, 100);
    let lines = instruction_lines(dir.path(), "instructions.log");
    assert_eq!(noted_drops(&lines, "disk_error"), dropped);
    let seqs: Vec<u64> = ids(&lines).into_iter().map(|i| i.1).collect();
    assert_eq!(seqs, (0..100 - dropped).collect::<Vec<_>>());
}

#[test]
fn a_failing_stream_is_retried_on_its_timer_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retry_interval_ms = 10;
    let (logger, faults) = start_faulty(&config);
    let log = logger.instruction_log();
    faults.failing.store(true, Ordering::SeqCst);
    log.send(record(0, 0)).unwrap();
    assert_eq!(logger.flush().unwrap().stats.instructions.written, 0);
    // Hold the next write attempt: only the writer's retry timer can reach it.
    faults.failing.store(false, Ordering::SeqCst);
    let (entered, release) = faults.arm_gate();
    entered.recv_timeout(std::time::Duration::from_secs(10)).expect("the writer retried by itself");
    drop(release);
    assert_eq!(logger.shutdown().unwrap().stats.instructions.written, 1);
}

#[test]
fn dropping_the_guard_writes_and_fsyncs_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.batch_interval_ms = 60_000;
    config.sync_interval_ms = 60_000;
    let (logger, faults) = start_faulty(&config);
    let log = logger.instruction_log();
    for seq in 0..100 {
        log.send(record(0, seq)).unwrap();
    }
    drop(logger);
    assert!(faults.synced_last.load(Ordering::SeqCst), "the last file operation was an fsync");
    assert_eq!(ids(&instruction_lines(dir.path(), "instructions.log")).len(), 100);
}
