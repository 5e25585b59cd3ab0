//! The distributed mode through broker outages: `ferry worker` and `ferry ingress` processes
//! whose RabbitMQ or Redis is stopped under load and started again. The broker that goes down
//! is a private one (its own port and data directory, `scripts/private-brokers.sh`), stopped on
//! drop; the other broker is the machine's shared one, used in a namespace of the test's own
//! that is deleted at the end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_cluster::topology::{QueueLimits, Topology};
use ferry_ingress::client::{Client, ClientError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::json;
use tokio::sync::watch;

const SHARED_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SHARED_REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Any single step: a connection, a process start, a write acknowledged after an outage.
const TIMEOUT: Duration = Duration::from_secs(45);
/// `ferry init`'s default.
const PARTITIONS: u32 = 16;
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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

/// `ferry` processes in a namespace of their own on the given brokers, killed on drop; the
/// namespace's queues, exchanges and keys are deleted then.
struct Cluster {
    dir: PathBuf,
    namespace: String,
    amqp_url: String,
    redis_url: String,
    processes: Vec<Process>,
}

struct Process {
    name: String,
    child: Child,
    url: Option<String>,
    stderr: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    fn new(dir: &Path, amqp_url: &str, redis_url: &str) -> Cluster {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let namespace = format!("o{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let cluster = Cluster {
            dir: dir.to_owned(),
            namespace,
            amqp_url: amqp_url.to_owned(),
            redis_url: redis_url.to_owned(),
            processes: Vec::new(),
        };
        let out = cluster.ferry().arg("init").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    fn ferry(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .env_remove("FERRY_CONFIG")
            .env_remove("FERRY_AUTH__SECRET")
            .env("FERRY_CLUSTER__NAMESPACE", &self.namespace)
            .env("FERRY_CLUSTER__BROKER_URL", &self.amqp_url)
            .env("FERRY_CLUSTER__BUS_URL", &self.redis_url)
            .arg("--data")
            .arg(self.dir.join("data"))
            .arg("--set")
            .arg(format!("logger.directory={:?}", self.dir.join("logs").display().to_string()));
        command
    }

    /// Starts a process and waits for its first line on stdout.
    fn spawn(&mut self, name: &str, args: &[&str]) -> usize {
        let stderr = self.dir.join(format!("{name}.stderr"));
        let mut child = self
            .ferry()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap_or_else(|| panic!("{name} printed nothing")).unwrap();
        let url = first.split_whitespace().find(|w| w.starts_with("ws://")).map(str::to_owned);
        std::thread::spawn(move || lines.for_each(drop));
        self.processes.push(Process { name: name.to_owned(), child, url, stderr });
        self.processes.len() - 1
    }

    fn worker(&mut self, id: &str) {
        self.spawn(id, &["worker", "--id", id]);
    }

    fn ingress(&mut self, id: &str) -> String {
        let i = self.spawn(id, &["ingress", "--id", id, "--listen", "127.0.0.1:0"]);
        self.processes[i].url.clone().expect("the ingress printed its URL")
    }

    /// Asserts that every process started is still the one running (none exited, none was
    /// restarted).
    fn assert_all_running(&mut self) {
        for p in &mut self.processes {
            let status = p.child.try_wait().unwrap();
            assert!(status.is_none(), "{} exited: {status:?}", p.name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for p in std::mem::take(&mut self.processes) {
            if failed {
                let text = std::fs::read_to_string(&p.stderr).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {} stderr (last lines) ---", p.name);
                tail.iter().rev().for_each(|line| eprintln!("{line}"));
            }
        }
        let (namespace, amqp_url, redis_url) =
            (self.namespace.clone(), self.amqp_url.clone(), self.redis_url.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.unwrap().block_on(async {
                let deleting = async {
                    let connection =
                        lapin::Connection::connect(&amqp_url, Default::default()).await.ok()?;
                    let channel = connection.create_channel().await.ok()?;
                    let topology = Topology::new(&namespace, PARTITIONS, QueueLimits::default());
                    let _ = topology.delete(&channel).await;
                    Some(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), deleting).await;
                let forgetting = async {
                    let client = redis::Client::open(redis_url.as_str()).ok()?;
                    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{namespace}:*"))
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: redis::RedisResult<()> =
                            redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                    }
                    Some(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), forgetting).await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not done within {TIMEOUT:?}"),
    }
}

/// Acknowledged writes, counted by the writers.
type Acked = Arc<watch::Sender<u32>>;

fn count_ack(acked: &Acked) {
    acked.send_modify(|n| *n += 1);
}

/// Waits until `count` acknowledged writes were made.
async fn acked_at_least(acked: &Acked, count: u32) {
    let mut seen = acked.subscribe();
    within(&format!("{count} acknowledged writes"), seen.wait_for(|&n| n >= count))
        .await
        .expect("the sender lives as long as the test");
}

/// One request of a writer: when it was sent, how long its answer took, and whether the answer
/// was `unavailable`.
#[derive(Debug, Clone, Copy)]
struct Call {
    sent: Instant,
    took: Duration,
    unavailable: bool,
}

/// Appends with an idempotency key, retrying `unavailable` and `busy` with the same key, until
/// acknowledged; records every call; returns the revision.
async fn append_until_acked(
    client: &Client,
    path: &str,
    content: &str,
    key: &str,
    calls: &Mutex<Vec<Call>>,
) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let request = json!({"op": "append", "path": path, "content": content, "key": key});
        let sent = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(15), client.call(request))
            .await
            .unwrap_or_else(|_| panic!("append {key} to {path}: no answer in 15 s (a hang)"));
        let took = sent.elapsed();
        let unavailable = matches!(&answer, Err(e) if e.code() == Some("unavailable"));
        calls.lock().unwrap().push(Call { sent, took, unavailable });
        match answer {
            Ok(answer) => return answer["rev"].as_u64().expect("a write answers its revision"),
            Err(ClientError::Server { code, .. }) if code == "unavailable" || code == "busy" => {}
            Err(e) => panic!("append {key} to {path}: {e}"),
        }
        assert!(Instant::now() < deadline, "append {key} to {path} never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let mut cluster = Cluster::new(tmp.path(), &rabbitmq.url(), SHARED_REDIS_URL);
    let (worker, ingress) = ("w1", "i1");
    tokio::task::block_in_place(|| cluster.worker(worker));
    let url = tokio::task::block_in_place(|| cluster.ingress(ingress));
    let probe = format!("{}.outage-probe", cluster.namespace);
    within("leaving a durable message", leave_durable_message(&rabbitmq.url(), &probe)).await;

    let files: Vec<String> = (0..4).map(|f| format!("/home/o{f}/log")).collect();
    let acked: Acked = Arc::new(watch::Sender::new(0));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let enough = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (f, path) in files.iter().enumerate() {
        let client = within("connecting a writer", Client::connect(&url, None)).await.unwrap();
        let (path, acked, calls, enough) =
            (path.clone(), acked.clone(), calls.clone(), enough.clone());
        writers.push(tokio::spawn(async move {
            let mut written = 0u64;
            // Bounded: the test stops the writers long before.
            while !enough.load(Ordering::Acquire) && written < 2000 {
                let content = format!("{written};");
                let key = format!("{f}-{written}");
                let rev = append_until_acked(&client, &path, &content, &key, &calls).await;
                assert_eq!(rev, written + 1, "{path}: write {written} got revision {rev}");
                written += 1;
                count_ack(&acked);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            written
        }));
    }

    acked_at_least(&acked, 40).await;
    let stop_began = Instant::now();
    tokio::task::block_in_place(|| rabbitmq.stop());
    let down_from = Instant::now();
    let acked_when_down = *acked.borrow();
    tokio::time::sleep(RABBITMQ_DOWN_FOR).await;
    let acked_while_down = *acked.borrow() - acked_when_down;
    let down_until = Instant::now();
    tokio::task::block_in_place(|| rabbitmq.start());
    let up_at = Instant::now();
    let acked_at_restart = *acked.borrow();
    // Writes succeed again, through the same processes, which reconnected by themselves.
    acked_at_least(&acked, acked_at_restart + 40).await;
    let recovered_in = up_at.elapsed();
    enough.store(true, Ordering::Release);
    let mut written = Vec::new();
    for writer in writers {
        written.push(within("a writer's end", writer).await.unwrap());
    }
    cluster.assert_all_running();

    assert_eq!(acked_while_down, 0, "writes were acknowledged while the broker was down");
    let calls = calls.lock().unwrap().clone();
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
    let mut cluster = Cluster::new(tmp.path(), SHARED_AMQP_URL, &redis.url());
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
    let acked: Acked = Arc::new(watch::Sender::new(0));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let writing = {
        let (acked, calls) = (acked.clone(), calls.clone());
        tokio::spawn(async move {
            for i in 0..writes {
                let content = format!("{i};");
                let rev =
                    append_until_acked(&writer, path, &content, &format!("w-{i}"), &calls).await;
                assert_eq!(rev, i + 1, "write {i} got revision {rev}");
                count_ack(&acked);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    acked_at_least(&acked, 60).await;
    tokio::task::block_in_place(|| redis.stop());
    let stopped_at_write = *acked.borrow();
    tokio::time::sleep(REDIS_DOWN_FOR).await;
    tokio::task::block_in_place(|| redis.start());
    let restarted_at_write = *acked.borrow();
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
