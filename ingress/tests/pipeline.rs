//! The protocol's behaviour over real WebSocket connections: watching, conflicts, idempotent
//! retries, recovery with `since_rev`, one bus subscription per topic, graceful shutdown.

mod common;

use common::{start, start_full, start_with_bus, within};
use ferry_ingress::client::Client;
use ferry_ingress::{Authenticator, IngressOptions};
use ferry_instruction_worker::{CounterIncrement, LocalBusOptions, WorkerOptions};
use serde_json::json;

async fn expect_events(
    client: &mut Client,
    path: &str,
    revs: std::ops::RangeInclusive<u64>,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for rev in revs {
        let event = within(client.next_event()).await.expect("an event");
        assert_eq!((event.path.as_str(), event.rev), (path, rev), "{:?}", event.raw);
        out.push(event.raw);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_every_change_of_another_client_in_order() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let writer = node.client().await;
    let mut watcher = node.client().await;
    let mut prefix_watcher = node.client().await;
    assert_eq!(watcher.sub("/docs/a.txt", None).await.unwrap(), 0);
    prefix_watcher.sub_prefix("/docs/").await.unwrap();
    assert_eq!(writer.put("/docs/a.txt", "hello").await.unwrap(), 1);
    for i in 2..=50u64 {
        assert_eq!(writer.append("/docs/a.txt", &format!(" {i}")).await.unwrap(), i);
    }
    let rev = writer
        .call_rev_of(
            json!({"op": "patch", "path": "/docs/a.txt", "at": 0, "delete": 5, "insert": "HELLO"}),
        )
        .await;
    assert_eq!(rev, 51);
    let events = expect_events(&mut watcher, "/docs/a.txt", 1..=51).await;
    assert_eq!(events[0]["op"], "put");
    assert_eq!(events[0]["content"], "hello");
    assert_eq!(events[0]["author"], "anonymous");
    assert_eq!(events[1]["op"], "append");
    assert_eq!(events[1]["content"], " 2");
    assert_eq!(events[50]["op"], "patch");
    assert_eq!(
        (events[50]["at"].as_u64(), events[50]["insert"].as_str()),
        (Some(0), Some("HELLO"))
    );
    expect_events(&mut prefix_watcher, "/docs/a.txt", 1..=51).await;
    let got = writer.get("/docs/a.txt").await.unwrap();
    assert!(got["content"].as_str().unwrap().starts_with("HELLO 2 3"));
    assert_eq!(got["rev"], 51);
    // A file outside the watched ones sends nothing to the path watcher.
    writer.put("/docs/b.txt", "b").await.unwrap();
    expect_events(&mut prefix_watcher, "/docs/b.txt", 1..=1).await;
    writer.delete_path("/docs/a.txt").await;
    let deleted = within(watcher.next_event()).await.unwrap();
    assert_eq!((deleted.rev, deleted.raw["op"].as_str()), (52, Some("delete")));
}

trait Extra {
    async fn call_rev_of(&self, request: serde_json::Value) -> u64;
    async fn delete_path(&self, path: &str);
}

impl Extra for Client {
    async fn call_rev_of(&self, request: serde_json::Value) -> u64 {
        self.call(request).await.unwrap()["rev"].as_u64().unwrap()
    }

    async fn delete_path(&self, path: &str) {
        self.call(json!({"op": "delete", "path": path})).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_carry_the_current_revision_and_leave_the_file_alone() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let client = node.client().await;
    assert_eq!(
        client.call_rev_of(json!({"op": "put", "path": "/c/x", "content": "1", "if_rev": 0})).await,
        1
    );
    let again = client
        .call(json!({"op": "put", "path": "/c/x", "content": "2", "if_rev": 0}))
        .await
        .unwrap_err();
    assert_eq!(
        (
            again.code(),
            matches!(again, ferry_ingress::client::ClientError::Server { rev: Some(1), .. })
        ),
        (Some("conflict"), true)
    );
    let stale = client
        .call(json!({"op": "put", "path": "/c/x", "content": "3", "if_rev": 7}))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Some("conflict"));
    assert_eq!(
        client.call_rev_of(json!({"op": "put", "path": "/c/x", "content": "4", "if_rev": 1})).await,
        2
    );
    assert_eq!(client.get("/c/x").await.unwrap()["content"], "4");
    let missing = client.get("/c/none").await.unwrap_err();
    assert_eq!(missing.code(), Some("not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_with_the_same_key_is_applied_once() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let mut watcher = node.client().await;
    watcher.sub("/k/log", None).await.unwrap();
    let first = node.client().await;
    let request = json!({"op": "append", "path": "/k/log", "content": "once;", "key": "retry-1"});
    let answer = first.call(request.clone()).await.unwrap();
    first.close();
    // The retry comes on a new connection, as after a lost answer.
    let second = node.client().await;
    let again = second.call(request).await.unwrap();
    assert_eq!(answer["rev"], again["rev"]);
    // Writes without a key are each applied.
    second.append("/k/log", "a;").await.unwrap();
    second.append("/k/log", "a;").await.unwrap();
    assert_eq!(second.get("/k/log").await.unwrap()["content"], "once;a;a;");
    expect_events(&mut watcher, "/k/log", 1..=3).await;
}

/// In one process an instruction reaches the worker once, so a write without a key takes no
/// place in the ledger: however many follow, a client's own key is still remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_a_key_do_not_push_a_clients_key_out_of_the_ledger() {
    // A ledger of 2 slots of 2 keys: the 10 writes below would have overwritten both slots.
    let worker = WorkerOptions { ledger_slots: 2, keys_per_slot: 2, ..WorkerOptions::default() };
    let node = start_full(
        IngressOptions::default(),
        Authenticator::Open,
        LocalBusOptions::default(),
        worker,
    )
    .await;
    let client = node.client().await;
    let request = json!({"op": "append", "path": "/w/d/log", "content": "keyed;", "key": "w-1"});
    let first = client.call(request.clone()).await.unwrap();
    // The same directory, hence the same partition and ledger.
    for i in 0..10 {
        client.put(&format!("/w/d/f{i}"), "x").await.unwrap();
    }
    let again = client.call(request).await.unwrap();
    assert_eq!(first["rev"], again["rev"], "the retry was applied a second time");
    assert_eq!(client.get("/w/d/log").await.unwrap()["content"], "keyed;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_since_rev_recovers_exactly_the_missed_changes() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let writer = node.client().await;
    let mut watcher = node.client().await;
    watcher.sub("/r/f", None).await.unwrap();
    for i in 1..=5u64 {
        assert_eq!(writer.append("/r/f", &format!("{i};")).await.unwrap(), i);
    }
    expect_events(&mut watcher, "/r/f", 1..=5).await;
    watcher.close();
    for i in 6..=12u64 {
        writer.append("/r/f", &format!("{i};")).await.unwrap();
    }
    let mut back = node.client().await;
    // Writes keep coming while it catches up: history and live events must join up.
    let racing = tokio::spawn({
        let writer = writer;
        async move {
            for i in 13..=40u64 {
                writer.append("/r/f", &format!("{i};")).await.unwrap();
            }
            writer
        }
    });
    let current = back.sub("/r/f", Some(5)).await.unwrap();
    assert!(current >= 12, "the answer carries the current revision, got {current}");
    let events = expect_events(&mut back, "/r/f", 6..=40).await;
    assert_eq!(events[0]["content"], "6;");
    racing.await.unwrap();
    // Nothing more: no duplicate came after revision 40.
    let writer = node.client().await;
    assert_eq!(writer.append("/r/f", "41;").await.unwrap(), 41);
    assert_eq!(within(back.next_event()).await.unwrap().rev, 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_beyond_the_history_is_bridged_by_one_snapshot() {
    let bus = LocalBusOptions { history_per_file: 3, ..LocalBusOptions::default() };
    let node = start_with_bus(IngressOptions::default(), Authenticator::Open, bus).await;
    let writer = node.client().await;
    for i in 1..=10u64 {
        writer.append("/g/f", &format!("{i};")).await.unwrap();
    }
    let mut back = node.client().await;
    assert_eq!(back.sub("/g/f", Some(2)).await.unwrap(), 10);
    let snapshot = within(back.next_event()).await.unwrap();
    assert_eq!((snapshot.kind.as_str(), snapshot.rev), ("snapshot", 10));
    assert_eq!(snapshot.raw["content"], "1;2;3;4;5;6;7;8;9;10;");
    writer.append("/g/f", "11;").await.unwrap();
    assert_eq!(within(back.next_event()).await.unwrap().rev, 11);
    // A client ahead of the file (e.g. of a store restored from older data) resyncs too.
    let mut ahead = node.client().await;
    assert_eq!(ahead.sub("/g/f", Some(500)).await.unwrap(), 11);
    let snapshot = within(ahead.next_event()).await.unwrap();
    assert_eq!((snapshot.kind.as_str(), snapshot.rev), ("snapshot", 11));
    writer.append("/g/f", "12;").await.unwrap();
    assert_eq!(within(ahead.next_event()).await.unwrap().rev, 12);
    assert_eq!(within(back.next_event()).await.unwrap().rev, 12);
    // A file that never existed: no snapshot, then its changes.
    let mut fresh = node.client().await;
    assert_eq!(fresh.sub("/g/new", Some(0)).await.unwrap(), 0);
    writer.put("/g/new", "n").await.unwrap();
    let first = within(fresh.next_event()).await.unwrap();
    assert_eq!((first.kind.as_str(), first.rev), ("change", 1));
    // Within the history: plain events, no snapshot.
    let mut near = node.client().await;
    assert_eq!(near.sub("/g/f", Some(10)).await.unwrap(), 12);
    let revs = [within(near.next_event()).await.unwrap(), within(near.next_event()).await.unwrap()];
    assert_eq!(
        revs.iter().map(|e| (e.kind.as_str(), e.rev)).collect::<Vec<_>>(),
        [("change", 11), ("change", 12)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_subscribes_to_the_bus_once_per_topic() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let a = node.client().await;
    let b = node.client().await;
    a.sub("/t/x", None).await.unwrap();
    b.sub("/t/x", None).await.unwrap();
    b.sub_prefix("/t/").await.unwrap();
    assert_eq!(node.bus.subscription_count(), 2);
    assert_eq!(node.ingress.stats().bus_topics, 2);
    a.unsub("/t/x").await.unwrap();
    assert_eq!(node.bus.subscription_count(), 2, "b still watches /t/x");
    b.unsub("/t/x").await.unwrap();
    assert_eq!(node.bus.subscription_count(), 1);
    b.close();
    node.wait_for("b's watches to go", |s| s.bus_topics == 0).await;
    assert_eq!(node.bus.subscription_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_requests_then_closes_with_1001() {
    let node = start(IngressOptions::default(), Authenticator::Open).await;
    let mut client = node.client().await;
    for i in 0..200 {
        let request =
            json!({"id": format!("w{i}"), "op": "append", "path": "/s/f", "content": "x"});
        client.send_text(request.to_string()).unwrap();
    }
    // The connection reads frames in order: once this is answered (by the ingress itself),
    // all 200 writes were taken, and most still wait for the worker.
    client.sub_prefix("/s/").await.unwrap();
    node.shutdown.cancel();
    let mut revs = Vec::new();
    for _ in 0..200 {
        let answer = within(client.next_unmatched()).await.expect("every write is answered");
        assert_eq!(answer["ok"], true, "{answer}");
        revs.push(answer["rev"].as_u64().unwrap());
    }
    assert_eq!(revs, (1..=200).collect::<Vec<u64>>());
    let close = within(client.wait_closed()).await.expect("a close frame");
    assert_eq!((close.code, close.reason.as_str()), (1001, "server shutting down"));
    within(node.served).await.unwrap();
    let refused = Client::connect(&node.url, None).await;
    assert!(refused.is_err(), "the listener is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_ops_named_in_the_options_reach_the_worker() {
    let options = IngressOptions {
        custom_ops: vec!["counter_increment".into()],
        ..IngressOptions::default()
    };
    let worker = WorkerOptions {
        custom_ops: vec![std::sync::Arc::new(CounterIncrement)],
        ..WorkerOptions::default()
    };
    let node = start_full(options, Authenticator::Open, LocalBusOptions::default(), worker).await;
    let mut client = node.client().await;
    client.sub("/n/visits", None).await.unwrap();
    let answer = client
        .call(json!({"op": "counter_increment", "path": "/n/visits", "by": 2}))
        .await
        .unwrap();
    assert_eq!((answer["rev"].as_u64(), answer["result"]["value"].as_i64()), (Some(1), Some(2)));
    let event = within(client.next_event()).await.unwrap();
    assert_eq!((event.rev, event.raw["op"].as_str()), (1, Some("put")));
    // Ops not named in the options stay unknown at the edge.
    let plain = start(IngressOptions::default(), Authenticator::Open).await;
    let err = plain.client().await.call(json!({"op": "counter_increment", "path": "/n/x"})).await;
    assert_eq!(err.unwrap_err().code(), Some("bad_request"));
}
