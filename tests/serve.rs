//! End to end through the `ferry serve` binary: real WebSocket clients, the command-line
//! client, tokens, graceful stop and SIGKILL.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http;
use common::process::{spawn_announcing, url_in};
use ferry_ingress::client::{Client, ClientError};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(20);
const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret";

struct Server {
    child: Child,
    url: String,
}

fn ferry(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_AUTH__SECRET")
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_URL")
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--set")
        .arg(format!("logger.directory={:?}", dir.join("logs").display().to_string()));
    command
}

/// Starts `ferry serve` on a free loopback port and waits for its URL.
fn serve(dir: &Path, envs: &[(&str, &str)]) -> Server {
    let mut command = ferry(dir);
    command.args(["serve", "--listen", "127.0.0.1:0"]).envs(envs.iter().copied());
    let (child, first) = spawn_announcing(command.stderr(Stdio::piped()), "ferry serve");
    let url = url_in(&first, "ws://").expect("ferry serve printed its URL");
    Server { child, url }
}

impl Server {
    fn signal(&self, signal: i32) {
        let pid = self.child.id() as i32;
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the server to exit; its status and stderr.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "ferry serve did not stop");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        (status, stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future).await.expect("timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_and_the_command_line_client_share_one_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = serve(tmp.path(), &[]);
    let writer = Client::connect(&server.url, None).await.unwrap();
    let mut watcher = Client::connect(&server.url, None).await.unwrap();
    assert_eq!(watcher.sub("/home/anonymous/notes", None).await.unwrap(), 0);
    for i in 1..=20u64 {
        assert_eq!(writer.append("/home/anonymous/notes", &format!("{i};")).await.unwrap(), i);
    }
    for i in 1..=20u64 {
        let event = within(watcher.next_event()).await.unwrap();
        assert_eq!((event.rev, event.raw["content"].as_str()), (i, Some(format!("{i};").as_str())));
    }
    let conflict = writer
        .call(json!({"op": "put", "path": "/home/anonymous/notes", "content": "x", "if_rev": 3}))
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, ClientError::Server { code, rev: Some(20), .. } if code == "conflict"),
        "{conflict}"
    );
    let keyed = json!({"op": "append", "path": "/k", "content": "once", "key": "k1"});
    let first = writer.call(keyed.clone()).await.unwrap();
    assert_eq!(writer.call(keyed).await.unwrap()["rev"], first["rev"]);

    // The command-line client against the same server.
    let cli = |args: &[&str]| {
        let mut command = ferry(tmp.path());
        command.args(["client", "--url", &server.url]).args(args);
        command
    };
    let put = run_ok(cli(&["put", "/cli/a.txt", "-"]).stdin(Stdio::null()));
    assert!(put.contains("rev 1"), "{put}");
    let file = tmp.path().join("b.txt");
    std::fs::write(&file, "from a file").unwrap();
    run_ok(&mut cli(&["put", "/cli/b.txt", file.to_str().unwrap()]));
    assert_eq!(run_ok(&mut cli(&["get", "/cli/b.txt"])), "from a file");
    assert_eq!(run_ok(&mut cli(&["ls", "/cli/"])), "/cli/a.txt\n/cli/b.txt\n");
    let watch = cli(&["watch", "/cli/b.txt", "--since-rev", "0", "--count", "1"]).output().unwrap();
    let line = String::from_utf8(watch.stdout).unwrap();
    let event: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!((event["rev"].as_u64(), event["content"].as_str()), (Some(1), Some("from a file")));
    let missing = cli(&["get", "/cli/none"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not_found"));

    server.signal(libc::SIGTERM);
    let (status, stderr) = server.wait();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("OPEN") && stderr.contains("stopped"), "{stderr}");
    // Everything is in the store, readable without a server.
    let content = run_ok(ferry(tmp.path()).args(["files", "get", "/home/anonymous/notes"]));
    assert!(content.starts_with("1;2;3;") && content.ends_with("20;"), "{content}");
    let log = std::fs::read_to_string(tmp.path().join("logs/instructions.log")).unwrap();
    assert!(log.lines().count() >= 20, "one instruction-log record per instruction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write_and_keys_survive_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let always = [("FERRY_STORE__WAL_SYNC", "always")];
    let server = serve(tmp.path(), &always);
    let client = std::sync::Arc::new(Client::connect(&server.url, None).await.unwrap());
    let keyed =
        json!({"op": "append", "path": "/crash/keyed", "content": "k;", "key": "before-kill"});
    let keyed_rev = client.call(keyed.clone()).await.unwrap()["rev"].as_u64().unwrap();
    // Four writers append until the kill; every acknowledged append must survive.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = client.clone();
            let acked = acked_tx.clone();
            tokio::spawn(async move {
                for i in 0..10_000 {
                    let entry = format!("w{w}-{i};");
                    match client.append(&format!("/crash/f{w}"), &entry).await {
                        Ok(_) => drop(acked.send((w, entry))),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    drop(acked_tx);
    let mut acked: Vec<(usize, String)> = Vec::new();
    while acked.len() < 200 {
        acked.push(within(acked_rx.recv()).await.expect("writes are acknowledged"));
    }
    server.signal(libc::SIGKILL);
    for writer in writers {
        within(writer).await.unwrap();
    }
    while let Some(more) = acked_rx.recv().await {
        acked.push(more);
    }
    drop(server);

    let server = serve(tmp.path(), &always);
    let client = Client::connect(&server.url, None).await.unwrap();
    for w in 0..4 {
        let content = match client.get(&format!("/crash/f{w}")).await {
            Ok(answer) => answer["content"].as_str().unwrap().to_owned(),
            Err(e) => {
                assert_eq!(e.code(), Some("not_found"));
                String::new()
            }
        };
        let mine: Vec<&str> =
            acked.iter().filter(|(x, _)| *x == w).map(|(_, e)| e.as_str()).collect();
        let prefix: String = mine.concat();
        assert!(
            content.starts_with(&prefix),
            "writer {w}: {} acknowledged, file has {content:?}",
            mine.len()
        );
    }
    assert_eq!(client.call(keyed).await.unwrap()["rev"].as_u64(), Some(keyed_rev));
    assert_eq!(client.get("/crash/keyed").await.unwrap()["content"], "k;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_when_a_secret_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("FERRY_AUTH__SECRET", SECRET)];
    let server = serve(tmp.path(), &env);
    let token = run_ok(ferry(tmp.path()).envs(env).args([
        "token",
        "issue",
        "--sub",
        "alice",
        "--write",
        "/home/alice/",
        "--read",
        "/",
        "--ttl",
        "1h",
    ]));
    let token = token.trim();
    match Client::connect(&server.url, None).await {
        Err(ClientError::Refused { status: 401, .. }) => {}
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let alice = Client::connect(&server.url, Some(token)).await.unwrap();
    assert_eq!(alice.put("/home/alice/x", "mine").await.unwrap(), 1);
    assert_eq!(alice.get("/home/alice/x").await.unwrap()["author"], "alice");
    assert_eq!(alice.put("/home/bob/x", "no").await.unwrap_err().code(), Some("forbidden"));
    assert_eq!(alice.put("/home/alice/y", "still usable").await.unwrap(), 1);
    let no_secret = ferry(tmp.path()).args(["token", "issue", "--sub", "x"]).output().unwrap();
    assert!(!no_secret.status.success());
}

#[test]
fn a_public_bind_without_a_secret_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ferry(tmp.path()).args(["serve", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without an auth secret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_section_configures_the_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let env =
        [("FERRY_INGRESS__MAX_SUBSCRIPTIONS", "1"), ("FERRY_INGRESS__MAX_FRAME_BYTES", "1024")];
    let server = serve(tmp.path(), &env);
    let mut client = Client::connect(&server.url, None).await.unwrap();
    client.sub("/lim/a", None).await.unwrap();
    assert_eq!(client.sub("/lim/b", None).await.unwrap_err().code(), Some("limit_exceeded"));
    client.send_text(r#"{"id":"x","op":"nope"}"#).unwrap();
    let answer = within(client.next_unmatched()).await.unwrap();
    assert_eq!(answer["error"]["code"], "bad_request");
    assert_eq!(client.put("/lim/a", "still open").await.unwrap(), 1);
    client
        .send_text(
            json!({"id": "big", "op": "put", "path": "/lim/c", "content": "x".repeat(4096)})
                .to_string(),
        )
        .unwrap();
    let close = within(client.wait_closed()).await.expect("a close frame");
    assert_eq!(close.code, 1009);
}

/// "When a client disconnects, save its data": with the periodic flush an hour away, the
/// subject's files reach the B+tree (what reporting tools read) soon after its last
/// connection closes, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subjects_files_are_flushed_when_its_last_connection_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &[("FERRY_STORE__FLUSH_INTERVAL_MS", "3600000")]);
    let in_tree = || {
        let out = ferry(tmp.path()).args(["files", "get", "/home/anonymous/draft"]).output();
        out.unwrap().status.success()
    };
    let client = Client::connect(&server.url, None).await.unwrap();
    assert_eq!(client.put("/home/anonymous/draft", "unsaved").await.unwrap(), 1);
    assert!(!in_tree(), "still only in the WAL and the dirty set");
    client.close();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !in_tree() {
        assert!(std::time::Instant::now() < deadline, "not flushed after the last disconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /metrics` counts requests by op, error answers by op and code and the instructions'
/// durations, and shows the write-behind's lag (files in the log, not yet in the trees) and the
/// logger's counters; `ingress.metrics = false` turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_requests_errors_the_write_behind_and_the_logger() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &[("FERRY_STORE__FLUSH_INTERVAL_MS", "3600000")]);
    let mut client = Client::connect(&server.url, None).await.unwrap();
    assert_eq!(client.put("/m/a", "one").await.unwrap(), 1);
    assert_eq!(client.put("/m/b", "two").await.unwrap(), 1);
    let conflict = client.call(json!({"op": "put", "path": "/m/a", "content": "x", "if_rev": 0}));
    assert_eq!(conflict.await.unwrap_err().code(), Some("conflict"));
    assert_eq!(client.get("/m/none").await.unwrap_err().code(), Some("not_found"));
    client.send_text(r#"{"id":"x","op":"nope"}"#).unwrap();
    assert_eq!(within(client.next_unmatched()).await.unwrap()["error"]["code"], "bad_request");

    let (status, text) = within(http::get(&server.url, "/metrics")).await;
    assert_eq!(status, 200, "{text}");
    for (name, value) in [
        ("ferry_requests_total{op=\"put\"}", 3.0),
        ("ferry_requests_total{op=\"get\"}", 1.0),
        ("ferry_requests_total{op=\"invalid\"}", 1.0),
        ("ferry_request_errors_total{op=\"put\",code=\"conflict\"}", 1.0),
        ("ferry_request_errors_total{op=\"get\",code=\"not_found\"}", 1.0),
        ("ferry_request_errors_total{op=\"invalid\",code=\"bad_request\"}", 1.0),
        ("ferry_instruction_duration_seconds_count", 4.0),
        ("ferry_ingress_connections", 1.0),
    ] {
        assert_eq!(http::sample(&text, name), Some(value), "{name} in\n{text}");
    }
    // Flushed an hour from now: both files are in the log and the dirty sets, none in a tree.
    assert_eq!(http::sum_of(&text, "ferry_store_dirty_files"), 2.0, "{text}");
    assert_eq!(http::sum_of(&text, "ferry_store_files"), 0.0, "{text}");
    assert!(http::sum_of(&text, "ferry_store_wal_bytes") > 0.0, "{text}");
    // The logger writes on its own thread: its count catches up with the five instructions
    // (and the working-set request of the connection).
    within(async {
        loop {
            let (_, text) = http::get(&server.url, "/metrics").await;
            let name = "ferry_log_records_written_total{stream=\"instructions\"}";
            if http::sample(&text, name).is_some_and(|n| n >= 5.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let off = tempfile::tempdir().unwrap();
    let server = serve(off.path(), &[("FERRY_INGRESS__METRICS", "false")]);
    assert_eq!(within(http::get(&server.url, "/metrics")).await.0, 404);
}
