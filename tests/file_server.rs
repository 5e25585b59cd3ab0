//! End to end through the `ferry file-server` binary: a store written by `ferry files put`,
//! read over HTTP, and a graceful stop on SIGTERM.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{spawn_announcing, url_in};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const TIMEOUT: Duration = Duration::from_secs(20);

fn ferry(data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.env_remove("FERRY_CONFIG").arg("--data").arg(data);
    command
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

struct FileServer {
    child: Child,
    url: String,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Starts `ferry file-server` on a free loopback port and waits for its URL.
fn file_server(data: &Path) -> FileServer {
    let mut command = ferry(data);
    command.args(["file-server", "--listen", "127.0.0.1:0"]).stderr(Stdio::piped());
    let (child, first) = spawn_announcing(&mut command, "ferry file-server");
    let url = url_in(&first, "http://")
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .trim_end_matches('/')
        .to_owned();
    FileServer { child, url }
}

async fn get(url: &str) -> (StatusCode, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let call = async {
        let response = client.get(url.parse().unwrap()).await.unwrap();
        let status = response.status();
        (status, response.into_body().collect().await.unwrap().to_bytes())
    };
    tokio::time::timeout(TIMEOUT, call).await.expect("request timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_server_serves_a_file_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(ferry(&data).args(["init", "--partitions", "4"]));
    let source = tmp.path().join("report.csv");
    std::fs::write(&source, "a,b\n1,2\n").unwrap();
    run_ok(ferry(&data).args(["files", "put", "/reports/q1.csv", source.to_str().unwrap()]));

    let mut server = file_server(&data);
    let (status, body) = get(&format!("{}/files/reports/q1.csv", server.url)).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"a,b\n1,2\n"[..]));
    let (status, body) = get(&format!("{}/files/reports/q2.csv", server.url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "not_found");

    // A file written by another process after the start is served too.
    std::fs::write(&source, "c\n").unwrap();
    run_ok(ferry(&data).args(["files", "put", "/reports/q2.csv", source.to_str().unwrap()]));
    let (status, body) = get(&format!("{}/files/reports/q2.csv", server.url)).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"c\n"[..]));

    assert_eq!(unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ferry file-server did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut stderr = String::new();
    server.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
}

#[test]
fn file_server_refuses_a_public_address_without_public() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(ferry(&data).args(["init", "--partitions", "4"]));
    let out = ferry(&data).args(["file-server", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0") && stderr.contains("--public"),
        "{stderr}"
    );
    let missing = ferry(&tmp.path().join("none")).arg("file-server").output().unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("ferry init"), "{stderr}");
}
