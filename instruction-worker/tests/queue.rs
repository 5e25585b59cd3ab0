//! The in-process queue: order per file under concurrent submitters, busy when full,
//! draining on shutdown.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;

use common::*;
use crossbeam_channel::{Receiver, Sender};
use ferry_instruction_worker::{CustomOp, LocalQueue, LocalQueueOptions, OpContext, WorkerOptions};
use ferry_protocol::{
    ChangeBus, ChangeOp, ErrorBody, InstructionQueue, Operation, QueueError, Topic,
};
use serde_json::Value;

/// `FERRY_WORKER_SOAK_WRITES` sets the writes per submitter (default 300).
#[test]
fn per_file_order_holds_under_concurrent_submitters() {
    const SUBMITTERS: usize = 4;
    let per_submitter: usize =
        std::env::var("FERRY_WORKER_SOAK_WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let (worker, bus) = worker(&store, WorkerOptions::default());
    let shared = subscribe(&*bus, Topic::Path("/s/shared".into()));
    let everything = subscribe(&*bus, Topic::Prefix("/s/".into()));
    let queue = Arc::new(
        LocalQueue::start(
            worker.clone(),
            LocalQueueOptions { threads: 2, capacity: 64, max_batch: 16 },
        )
        .unwrap(),
    );
    let (answers_tx, answers) = crossbeam_channel::unbounded();
    thread::scope(|s| {
        for t in 0..SUBMITTERS {
            let queue = queue.clone();
            let answers_tx = answers_tx.clone();
            s.spawn(move || {
                for n in 0..per_submitter {
                    let id = (t * per_submitter + n) as u64;
                    for (path, tag) in [("/s/shared".to_owned(), 0), (format!("/s/own{t}"), 1)] {
                        let op = append(&path, &format!("{t}.{n};"));
                        let job =
                            instruction(id * 2 + tag, &format!("u{t}"), &format!("{path}-{n}"), op);
                        // Busy is an answer the client retries: do so until taken.
                        loop {
                            match queue.submit(job.clone(), reply_into(&answers_tx)) {
                                Ok(()) => break,
                                Err(QueueError::Busy) => {
                                    thread::yield_now();
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                }
            });
        }
    });
    let total = SUBMITTERS * per_submitter * 2;
    let answers: Vec<_> = (0..total).map(|_| answers.recv_timeout(TIMEOUT).unwrap()).collect();
    queue.shutdown();
    assert!(
        answers.iter().all(|a| a.result.is_ok()),
        "{:?}",
        answers.iter().find(|a| a.result.is_err())
    );
    // The shared file: every revision once, in order, each submitter's appends in its order.
    let events: Vec<_> = shared.try_iter().collect();
    assert_eq!(events.len(), SUBMITTERS * per_submitter);
    assert!(events.iter().enumerate().all(|(i, e)| e.rev == i as u64 + 1));
    let mut next = [0usize; SUBMITTERS];
    for e in &events {
        let ChangeOp::Append { content } = &e.change else { panic!("{e:?}") };
        let text = std::str::from_utf8(content).unwrap();
        let (t, n) = text.trim_end_matches(';').split_once('.').unwrap();
        let (t, n): (usize, usize) = (t.parse().unwrap(), n.parse().unwrap());
        assert_eq!(n, next[t], "submitter {t} out of order");
        next[t] += 1;
        assert_eq!(&*e.author, format!("u{t}"));
    }
    let file =
        store.get(&ferry_file_server::FilePath::parse("/s/shared").unwrap()).unwrap().unwrap();
    let content: String = events
        .iter()
        .map(|e| match &e.change {
            ChangeOp::Append { content } => std::str::from_utf8(content).unwrap().to_owned(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        file.content.as_deref(),
        Some(content.as_bytes()),
        "the file is the events in order"
    );
    // The answers carry the same revisions as the events.
    let mut by_path: HashMap<String, Vec<u64>> = HashMap::new();
    for e in everything.try_iter() {
        by_path.entry(e.path.to_string()).or_default().push(e.rev);
    }
    assert_eq!(by_path.len(), SUBMITTERS + 1);
    for revs in by_path.values() {
        assert!(revs.iter().enumerate().all(|(i, &r)| r == i as u64 + 1), "{revs:?}");
    }
    let mut answer_revs: Vec<u64> =
        answers.iter().filter(|a| a.instruction_id % 2 == 0).map(|a| rev_of(&a.result)).collect();
    answer_revs.sort_unstable();
    assert_eq!(answer_revs, (1..=events.len() as u64).collect::<Vec<_>>());
}

/// Blocks its worker thread until released, so that a test can fill the queue.
struct Gate {
    started: Sender<()>,
    release: Receiver<()>,
}

impl CustomOp for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    fn apply(&self, _args: &Value, _ctx: &mut OpContext<'_>) -> Result<Value, ErrorBody> {
        self.started.send(()).unwrap();
        self.release.recv_timeout(TIMEOUT).unwrap();
        Ok(Value::Null)
    }
}

#[test]
fn a_full_queue_answers_busy_and_shutdown_drains_what_was_taken() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let (started_tx, started) = crossbeam_channel::bounded(1);
    let (release, release_rx) = crossbeam_channel::bounded(1);
    let gate = Gate { started: started_tx, release: release_rx };
    let options = WorkerOptions { custom_ops: vec![Arc::new(gate)], ..WorkerOptions::default() };
    let (worker, _bus) = worker(&store, options);
    let queue =
        LocalQueue::start(worker, LocalQueueOptions { threads: 1, capacity: 2, max_batch: 1 })
            .unwrap();
    let (tx, answers) = crossbeam_channel::unbounded();
    let gate_op = Operation::Custom { name: "gate".into(), path: "/q/a".into(), args: Value::Null };
    queue.submit(instruction(1, "u", "g", gate_op), reply_into(&tx)).unwrap();
    started.recv_timeout(TIMEOUT).unwrap();
    // The thread is held: two more fill the channel, the next is refused.
    queue.submit(instruction(2, "u", "a", append("/q/a", "1")), reply_into(&tx)).unwrap();
    queue.submit(instruction(3, "u", "b", append("/q/a", "2")), reply_into(&tx)).unwrap();
    let refused = queue.submit(instruction(4, "u", "c", append("/q/a", "3")), reply_into(&tx));
    assert_eq!(refused, Err(QueueError::Busy));
    release.send(()).unwrap();
    queue.shutdown();
    let ids: Vec<u64> = answers.try_iter().map(|a| a.instruction_id).collect();
    assert_eq!(ids, [1, 2, 3], "everything taken is answered, in order, before shutdown returns");
    let after = queue.submit(instruction(5, "u", "d", append("/q/a", "4")), reply_into(&tx));
    assert_eq!(after, Err(QueueError::Unavailable));
    let file = store.get(&ferry_file_server::FilePath::parse("/q/a").unwrap()).unwrap().unwrap();
    assert_eq!(file.content.clone().unwrap(), &b"12"[..]);
}

#[test]
fn the_bus_gets_nothing_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let (worker, bus) = worker(&store, WorkerOptions::default());
    let all = subscribe(&*bus as &dyn ChangeBus, Topic::Prefix("/".into()));
    rev_of(&apply_one(&worker, instruction(1, "u", "k", put("/b/a", "x", None))));
    let paths: Vec<String> = all.try_iter().map(|e| e.path.to_string()).collect();
    assert_eq!(paths, ["/b/a"]);
}
