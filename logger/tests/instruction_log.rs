//! The instruction log end to end on the real file system: completeness, ordering, rotation,
//! retention, reopen, backpressure.

mod common;

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use ferry_config::logger::{OverflowPolicy, RotationPeriod};
use ferry_logger::{LoggerBuilder, ManualClock};

/// `FERRY_LOGGER_SOAK_RECORDS` sets the records per thread (default 5,000) for a longer soak.
#[test]
fn every_record_from_every_thread_is_written_once_in_send_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.instructions.queue_capacity = 64;
    config.rotation.max_bytes = 256 * 1024;
    config.rotation.gzip = true;
    config.rotation.keep_files = 1000;
    let logger = ferry_logger::start(&config, "node-a").unwrap();
    const THREADS: usize = 4;
    let per_thread: u64 = std::env::var("FERRY_LOGGER_SOAK_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    thread::scope(|s| {
        for t in 0..THREADS {
            let log = logger.instruction_log();
            s.spawn(move || {
                for seq in 0..per_thread {
                    log.send(record(t, seq)).unwrap();
                }
            });
        }
    });
    let report = logger.shutdown().unwrap();
    assert_eq!(report.stats.instructions.written, THREADS as u64 * per_thread);
    assert_eq!(report.stats.instructions.dropped_queue_full, 0);
    assert_eq!(report.unwritten_bytes, 0);
    assert!(report.stats.instructions.rotations >= 3, "{report:?}");
    assert_eq!(report.stats.gzipped, report.stats.instructions.rotations);

    let lines = instruction_lines(dir.path(), "instructions.log");
    assert!(lines.iter().all(|v| v["node"] == "node-a"));
    let mut next: HashMap<String, u64> = HashMap::new();
    for (client, seq) in ids(&lines) {
        let expected = next.entry(client.clone()).or_insert(0);
        assert_eq!(seq, *expected, "{client}: out of order or duplicated");
        *expected += 1;
    }
    assert_eq!(next.len(), THREADS);
    assert!(next.values().all(|&n| n == per_thread), "{next:?}");
}

#[test]
fn block_policy_with_a_tiny_queue_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.instructions.queue_capacity = 2;
    config.instructions.overflow = OverflowPolicy::Block;
    config.batch_records = 3;
    let logger = ferry_logger::start(&config, "n").unwrap();
    thread::scope(|s| {
        for t in 0..3 {
            let log = logger.instruction_log();
            s.spawn(move || (0..2_000).for_each(|seq| log.send(record(t, seq)).unwrap()));
        }
    });
    let report = logger.shutdown().unwrap();
    assert_eq!(report.stats.instructions.dropped_queue_full, 0);
    let got = ids(&instruction_lines(dir.path(), "instructions.log"));
    assert_eq!(got.len(), 6_000);
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 6_000);
}

#[test]
fn size_rotation_keeps_every_file_under_the_limit_and_splits_at_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.rotation.max_bytes = 2_000;
    config.rotation.keep_files = 100;
    let logger = ferry_logger::start(&config, "n").unwrap();
    let log = logger.instruction_log();
    for seq in 0..60 {
        log.send(record(0, seq)).unwrap();
    }
    let report = logger.shutdown().unwrap();
    let files = stream_files(dir.path(), "instructions.log");
    assert_eq!(files.len() as u64, report.stats.instructions.rotations + 1);
    assert!(files.len() >= 6, "{files:?}");
    for file in &files {
        let len = fs::metadata(file).unwrap().len();
        assert!(len <= 2_000, "{} is {len} bytes", file.display());
        assert!(read_text(file).ends_with('\n'));
    }
    let got: Vec<u64> = ids(&instruction_lines(dir.path(), "instructions.log"))
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(got, (0..60).collect::<Vec<_>>());
}

#[test]
fn time_rotation_follows_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.rotation.every = RotationPeriod::Hourly;
    let clock = Arc::new(ManualClock::new(at("2026-11-22T00:59:00Z")));
    let logger = LoggerBuilder::new(&config, "n").clock(clock.clone()).start().unwrap();
    let log = logger.instruction_log();
    for seq in 0..3 {
        log.send(record(0, seq)).unwrap();
    }
    logger.flush().unwrap();
    clock.advance(Duration::from_secs(50));
    log.send(record(0, 3)).unwrap();
    logger.flush().unwrap();
    assert_eq!(logger.stats().instructions.rotations, 0, "same hour: no rotation");

    clock.set(at("2026-11-22T01:00:10Z"));
    for seq in 4..6 {
        log.send(record(0, seq)).unwrap();
    }
    logger.flush().unwrap();
    assert_eq!(logger.stats().instructions.rotations, 1);
    let rotated = dir.path().join("instructions.log.2026-11-22T01-00-10Z.000");
    assert_eq!(ids(&lines_of(&rotated)).iter().map(|i| i.1).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let active = dir.path().join("instructions.log");
    assert_eq!(ids(&lines_of(&active)).iter().map(|i| i.1).collect::<Vec<_>>(), [4, 5]);
    drop(logger);
}

#[test]
fn retention_keeps_the_newest_gzipped_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.rotation.keep_files = 3;
    config.rotation.gzip = true;
    config.rotation.every = RotationPeriod::Never;
    let clock = Arc::new(ManualClock::new(at("2026-11-22T00:00:00Z")));
    let logger = LoggerBuilder::new(&config, "n").clock(clock.clone()).start().unwrap();
    let log = logger.instruction_log();
    for seq in 0..6 {
        log.send(record(0, seq)).unwrap();
        logger.rotate().unwrap();
        clock.advance(Duration::from_secs(1));
    }
    let report = logger.flush().unwrap();
    assert_eq!(report.stats.instructions.rotations, 6);
    // Files that fell out of retention before their turn came are not compressed at all.
    assert!(report.stats.gzipped >= 3, "{report:?}");
    assert_eq!(report.stats.housekeeping_errors, 0);
    let files = stream_files(dir.path(), "instructions.log");
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().all(|f| f.extension().is_some_and(|e| e == "gz")));
    let kept: Vec<u64> = ids(&instruction_lines(dir.path(), "instructions.log"))
        .into_iter()
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(kept, [3, 4, 5]);
    drop(logger);
}

#[test]
fn writing_moves_to_a_new_file_after_logrotate_renames_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let logger = ferry_logger::start(&config(dir.path()), "n").unwrap();
    let log = logger.instruction_log();
    for seq in 0..5 {
        log.send(record(0, seq)).unwrap();
    }
    logger.flush().unwrap();
    let active = dir.path().join("instructions.log");
    let renamed = dir.path().join("instructions.log.1");
    fs::rename(&active, &renamed).unwrap();
    logger.reopen().unwrap();
    assert!(active.exists(), "reopen creates the file again");
    for seq in 5..8 {
        log.send(record(0, seq)).unwrap();
    }
    logger.shutdown().unwrap();
    assert_eq!(ids(&lines_of(&renamed)).iter().map(|i| i.1).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(ids(&lines_of(&active)).iter().map(|i| i.1).collect::<Vec<_>>(), [5, 6, 7]);
}

#[test]
fn a_renamed_file_is_noticed_even_without_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let logger = ferry_logger::start(&config(dir.path()), "n").unwrap();
    let log = logger.instruction_log();
    log.send(record(0, 0)).unwrap();
    logger.flush().unwrap();
    let active = dir.path().join("instructions.log");
    let renamed = dir.path().join("instructions.log.old");
    fs::rename(&active, &renamed).unwrap();
    log.send(record(0, 1)).unwrap();
    logger.shutdown().unwrap();
    assert_eq!(ids(&lines_of(&renamed)).iter().map(|i| i.1).collect::<Vec<_>>(), [0]);
    assert_eq!(ids(&lines_of(&active)).iter().map(|i| i.1).collect::<Vec<_>>(), [1]);
}

#[test]
fn directory_change_and_removed_directory_keep_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    let logger = ferry_logger::start(&config(&first), "n").unwrap();
    let log = logger.instruction_log();
    log.send(record(0, 0)).unwrap();
    logger.set_directory(&second).unwrap();
    log.send(record(0, 1)).unwrap();
    logger.flush().unwrap();
    fs::remove_dir_all(&second).unwrap();
    log.send(record(0, 2)).unwrap();
    logger.shutdown().unwrap();
    assert_eq!(ids(&lines_of(&first.join("instructions.log"))).len(), 1);
    let second_ids: Vec<u64> =
        ids(&lines_of(&second.join("instructions.log"))).into_iter().map(|i| i.1).collect();
    assert_eq!(second_ids, [2], "the directory was re-created and record 2 written there");
}

#[test]
fn dropping_the_logger_drains_and_writes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.batch_interval_ms = 60_000;
    config.sync_interval_ms = 60_000;
    let logger = ferry_logger::start(&config, "n").unwrap();
    let log = logger.instruction_log();
    for seq in 0..1_000 {
        log.send(record(0, seq)).unwrap();
    }
    drop(logger);
    assert_eq!(ids(&instruction_lines(dir.path(), "instructions.log")).len(), 1_000);
    assert!(log.send(record(0, 1_000)).is_err(), "sending after shutdown is refused");
}

#[test]
fn bad_configuration_is_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = config(dir.path());
    bad.batch_records = 0;
    let err = ferry_logger::start(&bad, "n").err().unwrap();
    assert!(err.to_string().contains("logger.batch_records"), "{err}");
    let mut bad = config(dir.path());
    bad.diagnostics.filter = "info,[=".to_owned();
    let err = ferry_logger::start(&bad, "n").err().unwrap();
    assert!(err.to_string().contains("logger.diagnostics.filter"), "{err}");
}
