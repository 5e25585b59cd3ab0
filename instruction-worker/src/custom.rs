//! Custom instructions: ops an application adds, applied like the built-in ones (same
//! partition ordering, rights, idempotency, change events and instruction log).

use std::sync::Arc;

use bytes::Bytes;
use ferry_file_server::{Edit, FilePath, SharedRecord, Store};
use ferry_protocol::{ErrorBody, ErrorCode};
use serde_json::Value;

use crate::error::store_error_body;
use crate::worker::{submit_write, SubmittedWrite};

/// An application's own instruction. The request `{"op": name, "id": .., "path": .., ...}`
/// reaches [`CustomOp::apply`] with its other fields as `args`; the subject must have write
/// rights on `path`. The op reads and writes that file through [`OpContext`].
///
/// Writes made before `apply` returns an error still take effect (they are in the WAL): check
/// the input first, then write.
pub trait CustomOp: Send + Sync {
    /// The op's name on the wire; not one of the built-in ops.
    fn name(&self) -> &str;
    /// Applies the op; the `Ok` value is the answer's `result`.
    fn apply(&self, args: &Value, ctx: &mut OpContext<'_>) -> Result<Value, ErrorBody>;
}

/// A custom op's access to its file.
pub struct OpContext<'a> {
    store: &'a Store,
    path: &'a FilePath,
    author: &'a Arc<str>,
    pub(crate) writes: Vec<SubmittedWrite>,
}

impl<'a> OpContext<'a> {
    pub(crate) fn new(store: &'a Store, path: &'a FilePath, author: &'a Arc<str>) -> Self {
        OpContext { store, path, author, writes: Vec::new() }
    }

    /// The instruction's file.
    pub fn path(&self) -> &FilePath {
        self.path
    }

    /// The subject applying the op.
    pub fn author(&self) -> &str {
        self.author
    }

    /// The file's current version (including this op's own writes); `None` if absent.
    pub fn read(&self) -> Result<Option<SharedRecord>, ErrorBody> {
        self.store.get(self.path).map_err(|e| store_error_body(&e))
    }

    /// Changes the file (if it is at `expected_rev`, when given); returns the new revision.
    /// Watchers get a change event for it, in order with every other change of the file.
    pub fn write(&mut self, edit: Edit, expected_rev: Option<u64>) -> Result<u64, ErrorBody> {
        let write = submit_write(self.store, self.path, edit, self.author, expected_rev)
            .map_err(|e| store_error_body(&e))?;
        let rev = write.rev;
        self.writes.push(write);
        Ok(rev)
    }
}

/// Example op `counter_increment` `{path, by?}`: the file holds a JSON integer (absent: 0);
/// adds `by` (default 1) and answers `{"value": new value}`.
pub struct CounterIncrement;

impl CustomOp for CounterIncrement {
    fn name(&self) -> &str {
        "counter_increment"
    }

    fn apply(&self, args: &Value, ctx: &mut OpContext<'_>) -> Result<Value, ErrorBody> {
        let bad = |message: String| ErrorBody::new(ErrorCode::BadRequest, message);
        let Value::Object(fields) = args else {
            return Err(bad("arguments must be a JSON object".into()));
        };
        if let Some(name) = fields.keys().find(|k| *k != "by") {
            return Err(bad(format!("unknown field `{name}` for op \"counter_increment\"")));
        }
        let by = match fields.get("by") {
            None => 1,
            Some(v) => v.as_i64().ok_or_else(|| bad("field `by` must be an integer".into()))?,
        };
        let (current, rev) = match ctx.read()? {
            None => (0, 0),
            Some(record) => {
                let content = record.content.as_deref().unwrap_or_default();
                let value = serde_json::from_slice::<Value>(content)
                    .ok()
                    .and_then(|v| v.as_i64())
                    .ok_or_else(|| {
                        bad(format!("file {} does not hold a JSON integer", ctx.path()))
                    })?;
                (value, record.meta.rev)
            }
        };
        let value = current
            .checked_add(by)
            .ok_or_else(|| bad(format!("counter {} would overflow", ctx.path())))?;
        ctx.write(Edit::Put(Bytes::from(value.to_string())), Some(rev))?;
        Ok(serde_json::json!({ "value": value }))
    }
}
