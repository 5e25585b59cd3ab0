//! The load generator's connection (`direct_client`) against a real server: subscriptions,
//! events in order (also those that arrive while a subscription waits for its answer), error
//! answers, and the server's close frame.

mod common;

use common::{start, within};
use ferry_ingress::client::{ClientError, ConnectOptions};
use ferry_ingress::direct_client::{DirectConnection, Frame};
use ferry_ingress::{Authenticator, IngressOptions};
use serde_json::json;

async fn open(url: &str) -> DirectConnection {
    let options = ConnectOptions { url: url.to_owned(), ..ConnectOptions::default() };
    DirectConnection::open(&options).await.unwrap()
}

/// The next frame, parsed: (event kind, path, rev, content) for an event, (None, .., id) else.
async fn next(connection: &mut DirectConnection) -> serde_json::Value {
    let text = within(connection.next()).await.expect("a frame");
    let frame = Frame::parse(text.as_str()).expect("a frame the bench can read");
    json!({
        "event": frame.event, "path": frame.path, "rev": frame.rev, "content": frame.content,
        "id": frame.id, "ok": frame.ok, "code": frame.error.map(|e| e.code),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_including_those_read_while_subscribing() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let writer = node.client().await;
    let mut direct = open(&node.url).await;
    assert_eq!(direct.sub("/d/a").await.unwrap(), 0);
    for i in 1..=20u64 {
        assert_eq!(writer.put("/d/a", &format!("v{i}")).await.unwrap(), i);
    }
    // The 20 events are on their way (or read) when the second subscription is answered.
    writer.put("/d/b", "b1").await.unwrap();
    assert_eq!(direct.sub("/d/b").await.unwrap(), 1);
    for i in 1..=20u64 {
        let event = next(&mut direct).await;
        assert_eq!(event["event"], "change", "{event}");
        assert_eq!((event["path"].as_str(), event["rev"].as_u64()), (Some("/d/a"), Some(i)));
        assert_eq!(event["content"], format!("v{i}"));
    }
    writer.put("/d/b", "quote \" and \u{e9}").await.unwrap();
    let event = next(&mut direct).await;
    assert_eq!((event["path"].as_str(), event["rev"].as_u64()), (Some("/d/b"), Some(2)));
    assert_eq!(event["content"], "quote \" and \u{e9}");

    let put = json!({"op": "put", "id": 1u64 << 40, "path": "/d/c", "content": "c"});
    let bad = json!({"op": "put", "id": 7, "path": "/d/../c", "content": "c"});
    direct.send([put.to_string(), bad.to_string()]).await.unwrap();
    // Answers come in the order they are ready: the refusal needs no worker.
    let mut answers = [next(&mut direct).await, next(&mut direct).await];
    answers.sort_by_key(|a| a["id"].as_u64());
    let [refused, answer] = &answers;
    assert_eq!((answer["id"].as_u64(), answer["ok"].as_bool()), (Some(1 << 40), Some(true)));
    assert_eq!(answer["rev"], 1);
    assert_eq!((refused["id"].as_u64(), refused["code"].as_str()), (Some(7), Some("bad_path")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_and_the_servers_close_are_reported() {
    let options = IngressOptions { max_frame_bytes: 1024, ..IngressOptions::default() };
    let node = start(options, Authenticator::Open).await;
    let mut direct = open(&node.url).await;
    match direct.sub("no-slash").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "bad_path"),
        other => panic!("expected bad_path, got {other:?}"),
    }
    let big = json!({"op": "put", "id": 1, "path": "/big", "content": "x".repeat(2000)});
    direct.send([big.to_string()]).await.unwrap();
    assert!(within(direct.next()).await.is_none(), "the server closes the connection");
    let close = direct.close_info().expect("a close frame");
    assert_eq!((close.code, close.reason.as_str()), (1009, "frame too large"));
    assert!(matches!(direct.sub("/after").await, Err(ClientError::Closed(Some(_)))));
}
