//! Instructions per second through `LocalQueue` + `Worker` against the raw store doing the
//! same writes in the same batches, side by side in one run, with and without idempotency
//! keys (the ledger's cost).
//!
//! `cargo bench -p ferry-instruction-worker --bench worker -- [writes] [sync]`: writes per
//! run (default 200,000), sync `os` (default) or `always`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_file_server::{Change, FilePath, InitOptions, Store, StoreOptions, WalSync};
use ferry_instruction_worker::{
    LocalBus, LocalBusOptions, LocalQueue, LocalQueueOptions, Worker, WorkerOptions,
};
use ferry_protocol::{Instruction, InstructionQueue, Operation, QueueError, RequestId, Rights};

const FILES: usize = 1000;
const SUBMITTERS: usize = 2;
const BATCH: usize = 256;

fn open(dir: &std::path::Path, sync: WalSync) -> Arc<Store> {
    Store::init(dir, InitOptions::default()).unwrap();
    Arc::new(Store::open(dir, StoreOptions { wal_sync: sync, ..StoreOptions::default() }).unwrap())
}

fn path(i: usize) -> String {
    format!("/home/u{}/f{}", i % 100, i % FILES)
}

/// The store alone: each thread submits `BATCH` changes, then waits for them.
fn raw_store(writes: usize, sync: WalSync, payload: &Bytes) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), sync);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..SUBMITTERS {
            let store = store.clone();
            s.spawn(move || {
                let mut i = t;
                while i < writes {
                    let mut pending = Vec::with_capacity(BATCH);
                    for _ in 0..BATCH {
                        if i >= writes {
                            break;
                        }
                        let p = FilePath::parse(&path(i)).unwrap();
                        pending.push(store.submit(Change::put(p, payload.clone(), "u")).unwrap());
                        i += SUBMITTERS;
                    }
                    for p in pending {
                        p.wait().unwrap();
                    }
                }
            });
        }
    });
    start.elapsed()
}

/// Through the queue and worker: submitters keep at most `BATCH` instructions in flight each.
fn pipeline(writes: usize, sync: WalSync, payload: &Bytes, keyed: bool) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), sync);
    let bus = Arc::new(LocalBus::new(LocalBusOptions::default()));
    let worker = Arc::new(Worker::new(store, bus, None, WorkerOptions::default()).unwrap());
    let queue = Arc::new(LocalQueue::start(worker, LocalQueueOptions::default()).unwrap());
    let rights = Arc::new(Rights::all());
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..SUBMITTERS {
            let queue = queue.clone();
            let rights = rights.clone();
            s.spawn(move || {
                let (tx, rx) = crossbeam_channel::unbounded();
                let client: Arc<str> = Arc::from(format!("c{t}"));
                let mut in_flight = 0;
                let mut i = t;
                while i < writes || in_flight > 0 {
                    while in_flight < BATCH && i < writes {
                        let instruction = Instruction {
                            id: i as u64,
                            client_id: client.clone(),
                            request_id: RequestId::from(i as u64),
                            subject: client.clone(),
                            rights: rights.clone(),
                            key: if keyed { format!("k{i}") } else { String::new() },
                            op: Operation::Put {
                                path: path(i),
                                content: payload.clone(),
                                if_rev: None,
                            },
                            received_at_us: 0,
                        };
                        let tx = tx.clone();
                        match queue.submit(instruction, Box::new(move |a| drop(tx.send(a)))) {
                            Ok(()) => {
                                in_flight += 1;
                                i += SUBMITTERS;
                            }
                            Err(QueueError::Busy) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    let answer = rx.recv().unwrap();
                    assert!(answer.result.is_ok(), "{answer:?}");
                    in_flight -= 1;
                }
            });
        }
    });
    let elapsed = start.elapsed();
    queue.shutdown();
    elapsed
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let writes: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let sync = match args.get(1).map(String::as_str) {
        Some("always") => WalSync::Always,
        _ => WalSync::Os,
    };
    let payload = Bytes::from(vec![b'x'; 500]);
    println!("{writes} puts of 500 bytes over {FILES} files, {SUBMITTERS} submitters, {sync:?}");
    let rate = |d: Duration| writes as f64 / d.as_secs_f64();
    let raw = rate(raw_store(writes, sync, &payload));
    let plain = rate(pipeline(writes, sync, &payload, false));
    let keyed = rate(pipeline(writes, sync, &payload, true));
    println!("raw store (submit {BATCH}, wait)   {raw:>10.0} writes/s");
    println!("queue + worker, no keys        {plain:>10.0} /s  ({:.2}x raw)", plain / raw);
    println!("queue + worker, keyed (ledger) {keyed:>10.0} /s  ({:.2}x raw)", keyed / raw);
}
