//! Every limit and every kind of bad input gets its documented answer or close code, and the
//! connection stays usable wherever the protocol says so.

mod common;

use std::time::Duration;

use common::{start, within, TIMEOUT};
use ferry_ingress::client::{Client, ClientError, ConnectOptions};
use ferry_ingress::{Authenticator, IngressOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn raw_answer(client: &mut Client, text: &str) -> Value {
    client.send_text(text).unwrap();
    within(client.next_unmatched()).await.expect("an answer")
}

fn error_code(answer: &Value) -> (&str, Option<&str>) {
    assert_eq!(answer["ok"], false, "{answer}");
    (answer["error"]["code"].as_str().unwrap(), answer["id"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_and_the_connection_stays_usable() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let mut client = node.client().await;
    let malformed = raw_answer(&mut client, "{not json").await;
    assert_eq!(malformed.get("id"), None, "a frame that is not JSON is answered without id");
    assert_eq!(malformed["error"]["code"], "bad_request");
    let cases = [
        (r#"{"id":"a","op":"frobnicate","path":"/x"}"#, "bad_request", "unknown op"),
        (r#"{"id":"b","op":"put","path":"/x/y","content":5}"#, "bad_request", "content"),
        (
            r#"{"id":"c","op":"put","path":"/x/y","content":"v","if_rev":"one"}"#,
            "bad_request",
            "if_rev",
        ),
        (r#"{"id":"d","op":"put","path":"relative","content":"v"}"#, "bad_path", "path"),
        (r#"{"id":"e","op":"get","path":"/a/../b"}"#, "bad_path", "path"),
        (r#"{"id":"f","op":"sub","prefix":"nope"}"#, "bad_path", "prefix"),
        (
            r#"{"id":"g","op":"put","path":"/x/y","content":"v","colour":"red"}"#,
            "bad_request",
            "colour",
        ),
        (r#"{"id":"h","op":"get","path":"/.ferry-keys/0"}"#, "forbidden", "reserved"),
        (r#"[1,2,3]"#, "bad_request", "object"),
    ];
    for (text, code, mention) in cases {
        let answer = raw_answer(&mut client, text).await;
        assert_eq!(answer["error"]["code"], code, "{text} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(mention), "{text} -> {message}");
        if text.starts_with("{\"id\"") {
            assert_eq!(answer["id"], text[7..8], "{answer}");
        }
    }
    client.send_binary(vec![1, 2, 3]).unwrap();
    let binary = within(client.next_unmatched()).await.unwrap();
    assert_eq!(error_code(&binary).0, "bad_request");
    assert_eq!(client.put("/x/y", "still here").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_closes_with_1009() {
    let options = IngressOptions { max_frame_bytes: 1024, ..IngressOptions::default() };
    let node = start(options, Authenticator::Open).await;
    let mut client = node.client().await;
    assert_eq!(client.put("/big/ok", &"x".repeat(900)).await.unwrap(), 1);
    client
        .send_text(
            json!({"id": "big", "op": "put", "path": "/big/no", "content": "x".repeat(2000)})
                .to_string(),
        )
        .unwrap();
    let close = within(client.wait_closed()).await.expect("a close frame");
    assert_eq!((close.code, close.reason.as_str()), (1009, "frame too large"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_per_second_are_answered_busy() {
    let options = IngressOptions { max_requests_per_sec: 10, ..IngressOptions::default() };
    let node = start(options, Authenticator::Open).await;
    let mut client = node.client().await;
    for i in 0..30 {
        client
            .send_text(json!({"id": format!("r{i}"), "op": "stat", "path": "/rate/x"}).to_string())
            .unwrap();
    }
    let mut codes = Vec::new();
    for _ in 0..30 {
        let answer = within(client.next_unmatched()).await.unwrap();
        codes.push(answer["error"]["code"].as_str().unwrap_or("ok").to_owned());
    }
    let busy = codes.iter().filter(|c| *c == "busy").count();
    // 10/s with a burst of 10: 20 of 30 are busy when they arrive at once, fewer on a slow
    // machine where the bucket refills meanwhile.
    assert!((5..=20).contains(&busy), "{codes:?}");
    assert!(codes.iter().all(|c| c == "busy" || c == "not_found"), "{codes:?}");
    // The bucket refills at 10 per second: after a tenth of a second the connection works.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(client.put("/rate/x", "ok").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_are_answered_limit_exceeded() {
    let options = IngressOptions { max_subscriptions: 3, ..IngressOptions::default() };
    let node = start(options, Authenticator::Open).await;
    let client = node.client().await;
    for i in 0..3 {
        client.sub(&format!("/subs/{i}"), None).await.unwrap();
    }
    let err = client.sub("/subs/3", None).await.unwrap_err();
    assert_eq!(err.code(), Some("limit_exceeded"));
    // Subscribing again to a watched file replaces its watch and is not refused.
    client.sub("/subs/0", None).await.unwrap();
    client.unsub("/subs/1").await.unwrap();
    client.sub("/subs/3", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_node_limit_get_503() {
    let options = IngressOptions { max_connections: 2, ..IngressOptions::default() };
    let node = start(options, Authenticator::Open).await;
    let first = node.client().await;
    let _second = node.client().await;
    match Client::connect(&node.url, None).await {
        Err(ClientError::Refused { status, .. }) => assert_eq!(status, 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    first.close();
    node.wait_for("the first connection to end", |s| s.connections == 1).await;
    let third = node.client().await;
    assert_eq!(third.put("/conn/x", "in").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_events_is_closed_with_4008() {
    let options = IngressOptions { send_queue: 8, ..IngressOptions::default() };
    let node = start(options, Authenticator::Open).await;
    let (mut slow, _) = tokio_tungstenite::connect_async(&node.url).await.unwrap();
    slow.send(Message::text(json!({"id": 1, "op": "sub", "path": "/slow/f"}).to_string()))
        .await
        .unwrap();
    let answer = within(slow.next()).await.unwrap().unwrap();
    assert!(answer.to_text().unwrap().contains("\"ok\":true"), "{answer:?}");
    // `slow` reads nothing more; 64 KiB events fill the socket buffers, then its queue.
    let writer = node.client().await;
    let content = "e".repeat(64 * 1024);
    for _ in 0..2000 {
        writer.put("/slow/f", &content).await.unwrap();
        if node.ingress.stats().slow_consumers_closed == 1 {
            break;
        }
    }
    assert_eq!(node.ingress.stats().slow_consumers_closed, 1);
    let mut close = None;
    while let Some(Ok(message)) = within(slow.next()).await {
        if let Message::Close(frame) = message {
            close = frame;
            break;
        }
    }
    let close = close.expect("a close frame after the queued events");
    assert_eq!((u16::from(close.code), close.reason.as_str()), (4008, "slow consumer"));
    // The writer is not affected.
    assert!(writer.put("/slow/g", "fine").await.is_ok());
}

/// The bytes of a WebSocket upgrade request for `addr`.
fn upgrade_request(addr: std::net::SocketAddr) -> String {
    format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_pinged_then_closed_as_idle() {
    let options = IngressOptions {
        idle_timeout: Duration::from_millis(600),
        ping_interval: Duration::from_millis(100),
        ..IngressOptions::default()
    };
    let node = start(options, Authenticator::Open).await;
    // A raw socket that completes the handshake and then never answers a ping.
    let mut tcp = TcpStream::connect(node.addr).await.unwrap();
    tcp.write_all(upgrade_request(node.addr).as_bytes()).await.unwrap();
    let mut received = Vec::new();
    within(tcp.read_to_end(&mut received)).await.unwrap();
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(received.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&received));
    let frames = &received[head_end..];
    assert!(frames.starts_with(&[0x89, 0x00]), "a ping came first: {frames:?}");
    let close = frames.windows(2).position(|w| w[0] == 0x88).expect("a close frame");
    assert_eq!(&frames[close + 2..close + 4], &1001u16.to_be_bytes());
    assert!(frames[close + 4..].starts_with(b"idle timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_talking_connection_outlives_the_idle_timeout_and_is_closed_once_silent() {
    let options = IngressOptions {
        idle_timeout: Duration::from_millis(400),
        ping_interval: Duration::from_secs(60),
        ..IngressOptions::default()
    };
    let node = start(options, Authenticator::Open).await;
    let mut client = node.client().await;
    // Three idle timeouts' worth of requests, one every 100 ms.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = within(client.get("/talk/x")).await;
        assert_eq!(answer.unwrap_err().code(), Some("not_found"), "still open");
    }
    let silent = std::time::Instant::now();
    let close = within(client.wait_closed()).await.expect("closed by the server");
    assert_eq!((close.code, close.reason.as_str()), (1001, "idle timeout"));
    assert!(silent.elapsed() >= Duration::from_millis(350), "{:?}", silent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_handshake_is_dropped() {
    let options = IngressOptions {
        handshake_timeout: Duration::from_millis(300),
        ..IngressOptions::default()
    };
    let node = start(options, Authenticator::Open).await;
    let mut tcp = TcpStream::connect(node.addr).await.unwrap();
    tcp.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server hung up");
    assert!(!String::from_utf8_lossy(&rest).contains("101"), "no upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_over_plain_http() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    for (path, expect) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let mut tcp = TcpStream::connect(node.addr).await.unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut response = String::new();
        within(tcp.read_to_string(&mut response)).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(expect), "{response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allow_list_are_refused() {
    let options = IngressOptions {
        allowed_origins: vec!["https://app.example".to_owned()],
        ..IngressOptions::default()
    };
    let node = start(options, Authenticator::Open).await;
    let connect = |origin: Option<&str>| {
        let options = ConnectOptions {
            url: node.url.clone(),
            origin: origin.map(str::to_owned),
            ..ConnectOptions::default()
        };
        async move { Client::connect_with(&options).await }
    };
    match connect(Some("https://evil.example")).await {
        Err(ClientError::Refused { status, body, .. }) => {
            assert_eq!(status, 403);
            assert!(body.contains("evil.example"), "{body}");
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    assert!(connect(Some("https://app.example")).await.is_ok());
    assert!(connect(None).await.is_ok(), "non-browser clients send no Origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_queue_is_answered_unavailable_and_the_connection_stays_open() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let client = node.client().await;
    assert_eq!(client.put("/q/x", "before").await.unwrap(), 1);
    node.queue.shutdown();
    let err = client.put("/q/x", "after").await.unwrap_err();
    assert_eq!(err.code(), Some("unavailable"));
    // Requests the ingress answers itself still work.
    client.sub_prefix("/q/").await.unwrap();
}
