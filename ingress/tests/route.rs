//! `GET /v1/route`: the least loaded ingress node under the threshold, or 503.

mod common;

use std::net::SocketAddr;

use common::{start, within};
use ferry_ingress::placement::NodeLoad;
use ferry_ingress::{Authenticator, IngressOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One `GET /v1/route` over a fresh TCP connection: the status line and the body.
async fn get_route(addr: SocketAddr) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /v1/route HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn route_answers_the_least_loaded_node_and_503_when_all_are_full() {
    let options =
        IngressOptions { max_connections: 4, route_threshold_percent: 50, ..Default::default() };
    let node = start(options, Authenticator::Open).await;
    let (head, body) = within(get_route(node.addr)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["url"], node.url.as_str());
    assert_eq!(answer["capacity"], 4);

    // One client: this node is at 25 %, a peer at 0.1 % wins.
    let _first = within(node.client()).await;
    node.wait_for("one connection", |s| s.connections == 1).await;
    let peer = NodeLoad { url: "ws://10.0.0.2:7700/v1/ws".into(), connections: 1, capacity: 1000 };
    node.ingress.set_peers(vec![peer.clone()]);
    let (_, body) = within(get_route(node.addr)).await;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["url"], peer.url.as_str(), "{body}");

    // Two clients put this node at its 50 % threshold; the peer is full too.
    let _second = within(node.client()).await;
    node.wait_for("two connections", |s| s.connections == 2).await;
    node.ingress.set_peers(vec![NodeLoad { connections: 999, ..peer }]);
    let (head, body) = within(get_route(node.addr)).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
    assert!(body.contains("\"unavailable\""), "{body}");
}
