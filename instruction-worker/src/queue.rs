//! `LocalQueue`: the in-process [`InstructionQueue`]. One bounded channel and one thread per
//! group of partitions; an instruction goes to the thread owning its file's partition, so
//! instructions on one file are applied in the order they were submitted.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ferry_protocol::{Instruction, InstructionQueue, QueueError, ReplyTo};
use parking_lot::{Mutex, RwLock};

use crate::error::WorkerError;
use crate::worker::Worker;

/// How a [`LocalQueue`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalQueueOptions {
    /// Worker threads; partition `p` belongs to thread `p % threads`. Default 1: one thread's
    /// batch spans every partition and makes their logs durable with one file-system sync,
    /// where two threads each paid their own sync and wake-ups for half the batch (9-12 % more
    /// of `ferry serve`'s CPU per write, `BENCHMARKS.md`). The thread's ceiling is set by its
    /// apply-and-sync cycle and `max_batch`, not its CPU (about 16 us a write at 20,000/s).
    pub threads: usize,
    /// Instructions waiting per thread before `submit` answers `Busy` (default 20,000).
    pub capacity: usize,
    /// Most instructions applied as one batch, sharing group commits (default 1,024). A
    /// thread applies a batch, waits for its sync, then takes the next: at 256 a batch per
    /// cycle capped one thread near 22,000 writes/s on this project's machine, where 1,024
    /// carried 32,000/s at a third of the ack p99 of two threads with 256 each.
    pub max_batch: usize,
}

impl Default for LocalQueueOptions {
    fn default() -> LocalQueueOptions {
        LocalQueueOptions { threads: 1, capacity: 20_000, max_batch: 1024 }
    }
}

type Job = (Instruction, ReplyTo);

/// The in-process instruction queue. See the module documentation.
pub struct LocalQueue {
    worker: Arc<Worker>,
    senders: RwLock<Vec<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl LocalQueue {
    /// Starts the worker threads.
    pub fn start(
        worker: Arc<Worker>,
        options: LocalQueueOptions,
    ) -> Result<LocalQueue, WorkerError> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..options.threads.max(1) {
            let (tx, rx) = crossbeam_channel::bounded(options.capacity.max(1));
            let name = format!("ferry-worker-{i}");
            let w = worker.clone();
            let max_batch = options.max_batch.max(1);
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || run(&w, &rx, max_batch))
                .map_err(|source| WorkerError::Spawn { name, source })?;
            senders.push(tx);
            threads.push(handle);
        }
        Ok(LocalQueue { worker, senders: RwLock::new(senders), threads: Mutex::new(threads) })
    }

    /// Stops taking instructions, applies and answers every one already queued, and joins
    /// the threads. Later submits are refused with [`QueueError::Unavailable`].
    pub fn shutdown(&self) {
        self.senders.write().clear();
        for handle in std::mem::take(&mut *self.threads.lock()) {
            if handle.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

impl Drop for LocalQueue {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(worker: &Worker, rx: &Receiver<Job>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        worker.apply_batch(batch);
    }
}

impl InstructionQueue for LocalQueue {
    fn submit(&self, instruction: Instruction, reply: ReplyTo) -> Result<(), QueueError> {
        let senders = self.senders.read();
        if senders.is_empty() {
            return Err(QueueError::Unavailable);
        }
        let partition = self.worker.partition_of(&instruction.op) as usize;
        match senders[partition % senders.len()].try_send((instruction, reply)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(QueueError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(QueueError::Unavailable),
        }
    }

    /// Handed over in memory, once: an instruction lost in a crash was never answered, and a
    /// client retries it with its own key or as a new write.
    fn may_redeliver(&self) -> bool {
        false
    }
}
