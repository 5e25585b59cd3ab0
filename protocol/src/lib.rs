//! What crosses a boundary in Ferry: the WebSocket wire format (`docs/PROTOCOL.md`), the
//! internal messages between ingress and worker ([`Instruction`], [`Answer`], [`ChangeEvent`])
//! and the two seams of the pipeline, [`InstructionQueue`] and [`ChangeBus`].
//!
//! Ingress, worker, client and the distributed transports all share these types. The crate is
//! pure: no I/O, no threads, no async runtime; implementations of the seams live elsewhere
//! (in-process ones in `ferry-instruction-worker`).

pub mod message;
pub mod seams;
pub mod wire;

pub use message::{
    is_reserved, Answer, AnswerBody, ChangeEvent, ChangeOp, ErrorBody, ErrorCode, FileBody,
    Instruction, ListEntry, MetaBody, Operation, RequestId, Rights, RESERVED_PREFIX,
};
pub use seams::{
    ChangeBus, EventSink, History, InstructionQueue, QueueError, ReplyTo, SubscriptionId, Topic,
};
pub use wire::{
    answer_json, change_event_json, check_prefix, error_json, ok_json, parse_request,
    parse_request_with, snapshot_json, Request, RequestError, RequestFrame, MAX_KEY_BYTES,
    MAX_LIST_LIMIT,
};
