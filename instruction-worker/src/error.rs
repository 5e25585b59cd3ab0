//! The worker's error at start-up, and how store errors become protocol errors.

use ferry_file_server::StoreError;
use ferry_protocol::{ErrorBody, ErrorCode};

/// Why a worker or its queue could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    #[error("loading the idempotency ledger of partition {partition}: {source}")]
    Ledger {
        partition: u32,
        #[source]
        source: StoreError,
    },
    #[error("spawning worker thread {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("two custom ops are named {name:?}")]
    DuplicateCustomOp { name: String },
    #[error("custom op name {name:?} is a built-in op")]
    BuiltinName { name: String },
}

/// The protocol error for a store error: the client's mistakes get their own codes, the
/// store's own failures are `internal` (or `unavailable` when this process does not serve
/// the partition or the store is closing).
pub fn store_error_body(error: &StoreError) -> ErrorBody {
    let code = match error {
        StoreError::Conflict { actual, .. } => {
            return ErrorBody {
                code: ErrorCode::Conflict,
                message: error.to_string(),
                rev: Some(*actual),
            }
        }
        StoreError::NotFound { .. } => ErrorCode::NotFound,
        StoreError::BadPath(_) => ErrorCode::BadPath,
        StoreError::TooLarge { .. } => ErrorCode::TooLarge,
        StoreError::PatchOutOfRange { .. }
        | StoreError::PatchSplitsChar { .. }
        | StoreError::AuthorTooLong { .. } => ErrorCode::BadRequest,
        StoreError::PartitionNotOpen { .. } | StoreError::Closed => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ErrorBody::new(code, error.to_string())
}
