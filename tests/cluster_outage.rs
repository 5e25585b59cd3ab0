//! The distributed mode through broker outages: `ferry worker` and `ferry ingress` processes
//! whose RabbitMQ or Redis is stopped under load and started again. The broker that goes down
//! is a private one (its own port and data directory, `scripts/private-brokers.sh`), stopped on
//! drop; the other broker is the machine's shared one, used in a namespace of the test's own
//! that is deleted at the end.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{free_port, within_for, Cluster, SHARED_AMQP_URL, SHARED_REDIS_URL};
use common::writes::{Call, Writes};
use ferry_ingress::client::Client;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

/// Any single step: a connection, a process start, a write acknowledged after an outage.
const TIMEOUT: Duration = Duration::from_secs(45);
/// While the broker is down, a request must be answered (`unavailable`) at least this soon.
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(2);
/// How long RabbitMQ stays down.
const RABBITMQ_DOWN_FOR: Duration = Duration::from_secs(3);
/// How long Redis stays down before it comes back, empty.
const REDIS_DOWN_FOR: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BrokerKind {
    RabbitMq,
    Redis,
}

/// A broker of the test's own, on a free port with its data in a temporary directory; started
/// and stopped by `scripts/private-brokers.sh`, and stopped on drop (also when the test fails).
struct PrivateBroker {
    kind: BrokerKind,
    port: u16,
    dir: tempfile::TempDir,
    running: AtomicBool,
}

impl PrivateBroker {
    fn start_new(kind: BrokerKind) -> PrivateBroker {
        let port = match kind {
            BrokerKind::RabbitMq => rabbitmq_port(),
            BrokerKind::Redis => free_port(),
        };
        let broker = PrivateBroker {
            kind,
            port,
            dir: tempfile::tempdir().unwrap(),
            running: AtomicBool::new(false),
        };
        broker.start();
        broker
    }

    fn url(&self) -> String {
        match self.kind {
            BrokerKind::RabbitMq => format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
            BrokerKind::Redis => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Starts the broker and returns once its port is open. Blocks: call it off the async
    /// threads (`block_in_place`).
    fn start(&self) {
        let (command, port) = match self.kind {
            BrokerKind::RabbitMq => ("start-rabbitmq", self.port.to_string()),
            BrokerKind::Redis => ("start-redis", self.port.to_string()),
        };
        self.running.store(true, Ordering::Release);
        brokers_script(&[command, &port, &self.dir.path().display().to_string()]);
    }

    /// Stops the broker and returns once its port is closed.
    fn stop(&self) {
        let target = match self.kind {
            BrokerKind::RabbitMq => self.dir.path().display().to_string(),
            BrokerKind::Redis => self.port.to_string(),
        };
        let command = match self.kind {
            BrokerKind::RabbitMq => "stop-rabbitmq",
            BrokerKind::Redis => "stop-redis",
        };
        brokers_script(&[command, &target]);
        self.running.store(false, Ordering::Release);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if self.running.load(Ordering::Acquire) {
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop())) {
                eprintln!("stopping the private {:?} on {}: {e:?}", self.kind, self.port);
            }
        }
    }
}

fn brokers_script(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/private-brokers.sh");
    let out = Command::new(script)
        .args(args)
        .env("FERRY_BROKER_WAIT", "60")
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "private-brokers.sh {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A free port for RabbitMQ whose Erlang distribution port (20,000 above) is free too.
fn rabbitmq_port() -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        if port <= 45_535 && std::net::TcpListener::bind(("127.0.0.1", port + 20_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a private rabbitmq");
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    within_for(TIMEOUT, what, future).await
}

fn expected_content(writes: u64) -> String {
    (0..writes).map(|i| format!("{i};")).collect()
}

/// Declares a durable quorum queue of the namespace's own and leaves one persistent, confirmed
/// message in it.
async fn leave_durable_message(amqp_url: &str, queue: &str) {
    let connection = lapin::Connection::connect(amqp_url, Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.into(), durable, args).await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"kept",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack(), "the broker did not confirm the probe message");
    let _ = connection.close(200, "probe left".into()).await;
}

/// The messages in `queue` (which must exist).
async fn messages_in(amqp_url: &str, queue: &str) -> u32 {
    let connection = lapin::Connection::connect(amqp_url, Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
    let declared = channel.queue_declare(queue.into(), passive, FieldTable::default()).await;
    let count = declared.unwrap_or_else(|e| panic!("queue {queue} after the restart: {e}"));
    let _ = connection.close(200, "probe read".into()).await;
    count.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_for_seconds_answers_unavailable_at_once_and_loses_nothing_acknowledged() {
    let started = Instant::now();
    let rabbitmq = tokio::task::block_in_place(|| PrivateBroker::start_new(BrokerKind::RabbitMq));
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::with_brokers(tmp.path(), &rabbitmq.url(), SHARED_REDIS_URL);
    let (worker, ingress) = ("w1", "i1");
    tokio::task::block_in_place(|| cluster.worker(worker));
    let url = tokio::task::block_in_place(|| cluster.ingress(ingress));
    let probe = format!("{}.outage-probe", cluster.namespace);
    within("leaving a durable message", leave_durable_message(&rabbitmq.url(), &probe)).await;

    let files: Vec<String> = (0..4).map(|f| format!("/home/o{f}/log")).collect();
    let writes = Writes::new(TIMEOUT);
    let enough = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (f, path) in files.iter().enumerate() {
        let client = within("connecting a writer", Client::connect(&url, None)).await.unwrap();
        let (path, writes, enough) = (path.clone(), writes.clone(), enough.clone());
        writers.push(tokio::spawn(async move {
            let mut written = 0u64;
            // Bounded: the test stops the writers long before.
            while !enough.load(Ordering::Acquire) && written < 2000 {
                let content = format!("{written};");
                let key = format!("{f}-{written}");
                let rev = writes.append_until_acked(&client, &path, &content, &key).await;
                assert_eq!(rev, written + 1, "{path}: write {written} got revision {rev}");
                written += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            written
        }));
    }

    writes.acked_at_least(40).await;
    let stop_began = Instant::now();
    tokio::task::block_in_place(|| rabbitmq.stop());
    let down_from = Instant::now();
    let acked_when_down = writes.acked();
    tokio::time::sleep(RABBITMQ_DOWN_FOR).await;
    let acked_while_down = writes.acked() - acked_when_down;
    let down_until = Instant::now();
    tokio::task::block_in_place(|| rabbitmq.start());
    let up_at = Instant::now();
    let acked_at_restart = writes.acked();
    // Writes succeed again, through the same processes, which reconnected by themselves.
    writes.acked_at_least(acked_at_restart + 40).await;
    let recovered_in = up_at.elapsed();
    enough.store(true, Ordering::Release);
    let mut written = Vec::new();
    for writer in writers {
        written.push(within("a writer's end", writer).await.unwrap());
    }
    cluster.assert_all_running();

    assert_eq!(acked_while_down, 0, "writes were acknowledged while the broker was down");
    let calls = writes.calls();
    let during: Vec<&Call> =
        calls.iter().filter(|c| c.sent >= down_from && c.sent <= down_until).collect();
    assert!(!during.is_empty(), "no request was made while the broker was down");
    assert!(during.iter().all(|c| c.unavailable), "a request while down was not `unavailable`");
    // From the moment the broker began to stop: requests then in flight or sent while it was
    // shutting down are answered as soon as the others.
    let stopping = calls.iter().filter(|c| c.sent + c.took >= stop_began && c.sent <= down_until);
    let slowest = stopping.map(|c| c.took).max().unwrap();
    assert!(
        slowest < UNAVAILABLE_WITHIN,
        "while the broker was stopping or down a request took {slowest:?} to be answered"
    );
    let reader = within("connecting a reader", Client::connect(&url, None)).await.unwrap();
    for (path, &count) in files.iter().zip(&written) {
        let file = within("reading a file back", reader.get(path)).await.unwrap();
        assert_eq!(file["content"].as_str(), Some(expected_content(count).as_str()), "{path}");
        assert_eq!(file["rev"].as_u64(), Some(count), "{path}");
    }
    let kept = within("counting the probe's messages", messages_in(&rabbitmq.url(), &probe)).await;
    assert_eq!(kept, 1, "the private rabbitmq lost a durable queue's message over its restart");
    eprintln!(
        "rabbitmq outage: {} requests while down, slowest answer from the stop {slowest:?}; \
         writes again {recovered_in:?} after the broker was up; {} writes acknowledged in all; \
         {:?} in all",
        during.len(),
        written.iter().sum::<u64>(),
        started.elapsed()
    );
}

/// Watches one file through one ingress node from revision 0 on `client` (subscribed already):
/// whenever the node closes the watch with 4009, connects again and resubscribes with
/// `since_rev`, and checks that it sees every revision once and in order, a snapshot standing
/// for the revisions it covers. Returns how often it resubscribed and how many snapshots it got.
async fn watch_all_revisions(
    mut client: Client,
    url: String,
    path: String,
    last_rev: u64,
) -> (u32, u32) {
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = 0u64;
    let mut content = String::new();
    let (mut resubscribed, mut snapshots) = (0u32, 0u32);
    loop {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(event) = tokio::time::timeout(left, client.next_event()).await else {
                panic!("{url} {path}: at revision {seen} of {last_rev} when the time ran out");
            };
            let Some(event) = event else { break };
            match event.kind.as_str() {
                "change" => {
                    assert_eq!(event.rev, seen + 1, "{url} {path}: the revision after {seen}");
                    content.push_str(event.raw["content"].as_str().expect("an append's content"));
                }
                "snapshot" => {
                    snapshots += 1;
                    assert!(
                        event.rev > seen,
                        "{url} {path}: snapshot at {} after {seen}",
                        event.rev
                    );
                    content = event.raw["content"].as_str().expect("a snapshot's content").into();
                }
                other => panic!("{url} {path}: unexpected event {other}: {}", event.raw),
            }
            seen = event.rev;
            assert_eq!(content, expected_content(seen), "{url} {path}: the content at {seen}");
            if seen == last_rev {
                return (resubscribed, snapshots);
            }
        }
        let close = client.close_info();
        assert_eq!(
            close.as_ref().map(|c| c.code),
            Some(4009),
            "{url} {path}: the watch ended at revision {seen} with {close:?}"
        );
        resubscribed += 1;
        client = loop {
            assert!(Instant::now() < deadline, "{url} {path}: still resubscribing at the deadline");
            let again = within("connecting a watcher", Client::connect(&url, None)).await.unwrap();
            match within("resubscribing", again.sub(&path, Some(seen))).await {
                Ok(_) => break again,
                Err(e) if e.code() == Some("unavailable") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{url}: resubscribing to {path} since {seen}: {e}"),
            }
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_under_load_watchers_recover_every_revision() {
    let started = Instant::now();
    let redis = tokio::task::block_in_place(|| PrivateBroker::start_new(BrokerKind::Redis));
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::with_brokers(tmp.path(), SHARED_AMQP_URL, &redis.url());
    tokio::task::block_in_place(|| cluster.worker("w1"));
    let urls = tokio::task::block_in_place(|| [cluster.ingress("i1"), cluster.ingress("i2")]);

    let path = "/home/watched/log";
    let writes = 300u64;
    let mut watchers = Vec::new();
    for url in &urls {
        // Subscribed before the first write: every revision is the watcher's to see.
        let client = within("connecting a watcher", Client::connect(url, None)).await.unwrap();
        assert_eq!(within("subscribing", client.sub(path, None)).await.unwrap(), 0);
        watchers.push(tokio::spawn(watch_all_revisions(client, url.clone(), path.into(), writes)));
    }

    let writer = within("connecting the writer", Client::connect(&urls[0], None)).await.unwrap();
    let appends = Writes::new(TIMEOUT);
    let writing = {
        let appends = appends.clone();
        tokio::spawn(async move {
            for i in 0..writes {
                let content = format!("{i};");
                let key = format!("w-{i}");
                let rev = appends.append_until_acked(&writer, path, &content, &key).await;
                assert_eq!(rev, i + 1, "write {i} got revision {rev}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    appends.acked_at_least(60).await;
    tokio::task::block_in_place(|| redis.stop());
    let stopped_at_write = appends.acked();
    tokio::time::sleep(REDIS_DOWN_FOR).await;
    tokio::task::block_in_place(|| redis.start());
    let restarted_at_write = appends.acked();
    within("the writer's end", writing).await.unwrap();
    assert!(
        restarted_at_write < writes as u32,
        "the writes ended before redis was back: the restart was not under load"
    );
    let mut outcomes = Vec::new();
    for watcher in watchers {
        outcomes.push(within("a watcher's end", watcher).await.unwrap());
    }
    cluster.assert_all_running();
    let reader = within("connecting a reader", Client::connect(&urls[1], None)).await.unwrap();
    let file = within("reading the file back", reader.get(path)).await.unwrap();
    assert_eq!(file["content"].as_str(), Some(expected_content(writes).as_str()));
    eprintln!(
        "redis restart: stopped at write {stopped_at_write}, back at write {restarted_at_write}; \
         watchers (resubscriptions, snapshots): {outcomes:?}; {:?} in all",
        started.elapsed()
    );
}
