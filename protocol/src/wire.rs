//! The WebSocket wire format (`docs/PROTOCOL.md`): parsing a client's text frame into a typed
//! request, and writing answers and events as JSON text.
//!
//! Parsing never panics: every malformed frame becomes a [`RequestError`] with the request's
//! `id` when it could be read, a code and a message naming the field.

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::message::{
    Answer, AnswerBody, ChangeEvent, ChangeOp, ErrorBody, ErrorCode, Operation, RequestId,
};
use crate::seams::Topic;

/// Largest `limit` of a `list` request; also the default.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// One parsed client frame.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFrame {
    pub id: RequestId,
    pub request: Request,
}

/// What a client frame asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Work for a worker; `key` is the client's idempotency key, if it gave one (writes only).
    Instruction {
        op: Operation,
        key: Option<String>,
    },
    /// Watch a file (optionally recovering the changes after `since_rev`) or a prefix.
    Sub {
        topic: Topic,
        since_rev: Option<u64>,
    },
    Unsub {
        topic: Topic,
    },
}

/// A frame that could not be parsed: answer it with [`RequestError::to_json`] and keep the
/// connection open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    /// The request's id, when it could be read.
    pub id: Option<RequestId>,
    /// `bad_request` or `bad_path`.
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    /// The error answer as a JSON text frame.
    pub fn to_json(&self) -> String {
        let body = ErrorBody::new(self.code, self.message.clone());
        error_json(self.id.as_ref(), &body)
    }
}

/// Parses a client's text frame; any `op` other than the built-in ones is `bad_request`.
pub fn parse_request(text: &str) -> Result<RequestFrame, RequestError> {
    parse_request_with(text, &|_| false)
}

/// Parses a client's text frame; an `op` for which `is_custom_op` is true becomes
/// [`Operation::Custom`] (it must have a `path`; its other fields become `args`).
pub fn parse_request_with(
    text: &str,
    is_custom_op: &dyn Fn(&str) -> bool,
) -> Result<RequestFrame, RequestError> {
    let value: Value = serde_json::from_str(text).map_err(|e| RequestError {
        id: None,
        code: ErrorCode::BadRequest,
        message: format!("malformed JSON: {e}"),
    })?;
    let Value::Object(map) = value else {
        return Err(RequestError {
            id: None,
            code: ErrorCode::BadRequest,
            message: "a request must be a JSON object".into(),
        });
    };
    let mut fields = Fields { map, id: None };
    let id = match fields.map.remove("id") {
        Some(Value::String(s)) => RequestId::Text(s),
        Some(Value::Number(n)) => RequestId::Number(n),
        Some(_) => return Err(fields.bad("field `id` must be a string or a number")),
        None => return Err(fields.bad("missing field `id`")),
    };
    fields.id = Some(id.clone());
    let op = match fields.map.remove("op") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(fields.bad("field `op` must be a string")),
        None => return Err(fields.bad("missing field `op`")),
    };
    let request = parse_op(&op, &mut fields, is_custom_op)?;
    Ok(RequestFrame { id, request })
}

fn parse_op(
    op: &str,
    f: &mut Fields,
    is_custom_op: &dyn Fn(&str) -> bool,
) -> Result<Request, RequestError> {
    let instruction = |op, key| Ok(Request::Instruction { op, key });
    let request = match op {
        "put" => {
            let path = f.path("path")?;
            let content = f.content("content", "content_b64")?;
            let if_rev = f.opt_u64("if_rev")?;
            let key = f.key()?;
            f.no_more(op)?;
            return instruction(Operation::Put { path, content, if_rev }, key);
        }
        "append" => {
            let path = f.path("path")?;
            let content = f.content("content", "content_b64")?;
            let key = f.key()?;
            f.no_more(op)?;
            return instruction(Operation::Append { path, content }, key);
        }
        "patch" => {
            let path = f.path("path")?;
            let at = f.u64("at")?;
            let delete = f.u64("delete")?;
            let insert = f.content("insert", "insert_b64")?;
            let if_rev = f.opt_u64("if_rev")?;
            let key = f.key()?;
            f.no_more(op)?;
            return instruction(Operation::Patch { path, at, delete, insert, if_rev }, key);
        }
        "delete" => {
            let path = f.path("path")?;
            let if_rev = f.opt_u64("if_rev")?;
            let key = f.key()?;
            f.no_more(op)?;
            return instruction(Operation::Delete { path, if_rev }, key);
        }
        "get" | "stat" => {
            let path = f.path("path")?;
            f.no_more(op)?;
            let op = if op == "get" { Operation::Get { path } } else { Operation::Stat { path } };
            return instruction(op, None);
        }
        "list" => {
            let prefix = f.prefix("prefix")?;
            let limit = match f.opt_u64("limit")? {
                None => MAX_LIST_LIMIT,
                Some(n) if (1..=u64::from(MAX_LIST_LIMIT)).contains(&n) => n as u32,
                Some(n) => {
                    return Err(f.bad(format!(
                        "field `limit` is {n}, it must be between 1 and {MAX_LIST_LIMIT}"
                    )))
                }
            };
            let after = f.opt_string("after")?;
            f.no_more(op)?;
            return instruction(Operation::List { prefix, limit, after }, None);
        }
        "sub" => {
            let topic = f.topic()?;
            let since_rev = f.opt_u64("since_rev")?;
            if since_rev.is_some() && matches!(topic, Topic::Prefix(_)) {
                return Err(f.bad("field `since_rev` is allowed with `path` only"));
            }
            f.no_more(op)?;
            Request::Sub { topic, since_rev }
        }
        "unsub" => {
            let topic = f.topic()?;
            f.no_more(op)?;
            Request::Unsub { topic }
        }
        name if is_custom_op(name) => {
            let path = f.path("path")?;
            let key = f.key()?;
            let args = Value::Object(std::mem::take(&mut f.map));
            return instruction(Operation::Custom { name: name.to_owned(), path, args }, key);
        }
        other => return Err(f.bad(format!("unknown op {other:?}"))),
    };
    Ok(request)
}

/// A request object's fields, taken out one by one.
struct Fields {
    map: Map<String, Value>,
    id: Option<RequestId>,
}

impl Fields {
    fn error(&self, code: ErrorCode, message: impl Into<String>) -> RequestError {
        RequestError { id: self.id.clone(), code, message: message.into() }
    }

    fn bad(&self, message: impl Into<String>) -> RequestError {
        self.error(ErrorCode::BadRequest, message)
    }

    fn opt_string(&mut self, name: &str) -> Result<Option<String>, RequestError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.bad(format!("field `{name}` must be a string"))),
        }
    }

    fn string(&mut self, name: &str) -> Result<String, RequestError> {
        self.opt_string(name)?.ok_or_else(|| self.bad(format!("missing field `{name}`")))
    }

    fn opt_u64(&mut self, name: &str) -> Result<Option<u64>, RequestError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
            Some(_) => Err(self.bad(format!("field `{name}` must be a non-negative integer"))),
        }
    }

    fn u64(&mut self, name: &str) -> Result<u64, RequestError> {
        self.opt_u64(name)?.ok_or_else(|| self.bad(format!("missing field `{name}`")))
    }

    /// A file path, validated as the store does.
    fn path(&mut self, name: &str) -> Result<String, RequestError> {
        let path = self.string(name)?;
        match ferry_file_server::FilePath::parse(&path) {
            Ok(_) => Ok(path),
            Err(e) => Err(self.error(ErrorCode::BadPath, format!("field `{name}`: {e}"))),
        }
    }

    /// A path prefix: starts with `/`, no NUL, at most as long as a path.
    fn prefix(&mut self, name: &str) -> Result<String, RequestError> {
        let prefix = self.string(name)?;
        check_prefix(&prefix)
            .map_err(|what| self.error(ErrorCode::BadPath, format!("field `{name}`: {what}")))?;
        Ok(prefix)
    }

    fn topic(&mut self) -> Result<Topic, RequestError> {
        let has_path = self.map.contains_key("path");
        let has_prefix = self.map.contains_key("prefix");
        match (has_path, has_prefix) {
            (true, false) => Ok(Topic::Path(self.path("path")?)),
            (false, true) => Ok(Topic::Prefix(self.prefix("prefix")?)),
            (true, true) => Err(self.bad("give either field `path` or field `prefix`, not both")),
            (false, false) => Err(self.bad("missing field `path` or `prefix`")),
        }
    }

    /// Bytes given as UTF-8 text in `text` or as base64 in `b64`, exactly one of them.
    fn content(&mut self, text: &str, b64: &str) -> Result<Bytes, RequestError> {
        let plain = self.opt_string(text)?;
        let encoded = self.opt_string(b64)?;
        match (plain, encoded) {
            (Some(s), None) => Ok(Bytes::from(s)),
            (None, Some(e)) => base64::engine::general_purpose::STANDARD
                .decode(e.as_bytes())
                .map(Bytes::from)
                .map_err(|err| self.bad(format!("field `{b64}` is not valid base64: {err}"))),
            (Some(_), Some(_)) => {
                Err(self.bad(format!("give either field `{text}` or field `{b64}`, not both")))
            }
            (None, None) => Err(self.bad(format!("missing field `{text}` (or `{b64}`)"))),
        }
    }

    fn key(&mut self) -> Result<Option<String>, RequestError> {
        let key = self.opt_string("key")?;
        if let Some(k) = &key {
            if k.is_empty() || k.len() > MAX_KEY_BYTES {
                return Err(self.bad(format!(
                    "field `key` is {} bytes, it must be 1 to {MAX_KEY_BYTES}",
                    k.len()
                )));
            }
        }
        Ok(key)
    }

    /// Refuses fields the op does not know, so that a misspelt field is not ignored.
    fn no_more(&self, op: &str) -> Result<(), RequestError> {
        match self.map.keys().next() {
            Some(name) => Err(self.bad(format!("unknown field `{name}` for op {op:?}"))),
            None => Ok(()),
        }
    }
}

/// Checks a list or subscription prefix; the reason when it is not acceptable.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("prefix {prefix:?} does not start with '/'"));
    }
    if prefix.len() > ferry_file_server::path::MAX_PATH_BYTES {
        return Err(format!(
            "prefix is {} bytes long, the limit is {}",
            prefix.len(),
            ferry_file_server::path::MAX_PATH_BYTES
        ));
    }
    if prefix.contains('\0') {
        return Err(format!("prefix {prefix:?} contains a NUL byte"));
    }
    Ok(())
}

/// Content on the wire: UTF-8 as a JSON string, anything else as base64.
fn text_or_b64(bytes: &[u8]) -> (Option<&str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
    }
}

#[derive(Serialize)]
struct EntryWire<'a> {
    path: &'a str,
    rev: u64,
    size: u64,
    mtime: u64,
}

#[derive(Serialize, Default)]
struct AnswerWire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rev: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtime: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    author: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<EntryWire<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
}

#[derive(Serialize)]
struct ErrorWire<'a> {
    code: ErrorCode,
    message: &'a str,
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Only strings, numbers and JSON values built from them: serializing cannot fail.
    serde_json::to_string(value).expect("wire types serialize")
}

/// An answer as the JSON text frame the client receives.
pub fn answer_json(answer: &Answer) -> String {
    match &answer.result {
        Ok(body) => ok_json(&answer.request_id, body),
        Err(error) => error_json(Some(&answer.request_id), error),
    }
}

/// A successful answer to request `id`.
pub fn ok_json(id: &RequestId, body: &AnswerBody) -> String {
    let mut wire = AnswerWire { id: Some(id), ok: true, rev: body.rev(), ..Default::default() };
    match body {
        // A working-set answer goes to no client: only `ok` matters.
        AnswerBody::Written { .. }
        | AnswerBody::Subscribed { .. }
        | AnswerBody::Unsubscribed
        | AnswerBody::WorkingSet { .. } => {}
        AnswerBody::File(file) => {
            (wire.content, wire.content_b64) = text_or_b64(&file.content);
            wire.path = Some(&file.path);
            wire.size = Some(file.content.len() as u64);
            wire.mtime = Some(file.mtime_ms);
            wire.author = Some(&file.author);
        }
        AnswerBody::Meta(meta) => {
            wire.path = Some(&meta.path);
            wire.size = Some(meta.size);
            wire.mtime = Some(meta.mtime_ms);
            wire.author = Some(&meta.author);
        }
        AnswerBody::Listing { entries, next } => {
            wire.entries = Some(
                entries
                    .iter()
                    .map(|e| EntryWire {
                        path: &e.path,
                        rev: e.rev,
                        size: e.size,
                        mtime: e.mtime_ms,
                    })
                    .collect(),
            );
            wire.next = next.as_deref();
        }
        AnswerBody::Custom { result, .. } => wire.result = Some(result),
    }
    to_json(&wire)
}

/// An error answer; without `id` when the request's id could not be read.
pub fn error_json(id: Option<&RequestId>, error: &ErrorBody) -> String {
    to_json(&AnswerWire {
        id,
        ok: false,
        rev: error.rev,
        error: Some(ErrorWire { code: error.code, message: &error.message }),
        ..Default::default()
    })
}

#[derive(Serialize, Default)]
struct EventWire<'a> {
    event: &'static str,
    path: &'a str,
    rev: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delete: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insert: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insert_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    author: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
}

impl<'a> EventWire<'a> {
    fn new(event: &'static str, path: &'a str, rev: u64) -> EventWire<'a> {
        EventWire { event, path, rev, ..Default::default() }
    }
}

/// A change event as the JSON text frame watchers receive: serialize once, send to all.
pub fn change_event_json(event: &ChangeEvent) -> String {
    let mut wire = EventWire::new("change", &event.path, event.rev);
    wire.op = Some(event.change.name());
    wire.author = Some(&event.author);
    wire.ts = Some(event.ts_ms);
    match &event.change {
        ChangeOp::Put { content } | ChangeOp::Append { content } => {
            (wire.content, wire.content_b64) = text_or_b64(content);
        }
        ChangeOp::Patch { at, delete, insert } => {
            wire.at = Some(*at);
            wire.delete = Some(*delete);
            (wire.insert, wire.insert_b64) = text_or_b64(insert);
        }
        ChangeOp::Delete => {}
    }
    to_json(&wire)
}

/// A `snapshot` event: the file's whole content at `rev`, or `"deleted":true` when it does not
/// exist (`content: None`).
pub fn snapshot_json(path: &str, rev: u64, content: Option<&[u8]>) -> String {
    let mut wire = EventWire::new("snapshot", path, rev);
    match content {
        Some(bytes) => (wire.content, wire.content_b64) = text_or_b64(bytes),
        None => wire.deleted = Some(true),
    }
    to_json(&wire)
}
