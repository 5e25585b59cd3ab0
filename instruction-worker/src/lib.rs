//! Ferry's instruction worker: applies instructions to the file store in order per file,
//! idempotently, with the subject's rights checked again, answers each one, publishes one
//! change event per applied write and logs one record per instruction.
//!
//! [`Worker`] is the applying logic, independent of how instructions arrive: [`LocalQueue`]
//! feeds it from in-process threads (one per group of partitions), and the distributed mode
//! feeds it from RabbitMQ. [`LocalBus`] is the in-process change bus. Applications add their
//! own instructions through [`CustomOp`]; [`CounterIncrement`] is the example.

mod bus;
mod custom;
mod error;
mod history;
mod ledger;
mod queue;
mod worker;

pub use bus::{LocalBus, LocalBusOptions};
pub use custom::{CounterIncrement, CustomOp, OpContext};
pub use error::{store_error_body, WorkerError};
pub use ledger::LEDGER_PATH_PREFIX;
pub use queue::{LocalQueue, LocalQueueOptions};
pub use worker::{SubmittedBatch, Worker, WorkerOptions};
