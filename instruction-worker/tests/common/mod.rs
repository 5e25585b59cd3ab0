//! Helpers shared by the worker's tests: a store in a temporary directory, instructions, and
//! collectors for answers and events.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use ferry_file_server::{InitOptions, Store, StoreOptions, WalSync};
use ferry_instruction_worker::{LocalBus, LocalBusOptions, Worker, WorkerOptions};
use ferry_protocol::{
    Answer, AnswerBody, ChangeBus, ChangeEvent, ErrorBody, EventSink, Instruction, Operation,
    ReplyTo, RequestId, Rights,
};

/// Long enough for any answer on a loaded 2-core machine; a test waiting this long has failed.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub fn store_options() -> StoreOptions {
    StoreOptions { wal_sync: WalSync::Os, ..StoreOptions::default() }
}

pub fn open_store(dir: &Path, options: StoreOptions) -> Arc<Store> {
    Store::init(dir, InitOptions { partitions: 4, partition_depth: 2 }).unwrap();
    Arc::new(Store::open(dir, options).unwrap())
}

/// A worker over a fresh bus.
pub fn worker(store: &Arc<Store>, options: WorkerOptions) -> (Arc<Worker>, Arc<LocalBus>) {
    let bus = Arc::new(LocalBus::new(LocalBusOptions::default()));
    let worker = Worker::new(store.clone(), bus.clone(), None, options).unwrap();
    (Arc::new(worker), bus)
}

pub fn instruction(id: u64, subject: &str, key: &str, op: Operation) -> Instruction {
    Instruction {
        id,
        client_id: Arc::from(format!("conn-{subject}")),
        request_id: RequestId::from(id),
        subject: Arc::from(subject),
        rights: Arc::new(Rights::all()),
        key: key.to_owned(),
        op,
        received_at_us: 0,
    }
}

pub fn put(path: &str, content: &str, if_rev: Option<u64>) -> Operation {
    Operation::Put { path: path.into(), content: Bytes::from(content.to_owned()), if_rev }
}

pub fn append(path: &str, content: &str) -> Operation {
    Operation::Append { path: path.into(), content: Bytes::from(content.to_owned()) }
}

pub fn get(path: &str) -> Operation {
    Operation::Get { path: path.into() }
}

/// A reply that sends the answer into a channel.
pub fn reply_into(tx: &Sender<Answer>) -> ReplyTo {
    let tx = tx.clone();
    Box::new(move |answer| {
        let _ = tx.send(answer);
    })
}

/// Applies `ops` as one batch and returns their answers in order.
pub fn apply(worker: &Worker, instructions: Vec<Instruction>) -> Vec<Answer> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = instructions.len();
    worker.apply_batch(instructions.into_iter().map(|i| (i, reply_into(&tx))).collect());
    let answers: Vec<Answer> = rx.try_iter().collect();
    assert_eq!(answers.len(), n, "every instruction is answered once, during apply_batch");
    answers
}

/// Applies one instruction and returns its result.
pub fn apply_one(worker: &Worker, instruction: Instruction) -> Result<AnswerBody, ErrorBody> {
    apply(worker, vec![instruction]).remove(0).result
}

pub fn rev_of(result: &Result<AnswerBody, ErrorBody>) -> u64 {
    match result {
        Ok(body) => body.rev().expect("the answer has a revision"),
        Err(e) => panic!("expected success, got {e:?}"),
    }
}

/// Collects delivered events into a channel.
pub struct ChannelSink(pub Sender<Arc<ChangeEvent>>);

impl EventSink for ChannelSink {
    fn deliver(&self, event: &Arc<ChangeEvent>) {
        let _ = self.0.send(event.clone());
    }
}

pub fn subscribe(bus: &dyn ChangeBus, topic: ferry_protocol::Topic) -> Receiver<Arc<ChangeEvent>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    bus.subscribe(topic, Arc::new(ChannelSink(tx)));
    rx
}
