//! `Worker`: applies batches of instructions to the store.
//!
//! A batch is applied in three passes, so that all its writes share group commits:
//! 1. in order, each instruction is checked (path, reserved namespace, rights, idempotency
//!    key) and either answered at once (reads see every earlier write of the batch, errors)
//!    or submitted to the store (applied in memory and appended to the WAL, not yet durable);
//! 2. the keys of the batch's writes are appended to each partition's idempotency ledger
//!    (after the writes, in the same WAL and the same atomic WAL group as the batch's writes,
//!    so that a crash keeps both or neither; keyless writes are in the group for its one
//!    sync of every log), then every write and ledger record is waited for;
//! 3. in order, each instruction's change events are published, its answer sent and its
//!    instruction-log record handed over.
//!
//! Answers therefore leave in submission order, and only once everything they acknowledge is
//! durable. [`Worker::submit_batch`] and [`Worker::finish_batch`] are the same passes split
//! before the waiting, for a caller that applies to several stores in one round and makes
//! their logs durable together in between (a cluster worker's apply thread).
//!
//! Callers must not submit two batches of the same partition at the same time (the local
//! queue gives each partition to one of its threads; the distributed mode has one submitting
//! thread per process): revisions and idempotency keys are taken in pass 1 and 2 by the partition's only
//! writer. Finishing a batch (waiting, publishing, answering) changes nothing that submitting
//! reads, so it may overlap the submitting of the next batch; batches are finished in the
//! order they were submitted.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_file_server::partition::partition_of_prefix;
use ferry_file_server::{Change, Edit, FilePath, PendingWrite, Store, StoreError, WriteGroup};
use ferry_logger::{InstructionLog, InstructionRecord, Outcome};
use ferry_protocol::{
    is_reserved, Answer, AnswerBody, ChangeBus, ChangeEvent, ChangeOp, ErrorBody, ErrorCode,
    FileBody, Instruction, ListEntry, MetaBody, Operation, ReplyTo,
};
use parking_lot::Mutex;
use serde_json::Value;

use crate::custom::{CustomOp, OpContext};
use crate::error::{store_error_body, WorkerError};
use crate::ledger::{slot_paths, IdemKey, KeyLedger};

/// How a [`Worker`] runs.
#[derive(Clone)]
pub struct WorkerOptions {
    /// Idempotency ledger files per partition (default 128).
    pub ledger_slots: usize,
    /// Keys per ledger file (default 64): each partition remembers between
    /// `(ledger_slots - 1) * keys_per_slot` and `ledger_slots * keys_per_slot` recent keys.
    /// Each batch appends to a ledger file, and an append copies and hashes the whole file:
    /// small files keep that cheap (at 256 keys it was a twentieth of `ferry serve`'s CPU).
    pub keys_per_slot: usize,
    /// The application's own ops.
    pub custom_ops: Vec<Arc<dyn CustomOp>>,
}

impl Default for WorkerOptions {
    fn default() -> WorkerOptions {
        WorkerOptions { ledger_slots: 128, keys_per_slot: 64, custom_ops: Vec::new() }
    }
}

const BUILTIN_OPS: [&str; 9] =
    ["put", "append", "patch", "delete", "get", "stat", "list", "sub", "unsub"];

/// Applies instructions. See the module documentation.
pub struct Worker {
    store: Arc<Store>,
    bus: Arc<dyn ChangeBus>,
    log: Option<InstructionLog>,
    custom: HashMap<String, Arc<dyn CustomOp>>,
    /// Indexed by partition; `None` for partitions this process does not open.
    ledgers: Vec<Option<Mutex<KeyLedger>>>,
}

/// A write submitted to the store, not yet durable.
pub(crate) struct SubmittedWrite {
    pending: PendingWrite,
    change: ChangeOp,
    /// The revision it will have (this thread is the partition's only writer).
    pub(crate) rev: u64,
}

/// Submits one change of `path`; the returned revision is known before it is durable.
pub(crate) fn submit_write(
    store: &Store,
    path: &FilePath,
    edit: Edit,
    author: &Arc<str>,
    expected_rev: Option<u64>,
) -> Result<SubmittedWrite, StoreError> {
    // A delete leaves a tombstone that `stat` does not show: take the revision before.
    let before = match edit {
        Edit::Delete => store.stat(path)?.map(|m| m.rev),
        _ => None,
    };
    let change = match &edit {
        Edit::Put(b) => ChangeOp::Put { content: b.clone() },
        Edit::Append(b) => ChangeOp::Append { content: b.clone() },
        Edit::Patch { at, delete, insert } => {
            ChangeOp::Patch { at: *at, delete: *delete, insert: insert.clone() }
        }
        Edit::Delete => ChangeOp::Delete,
    };
    let pending =
        store.submit(Change { path: path.clone(), edit, author: author.clone(), expected_rev })?;
    let rev = match before {
        Some(rev) => rev + 1,
        None => store.stat(path)?.map_or(0, |m| m.rev),
    };
    Ok(SubmittedWrite { pending, change, rev })
}

enum JobState {
    /// Answered without a write.
    Done(Result<AnswerBody, ErrorBody>),
    /// Writes in flight; `result` is `Ok(None)` for a built-in write, `Ok(Some(result))` for
    /// a custom op, or the custom op's error (its earlier writes still count).
    Writes { writes: Vec<SubmittedWrite>, result: Result<Option<Value>, ErrorBody> },
    /// A repeat, within the batch, of the write at this index.
    SameAs(usize),
}

struct Job {
    instruction: Instruction,
    reply: ReplyTo,
    state: JobState,
}

/// A batch submitted to the store and not yet answered: see [`Worker::submit_batch`]. Its
/// instructions are answered only by [`Worker::finish_batch`]; dropped instead, their replies
/// are never called.
#[must_use = "the batch is answered by Worker::finish_batch"]
pub struct SubmittedBatch {
    jobs: Vec<Job>,
    ledger_writes: Vec<PendingWrite>,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn forbidden(message: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::Forbidden, message)
}

fn not_found(path: &FilePath) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("file {path} does not exist"))
}

impl Worker {
    /// A worker over `store` publishing to `bus`, logging to `log` when given. Loads the
    /// idempotency ledger of every open partition.
    pub fn new(
        store: Arc<Store>,
        bus: Arc<dyn ChangeBus>,
        log: Option<InstructionLog>,
        options: WorkerOptions,
    ) -> Result<Worker, WorkerError> {
        let mut custom = HashMap::new();
        for op in options.custom_ops {
            let name = op.name().to_owned();
            if BUILTIN_OPS.contains(&name.as_str()) {
                return Err(WorkerError::BuiltinName { name });
            }
            if custom.insert(name.clone(), op).is_some() {
                return Err(WorkerError::DuplicateCustomOp { name });
            }
        }
        let open: Vec<u32> = store.partitions().map(|p| p.partition()).collect();
        let mut paths = slot_paths(&store, &open, options.ledger_slots.max(1));
        let mut ledgers: Vec<Option<Mutex<KeyLedger>>> =
            (0..store.layout().partitions).map(|_| None).collect();
        for partition in open {
            let slots = paths.remove(&partition).unwrap_or_default();
            let ledger = KeyLedger::load(&store, slots, options.keys_per_slot)
                .map_err(|source| WorkerError::Ledger { partition, source })?;
            ledgers[partition as usize] = Some(Mutex::new(ledger));
        }
        Ok(Worker { store, bus, log, custom, ledgers })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether `name` is a registered custom op (pass to `parse_request_with`).
    pub fn is_custom_op(&self, name: &str) -> bool {
        self.custom.contains_key(name)
    }

    /// The partition that orders `op`: its file's (0 for an invalid path or a listing, which
    /// spans partitions; a working set's prefix's, when it pins one).
    pub fn partition_of(&self, op: &Operation) -> u32 {
        match op {
            Operation::List { .. } => 0,
            // Behind the writes of its own partition, when the prefix pins one.
            Operation::WorkingSet { prefix, .. } => {
                let layout = self.store.layout();
                partition_of_prefix(prefix, layout.partition_depth, layout.partitions).unwrap_or(0)
            }
            op => FilePath::parse(op.path()).map_or(0, |p| self.store.partition_of(&p)),
        }
    }

    /// Applies `batch` in order and calls each reply once. See the module documentation.
    pub fn apply_batch(&self, batch: Vec<(Instruction, ReplyTo)>) {
        self.finish_batch(self.submit_batch(batch));
    }

    /// Passes 1 and 2 of [`Worker::apply_batch`] without the waiting: the batch's writes and
    /// ledger records are submitted, not yet known to be durable. A caller applying batches
    /// to several stores in one round submits each, makes their logs durable together
    /// ([`ferry_file_server::JointLogSync`]), then finishes each.
    pub fn submit_batch(&self, batch: Vec<(Instruction, ReplyTo)>) -> SubmittedBatch {
        let mut jobs = Vec::with_capacity(batch.len());
        let mut in_batch: HashMap<IdemKey, usize> = HashMap::new();
        // A keyed write and the ledger record of its key survive a crash together or not at
        // all; otherwise a crash between them would let the retry apply the write twice.
        let mut group = self.store.group();
        for (index, (instruction, reply)) in batch.into_iter().enumerate() {
            let state = self.start(&instruction, &mut in_batch, index, &mut group);
            jobs.push(Job { instruction, reply, state });
        }
        let ledger_writes = self.record_keys(&jobs);
        // Nothing of the group is acknowledged before it ends.
        drop(group);
        SubmittedBatch { jobs, ledger_writes }
    }

    /// The rest of [`Worker::apply_batch`] for a batch from [`Worker::submit_batch`]: waits
    /// until its writes are durable, then publishes, answers and logs in order.
    pub fn finish_batch(&self, batch: SubmittedBatch) {
        let SubmittedBatch { mut jobs, ledger_writes } = batch;
        let mut done: Vec<(Result<AnswerBody, ErrorBody>, Vec<ChangeEvent>)> =
            Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            let outcome = match std::mem::replace(&mut job.state, JobState::SameAs(usize::MAX)) {
                JobState::Done(result) => (result, Vec::new()),
                JobState::SameAs(earlier) => (done[earlier].0.clone(), Vec::new()),
                JobState::Writes { writes, result } => self.wait_writes(writes, result),
            };
            done.push(outcome);
        }
        for pending in ledger_writes {
            if let Err(e) = pending.wait() {
                tracing::error!(error = %e, "persisting idempotency keys failed");
            }
        }
        for (job, (result, events)) in jobs.into_iter().zip(done) {
            for event in events {
                self.bus.publish(event);
            }
            self.log(&job.instruction, &result);
            let answer = Answer {
                instruction_id: job.instruction.id,
                request_id: job.instruction.request_id,
                result,
            };
            (job.reply)(answer);
        }
    }

    /// Pass 1 for one instruction.
    fn start(
        &self,
        instruction: &Instruction,
        in_batch: &mut HashMap<IdemKey, usize>,
        index: usize,
        group: &mut WriteGroup<'_>,
    ) -> JobState {
        let op = &instruction.op;
        if let Operation::List { prefix, limit, after } = op {
            return JobState::Done(self.list(instruction, prefix, *limit, after.as_deref()));
        }
        if let Operation::WorkingSet { prefix, load } = op {
            return JobState::Done(self.working_set(instruction, prefix, *load));
        }
        let path = match FilePath::parse(op.path()) {
            Ok(path) => path,
            Err(e) => {
                return JobState::Done(Err(ErrorBody::new(ErrorCode::BadPath, e.to_string())))
            }
        };
        if let Err(e) = self.check_rights(instruction, op.path()) {
            return JobState::Done(Err(e));
        }
        if !op.is_write() {
            return JobState::Done(self.read(op, &path));
        }
        // An empty key opts out of idempotency.
        if !instruction.key.is_empty() {
            let key: IdemKey = (instruction.subject.clone(), instruction.key.clone());
            if let Some(&earlier) = in_batch.get(&key) {
                return JobState::SameAs(earlier);
            }
            let ledger = self.ledger(&path);
            if let Some(answer) = ledger.and_then(|l| l.lock().lookup(&key.0, &key.1).cloned()) {
                return JobState::Done(Ok(answer));
            }
            in_batch.insert(key, index);
        }
        // Every write, keyed or not: the group's end makes all of the batch's logs durable with
        // one sync of their file system, where each log alone would be synced by its waiter.
        group.join(&path);
        let author = &instruction.subject;
        let edit = match op {
            Operation::Put { content, if_rev, .. } => (Edit::Put(content.clone()), *if_rev),
            Operation::Append { content, .. } => (Edit::Append(content.clone()), None),
            Operation::Patch { at, delete, insert, if_rev, .. } => {
                (Edit::Patch { at: *at, delete: *delete, insert: insert.clone() }, *if_rev)
            }
            Operation::Delete { if_rev, .. } => (Edit::Delete, *if_rev),
            Operation::Custom { name, args, .. } => {
                let Some(custom) = self.custom.get(name) else {
                    return JobState::Done(Err(ErrorBody::new(
                        ErrorCode::BadRequest,
                        format!("unknown op {name:?}"),
                    )));
                };
                let mut ctx = OpContext::new(&self.store, &path, author);
                // An application's op must not take the partition's thread down with it.
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    custom.apply(args, &mut ctx)
                }));
                let result = match applied {
                    Ok(result) => result.map(Some),
                    Err(_) => Err(ErrorBody::new(
                        ErrorCode::Internal,
                        format!("custom op {name:?} panicked"),
                    )),
                };
                return JobState::Writes { writes: ctx.writes, result };
            }
            Operation::Get { .. }
            | Operation::Stat { .. }
            | Operation::List { .. }
            | Operation::WorkingSet { .. } => {
                unreachable!("reads are answered above")
            }
        };
        match submit_write(&self.store, &path, edit.0, author, edit.1) {
            Ok(write) => JobState::Writes { writes: vec![write], result: Ok(None) },
            Err(e) => JobState::Done(Err(store_error_body(&e))),
        }
    }

    fn ledger(&self, path: &FilePath) -> Option<&Mutex<KeyLedger>> {
        self.ledgers.get(self.store.partition_of(path) as usize)?.as_ref()
    }

    /// Defence in depth: the ingress checked already.
    fn check_rights(&self, instruction: &Instruction, path: &str) -> Result<(), ErrorBody> {
        let op = &instruction.op;
        if is_reserved(path) {
            return Err(forbidden(format!("{path} is reserved for ferry itself")));
        }
        let allowed = if op.is_write() {
            instruction.rights.may_write(path)
        } else {
            instruction.rights.may_read(path)
        };
        if allowed {
            Ok(())
        } else {
            let what = if op.is_write() { "write" } else { "read" };
            Err(forbidden(format!("{} may not {what} {path}", instruction.subject)))
        }
    }

    /// A prefix op's checks: the prefix is well formed, and the subject may read under it.
    fn check_prefix_rights(
        &self,
        instruction: &Instruction,
        prefix: &str,
    ) -> Result<(), ErrorBody> {
        if let Err(what) = ferry_protocol::check_prefix(prefix) {
            return Err(ErrorBody::new(ErrorCode::BadPath, what));
        }
        self.check_rights(instruction, prefix)
    }

    fn read(&self, op: &Operation, path: &FilePath) -> Result<AnswerBody, ErrorBody> {
        let store_err = |e: StoreError| store_error_body(&e);
        match op {
            Operation::Get { .. } => {
                let record =
                    self.store.get(path).map_err(store_err)?.ok_or_else(|| not_found(path))?;
                Ok(AnswerBody::File(FileBody {
                    path: Arc::from(path.as_str()),
                    rev: record.meta.rev,
                    content: record.content.clone().unwrap_or_default(),
                    mtime_ms: record.meta.mtime_ms,
                    author: record.meta.author.clone(),
                }))
            }
            _ => {
                let meta =
                    self.store.stat(path).map_err(store_err)?.ok_or_else(|| not_found(path))?;
                Ok(AnswerBody::Meta(MetaBody {
                    path: Arc::from(path.as_str()),
                    rev: meta.rev,
                    size: meta.size,
                    mtime_ms: meta.mtime_ms,
                    author: meta.author,
                }))
            }
        }
    }

    fn list(
        &self,
        instruction: &Instruction,
        prefix: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<AnswerBody, ErrorBody> {
        self.check_prefix_rights(instruction, prefix)?;
        let limit = limit.clamp(1, ferry_protocol::MAX_LIST_LIMIT) as usize;
        let mut found =
            self.store.list(prefix, after, limit + 1).map_err(|e| store_error_body(&e))?;
        let more = found.len() > limit;
        found.truncate(limit);
        let next = if more { found.last().map(|(p, _)| p.as_str().to_owned()) } else { None };
        let entries = found
            .into_iter()
            .filter(|(p, _)| !is_reserved(p.as_str()))
            .map(|(p, m)| ListEntry {
                path: Arc::from(p.as_str()),
                rev: m.rev,
                size: m.size,
                mtime_ms: m.mtime_ms,
            })
            .collect();
        Ok(AnswerBody::Listing { entries, next })
    }

    /// A client's working set: read into the cache on connect, or flushed promptly and let
    /// go when its subject's last connection on a node closed (see `Operation::WorkingSet`).
    fn working_set(
        &self,
        instruction: &Instruction,
        prefix: &str,
        load: bool,
    ) -> Result<AnswerBody, ErrorBody> {
        self.check_prefix_rights(instruction, prefix)?;
        let files = if load {
            let limit = ferry_protocol::MAX_LIST_LIMIT as usize;
            self.store.load_prefix(prefix, limit).map_err(|e| store_error_body(&e))?
        } else {
            self.store.release_prefix(prefix);
            0
        };
        Ok(AnswerBody::WorkingSet { files })
    }

    /// Pass 2a: appends the keys of the batch's successful writes to their partitions'
    /// ledgers, after the writes.
    fn record_keys(&self, jobs: &[Job]) -> Vec<PendingWrite> {
        let mut by_partition: HashMap<u32, Vec<(IdemKey, AnswerBody)>> = HashMap::new();
        for job in jobs {
            let JobState::Writes { writes, result } = &job.state else { continue };
            if job.instruction.key.is_empty() {
                continue;
            }
            let Ok(body) = answer_body(result, writes.last().map(|w| w.rev)) else { continue };
            let Ok(path) = FilePath::parse(job.instruction.op.path()) else { continue };
            let key = (job.instruction.subject.clone(), job.instruction.key.clone());
            by_partition.entry(self.store.partition_of(&path)).or_default().push((key, body));
        }
        let mut pending = Vec::new();
        for (partition, entries) in by_partition {
            let Some(ledger) = self.ledgers.get(partition as usize).and_then(Option::as_ref) else {
                continue;
            };
            let Some(change) = ledger.lock().record(entries) else { continue };
            match self.store.submit(change) {
                Ok(p) => pending.push(p),
                Err(e) => {
                    tracing::error!(partition, error = %e, "recording idempotency keys failed")
                }
            }
        }
        pending
    }

    /// Pass 2b for one instruction's writes: the answer and the change events.
    fn wait_writes(
        &self,
        writes: Vec<SubmittedWrite>,
        result: Result<Option<Value>, ErrorBody>,
    ) -> (Result<AnswerBody, ErrorBody>, Vec<ChangeEvent>) {
        let mut events = Vec::with_capacity(writes.len());
        let mut failed = None;
        let mut last_rev = None;
        for write in writes {
            match write.pending.wait() {
                Ok(applied) => {
                    last_rev = Some(applied.meta.rev);
                    events.push(ChangeEvent {
                        partition: self.store.partition_of(&applied.path),
                        path: Arc::from(applied.path.as_str()),
                        rev: applied.meta.rev,
                        change: write.change,
                        author: applied.meta.author,
                        ts_ms: applied.meta.mtime_ms,
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "a write failed to become durable");
                    failed.get_or_insert_with(|| store_error_body(&e));
                }
            }
        }
        let answer = match failed {
            Some(error) => Err(error),
            None => answer_body(&result, last_rev),
        };
        (answer, events)
    }

    fn log(&self, instruction: &Instruction, result: &Result<AnswerBody, ErrorBody>) {
        let Some(log) = &self.log else { return };
        let op: Cow<'static, str> = match &instruction.op {
            Operation::Put { .. } => Cow::Borrowed("put"),
            Operation::Append { .. } => Cow::Borrowed("append"),
            Operation::Patch { .. } => Cow::Borrowed("patch"),
            Operation::Delete { .. } => Cow::Borrowed("delete"),
            Operation::Get { .. } => Cow::Borrowed("get"),
            Operation::Stat { .. } => Cow::Borrowed("stat"),
            Operation::List { .. } => Cow::Borrowed("list"),
            Operation::WorkingSet { .. } => Cow::Borrowed("working_set"),
            Operation::Custom { name, .. } => Cow::Owned(name.clone()),
        };
        let record = InstructionRecord {
            time: SystemTime::now(),
            client_id: instruction.client_id.clone(),
            instruction_id: instruction.id,
            op,
            path: Arc::from(instruction.op.path()),
            revision: result.as_ref().ok().and_then(AnswerBody::rev),
            outcome: match result {
                Ok(_) => Outcome::Ok,
                Err(e) => Outcome::Error(Cow::Borrowed(e.code.as_str())),
            },
            latency_us: now_us().saturating_sub(instruction.received_at_us),
        };
        if log.send(record).is_err() {
            tracing::warn!("the instruction log is closed");
        }
    }
}

/// The answer of a write job once its last revision is known.
fn answer_body(
    result: &Result<Option<Value>, ErrorBody>,
    last_rev: Option<u64>,
) -> Result<AnswerBody, ErrorBody> {
    match result {
        Ok(None) => Ok(AnswerBody::Written { rev: last_rev.unwrap_or(0) }),
        Ok(Some(value)) => Ok(AnswerBody::Custom { rev: last_rev, result: value.clone() }),
        Err(e) => Err(e.clone()),
    }
}
