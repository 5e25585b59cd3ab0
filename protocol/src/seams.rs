//! The two seams between the parts of the pipeline: the instruction queue (ingress -> worker)
//! and the change bus (worker -> every ingress with watchers). Runtime-agnostic: no async fn,
//! only callbacks, so that an in-process implementation, RabbitMQ and Redis fit behind them.

use std::sync::Arc;

use crate::message::{Answer, ChangeEvent, Instruction};

/// Where a worker sends an instruction's answer: called exactly once. The ingress passes a
/// closure that forwards the answer into the connection's own channel; it must not block.
pub type ReplyTo = Box<dyn FnOnce(Answer) + Send>;

/// Why an instruction was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue for the instruction's partition is full: answer `busy`.
    #[error("the instruction queue is full")]
    Busy,
    /// The queue cannot take instructions (stopped, broker unreachable): answer `unavailable`.
    #[error("the instruction queue is unavailable")]
    Unavailable,
}

/// Carries instructions to the worker that owns their file's partition, in order per
/// partition as submitted.
pub trait InstructionQueue: Send + Sync {
    /// Queues `instruction`; `reply` is called exactly once with its answer, from a worker
    /// thread, unless an error is returned (then `reply` is dropped uncalled and the caller
    /// answers `busy` / `unavailable` itself). Never blocks.
    fn submit(&self, instruction: Instruction, reply: ReplyTo) -> Result<(), QueueError>;

    /// Whether an instruction may reach a worker more than once (a broker redelivers what a
    /// worker did not acknowledge). Only then does the ingress give a write without a client
    /// key a key of its own: the key is what makes the second delivery apply nothing, and it
    /// costs the worker a ledger entry per write, which also shortens how long the clients'
    /// own keys are remembered.
    fn may_redeliver(&self) -> bool {
        true
    }
}

/// What a subscription watches: one file, or every file whose path starts with a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Path(String),
    Prefix(String),
}

impl Topic {
    /// Whether a change of `path` belongs to this topic.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Topic::Path(p) => p == path,
            Topic::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// Identifies one subscription on one bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

/// Receives a subscription's events. Called on the publisher's thread, in revision order per
/// file: it must not block (push into a bounded queue, drop a slow consumer).
pub trait EventSink: Send + Sync {
    fn deliver(&self, event: &Arc<ChangeEvent>);
    /// The bus may have missed events of this subscription (it lost its connection to the
    /// broker and its history cannot bridge the gap): the subscriber must resynchronise from
    /// the files themselves. Never called by a bus that cannot lose events.
    fn lost(&self) {}
}

/// What the bus still knows of a file's recent changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum History {
    /// Every change after the asked revision, in revision order, with no gap (possibly none:
    /// the asked revision is the latest the bus knows).
    Events(Vec<Arc<ChangeEvent>>),
    /// The history does not reach back to the asked revision, or the bus has none for the
    /// file (`current_rev: None`, e.g. no change since the bus started). The ingress then reads
    /// the file and sends a `snapshot` if its revision is past the asked one.
    Gap { current_rev: Option<u64> },
}

/// Broadcasts change events to subscribers and keeps a bounded per-file history for
/// `since_rev` recovery.
///
/// An ingress subscribes once per topic for all its local watchers and fans out itself. To
/// recover without gap or duplicate it subscribes first, buffers live events, then asks
/// [`ChangeBus::history`], and merges both by revision (dropping revisions already sent).
pub trait ChangeBus: Send + Sync {
    /// Records `event` in the history and delivers it to every matching subscription. Per
    /// file, callers publish in revision order.
    fn publish(&self, event: ChangeEvent);
    /// Starts delivering events of `topic` to `sink` (events published after this returns).
    fn subscribe(&self, topic: Topic, sink: Arc<dyn EventSink>) -> SubscriptionId;
    /// Stops a subscription; unknown ids are ignored. A publish already under way may still
    /// deliver one last event to it.
    fn unsubscribe(&self, id: SubscriptionId);
    /// The changes of `path` after `since_rev`, if the history still holds all of them.
    fn history(&self, path: &str, since_rev: u64) -> History;
}
