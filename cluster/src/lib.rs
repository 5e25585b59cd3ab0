//! Ferry's distributed mode: the implementations of the pipeline's seams over real brokers,
//! and what decides which worker process applies which partition.
//!
//! - [`codec`]: the bodies of AMQP and Redis messages (MessagePack behind a format byte);
//! - [`topology`]: RabbitMQ names and queue arguments, declared identically by every process;
//! - [`amqp_queue`]: the ingress side of the instruction path, an [`InstructionQueue`] that
//!   batches instructions per partition into AMQP messages with publisher confirms (when a
//!   batch goes: [`batcher`]) and correlates the answers that come back on the node's reply
//!   queue;
//! - [`partition_consumer`]: the worker side, consuming one partition's queue into a
//!   [`ferry_instruction_worker::Worker`] on the process's [`apply_thread`] (rounds over all
//!   its partitions, one log sync per round), answering and acknowledging after the WAL; its
//!   answers travel through the process's [`replies`], batched per reply queue;
//! - [`membership`] and [`assignment`]: workers' heartbeats in Redis and the rendezvous rule that
//!   maps partitions to live workers; [`worker_node`] opens and closes partitions as it moves;
//! - [`redis_bus`]: the [`ChangeBus`] over Redis pub/sub with a per-file history;
//! - [`teardown`]: deleting a stopped cluster's queues, exchanges and Redis keys.
//!
//! This is the only crate that speaks AMQP or Redis: the store, the worker's applying logic and
//! the ingress know only the seams in `ferry-protocol`.
//!
//! [`InstructionQueue`]: ferry_protocol::InstructionQueue
//! [`ChangeBus`]: ferry_protocol::ChangeBus

pub mod amqp_queue;
pub mod apply_thread;
pub mod assignment;
pub mod batcher;
pub mod codec;
pub mod dead_letters;
pub mod membership;
pub mod partition_consumer;
pub mod redis_bus;
pub mod replies;
pub mod status;
pub mod teardown;
pub mod topology;
pub mod worker_node;
