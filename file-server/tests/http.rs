//! The read-only HTTP service over real HTTP: a writer in this process commits to a store in
//! a temporary directory, the service reads it through a `ReadOnlyStore`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ferry_file_server::http::{serve, PathRules};
use ferry_file_server::{Change, FilePath, InitOptions, ReadOnlyStore, Store, StoreOptions};
use headers::{HeaderMapExt, LastModified};
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(20);

const RULES: PathRules = PathRules {
    is_reserved: ferry_protocol::is_reserved,
    check_prefix: ferry_protocol::check_prefix,
};

/// SHA-256("abc"), FIPS 180-2 appendix B.1.
const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn p(s: &str) -> FilePath {
    FilePath::parse(s).unwrap()
}

struct Fixture {
    writer: Store,
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    _tmp: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
    }

    fn json(&self) -> Value {
        assert_eq!(self.header("content-type"), "application/json");
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The `code` of a JSON error, after checking the status.
    fn error(&self, status: StatusCode) -> (String, String) {
        assert_eq!(self.status, status, "{:?}", self.body);
        let body = self.json();
        let error = &body["error"];
        (error["code"].as_str().unwrap().to_owned(), error["message"].as_str().unwrap().to_owned())
    }
}

/// A store of 4 partitions with a few files, flushed, and the service over it.
async fn start() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Store::init(dir, InitOptions { partitions: 4, partition_depth: 2 }).unwrap();
    let options = StoreOptions { wal_preallocate_bytes: 64 << 10, ..StoreOptions::default() };
    let writer = Store::open(dir, options).unwrap();
    writer.apply(Change::put(p("/home/alice/notes.txt"), "hello", "alice")).unwrap();
    writer.apply(Change::append(p("/home/alice/notes.txt"), " world", "Zoë B")).unwrap();
    writer.apply(Change::put(p("/home/alice/abc"), "abc", "alice")).unwrap();
    writer.apply(Change::put(p("/bin/blob"), vec![0u8, 255, 1, 254], "bob")).unwrap();
    writer.apply(Change::put(p("/with space/+plus.txt"), "spaced", "bob")).unwrap();
    writer.apply(Change::put(p("/gone"), "soon deleted", "bob")).unwrap();
    writer.apply(Change::delete(p("/gone"), "bob")).unwrap();
    // Ferry's own file, as the worker's idempotency ledger writes it.
    writer.apply(Change::put(p("/.ferry-idem-0"), "ledger", "ferry")).unwrap();
    writer.flush().unwrap();

    let store = Arc::new(ReadOnlyStore::open(dir).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, store, RULES, shutdown.clone()));
    let client = Client::builder(TokioExecutor::new()).build_http();
    Fixture { writer, base, client, shutdown, server, _tmp: tmp }
}

impl Fixture {
    async fn send(&self, method: Method, target: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::builder().method(method).uri(format!("{}{target}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let call = async {
            let response = self.client.request(request.body(Empty::new()).unwrap()).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Reply { status: parts.status, headers: parts.headers, body }
        };
        tokio::time::timeout(TIMEOUT, call).await.expect("request timed out")
    }

    async fn get(&self, target: &str) -> Reply {
        self.send(Method::GET, target, &[]).await
    }

    /// Stops the service and checks that it stopped cleanly.
    async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(TIMEOUT, self.server).await.expect("server stops");
        stopped.unwrap().unwrap();
        self.writer.close().unwrap();
    }
}

fn paths(listing: &Value) -> Vec<String> {
    listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_serves_content_with_the_revision_headers() {
    let fx = start().await;
    let r = fx.get("/files/home/alice/notes.txt").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"hello world");
    assert_eq!(r.header("content-type"), "application/octet-stream");
    assert_eq!(r.header("content-length"), "11");
    assert_eq!(r.header("etag"), "\"2\"");
    assert_eq!(r.header("x-ferry-rev"), "2");
    assert_eq!(r.header("x-ferry-author"), "Zo%C3%AB%20B");
    let modified = SystemTime::from(r.headers.typed_get::<LastModified>().unwrap());
    let age = SystemTime::now().duration_since(modified).unwrap();
    assert!(age < Duration::from_secs(600), "last modified {age:?} ago");

    let binary = fx.get("/files/bin/blob").await;
    assert_eq!((binary.status, &binary.body[..]), (StatusCode::OK, &[0u8, 255, 1, 254][..]));
    let spaced = fx.get("/files/with%20space/+plus.txt").await;
    assert_eq!((spaced.status, &spaced.body[..]), (StatusCode::OK, &b"spaced"[..]));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_revalidates_and_head_sends_headers_only() {
    let fx = start().await;
    let same =
        fx.send(Method::GET, "/files/home/alice/notes.txt", &[("if-none-match", "\"2\"")]).await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    assert_eq!((same.header("etag"), same.header("x-ferry-rev")), ("\"2\"", "2"));
    let listed = fx
        .send(Method::GET, "/files/home/alice/notes.txt", &[("if-none-match", "\"1\", W/\"2\"")])
        .await;
    assert_eq!(listed.status, StatusCode::NOT_MODIFIED);
    let older =
        fx.send(Method::GET, "/files/home/alice/notes.txt", &[("if-none-match", "\"1\"")]).await;
    assert_eq!((older.status, &older.body[..]), (StatusCode::OK, &b"hello world"[..]));

    let head = fx.send(Method::HEAD, "/files/home/alice/notes.txt", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), "11");
    assert_eq!(head.header("etag"), "\"2\"");
    assert_eq!(head.header("x-ferry-author"), "Zo%C3%AB%20B");
    assert!(head.headers.contains_key("last-modified"));
    let head_same =
        fx.send(Method::HEAD, "/files/home/alice/notes.txt", &[("if-none-match", "\"2\"")]).await;
    assert_eq!(head_same.status, StatusCode::NOT_MODIFIED);
    let head_missing = fx.send(Method::HEAD, "/files/nothing", &[]).await;
    assert_eq!(head_missing.status, StatusCode::NOT_FOUND);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_answers_json_with_the_content_hash() {
    let fx = start().await;
    let r = fx.get("/meta/home/alice/abc").await;
    assert_eq!(r.status, StatusCode::OK);
    let meta = r.json();
    assert_eq!(meta["path"], "/home/alice/abc");
    assert_eq!((meta["rev"].as_u64(), meta["size"].as_u64()), (Some(1), Some(3)));
    assert_eq!(meta["author"], "alice");
    assert_eq!(meta["hash"], ABC_SHA256);
    assert!(meta["mtime"].as_u64().unwrap() > 1_700_000_000_000, "{meta}");
    let (code, message) = fx.get("/meta/gone").await.error(StatusCode::NOT_FOUND);
    assert_eq!((code.as_str(), message.as_str()), ("not_found", "no file /gone"));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_reserved_and_bad_paths_are_json_errors() {
    let fx = start().await;
    for target in ["/files/nothing", "/files/gone", "/files/.ferry-idem-0", "/meta/.ferry-idem-0"] {
        let (code, message) = fx.get(target).await.error(StatusCode::NOT_FOUND);
        assert_eq!(code, "not_found", "{target}");
        assert!(message.starts_with("no file /"), "{target}: {message}");
    }
    let head_reserved = fx.send(Method::HEAD, "/files/.ferry-idem-0", &[]).await;
    assert_eq!(head_reserved.status, StatusCode::NOT_FOUND);

    let (code, message) = fx.get("/files/a//b").await.error(StatusCode::BAD_REQUEST);
    assert_eq!(code, "bad_path");
    assert!(message.contains("\"/a//b\"") && message.contains("empty segment"), "{message}");
    let (code, message) = fx.get("/files/a/../b").await.error(StatusCode::BAD_REQUEST);
    assert!(code == "bad_path" && message.contains("'..'"), "{message}");
    let (code, message) = fx.get("/meta/home/").await.error(StatusCode::BAD_REQUEST);
    assert!(code == "bad_path" && message.contains("trailing"), "{message}");
    let (code, message) = fx.get("/files/a%00b").await.error(StatusCode::BAD_REQUEST);
    assert!(code == "bad_path" && message.contains("NUL"), "{message}");

    let (code, message) = fx.get("/nowhere").await.error(StatusCode::NOT_FOUND);
    assert!(code == "not_found" && message.contains("/nowhere"), "{message}");
    let put = fx.send(Method::PUT, "/files/home/alice/notes.txt", &[]).await;
    assert_eq!(put.header("allow"), "GET, HEAD");
    let (code, message) = put.error(StatusCode::METHOD_NOT_ALLOWED);
    assert!(code == "bad_request" && message.contains("read-only"), "{message}");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_in_path_order_and_hides_reserved_files() {
    let fx = start().await;
    for i in 0..105 {
        fx.writer.apply(Change::put(p(&format!("/many/f{i:03}")), format!("{i}"), "x")).unwrap();
    }
    fx.writer.flush().unwrap();

    let all = fx.get("/list").await.json();
    assert_eq!(all["entries"].as_array().unwrap().len(), 100, "default limit");
    assert_eq!(all["next"], "/many/f096", "3 files before /many/, the ledger left out");
    let first = &all["entries"][0];
    assert_eq!(first["path"], "/bin/blob");
    assert_eq!((first["rev"].as_u64(), first["size"].as_u64()), (Some(1), Some(4)));
    assert!(first["mtime"].as_u64().is_some(), "{first}");
    assert!(!paths(&all).iter().any(|p| p.starts_with("/.ferry-")), "{all}");

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..20 {
        let target = match &after {
            None => "/list?prefix=/many/&limit=40".to_owned(),
            Some(a) => format!("/list?prefix=/many/&limit=40&after={a}"),
        };
        let page = fx.get(&target).await.json();
        seen.extend(paths(&page));
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..105).map(|i| format!("/many/f{i:03}")).collect();
    assert_eq!(seen, expected);

    let alice = fx.get("/list?prefix=/home/alice/").await.json();
    assert_eq!(paths(&alice), ["/home/alice/abc", "/home/alice/notes.txt"]);
    assert!(alice.get("next").is_none(), "{alice}");
    let exact = fx.get("/list?prefix=/home/&limit=2").await.json();
    assert!(exact.get("next").is_none(), "a full last page has no next: {exact}");
    let one = fx.get("/list?prefix=/home/&limit=1").await.json();
    assert_eq!(
        (paths(&one), &one["next"]),
        (vec!["/home/alice/abc".to_owned()], &Value::from("/home/alice/abc"))
    );
    let after_last = fx.get("/list?prefix=/home/&after=/home/alice/notes.txt").await.json();
    assert_eq!((paths(&after_last).len(), after_last.get("next")), (0, None));
    let spaced = fx.get("/list?prefix=/with%20space/%2B").await.json();
    assert_eq!(paths(&spaced), ["/with space/+plus.txt"]);
    let reserved = fx.get("/list?prefix=/.ferry-").await.json();
    assert_eq!(paths(&reserved), Vec::<String>::new());

    let (code, message) = fx.get("/list?prefix=home").await.error(StatusCode::BAD_REQUEST);
    assert!(code == "bad_path" && message.contains("does not start with '/'"), "{message}");
    for (target, needle) in [
        ("/list?limit=0", "between 1 and 1000"),
        ("/list?limit=1001", "between 1 and 1000"),
        ("/list?limit=ten", "limit"),
        ("/list?prefx=/a", "prefx"),
    ] {
        let (code, message) = fx.get(target).await.error(StatusCode::BAD_REQUEST);
        assert!(code == "bad_request" && message.contains(needle), "{target}: {message}");
    }
    let max = fx.get("/list?limit=1000").await.json();
    assert_eq!(paths(&max).len(), 109);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_health_describe_every_partition() {
    let fx = start().await;
    let stats = fx.get("/stats").await.json();
    let partitions = stats["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4);
    // notes.txt, abc, blob, the spaced file and the ledger file live; /gone is a tombstone.
    assert_eq!((stats["files"].as_u64(), stats["tombstones"].as_u64()), (Some(5), Some(1)));
    for field in ["files", "tombstones", "tree_bytes", "garbage_bytes"] {
        let sum: u64 = partitions.iter().map(|p| p[field].as_u64().unwrap()).sum();
        assert_eq!(Some(sum), stats[field].as_u64(), "{field}");
    }
    for (i, p) in partitions.iter().enumerate() {
        assert_eq!(p["partition"].as_u64(), Some(i as u64));
        assert!(p["txn"].as_u64().is_some() && p["generation"].as_u64().is_some(), "{p}");
    }
    let health = fx.get("/healthz").await.json();
    assert_eq!((health["status"].as_str(), health["partitions"].as_u64()), (Some("ok"), Some(4)));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_and_compaction_after_the_start_become_visible() {
    let fx = start().await;
    assert_eq!(fx.get("/files/late.txt").await.status, StatusCode::NOT_FOUND);
    fx.writer.apply(Change::put(p("/late.txt"), "late", "carol")).unwrap();
    fx.writer.apply(Change::put(p("/home/alice/notes.txt"), "rewritten", "alice")).unwrap();
    fx.writer.flush().unwrap();
    let late = fx.get("/files/late.txt").await;
    assert_eq!((late.status, &late.body[..]), (StatusCode::OK, &b"late"[..]));
    assert_eq!(late.header("x-ferry-author"), "carol");
    let stale =
        fx.send(Method::GET, "/files/home/alice/notes.txt", &[("if-none-match", "\"2\"")]).await;
    assert_eq!((stale.status, &stale.body[..]), (StatusCode::OK, &b"rewritten"[..]));
    assert_eq!(stale.header("etag"), "\"3\"");

    let before = fx.get("/stats").await.json();
    fx.writer.compact().unwrap();
    let after = fx.get("/stats").await.json();
    let generations = |s: &Value| -> Vec<u64> {
        s["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["generation"].as_u64().unwrap())
            .collect()
    };
    let (old, new) = (generations(&before), generations(&after));
    assert!(old.iter().zip(&new).all(|(o, n)| n > o), "compaction moved on: {old:?} -> {new:?}");
    assert_eq!(after["garbage_bytes"], 0, "{after}");
    let compacted = fx.get("/files/home/alice/notes.txt").await;
    assert_eq!((compacted.status, &compacted.body[..]), (StatusCode::OK, &b"rewritten"[..]));

    fx.writer.apply(Change::delete(p("/late.txt"), "carol")).unwrap();
    fx.writer.flush().unwrap();
    assert_eq!(fx.get("/files/late.txt").await.status, StatusCode::NOT_FOUND);
    let listing = fx.get("/list?prefix=/l").await.json();
    assert_eq!(paths(&listing), Vec::<String>::new());
    fx.stop().await;
}
