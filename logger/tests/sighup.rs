//! SIGHUP reopens the log files (its own test binary: the signal is process-wide).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn sighup_reopens_after_logrotate_renamed_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let logger = ferry_logger::start(&config(dir.path()), "n").unwrap();
    let listener = ferry_logger::reopen_on_sighup(logger.control()).unwrap();
    let log = logger.instruction_log();
    log.send(record(0, 0)).unwrap();
    logger.flush().unwrap();
    let active = dir.path().join("instructions.log");
    fs::rename(&active, dir.path().join("instructions.log.1")).unwrap();

    signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
    // A signal gives no completion to wait on: the reopen shows as the file created again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !active.exists() {
        assert!(Instant::now() < deadline, "SIGHUP did not reopen the file");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(listener);
    log.send(record(0, 1)).unwrap();
    logger.shutdown().unwrap();
    assert_eq!(ids(&lines_of(&active)).iter().map(|i| i.1).collect::<Vec<_>>(), [1]);
}
