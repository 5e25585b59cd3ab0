//! `ApplyThread`: the one thread of a worker process that applies the instructions of every
//! partition the process holds.
//!
//! A cluster worker holds each partition in a store of its own (partitions come and go with
//! the membership), but one thread applies them all, in rounds: it takes every message that
//! waits, of any partition (up to `max_batch` instructions), and submits each partition's
//! share as one batch ([`Worker::submit_batch`]). A second thread takes the submitted round,
//! makes the logs of all its batches durable with one sync of the file system
//! ([`JointLogSync`]), then answers each batch ([`Worker::finish_batch`]); meanwhile the first
//! submits the next round, so that the CPU work of one round overlaps the sync of the one
//! before (without that overlap a backlog drained at 0.8x the speed of a thread per
//! partition). Rounds are answered in the order they were submitted. Per partition, messages
//! are applied in the order their consumer delivered them, and a partition is submitted by the
//! first thread only, so its writes keep their order.
//!
//! Why one thread: with the default 16 partitions spread over two workers, each partition's
//! traffic is thin, and a thread per partition paid, for every few instructions, its own
//! wake-ups and its own log sync; one thread pays one of each per round for all of them.
//!
//! A batch that makes the worker panic fails alone: its messages are reported
//! [`Outcome::Failed`] (their consumer returns them to the queue) and the other partitions'
//! batches of the round are answered. A redelivered message (`alone`) is applied in a round of
//! its own, so that a poison message fails by itself and its queue's delivery limit sends it to
//! the dead letters.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use ferry_file_server::{JointLogSync, Store};
use ferry_instruction_worker::{SubmittedBatch, Worker};
use ferry_protocol::{Answer, Instruction, ReplyTo};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// One delivered message of one partition, for the apply thread.
pub(crate) struct Job {
    /// The partition's worker: jobs of the same worker in a round form its batch.
    pub worker: Arc<Worker>,
    /// Where the outcome goes: the partition's consumer.
    pub done: mpsc::UnboundedSender<Outcome>,
    pub tag: u64,
    pub reply_to: Option<String>,
    pub instructions: Vec<Instruction>,
    /// Applied in a round of its own (see the module documentation).
    pub alone: bool,
}

/// What the apply thread made of one message.
#[derive(Debug)]
pub(crate) enum Outcome {
    Answered {
        tag: u64,
        reply_to: Option<String>,
        answers: Vec<Answer>,
    },
    /// The worker panicked while applying the batch holding this message.
    Failed {
        tag: u64,
    },
}

/// The apply threads of a worker process. See the module documentation.
pub struct ApplyThread {
    jobs: Sender<Job>,
    submitter: JoinHandle<()>,
    answerer: JoinHandle<()>,
}

impl ApplyThread {
    /// Starts the threads; `applied` counts the instructions it applied (for the node's
    /// description in `ferry status`).
    pub fn start(max_batch: usize, applied: Arc<AtomicU64>) -> std::io::Result<ApplyThread> {
        let (jobs, rx) = crossbeam_channel::unbounded::<Job>();
        // One round waits while the one before is synced and answered.
        let (rounds_tx, rounds) = crossbeam_channel::bounded::<Round>(1);
        let max_batch = max_batch.max(1);
        let answerer =
            std::thread::Builder::new().name("ferry-answer".into()).spawn(move || {
                let joint = JointLogSync::default();
                rounds.iter().for_each(|round| answer_round(round, &applied, &joint));
            })?;
        let submitter = std::thread::Builder::new()
            .name("ferry-apply".into())
            .spawn(move || run(&rx, max_batch, &rounds_tx))?;
        Ok(ApplyThread { jobs, submitter, answerer })
    }

    pub(crate) fn jobs(&self) -> Sender<Job> {
        self.jobs.clone()
    }

    /// Ends the threads once every job handed to them is done (every consumer has stopped).
    pub fn stop(self) {
        drop(self.jobs);
        if self.submitter.join().is_err() || self.answerer.join().is_err() {
            tracing::error!("an apply thread panicked");
        }
    }
}

fn run(jobs: &Receiver<Job>, max_batch: usize, rounds: &Sender<Round>) {
    let mut held: Option<Job> = None;
    loop {
        let Some(first) = held.take().or_else(|| jobs.recv().ok()) else { return };
        let alone = first.alone;
        let mut count = first.instructions.len();
        let mut round = vec![first];
        while count < max_batch && !alone {
            match jobs.try_recv() {
                Ok(job) if job.alone => {
                    held = Some(job);
                    break;
                }
                Ok(job) => {
                    count += job.instructions.len();
                    round.push(job);
                }
                Err(_) => break,
            }
        }
        if rounds.send(submit_round(round)).is_err() {
            return;
        }
    }
}

/// One partition's share of a round.
struct Batch {
    worker: Arc<Worker>,
    done: mpsc::UnboundedSender<Outcome>,
    /// Each message's tag, reply queue and number of instructions, in order.
    shapes: Vec<(u64, Option<String>, usize)>,
    items: Vec<(Instruction, ReplyTo)>,
    /// Filled by the replies, in order: `finish_batch` answers every instruction.
    answers: Arc<Mutex<Vec<Answer>>>,
}

/// A round's batches, submitted (`None` where submitting panicked).
struct Round {
    batches: Vec<Batch>,
    submitted: Vec<Option<SubmittedBatch>>,
}

fn submit_round(round: Vec<Job>) -> Round {
    let mut batches: Vec<Batch> = Vec::new();
    for job in round {
        let index = match batches.iter().position(|b| Arc::ptr_eq(&b.worker, &job.worker)) {
            Some(index) => index,
            None => {
                batches.push(Batch {
                    worker: job.worker,
                    done: job.done,
                    shapes: Vec::new(),
                    items: Vec::new(),
                    answers: Arc::new(Mutex::new(Vec::new())),
                });
                batches.len() - 1
            }
        };
        let batch = &mut batches[index];
        batch.shapes.push((job.tag, job.reply_to, job.instructions.len()));
        for instruction in job.instructions {
            let answers = batch.answers.clone();
            batch.items.push((instruction, Box::new(move |a| answers.lock().push(a))));
        }
    }
    let submitted: Vec<_> = batches
        .iter_mut()
        .map(|b| {
            let (worker, items) = (&b.worker, std::mem::take(&mut b.items));
            std::panic::catch_unwind(AssertUnwindSafe(|| worker.submit_batch(items))).ok()
        })
        .collect();
    Round { batches, submitted }
}

fn answer_round(round: Round, applied: &AtomicU64, joint: &JointLogSync) {
    let Round { batches, submitted } = round;
    let written: Vec<&Store> = batches
        .iter()
        .zip(&submitted)
        .filter(|(_, s)| s.is_some())
        .map(|(b, _)| b.worker.store().as_ref())
        .collect();
    // One log's sync is cheaper alone (fdatasync) than as a sync of the file system.
    if written.len() > 1 {
        joint.sync(&written);
    }
    for (batch, submitted) in batches.into_iter().zip(submitted) {
        let finished = submitted.is_some_and(|s| {
            let worker = &batch.worker;
            std::panic::catch_unwind(AssertUnwindSafe(|| worker.finish_batch(s))).is_ok()
        });
        report(batch, finished, applied);
    }
}

/// Sends a batch's outcomes to its consumer, and lets go of its worker first: the consumer
/// ends once every outcome is in and every job's sender is gone, and its partition's store
/// is closed right after, which needs the worker gone.
fn report(batch: Batch, finished: bool, applied: &AtomicU64) {
    let Batch { worker, done, shapes, answers, .. } = batch;
    drop(worker);
    if finished {
        let count: usize = shapes.iter().map(|s| s.2).sum();
        applied.fetch_add(count as u64, Ordering::Relaxed);
    } else {
        tracing::error!("the worker panicked applying a batch: its messages go back to the queue");
    }
    let mut answers = std::mem::take(&mut *answers.lock()).into_iter();
    for (tag, reply_to, n) in shapes {
        let outcome = if finished {
            Outcome::Answered { tag, reply_to, answers: answers.by_ref().take(n).collect() }
        } else {
            Outcome::Failed { tag }
        };
        // A consumer that is gone has nobody to answer.
        let _ = done.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use ferry_file_server::{FilePath, InitOptions, StoreOptions, WalSync};
    use ferry_instruction_worker::{LocalBus, LocalBusOptions, WorkerOptions};
    use ferry_protocol::{
        AnswerBody, ChangeBus, ChangeEvent, EventSink, History, Operation, RequestId, Rights,
        SubscriptionId, Topic,
    };

    use super::*;

    /// A bus that panics on changes of `/poison/`: the worker fails whatever batch holds one.
    struct PoisonedBus(LocalBus);

    impl ChangeBus for PoisonedBus {
        fn publish(&self, event: ChangeEvent) {
            assert!(!event.path.starts_with("/poison/"), "poisoned");
            self.0.publish(event)
        }
        fn subscribe(&self, topic: Topic, sink: Arc<dyn EventSink>) -> SubscriptionId {
            self.0.subscribe(topic, sink)
        }
        fn unsubscribe(&self, id: SubscriptionId) {
            self.0.unsubscribe(id)
        }
        fn history(&self, path: &str, since_rev: u64) -> History {
            self.0.history(path, since_rev)
        }
    }

    /// A worker over partition `partition` alone of a 2-partition data directory in `dir`.
    fn worker(dir: &std::path::Path, partition: u32, sync: WalSync) -> Arc<Worker> {
        let _ = Store::init(dir, InitOptions { partitions: 2, partition_depth: 2 });
        let options = StoreOptions { wal_sync: sync, ..StoreOptions::default() };
        let store = Arc::new(Store::open_partitions(dir, &[partition], options).unwrap());
        let bus = Arc::new(PoisonedBus(LocalBus::new(LocalBusOptions::default())));
        Arc::new(Worker::new(store, bus, None, WorkerOptions::default()).unwrap())
    }

    /// A path of `worker`'s partition under `/{top}`.
    fn path_of(worker: &Worker, top: &str) -> String {
        (0..)
            .map(|i| format!("/{top}/d{i}/f"))
            .find(|p| {
                let path = FilePath::parse(p).unwrap();
                worker
                    .store()
                    .partitions()
                    .any(|part| part.partition() == worker.store().partition_of(&path))
            })
            .unwrap()
    }

    /// Delivery `tag` of instruction `id`, appending to `path`.
    fn job(
        worker: &Arc<Worker>,
        done: &mpsc::UnboundedSender<Outcome>,
        tag: u64,
        id: u64,
        path: &str,
        alone: bool,
    ) -> Job {
        let instruction = Instruction {
            id,
            client_id: "c".into(),
            request_id: RequestId::from(id),
            subject: "s".into(),
            rights: Arc::new(Rights::all()),
            // No key for the poison one: every delivery applies it again (and fails again).
            key: if path.starts_with("/poison/") { String::new() } else { format!("k{id}") },
            op: Operation::Append { path: path.into(), content: "x".into() },
            received_at_us: 0,
        };
        Job {
            worker: worker.clone(),
            done: done.clone(),
            tag,
            reply_to: None,
            instructions: vec![instruction],
            alone,
        }
    }

    /// Runs the thread's loop over `jobs` (all queued before it starts, so that it makes
    /// rounds of them) and returns each consumer's outcomes as (tag, answered revision).
    fn run_jobs(
        jobs: Vec<Job>,
        outcomes: &mut [mpsc::UnboundedReceiver<Outcome>],
    ) -> Vec<Vec<(u64, Option<u64>)>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        jobs.into_iter().for_each(|j| tx.send(j).unwrap());
        drop(tx);
        let (rounds_tx, rounds) = crossbeam_channel::unbounded();
        run(&rx, 100, &rounds_tx);
        drop(rounds_tx);
        let joint = JointLogSync::default();
        rounds.iter().for_each(|round| answer_round(round, &AtomicU64::new(0), &joint));
        outcomes
            .iter_mut()
            .map(|rx| {
                std::iter::from_fn(|| rx.try_recv().ok())
                    .map(|outcome| match outcome {
                        Outcome::Answered { tag, answers, .. } => {
                            let rev = match &answers[0].result {
                                Ok(AnswerBody::Written { rev }) => Some(*rev),
                                other => panic!("unexpected answer {other:?}"),
                            };
                            (tag, rev)
                        }
                        Outcome::Failed { tag } => (tag, None),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn redelivered_messages_are_applied_alone_so_only_the_poison_one_fails_again() {
        let dir = tempfile::tempdir().unwrap();
        let w = worker(dir.path(), 0, WalSync::Os);
        let (done, rx) = mpsc::unbounded_channel();
        let (poison, good) = (path_of(&w, "poison"), path_of(&w, "home"));
        // First delivery: one batch, which the poison message makes panic.
        let first = vec![job(&w, &done, 1, 1, &poison, false), job(&w, &done, 2, 2, &good, false)];
        assert_eq!(run_jobs(first, &mut [rx])[0], [(1, None), (2, None)]);
        // Redelivered: each alone; the innocent one is answered (from its idempotency key).
        let (done, rx) = mpsc::unbounded_channel();
        let again = vec![job(&w, &done, 3, 1, &poison, true), job(&w, &done, 4, 2, &good, true)];
        assert_eq!(run_jobs(again, &mut [rx])[0], [(3, None), (4, Some(1))]);
    }

    #[test]
    fn one_round_applies_several_partitions_in_order_and_a_panic_fails_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) =
            (worker(dir.path(), 0, WalSync::Always), worker(dir.path(), 1, WalSync::Always));
        let (done_a, rx_a) = mpsc::unbounded_channel();
        let (done_b, rx_b) = mpsc::unbounded_channel();
        let (file_a, file_b, poison_b) =
            (path_of(&a, "home"), path_of(&b, "home"), path_of(&b, "poison"));
        // Interleaved as two consumers would deliver them; b's batch holds a poison message.
        let jobs = vec![
            job(&a, &done_a, 1, 1, &file_a, false),
            job(&b, &done_b, 1, 2, &file_b, false),
            job(&a, &done_a, 2, 3, &file_a, false),
            job(&b, &done_b, 2, 4, &poison_b, false),
            job(&a, &done_a, 3, 5, &file_a, false),
        ];
        let outcomes = run_jobs(jobs, &mut [rx_a, rx_b]);
        assert_eq!(outcomes[0], [(1, Some(1)), (2, Some(2)), (3, Some(3))]);
        assert_eq!(outcomes[1], [(1, None), (2, None)]);
        let content = a.store().get(&FilePath::parse(&file_a).unwrap()).unwrap().unwrap();
        assert_eq!(content.content.as_deref(), Some(&b"xxx"[..]));
    }
}
