//! The read-only HTTP service over a data directory (`ferry file-server`), for reporting tools.
//!
//! The crate's one edge, and its only async code. Every request reads the latest committed
//! B+tree snapshot of the partitions it concerns through a [`ReadOnlyStore`] (which follows
//! new commits and compaction), so it shows what the writer has flushed, never its WAL. It
//! never writes, never takes a partition's lock and never goes through the instruction queue.
//! Store reads touch mapped pages and may block on the disk, so each runs on tokio's blocking
//! pool. The endpoints are described in the README ("Reading a store over HTTP").

pub mod error;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use headers::{ContentLength, ContentType, ETag, HeaderMapExt, IfNoneMatch, LastModified};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::HttpError;

use crate::path::FilePath;
use crate::read_only::ReadOnlyStore;
use crate::record::FileMeta;

/// Ferry's namespace rules, which belong to the protocol crate; that crate depends on this
/// one, so the caller hands them in (`ferry_protocol::is_reserved` and
/// `ferry_protocol::check_prefix`).
#[derive(Debug, Clone, Copy)]
pub struct PathRules {
    /// Paths (and prefixes) that belong to Ferry itself: answered 404, left out of listings.
    pub is_reserved: fn(&str) -> bool,
    /// Whether a listing prefix is acceptable; the reason when not (answered 400 `bad_path`).
    pub check_prefix: fn(&str) -> Result<(), String>,
}

/// Entries in a `/list` page when the request gives no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The largest `limit` a `/list` request may ask for.
pub const MAX_LIST_LIMIT: usize = 1000;

/// The revision of the file, as sent in `X-Ferry-Rev`.
pub const REV_HEADER: HeaderName = HeaderName::from_static("x-ferry-rev");
/// The author of the revision, percent-encoded UTF-8, as sent in `X-Ferry-Author`.
pub const AUTHOR_HEADER: HeaderName = HeaderName::from_static("x-ferry-author");

/// What the author header escapes: besides everything outside ASCII, the bytes a header
/// value cannot carry or would lose (controls, spaces trimmed at its ends) and `%` itself.
const AUTHOR_ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// HTTP dates end with the year 9999; a later mtime gets no `Last-Modified`.
const LAST_HTTP_DATE_MS: u64 = 253_402_300_800_000;

#[derive(Clone)]
struct Service {
    store: Arc<ReadOnlyStore>,
    rules: PathRules,
}

/// The routes of the service over `store`.
pub fn router(store: Arc<ReadOnlyStore>, rules: PathRules) -> Router {
    Router::new()
        .route("/files/{*path}", get(get_file).head(head_file))
        .route("/meta/{*path}", get(get_meta))
        .route("/list", get(list))
        .route("/stats", get(stats))
        .route("/healthz", get(healthz))
        .fallback(no_route)
        .method_not_allowed_fallback(read_only)
        .with_state(Service { store, rules })
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled, then lets the requests in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    store: Arc<ReadOnlyStore>,
    rules: PathRules,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(store, rules))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

impl Service {
    /// Runs `read` on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ReadOnlyStore) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, HttpError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || read(&store)).await??)
    }

    /// The file path of a `{*path}` capture (which lacks the leading slash). A reserved path
    /// is as absent as a missing one.
    fn file_path(
        &self,
        captured: Result<Path<String>, PathRejection>,
    ) -> Result<FilePath, HttpError> {
        let Path(rest) = captured.map_err(|e| HttpError::BadRequest { what: e.body_text() })?;
        let path = FilePath::parse(&format!("/{rest}"))?;
        if (self.rules.is_reserved)(path.as_str()) {
            return Err(not_found(&path));
        }
        Ok(path)
    }

    async fn stat(&self, path: &FilePath) -> Result<FileMeta, HttpError> {
        let key = path.clone();
        self.read(move |store| store.stat(&key)).await?.ok_or_else(|| not_found(path))
    }
}

fn not_found(path: &FilePath) -> HttpError {
    HttpError::NotFound { what: format!("no file {path}") }
}

/// The headers that describe one revision of a file.
fn file_headers(meta: &FileMeta) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.typed_insert(ContentType::octet_stream());
    headers.typed_insert(ContentLength(meta.size));
    headers.typed_insert(entity_tag(meta.rev));
    headers.insert(REV_HEADER, HeaderValue::from(meta.rev));
    let author = utf8_percent_encode(&meta.author, AUTHOR_ESCAPED).to_string();
    headers.insert(
        AUTHOR_HEADER,
        HeaderValue::try_from(author).expect("percent-encoded text is a valid header value"),
    );
    if meta.mtime_ms < LAST_HTTP_DATE_MS {
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_millis(meta.mtime_ms);
        headers.typed_insert(LastModified::from(mtime));
    }
    headers
}

fn entity_tag(rev: u64) -> ETag {
    format!("\"{rev}\"").parse().expect("a quoted number is an entity tag")
}

/// Whether the request's `If-None-Match` names revision `rev` (RFC 9110 section 13.1.2).
fn not_modified(request: &HeaderMap, rev: u64) -> bool {
    request
        .typed_get::<IfNoneMatch>()
        .is_some_and(|tags| !tags.precondition_passes(&entity_tag(rev)))
}

async fn get_file(
    State(svc): State<Service>,
    captured: Result<Path<String>, PathRejection>,
    request: HeaderMap,
) -> Result<Response, HttpError> {
    let path = svc.file_path(captured)?;
    // A revalidation needs the metadata only: the content stays in the tree.
    if request.contains_key(axum::http::header::IF_NONE_MATCH) {
        let meta = svc.stat(&path).await?;
        if not_modified(&request, meta.rev) {
            let mut headers = file_headers(&meta);
            headers.remove(axum::http::header::CONTENT_LENGTH);
            return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
        }
    }
    let key = path.clone();
    let record = svc.read(move |store| store.get(&key)).await?.ok_or_else(|| not_found(&path))?;
    let content = record.content.unwrap_or_default();
    Ok((file_headers(&record.meta), content).into_response())
}

async fn head_file(
    State(svc): State<Service>,
    captured: Result<Path<String>, PathRejection>,
    request: HeaderMap,
) -> Result<Response, HttpError> {
    let path = svc.file_path(captured)?;
    let meta = svc.stat(&path).await?;
    let status =
        if not_modified(&request, meta.rev) { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
    Ok((status, file_headers(&meta)).into_response())
}

#[derive(serde::Serialize)]
struct MetaBody<'a> {
    path: &'a str,
    rev: u64,
    size: u64,
    mtime: u64,
    author: &'a str,
    hash: String,
}

async fn get_meta(
    State(svc): State<Service>,
    captured: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let path = svc.file_path(captured)?;
    let meta = svc.stat(&path).await?;
    let body = MetaBody {
        path: path.as_str(),
        rev: meta.rev,
        size: meta.size,
        mtime: meta.mtime_ms,
        author: &meta.author,
        hash: meta.hash_hex(),
    };
    Ok(Json(body).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(serde::Serialize)]
struct ListEntry<'a> {
    path: &'a str,
    rev: u64,
    size: u64,
    mtime: u64,
}

#[derive(serde::Serialize)]
struct ListBody<'a> {
    entries: Vec<ListEntry<'a>>,
    /// Present when more files follow: ask again with `after` set to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<&'a str>,
}

async fn list(
    State(svc): State<Service>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::BadRequest { what: e.body_text() })?;
    let prefix = query.prefix.unwrap_or_else(|| "/".to_owned());
    (svc.rules.check_prefix)(&prefix).map_err(|what| HttpError::BadPrefix { what })?;
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(HttpError::BadRequest {
            what: format!("limit is {limit}, it must be between 1 and {MAX_LIST_LIMIT}"),
        });
    }
    let is_reserved = svc.rules.is_reserved;
    let after = query.after;
    // One more than asked tells whether a next page exists.
    let mut found = svc
        .read(move |store| {
            let snapshot = store.snapshot()?;
            snapshot
                .scan(&prefix, after.as_deref())
                .filter(|item| !matches!(item, Ok((path, _)) if is_reserved(path.as_str())))
                .take(limit + 1)
                .collect::<crate::Result<Vec<_>>>()
        })
        .await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let entries = found
        .iter()
        .map(|(path, meta)| ListEntry {
            path: path.as_str(),
            rev: meta.rev,
            size: meta.size,
            mtime: meta.mtime_ms,
        })
        .collect();
    let next = if more { found.last().map(|(path, _)| path.as_str()) } else { None };
    Ok(Json(ListBody { entries, next }).into_response())
}

async fn stats(State(svc): State<Service>) -> Result<Response, HttpError> {
    let stats = svc.read(|store| Ok(store.snapshot()?.stats())).await?;
    Ok(Json(stats).into_response())
}

#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
    partitions: u32,
}

/// Healthy when every partition's latest commit can be read.
async fn healthz(State(svc): State<Service>) -> Result<Response, HttpError> {
    svc.read(|store| store.snapshot().map(drop)).await?;
    let body = Health { status: "ok", partitions: svc.store.layout().partitions };
    Ok(Json(body).into_response())
}

async fn no_route(method: Method, uri: Uri) -> HttpError {
    HttpError::NotFound {
        what: format!(
            "no route for {method} {}: try /files/PATH, /meta/PATH, /list, /stats or /healthz",
            uri.path()
        ),
    }
}

async fn read_only(method: Method, uri: Uri) -> Response {
    let error = HttpError::BadRequest {
        what: format!("{method} {} is not allowed: this service is read-only", uri.path()),
    };
    let mut response = error.into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response.headers_mut().insert(axum::http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(author: &str, mtime_ms: u64) -> FileMeta {
        FileMeta { rev: 7, size: 3, mtime_ms, author: Arc::from(author), hash: [0; 32] }
    }

    #[test]
    fn file_headers_describe_the_revision() {
        let headers = file_headers(&meta("alice", 1_795_000_000_123));
        assert_eq!(headers["etag"], "\"7\"");
        assert_eq!(headers["x-ferry-rev"], "7");
        assert_eq!(headers["x-ferry-author"], "alice");
        assert_eq!(headers["content-length"], "3");
        assert_eq!(headers["content-type"], "application/octet-stream");
        assert_eq!(headers["last-modified"], "Wed, 18 Nov 2026 11:06:40 GMT");
    }

    #[test]
    fn authors_that_a_header_cannot_carry_are_percent_encoded() {
        let headers = file_headers(&meta(" Zoë 100%\n", 0));
        assert_eq!(headers["x-ferry-author"], "%20Zo%C3%AB%20100%25%0A");
    }

    #[test]
    fn an_mtime_past_the_last_http_date_gets_no_last_modified() {
        assert!(file_headers(&meta("a", LAST_HTTP_DATE_MS - 1)).contains_key("last-modified"));
        assert!(!file_headers(&meta("a", u64::MAX)).contains_key("last-modified"));
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let request = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("if-none-match", HeaderValue::from_static(value));
            headers
        };
        assert!(not_modified(&request("\"7\""), 7));
        assert!(not_modified(&request("W/\"7\""), 7));
        assert!(not_modified(&request("\"1\", \"7\""), 7));
        assert!(not_modified(&request("*"), 7));
        assert!(!not_modified(&request("\"6\""), 7));
        assert!(!not_modified(&request("\"77\""), 7));
        assert!(!not_modified(&HeaderMap::new(), 7));
    }
}
