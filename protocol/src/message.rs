//! Internal messages: what an ingress hands to a worker, what a worker answers and what it
//! publishes. All serde, so that the distributed mode can put them on RabbitMQ and Redis as they
//! are (`bytes::Bytes` serialize as byte strings: compact in binary formats, an array of
//! numbers in JSON).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The client's id for a request, echoed in its answer: a JSON string or number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(serde_json::Number),
    Text(String),
}

impl From<u64> for RequestId {
    fn from(n: u64) -> RequestId {
        RequestId::Number(n.into())
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> RequestId {
        RequestId::Text(s.to_owned())
    }
}

/// The path prefixes an authenticated subject may read and write. A prefix covers every path
/// (or list/subscription prefix) that starts with it: `/` covers everything, `/home/alice/`
/// covers `/home/alice/notes.txt`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    pub read: Vec<String>,
    pub write: Vec<String>,
}

impl Rights {
    /// Read and write everywhere (an open server bound to loopback).
    pub fn all() -> Rights {
        Rights { read: vec!["/".to_owned()], write: vec!["/".to_owned()] }
    }

    /// Whether `path` (a file path or a prefix) may be read.
    pub fn may_read(&self, path: &str) -> bool {
        self.read.iter().any(|p| path.starts_with(p.as_str()))
    }

    /// Whether `path` may be written.
    pub fn may_write(&self, path: &str) -> bool {
        self.write.iter().any(|p| path.starts_with(p.as_str()))
    }
}

/// Paths under this prefix belong to Ferry itself (e.g. the idempotency ledger); clients may
/// neither read nor write them, and listings leave them out.
pub const RESERVED_PREFIX: &str = "/.ferry-";

/// Whether `path` (or prefix) lies in Ferry's reserved namespace.
pub fn is_reserved(path: &str) -> bool {
    path.starts_with(RESERVED_PREFIX)
}

/// What an instruction asks the worker to do. Paths are validated by the ingress (see
/// [`crate::parse_request`]) and again by the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// Create or replace; `if_rev: Some(0)` = the file must not exist.
    Put {
        path: String,
        content: Bytes,
        if_rev: Option<u64>,
    },
    /// Add at the end, creating the file if absent.
    Append {
        path: String,
        content: Bytes,
    },
    /// Replace `delete` bytes at byte offset `at` by `insert`.
    Patch {
        path: String,
        at: u64,
        delete: u64,
        insert: Bytes,
        if_rev: Option<u64>,
    },
    Delete {
        path: String,
        if_rev: Option<u64>,
    },
    Get {
        path: String,
    },
    Stat {
        path: String,
    },
    /// Up to `limit` files under `prefix`, after `after`, in path order.
    List {
        prefix: String,
        limit: u32,
        after: Option<String>,
    },
    /// Sent by an ingress itself, never by a client: bring the files under `prefix` into the
    /// worker's cache (`load`, when a client connects), or flush them promptly and let them
    /// leave the cache (`!load`, when the subject's last connection on the node closes).
    WorkingSet {
        prefix: String,
        load: bool,
    },
    /// An application's own instruction (see the worker's `CustomOp`). `path` routes it (its
    /// partition orders it with the other instructions on that file) and is the file it may
    /// read and write; `args` is the request object without `op`, `id` and `key`.
    Custom {
        name: String,
        path: String,
        args: serde_json::Value,
    },
}

impl Operation {
    /// The op's name as on the wire (`put`, ..., or the custom op's name).
    pub fn name(&self) -> &str {
        match self {
            Operation::Put { .. } => "put",
            Operation::Append { .. } => "append",
            Operation::Patch { .. } => "patch",
            Operation::Delete { .. } => "delete",
            Operation::Get { .. } => "get",
            Operation::Stat { .. } => "stat",
            Operation::List { .. } => "list",
            Operation::WorkingSet { .. } => "working_set",
            Operation::Custom { name, .. } => name,
        }
    }

    /// The file the op concerns, or the prefix for `list`. Instructions are routed by it.
    pub fn path(&self) -> &str {
        match self {
            Operation::Put { path, .. }
            | Operation::Append { path, .. }
            | Operation::Patch { path, .. }
            | Operation::Delete { path, .. }
            | Operation::Get { path }
            | Operation::Stat { path }
            | Operation::Custom { path, .. } => path,
            Operation::List { prefix, .. } | Operation::WorkingSet { prefix, .. } => prefix,
        }
    }

    /// Whether the op may change files (custom ops count as writes): it needs write rights
    /// and its idempotency key is honoured.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Operation::Get { .. }
                | Operation::Stat { .. }
                | Operation::List { .. }
                | Operation::WorkingSet { .. }
        )
    }
}

/// One request on its way from an ingress to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instruction {
    /// Unique on the ingress node that made it; correlates the answer.
    pub id: u64,
    /// The connection it came from (for the instruction log).
    pub client_id: Arc<str>,
    /// The client's id, echoed in the answer.
    pub request_id: RequestId,
    /// The authenticated subject, stamped by the ingress: the author of any change.
    pub subject: Arc<str>,
    /// What the subject may touch; the worker checks again.
    pub rights: Arc<Rights>,
    /// Idempotency key of a write: (subject, key) is applied at most once. The ingress assigns
    /// a unique one when the client gave none and the queue may deliver it twice
    /// ([`InstructionQueue::may_redeliver`](crate::InstructionQueue::may_redeliver)); empty
    /// means "not idempotent" (and is what reads carry).
    pub key: String,
    pub op: Operation,
    /// When the ingress received it, microseconds since the Unix epoch.
    pub received_at_us: u64,
}

/// The outcome of one instruction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// [`Instruction::id`].
    pub instruction_id: u64,
    pub request_id: RequestId,
    pub result: Result<AnswerBody, ErrorBody>,
}

/// What a successful instruction (or subscription request) answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerBody {
    /// put / append / patch / delete: the file's new revision.
    Written { rev: u64 },
    /// get.
    File(FileBody),
    /// stat.
    Meta(MetaBody),
    /// list: `next` is the `after` of the following page, if there may be one.
    Listing { entries: Vec<ListEntry>, next: Option<String> },
    /// A custom op's result and, if it wrote, the revision of its last write.
    Custom { rev: Option<u64>, result: serde_json::Value },
    /// sub: the file's current revision (0 if unknown or absent; prefixes: none).
    Subscribed { rev: Option<u64> },
    /// unsub.
    Unsubscribed,
    /// working_set (an ingress's own, never a client's): files read into the cache.
    WorkingSet { files: usize },
}

impl AnswerBody {
    /// The revision the answer carries, if any.
    pub fn rev(&self) -> Option<u64> {
        match self {
            AnswerBody::Written { rev } => Some(*rev),
            AnswerBody::File(f) => Some(f.rev),
            AnswerBody::Meta(m) => Some(m.rev),
            AnswerBody::Custom { rev, .. } | AnswerBody::Subscribed { rev } => *rev,
            AnswerBody::Listing { .. }
            | AnswerBody::Unsubscribed
            | AnswerBody::WorkingSet { .. } => None,
        }
    }
}

/// A file's content and metadata (`get`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBody {
    pub path: Arc<str>,
    pub rev: u64,
    pub content: Bytes,
    pub mtime_ms: u64,
    pub author: Arc<str>,
}

/// A file's metadata (`stat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaBody {
    pub path: Arc<str>,
    pub rev: u64,
    pub size: u64,
    pub mtime_ms: u64,
    pub author: Arc<str>,
}

/// One file of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    pub path: Arc<str>,
    pub rev: u64,
    pub size: u64,
    pub mtime_ms: u64,
}

/// A refused or failed instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// Lowercase, names what was wrong.
    pub message: String,
    /// The file's current revision, on `conflict`.
    pub rev: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody { code, message: message.into(), rev: None }
    }
}

/// The error codes of the protocol, serialized in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    BadPath,
    TooLarge,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    LimitExceeded,
    Busy,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The code as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadPath => "bad_path",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an applied write did to its file, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ChangeOp {
    /// The whole new content.
    Put {
        content: Bytes,
    },
    /// The appended bytes.
    Append {
        content: Bytes,
    },
    Patch {
        at: u64,
        delete: u64,
        insert: Bytes,
    },
    Delete,
}

impl ChangeOp {
    pub fn name(&self) -> &'static str {
        match self {
            ChangeOp::Put { .. } => "put",
            ChangeOp::Append { .. } => "append",
            ChangeOp::Patch { .. } => "patch",
            ChangeOp::Delete => "delete",
        }
    }
}

/// One applied write, published on the change bus. Per file, events are published in
/// revision order, one per revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub path: Arc<str>,
    pub rev: u64,
    pub change: ChangeOp,
    /// The subject that made the change.
    pub author: Arc<str>,
    /// When the store applied it, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The store partition of `path` (the distributed mode shards history by it).
    pub partition: u32,
}
