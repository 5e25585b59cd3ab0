//! Idempotency across a crash: a child process applies keyed writes with `always` sync and
//! exits at once (no flush, no close: the store must replay its WAL, ledger included); the parent
//! reopens the store and retries every write.

mod common;

use std::process::Command;

use common::*;
use ferry_file_server::{Store, StoreOptions, WalSync};
use ferry_instruction_worker::WorkerOptions;
use ferry_protocol::{Answer, AnswerBody};

const CHILD_ENV: &str = "FERRY_WORKER_CRASH_CHILD_DIR";
const WRITES: u64 = 40;

fn options() -> StoreOptions {
    // A long flush interval: the answers' writes stay in the WAL only.
    StoreOptions { wal_sync: WalSync::Always, flush_interval_ms: 60_000, ..StoreOptions::default() }
}

fn writes() -> Vec<ferry_protocol::Instruction> {
    (0..WRITES)
        .map(|i| {
            instruction(i, "alice", &format!("key-{i}"), append(&format!("/c/{}", i % 3), "x"))
        })
        .collect()
}

/// The child's part: runs only when the parent starts this test binary with `CHILD_ENV`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let store = open_store(std::path::Path::new(&dir), options());
    let (worker, _bus) = worker(&store, WorkerOptions::default());
    for chunk in writes().chunks(7) {
        for answer in apply(&worker, chunk.to_vec()) {
            println!("ANSWER {}", serde_json::to_string(&answer).unwrap());
        }
    }
    // Exits without running destructors: nothing is flushed or closed (and, unlike an abort,
    // no core file is left behind).
    std::process::exit(3);
}

#[test]
fn retries_after_a_crash_get_their_original_answers_and_apply_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "the child exits without closing the store");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let answers: Vec<Answer> = stdout
        .lines()
        // libtest's "test crash_child ... " may precede the first line.
        .filter_map(|l| l.split_once("ANSWER ").map(|(_, json)| json))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len() as u64, WRITES, "{stdout}");

    let store = std::sync::Arc::new(Store::open(dir.path(), options()).unwrap());
    let (worker, bus) = worker(&store, WorkerOptions::default());
    let events = subscribe(&*bus, ferry_protocol::Topic::Prefix("/".into()));
    let retried = apply(&worker, writes());
    for (original, retry) in answers.iter().zip(&retried) {
        assert!(matches!(original.result, Ok(AnswerBody::Written { .. })), "{original:?}");
        assert_eq!(retry.result, original.result, "instruction {}", original.instruction_id);
    }
    assert_eq!(events.try_iter().count(), 0, "nothing applied again");
    for f in 0..3u64 {
        let path = ferry_file_server::FilePath::parse(&format!("/c/{f}")).unwrap();
        let expected = (0..WRITES).filter(|i| i % 3 == f).count();
        let file = store.get(&path).unwrap().unwrap();
        assert_eq!(file.content.clone().unwrap().len(), expected, "{path}");
        assert_eq!(file.meta.rev, expected as u64);
    }
}
